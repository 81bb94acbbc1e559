"""One grid cell: train a fresh model on a setting with one (mixer, lr, wd, seed) and evaluate it.

``run_cell`` returns a JSON-ready dict: the cell's key fields, the training summary and the test metrics
(token tasks: accuracy on non-ignored targets of the held-out test set and of the first
``num_train_eval`` training sequences; RegBench: the same accuracy counted against each sequence's automaton,
plus the total variation from its true next-token distribution, next to an in-context 3-gram's; regression: MSE per number of in-context
examples next to the optimal ridge loss on the same test data).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import torch

from mesanet.train import NonFiniteLossError, OptimConfig, fit_steps

from .config import SynthConfig
from .models import build_model, loss_on, predict
from .settings import Setting, load_data
from .tasks import IGNORE_INDEX, PAD_ID, RegBenchBatch, bayes_optimal_ridge, ngram_scores, pfa_scores, ridge_prediction_loss


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    setting: Setting
    mixer: str
    lr: float
    weight_decay: float
    seed: int

    @property
    def cell_id(self) -> str:
        raw = f"{self.setting.task}__{self.setting.name}__{self.mixer}__lr{self.lr:g}__wd{self.weight_decay:g}__s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", raw.replace(",", "_"))


def optim_config(cfg: SynthConfig, lr: float, weight_decay: float, steps: int) -> OptimConfig:
    """AdamW + warm-up + cosine to ``cfg.min_lr`` (warm-up ``min(warmup_steps, max_warmup_frac * steps)``)."""
    warmup = min(cfg.warmup_steps, int(cfg.max_warmup_frac * steps))
    return OptimConfig(
        lr=lr,
        weight_decay=weight_decay,
        betas=tuple(cfg.betas),
        warmup_steps=warmup,
        min_lr_ratio=min(1.0, cfg.min_lr / lr),
        grad_clip=cfg.grad_clip,
    )


def _train_tensors(setting: Setting, train) -> tuple:
    if setting.kind == "regression":
        return train.tokens, train.targets, train.loss_mask
    return train.inputs, train.targets


@torch.no_grad()
def token_accuracy(model, setting: Setting, inputs, targets, batch_size: int) -> tuple[float, float]:
    """(micro accuracy over non-ignored targets, mean cross-entropy there)."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for i in range(0, inputs.shape[0], batch_size):
        logits = predict(model, setting, inputs[i : i + batch_size]).float()
        tgt = targets[i : i + batch_size]
        keep = tgt != IGNORE_INDEX
        correct += int((logits.argmax(-1)[keep] == tgt[keep]).sum())
        total += int(keep.sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum"))
    model.train()
    return (correct / total, loss_sum / total) if total else (math.nan, math.nan)


def _trim_padding(inputs, targets, *rest):
    """Drop the trailing columns that are padding in every row (RegBench rows differ in length; the models are
    causal, so nothing before the cut changes)."""
    keep = max(1, int((inputs != PAD_ID).sum(1).max()))
    return (inputs[:, :keep], targets[:, :keep], *(t[:, :keep] for t in rest))


@torch.no_grad()
def pfa_metrics(model, setting: Setting, batch: RegBenchBatch, batch_size: int) -> dict[str, float]:
    """RegBench means over scored positions: ``acc`` (greedy token readable by the sequence's automaton),
    ``tv`` (total variation from its true next-token distribution), ``exact_acc`` (greedy == sampled target)
    and ``loss`` (cross-entropy on the sampled targets)."""
    model.eval()
    sums = dict(correct=0.0, exact=0.0, tv=0.0, count=0.0)
    loss_sum = 0.0
    for i in range(0, batch.inputs.shape[0], batch_size):
        rows = batch.subset(slice(i, i + batch_size))
        part = RegBenchBatch(*_trim_padding(rows.inputs, rows.targets, rows.states), rows.tables, rows.num_states)
        logits = predict(model, setting, part.inputs).float()
        for k, v in pfa_scores(logits, part.targets, part.states, part.tables).items():
            sums[k] += v
        keep = part.targets != IGNORE_INDEX
        loss_sum += float(torch.nn.functional.cross_entropy(logits[keep], part.targets[keep], reduction="sum"))
    model.train()
    n = sums["count"]
    if not n:
        return dict(acc=math.nan, tv=math.nan, exact_acc=math.nan, loss=math.nan)
    return dict(acc=sums["correct"] / n, tv=sums["tv"] / n, exact_acc=sums["exact"] / n, loss=loss_sum / n)


@torch.no_grad()
def regression_curve(model, setting: Setting, test, batch_size: int) -> torch.Tensor:
    """``[n]`` test MSE of the prediction of ``y_k`` from the first k pairs, k = 0 .. n-1."""
    model.eval()
    sq = []
    for i in range(0, test.tokens.shape[0], batch_size):
        pred = predict(model, setting, test.tokens[i : i + batch_size])[:, 0::2]
        sq.append((pred.double() - test.ys[i : i + batch_size].double()) ** 2)
    model.train()
    return torch.cat(sq).mean(0)


def run_cell(cfg: SynthConfig, cell: Cell, *, progress: bool = False) -> dict:
    """Train and evaluate ``cell``; a non-finite loss ends the run with ``status = "nonfinite"`` (NaN metrics)."""
    setting = cell.setting
    start, cpu_start = time.time(), time.process_time()
    train, test = load_data(setting, cfg.data_seed)
    tensors = _train_tensors(setting, train)
    n_train = tensors[0].shape[0]
    torch.manual_seed(cell.seed)
    model = build_model(cfg, setting, cell.mixer)
    gen = torch.Generator().manual_seed(cell.seed)
    epochs = math.ceil(setting.steps * setting.batch_size / n_train)
    stream = torch.cat([torch.randperm(n_train, generator=gen) for _ in range(epochs)])  # epoch-wise shuffles

    def next_batch(step: int):
        idx = stream[step * setting.batch_size : (step + 1) * setting.batch_size]
        batch = tuple(t[idx] for t in tensors)
        return _trim_padding(*batch) if setting.task == "regbench" else batch

    optim = optim_config(cfg, cell.lr, cell.weight_decay, setting.steps)
    record = dict(
        cell_id=cell.cell_id,
        task=setting.task,
        setting=setting.name,
        kind=setting.kind,
        mixer=cell.mixer,
        lr=cell.lr,
        weight_decay=cell.weight_decay,
        seed=cell.seed,
        steps=setting.steps,
        batch_size=setting.batch_size,
        num_train=n_train,
        num_test=setting.num_test,
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        **dict(setting.info),
    )
    status = "ok"
    try:
        result = fit_steps(
            model,
            next_batch,
            lambda m, b: loss_on(m, setting, b),
            optim,
            setting.steps,
            progress=progress,
            desc=cell.cell_id[:40],
        )
        record["final_train_loss"] = result.final_loss
    except NonFiniteLossError as err:
        status, record["error"] = "nonfinite", str(err)
        record["final_train_loss"] = math.nan
    record["train_seconds"] = time.time() - start
    if setting.kind == "regression":
        ridge = ridge_prediction_loss(test.xs, test.ys, bayes_optimal_ridge(setting.config))
        record["ridge_curve"] = [float(v) for v in ridge]
        record["ridge_last"] = float(ridge[-1])
        if status == "ok":
            curve = regression_curve(model, setting, test, cfg.eval_batch_size)
            record["mse_curve"] = [float(v) for v in curve]
            record["test_mse"] = float(curve.mean())
            record["test_mse_last"] = float(curve[-1])
        else:
            record.update(mse_curve=[], test_mse=math.nan, test_mse_last=math.nan)
    elif setting.task == "regbench":
        k = min(cfg.num_train_eval, n_train)
        if status == "ok":
            test_m = pfa_metrics(model, setting, test, cfg.eval_batch_size)
            train_m = pfa_metrics(model, setting, train.subset(slice(0, k)), cfg.eval_batch_size)
        else:
            test_m = train_m = dict(acc=math.nan, tv=math.nan, exact_acc=math.nan, loss=math.nan)
        ngram = ngram_scores(test, 3)  # reference point without training, same test set
        record.update(
            test_acc=test_m["acc"],
            test_tv=test_m["tv"],
            test_exact_acc=test_m["exact_acc"],
            test_loss=test_m["loss"],
            train_acc=train_m["acc"],
            train_tv=train_m["tv"],
            ngram_acc=ngram["acc"],
            ngram_tv=ngram["tv"],
        )
    else:
        if status == "ok":
            record["test_acc"], record["test_loss"] = token_accuracy(
                model, setting, test.inputs, test.targets, cfg.eval_batch_size
            )
            k = min(cfg.num_train_eval, n_train)
            record["train_acc"], _ = token_accuracy(model, setting, tensors[0][:k], tensors[1][:k], cfg.eval_batch_size)
        else:
            record.update(test_acc=math.nan, test_loss=math.nan, train_acc=math.nan)
    record["status"] = status
    record["seconds"] = time.time() - start
    record["cpu_seconds"] = time.process_time() - cpu_start  # this process's CPU time: the cost on an idle core
    return record


__all__ = ["Cell", "optim_config", "pfa_metrics", "regression_curve", "run_cell", "token_accuracy"]
