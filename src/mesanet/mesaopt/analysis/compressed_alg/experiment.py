"""The computation of the CompressedAlg experiment (no files): part (1) learned CompressedAlg-k against tuned
Chebyshev baselines and ridge (:func:`fit_ks`), parts (2) + (3) compression and interpolation of one trained model
(:func:`compress_model`), both gathered by :func:`measure`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ...data.dynamics import generate_lds
from ...models import SequenceModel
from ..compressed import (
    block_scalar_energy,
    compress_block_scalar,
    compressed_alg_prediction,
    prefix_gram_cross,
    ridge_prediction,
)
from ..seq_training import SeqTrainConfig, per_position_loss
from ..zoo import load_or_train, recipe
from .config import CompressedAlgConfig
from .learned import LearnedCompressedAlg, states_of_tokens, train_learned_compressed_alg
from .products import compress_products, interpolate_products, model_products, run_with_products
from .results import (
    CompressedAlgResult,
    HeadCompression,
    HeatmapPanel,
    InterpolationPoint,
    LearnedK,
    ModelCompression,
    checks,
)

__all__ = ["Experiment", "fit_ks", "compress_model", "measure"]

Predict = Callable[[Tensor], Tensor]  # constructed tokens [B, T, 3n] -> predictions [B, T, n]


class Experiment:
    """Shared pieces: the test curve of a predictor, lam tuning on validation sequences, the training settings."""

    def __init__(self, cfg: CompressedAlgConfig, progress: bool) -> None:
        self.cfg, self.progress = cfg, progress
        val_states = generate_lds(cfg.task, cfg.val_sequences, seed=cfg.val_seed).states.double()
        # one spectrum bound for all positions (what scalar weights can implement): 1.05 x the largest eigenvalue seen
        self.top_gram = float(torch.linalg.eigvalsh(prefix_gram_cross(val_states)[0])[..., -1].max())
        self.train_cfg = SeqTrainConfig(
            steps=cfg.train_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=0.0,
            warmup_steps=min(cfg.warmup_steps, cfg.train_steps - 1),
            seed=cfg.seed,
            tokens="constructed",
            task=cfg.task,
        )

    def curve(self, predict: Predict, *, validation: bool = False) -> Tensor:
        """Per-position loss of ``predict`` on the test (or validation) sequences."""
        cfg = self.cfg
        seed, num = (cfg.val_seed, cfg.val_sequences) if validation else (cfg.eval_seed, cfg.eval_sequences)
        return per_position_loss(predict, cfg.task, num_sequences=num, seed=seed, tokens="constructed")

    def tuned(self, make: Callable[[float], Predict]) -> tuple[float, Tensor]:
        """``make(lam) -> predict``: the lam of ``ridge_lams`` with the lowest validation loss and its test curve."""
        val = {lam: float(self.curve(make(lam), validation=True).mean()) for lam in self.cfg.ridge_lams}
        best = min(val, key=val.get)
        with torch.no_grad():
            return best, self.curve(make(best))

    def per_position(self, k: int) -> Callable[[float], Predict]:
        """Chebyshev with exact per-position spectrum bounds (the oracle baseline)."""
        return lambda lam: lambda tok: compressed_alg_prediction(states_of_tokens(tok).double(), lam, k)

    def global_bound(self, k: int) -> Callable[[float], Predict]:
        """Chebyshev on one bound ``[1/lam, 1.05 max_t lambda_max(G_t) + 1/lam]`` for every position."""

        def make(lam: float) -> Predict:
            alg = LearnedCompressedAlg(k).set_chebyshev(1.05 * self.top_gram + 1.0 / lam, lam=lam)
            return lambda tok: alg(states_of_tokens(tok).double())

        return make

    def load_model(self, name: str) -> SequenceModel:
        cfg = self.cfg
        if cfg.zoo_steps is None:
            model = load_or_train(name, Path(cfg.zoo_root), progress=self.progress)
            if recipe(name)[1].task != cfg.task:
                raise ValueError(f"zoo model {name!r} was trained on another task than config.task")
            return model
        model_cfg, train_cfg = recipe(name)
        train_cfg = replace(
            train_cfg,
            steps=cfg.zoo_steps,
            batch_size=min(train_cfg.batch_size, cfg.batch_size),
            warmup_steps=min(train_cfg.warmup_steps, max(1, cfg.zoo_steps // 5)),
            task=cfg.task,
        )
        return load_or_train(
            f"{name}-s{cfg.zoo_steps}", Path(cfg.zoo_root), progress=self.progress, configs=(model_cfg, train_cfg)
        )


def fit_ks(exp: Experiment) -> CompressedAlgResult:
    """Part (1): ridge optimum, per-position Chebyshev at ``ks + fixed_extra_ks``, and at every ``k`` of ``ks`` the
    global-bound Chebyshev baseline and the learned CompressedAlg-k started from it (lam tuned per k)."""
    cfg = exp.cfg
    lam_star, ridge_curve = exp.tuned(lambda lam: lambda tok: ridge_prediction(states_of_tokens(tok).double(), lam))
    ridge_loss = float(ridge_curve.mean())
    result = CompressedAlgResult(
        ks=[], fixed_chebyshev={}, fixed_lam={}, ridge_loss=ridge_loss, ridge_lam=lam_star, curves={"ridge": ridge_curve}
    )
    for k in sorted(set(cfg.ks) | set(cfg.fixed_extra_ks)):
        result.fixed_lam[k], curve = exp.tuned(exp.per_position(k))
        result.fixed_chebyshev[k] = float(curve.mean())
    for k in cfg.ks:
        global_lam, global_curve = exp.tuned(exp.global_bound(k))
        alg, losses = train_learned_compressed_alg(
            k, exp.train_cfg, lam=global_lam, init_lam_max=1.05 * exp.top_gram + 1.0 / global_lam, progress=exp.progress
        )
        with torch.no_grad():
            curve = exp.curve(lambda tok, alg=alg: alg(states_of_tokens(tok).double()))
        result.curves[f"learned-{k}"] = curve
        result.ks.append(
            LearnedK(
                k=k,
                learned_loss=float(curve.mean()),
                chebyshev_global_loss=float(global_curve.mean()),
                chebyshev_global_lam=global_lam,
                fixed_chebyshev_loss=result.fixed_chebyshev[k],
                fixed_chebyshev_lam=result.fixed_lam[k],
                ridge_loss=ridge_loss,
                ridge_lam=lam_star,
                learned_lam=float(alg.lam.detach()),
                learned_eta=float(alg.eta.detach()),
                learned_alphas=tuple(float(a) for a in alg.alphas.detach()),
                learned_betas=tuple(float(b) for b in alg.beta.detach()),
                train_final_loss=sum(losses[-10:]) / len(losses[-10:]),
            )
        )
    return result


def _heads(name: str, trained, compressed, n: int) -> tuple[list[HeadCompression], list[HeatmapPanel], list]:
    """Per head: its row, and ``(||kq||^2, ||pv||^2, kq energy, pv energy)``; per layer: the heatmap panel."""
    heads, panels, energies = [], [], []
    for layer, ((kq, pv), (kq_c, pv_c)) in enumerate(zip(trained, compressed)):
        e_kq, e_pv = block_scalar_energy(kq.double(), n), block_scalar_energy(pv.double(), n)
        for h in range(kq.shape[0]):
            heads.append(
                HeadCompression(
                    model=name,
                    layer=layer,
                    head=h,
                    kq_norm=float(kq[h].norm()),
                    pv_norm=float(pv[h].norm()),
                    kq_energy_frac=float(e_kq[h]),
                    pv_energy_frac=float(e_pv[h]),
                    kq_scalars=tuple(float(v) for v in compress_block_scalar(kq[h], n).flatten()),
                    pv_scalars=tuple(float(v) for v in compress_block_scalar(pv[h], n).flatten()),
                )
            )
            energies.append((float(kq[h].norm() ** 2), float(pv[h].norm() ** 2), float(e_kq[h]), float(e_pv[h])))
        top = int(torch.argmax(kq.flatten(1).norm(dim=1) * pv.flatten(1).norm(dim=1)))
        panels.append(HeatmapPanel(layer, top, kq[top], kq_c[top], pv[top], pv_c[top]))
    return heads, panels, energies


def compress_model(exp: Experiment, name: str, result: CompressedAlgResult) -> None:
    """Parts (2) + (3) for the zoo model ``name``: append its rows to ``result`` (which holds part (1))."""
    cfg, n = exp.cfg, exp.cfg.task.state_dim
    model = exp.load_model(name)
    if model.config.input_dim != 3 * n or model.config.embed_dim is not None:
        raise ValueError(f"model {name!r}: expected constructed tokens of width {3 * n} without embeddings")
    k = model.num_layers
    trained = model_products(model)
    compressed = compress_products(trained, n)
    with torch.no_grad():
        trained_loss = float(exp.curve(model).mean())
        interp = {}
        for w in cfg.weights:
            prods = interpolate_products(trained, compressed, w)
            interp[w] = float(exp.curve(lambda tok, p=prods: run_with_products(model, tok, p)).mean())
            result.interpolation.append(InterpolationPoint(name, w, interp[w]))
        compressed_loss = (
            interp[1.0] if 1.0 in interp else float(exp.curve(lambda tok: run_with_products(model, tok, compressed)).mean())
        )
        half = (
            interp[0.5]
            if 0.5 in interp
            else float(
                exp.curve(lambda tok: run_with_products(model, tok, interpolate_products(trained, compressed, 0.5))).mean()
            )
        )
        if f"learned-{k}" in result.curves:
            alg_k = float(result.curves[f"learned-{k}"].mean())
        else:
            alg, _ = train_learned_compressed_alg(k, exp.train_cfg, lam=1.0, progress=exp.progress)
            alg_k = float(exp.curve(lambda tok: alg(states_of_tokens(tok).double())).mean())
        fixed_k = result.fixed_chebyshev.get(k)
        if fixed_k is None:
            fixed_k = float(exp.tuned(exp.per_position(k))[1].mean())
    heads, panels, energies = _heads(name, trained, compressed, n)
    result.heads += heads
    result.heatmaps[name] = panels
    learned_loss = {r.k: r.learned_loss for r in result.ks}
    result.models.append(
        ModelCompression(
            model=name,
            k=k,
            heads=model.config.num_heads,
            trained_loss=trained_loss,
            compressed_loss=compressed_loss,
            interp_half_loss=half,
            compressed_alg_learned_loss=alg_k,
            compressed_alg_fixed_loss=fixed_k,
            ridge_loss=result.ridge_loss,
            closest_learned_k=min(learned_loss, key=lambda j: abs(learned_loss[j] - trained_loss)),
            kq_energy_frac_total=sum(e[0] * e[2] for e in energies) / sum(e[0] for e in energies),
            pv_energy_frac_total=sum(e[1] * e[3] for e in energies) / sum(e[1] for e in energies),
            kq_energy_frac_mean=sum(e[2] for e in energies) / len(energies),
            pv_energy_frac_mean=sum(e[3] for e in energies) / len(energies),
            kq_energy_frac_min=min(e[2] for e in energies),
            pv_energy_frac_min=min(e[3] for e in energies),
        )
    )


def measure(cfg: CompressedAlgConfig, *, progress: bool = True) -> CompressedAlgResult:
    """Parts (1)-(3) and the checks (module docstring of the package)."""
    exp = Experiment(cfg, progress)
    result = fit_ks(exp)
    for name in cfg.models:
        compress_model(exp, name, result)
    result.checks = checks(cfg, result)
    return result
