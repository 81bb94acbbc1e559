"""Few-shot in-context regression with models trained on linear dynamics ("Uncovering mesa-optimization algorithms in Transformers", Fig. 8 / 18).

Trained autoregressive zoo models that read raw (unconstructed) tokens are prompted with regression data
``[x_1, y_1, x_2, y_2, ...]`` (``W*`` Haar-orthogonal, ``y_i = W* x_i``; :mod:`mesanet.mesaopt.data.fewshot`) and the
prediction at every ``x_i`` token is scored, ``L_i = 1/2 E ||y_i - f(x_i; pairs < i)||^2`` (sum over dims).
Variants per model:

* ``plain``:  the model as it is, ``T = 2N``;
* ``eos``:    one learned EOS token ``[n]`` (init ``N(0, I)``) in ``[x_1, y_1, EOS, x_2, ...]``, ``T = 3N``,
  optimised by Adam on the mean ``L_i`` with the model frozen;
* ``prefix``: ``P`` learned prefix tokens ``[P, n]`` plus the EOS token, tuned together on the pairs after the
  prefix (eq. 69; the prefix slots carry no target), ``T = P + 3N``.

``N`` is the largest that fits the model's training length (the positional table ends there). References
on the same pairs: plain LSQ on ``{(x_j, y_j)}_{j<i}`` and the token-binding control on
``{(x_j, y_j)} U {(y_j, x_{j+1})}`` (ridge-regularised: the min-norm control has an interpolation spike at
``2(i - 1) = n``), and the zero predictor ``1/2 E ||y||^2``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from mesanet.utils.config import to_dict
from mesanet.utils.validation import is_int, is_real

from ..data.fewshot import FewShotBatch, FewShotConfig, fewshot_lsq_predictions, generate_fewshot
from ..models import SequenceModel
from . import zoo
from .fewshot_prompt import PromptTokens, predict_with_prompt, tune_prompt
from .fewshot_report import LSQ_NAMES, VARIANTS, FewShotResult, TuneInfo, plot_fewshot, summarise_fewshot
from .reporting import write_csv

__all__ = [
    "VARIANTS",
    "FewShotRepurposeConfig",
    "PromptTokens",
    "fewshot_config_for",
    "predict_with_prompt",
    "tune_prompt",
    "evaluate_variant",
    "lsq_references",
    "FewShotResult",
    "TuneInfo",
    "run_fewshot",
    "main",
]

DEFAULT_OUT = Path("runs/mesaopt/fewshot")


@dataclass
class FewShotRepurposeConfig:
    """Zoo ``models`` (unconstructed-token recipes), prompt distribution, prompt-tuning budget (Adam, ``tune_steps``
    x ``tune_batch``; the paper: 5000 x 256), evaluation size and the LSQ ridge. ``long_train_len > 0`` adds a
    ``softmax-2`` copy trained on LDS sequences of that length (a zoo-compatible recipe via ``load_or_train``)."""

    models: list[str] = field(default_factory=lambda: ["softmax-2", "hybrid-softmax-mesa"])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    zoo_root: str = str(zoo.DEFAULT_ROOT)
    x_dist: str = "uniform"
    x_range: float = 1.0
    noise_std: float = 0.0
    prefix_len: int = 5
    tune_steps: int = 200
    tune_batch: int = 64
    tune_lr: float = 0.02
    eval_batch: int = 1024
    ridge: float = 0.1
    seed: int = 0
    long_train_len: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.models, list) or not self.models or not all(isinstance(m, str) for m in self.models):
            raise ValueError(f"models: expected a non-empty list of zoo names, got {self.models!r}")
        bad = [m for m in self.models if m not in zoo.ZOO or zoo.ZOO[m][1].tokens != "unconstructed"]
        if bad:
            ok = sorted(m for m, (_, t) in zoo.ZOO.items() if t.tokens == "unconstructed")
            raise ValueError(f"models: expected unconstructed-token zoo recipes from {ok}, got {bad}")
        if not isinstance(self.variants, list) or not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"variants: expected a non-empty list from {VARIANTS}, got {self.variants!r}")
        for name, minimum in (
            ("prefix_len", 1),
            ("tune_steps", 0),
            ("tune_batch", 1),
            ("eval_batch", 2),
            ("seed", 0),
            ("long_train_len", 0),
        ):
            v = getattr(self, name)
            if not is_int(v) or v < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
        for name in ("tune_lr", "ridge", "x_range", "noise_std"):
            v = getattr(self, name)
            if not is_real(v, finite=False) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite float >= 0, got {v!r}")
        if self.tune_lr <= 0 or self.x_range <= 0:
            raise ValueError(f"tune_lr, x_range: expected > 0, got {self.tune_lr!r}, {self.x_range!r}")
        # x_dist is validated by FewShotConfig
        FewShotConfig(x_dist=self.x_dist, x_range=float(self.x_range), noise_std=float(self.noise_std))


def fewshot_config_for(
    variant: str,
    dim: int,
    max_len: int,
    prefix_len: int,
    *,
    x_dist: str = "uniform",
    x_range: float = 1.0,
    noise_std: float = 0.0,
) -> FewShotConfig:
    """The prompt layout of ``variant`` with the most pairs that fit ``max_len`` tokens."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    eos = variant != "plain"
    p = prefix_len if variant == "prefix" else 0
    pairs = (max_len - p) // (3 if eos else 2)
    if pairs < 1:
        raise ValueError(f"max_len = {max_len}: expected room for at least one pair of variant {variant!r}")
    return FewShotConfig(
        dim=dim, num_pairs=pairs, x_dist=x_dist, x_range=float(x_range), noise_std=float(noise_std), eos=eos, prefix_len=p
    )


@torch.no_grad()
def evaluate_variant(
    model: Callable[[Tensor], Tensor], batch: FewShotBatch, prompt: PromptTokens | None = None, chunk: int = 256
) -> Tensor:
    """``[B, N]`` per-example pair losses ``1/2 ||y_i - f(x_i)||^2`` (float64), ``chunk`` prompts at a time."""
    per_example = ("x", "y", "w_star", "tokens", "targets", "loss_mask", "eos_mask", "prefix_mask")
    out = []
    for s in range(0, batch.tokens.shape[0], chunk):
        sub = replace(batch, **{f: getattr(batch, f)[s : s + chunk] for f in per_example})
        out.append(sub.pair_losses(predict_with_prompt(model, sub, prompt)).double())
    return torch.cat(out, dim=0)


def lsq_references(x: Tensor, y: Tensor, ridge: float) -> dict[str, Tensor]:
    """``x, y [B, M, n]`` -> per-example pair losses ``[B, M]`` of the plain and the token-binding LSQ controls."""
    out = {}
    for name, mode in zip(LSQ_NAMES, ("plain", "autoregressive")):
        pred = fewshot_lsq_predictions(x, y, mode=mode, ridge=ridge)
        out[name] = 0.5 * (y.double() - pred).pow(2).sum(-1)
    return out


# ----------------------------------------------------------------------------------------------- run


def _stats(per_example: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mean = per_example.mean(0)
    return mean, per_example.median(0).values, per_example.std(0) / math.sqrt(per_example.shape[0])


def _load_models(cfg: FewShotRepurposeConfig, progress: bool) -> dict[str, tuple[SequenceModel, int]]:
    """name -> (model, training length)."""
    root = Path(cfg.zoo_root)
    models = {}
    for name in cfg.models:
        _, train_cfg = zoo.recipe(name)
        models[name] = (zoo.load_or_train(name, root, progress=progress), train_cfg.task.seq_len)
    if cfg.long_train_len:
        m_cfg, t_cfg = zoo.recipe("softmax-2")
        length = cfg.long_train_len
        m_cfg = replace(m_cfg, max_len=length)
        t_cfg = replace(t_cfg, task=replace(t_cfg.task, seq_len=length))
        name = f"softmax-2-T{length}"
        models[name] = (zoo.load_or_train(name, root, progress=progress, configs=(m_cfg, t_cfg)), length)
    return models


def run_fewshot(
    config: FewShotRepurposeConfig,
    out_dir: Path | str = DEFAULT_OUT,
    *,
    progress: bool = True,
    models: dict[str, tuple[nn.Module, int]] | None = None,
) -> dict:
    """Run the analysis; writes ``fewshot.csv``, ``fewshot_summary.md``, ``fewshot_loss.png``,
    ``fewshot_tuning.png`` and the resolved ``config.yaml`` to ``out_dir``. ``models`` (name -> (model,
    training length)) replaces the zoo models (tests). Returns the metrics and the file paths."""
    import yaml

    if not isinstance(config, FewShotRepurposeConfig):
        raise ValueError(f"config: expected a FewShotRepurposeConfig, got {type(config).__name__}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    if models is None:
        models = _load_models(config, progress)
    rows: list[dict] = []
    curves: dict = {}
    tuning: dict[str, TuneInfo] = {}
    lengths = {name: length for name, (_, length) in models.items()}
    dims = {model.config.input_dim for model, _ in models.values()}
    if len(dims) != 1:
        raise ValueError(f"models: expected one token width (model.config.input_dim), got {sorted(dims)}")
    dim = dims.pop()
    plain_pairs = max(length // 2 for length in lengths.values())
    for mname, (model, length) in models.items():
        model.eval()
        for variant in config.variants:
            fs_cfg = fewshot_config_for(
                variant, dim, length, config.prefix_len, x_dist=config.x_dist, x_range=config.x_range, noise_std=config.noise_std
            )
            prompt = None
            if variant != "plain":
                prompt = PromptTokens(dim, fs_cfg.prefix_len, seed=config.seed)
                t0 = time.perf_counter()
                losses = tune_prompt(
                    model,
                    fs_cfg,
                    prompt,
                    steps=config.tune_steps,
                    batch_size=config.tune_batch,
                    lr=config.tune_lr,
                    seed=config.seed,
                    progress=progress,
                    desc=f"{mname}/{variant}",
                )
                if losses:
                    tuning[f"{mname}/{variant}"] = TuneInfo(
                        losses=losses,
                        start=sum(losses[:20]) / len(losses[:20]),
                        end=sum(losses[-20:]) / len(losses[-20:]),
                        seconds=time.perf_counter() - t0,
                    )
            batch = generate_fewshot(fs_cfg, config.eval_batch, seed=config.seed)
            per_ex = evaluate_variant(model, batch, prompt)
            mean, median, sem = _stats(per_ex)
            curves[(mname, variant)] = mean
            rows += [
                {
                    "model": mname,
                    "variant": variant,
                    "i": i + 1,
                    "loss_mean": float(mean[i]),
                    "loss_median": float(median[i]),
                    "loss_sem": float(sem[i]),
                }
                for i in range(mean.numel())
            ]
    # LSQ controls on plain prompts with as many pairs as the longest plain prompt
    ref_cfg = FewShotConfig(
        dim=dim, num_pairs=plain_pairs, x_dist=config.x_dist, x_range=float(config.x_range), noise_std=float(config.noise_std)
    )
    ref = generate_fewshot(ref_cfg, config.eval_batch, seed=config.seed, dtype=torch.float64)
    lsq = {}
    for name, per_ex in lsq_references(ref.flat_x, ref.flat_y, float(config.ridge)).items():
        mean, median, sem = _stats(per_ex)
        lsq[name] = mean
        rows += [
            {
                "model": "lsq",
                "variant": name,
                "i": i + 1,
                "loss_mean": float(mean[i]),
                "loss_median": float(median[i]),
                "loss_sem": float(sem[i]),
            }
            for i in range(mean.numel())
        ]
    zero_loss = float(0.5 * ref.flat_y.pow(2).sum(-1).mean())

    result = FewShotResult(dim=dim, lengths=lengths, rows=rows, curves=curves, lsq=lsq, zero_loss=zero_loss, tuning=tuning)
    csv_path = out_dir / "fewshot.csv"
    write_csv(csv_path, rows)
    figures = plot_fewshot(result, out_dir)
    result.seconds = time.perf_counter() - start
    text, metrics = summarise_fewshot(config, result)
    md_path = out_dir / "fewshot_summary.md"
    md_path.write_text(text)
    return {
        "metrics": metrics,
        "csv": csv_path,
        "summary": md_path,
        "figures": figures,
        "curves": {f"{m}/{v}": c.tolist() for (m, v), c in curves.items()},
        "lsq": {k: v.tolist() for k, v in lsq.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt fewshot [--out DIR] [--quick] [--models ...] [--tune-steps N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt fewshot", description="Few-shot regression repurposing of LDS-trained models (B.4)."
    )
    d = FewShotRepurposeConfig()
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run (untrained tiny models)")
    parser.add_argument("--models", nargs="+", default=d.models)
    parser.add_argument("--variants", nargs="+", default=d.variants, choices=VARIANTS)
    parser.add_argument("--zoo-root", default=d.zoo_root)
    parser.add_argument("--x-dist", default=d.x_dist, choices=("uniform", "normal"))
    parser.add_argument("--prefix-len", type=int, default=d.prefix_len)
    parser.add_argument("--tune-steps", type=int, default=d.tune_steps)
    parser.add_argument("--tune-batch", type=int, default=d.tune_batch)
    parser.add_argument("--tune-lr", type=float, default=d.tune_lr)
    parser.add_argument("--eval-batch", type=int, default=d.eval_batch)
    parser.add_argument("--ridge", type=float, default=d.ridge)
    parser.add_argument("--long-train-len", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    cfg = FewShotRepurposeConfig(
        models=list(args.models),
        variants=list(args.variants),
        zoo_root=str(args.zoo_root),
        x_dist=args.x_dist,
        prefix_len=args.prefix_len,
        tune_steps=args.tune_steps,
        tune_batch=args.tune_batch,
        tune_lr=args.tune_lr,
        eval_batch=args.eval_batch,
        ridge=args.ridge,
        seed=args.seed,
        long_train_len=args.long_train_len,
    )
    models = None
    if args.quick:
        cfg = replace(cfg, tune_steps=min(cfg.tune_steps, 5), tune_batch=8, eval_batch=32, long_train_len=0)
        models = _quick_models(cfg)
    result = run_fewshot(cfg, args.out, progress=not args.no_progress, models=models)
    print(result["summary"].read_text())
    print(f"wrote {result['csv']}, {result['summary']}, " + ", ".join(str(p) for p in result["figures"]))
    return 0


def _quick_models(cfg: FewShotRepurposeConfig) -> dict[str, tuple[nn.Module, int]]:
    """Untrained (seeded) models of the zoo architectures with a short positional table (smoke runs only)."""
    from .seq_training import build_model

    out = {}
    for name in cfg.models:
        m_cfg, _ = zoo.recipe(name)
        m_cfg = replace(m_cfg, embed_dim=8, num_heads=2, key_size=4, max_len=16)
        out[name] = (build_model(m_cfg, seed=cfg.seed).eval(), 16)
    return out
