"""Analysis "per-step-loss": per-position test loss of the zoo models vs optimal ridge least squares (paper B).

Every model in ``config.models`` (zoo entries, trained or reloaded through :func:`~mesanet.mesaopt.analysis.zoo.load_or_train`)
is evaluated on the same fresh test sequences of the fully observed LDS (n_s = 10, T = 50). References:

* ridge: :func:`~mesanet.mesaopt.analysis.compressed.ridge_prediction` (``C_t (S S^T + I/lam)^{-1} s_t`` on the prefix
  pairs), one ``lam`` for all positions tuned on training sequences (the first model's recipe batches) by a
  log-grid followed by a golden-section refinement in ``log lam``;
* oracle: the true ``W*`` (prediction ``clip(W* s_t)``), i.e. the noise floor ``~ 1/2 n sigma^2``.

Outputs (``out_dir``): ``per_step_loss.csv`` (all curves, one column each), ``per_step_loss.png`` (loss vs t,
log y), ``summary.csv`` / ``summary.md`` (loss at the last position ``t = T-1`` predicting ``s_T``, i.e. the issue's
"t = 50", and averaged over positions; target checks: a single mesa layer within 2 % of ridge at the last
position; among 2-layer models softmax -> mesa is best; for a single-layer ``mesa_model``, diagnostics of
:mod:`.ridge_construction`: the layer set to the ridge construction, the trained layer's ridge-equivalent
``lam``) and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mesanet.utils.config import save as save_config
from mesanet.utils.validation import check_int

from ..data.dynamics import LDSConfig, generate_lds
from ..models import SequenceModel
from .compressed import ridge_loss
from .reporting import write_csv
from .ridge_construction import log_golden_search, ridge_equivalent_lambda, set_ridge_construction
from .seq_training import build_model, per_position_loss, training_states
from .zoo import ZOO, load_for_analysis, recipe

__all__ = [
    "PerStepLossConfig",
    "DEFAULT_MODELS",
    "ridge_loss",
    "tune_ridge_lambda",
    "oracle_per_step_loss",
    "run_per_step_loss",
    "main",
]

DEFAULT_OUT = Path("runs/mesaopt/per-step-loss")
DEFAULT_MODELS = [
    "linear-1",
    "linear-2",
    "linear-4",
    "softmax-2",
    "hybrid-softmax-linear",
    "hybrid-softmax-mesa",
    "mesa-1",
    "mesa-forget-1",
    "sm-mesa-1",
    "full-mesa-2",
]


@dataclass
class PerStepLossConfig:
    """``models``: zoo entries to evaluate (unknown names -> ``ValueError`` listing the valid ones).
    ``test_sequences`` fresh sequences from ``test_seed``; ``tune_sequences`` training sequences for the ridge
    ``lam`` (searched in ``[10^lam_log10_min, 10^lam_log10_max]``; regulariser ``I/lam``).
    ``mesa_model`` / ``hybrid_model``: the models the two target checks are about (``target_tol``: 2 %).
    ``zoo_root``: None = ``runs/mesaopt/models``. ``train_steps``: if set, train every recipe for only this many
    steps into ``<out_dir>/models`` (smoke runs)."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    test_sequences: int = 4096
    test_seed: int = 1
    tune_sequences: int = 2048
    lam_log10_min: float = -2.0
    lam_log10_max: float = 5.0
    mesa_model: str = "mesa-1"
    hybrid_model: str = "hybrid-softmax-mesa"
    target_tol: float = 0.02
    zoo_root: str | None = None
    train_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.models, tuple):
            self.models = list(self.models)
        if not isinstance(self.models, list) or not self.models:
            raise ValueError(f"PerStepLossConfig.models: expected a non-empty list of zoo names, got {self.models!r}")
        missing = [m for m in self.models if m not in ZOO]
        if missing:
            raise ValueError(f"PerStepLossConfig.models: {missing} not in the zoo; valid names: {sorted(ZOO)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"PerStepLossConfig.models: expected distinct names, got {self.models}")
        for name in ("mesa_model", "hybrid_model"):
            if getattr(self, name) not in ZOO:
                raise ValueError(f"PerStepLossConfig.{name}: {getattr(self, name)!r} not in the zoo; valid names: {sorted(ZOO)}")
        for name in ("test_sequences", "tune_sequences"):
            v = getattr(self, name)
            check_int(f"PerStepLossConfig.{name}", v, minimum=1)
        check_int("PerStepLossConfig.test_seed", self.test_seed, minimum=0)
        if not (
            math.isfinite(self.lam_log10_min) and math.isfinite(self.lam_log10_max) and self.lam_log10_min < self.lam_log10_max
        ):
            raise ValueError(
                f"PerStepLossConfig.lam_log10_min/max: expected finite min < max, "
                f"got {self.lam_log10_min!r}, {self.lam_log10_max!r}"
            )
        if not (math.isfinite(self.target_tol) and self.target_tol > 0):
            raise ValueError(f"PerStepLossConfig.target_tol: expected a float > 0, got {self.target_tol!r}")
        check_int("PerStepLossConfig.train_steps", self.train_steps, minimum=1, optional=True)
        tasks = {name: recipe(name)[1].task for name in self.models}
        if len(set(tasks.values())) != 1:
            raise ValueError(f"PerStepLossConfig.models: expected recipes on one task, got {tasks}")

    @property
    def task(self) -> LDSConfig:
        return recipe(self.models[0])[1].task


# ----------------------------------------------------------------------------------------- references


def tune_ridge_lambda(
    states: Tensor, log10_min: float = -2.0, log10_max: float = 5.0, grid: int = 15, iters: int = 25
) -> tuple[float, float]:
    """``(lam, loss)``: the ``lam`` minimising the position-averaged ridge loss on ``states [B, T, n]``, from a
    log-spaced grid of ``grid`` points refined by golden section in ``log10 lam`` between the best point's
    neighbours (:func:`~.ridge_construction.log_golden_search`)."""
    if states.dim() != 3 or states.shape[1] < 2:
        raise ValueError(f"states: expected [B, T >= 2, n], got {tuple(states.shape)}")
    s = states.double()
    x, loss = log_golden_search(lambda x: float(ridge_loss(s, 10.0**x).mean()), log10_min, log10_max, grid, iters)
    return 10.0**x, loss


def oracle_per_step_loss(task: LDSConfig, num_sequences: int, seed: int) -> Tensor:
    """Per-position loss ``[T - 1]`` of the true-``W*`` predictor ``clip(W* s_t)`` on the sequences
    ``generate_lds(task, num_sequences, seed)`` (fully observed linear kinds only)."""
    if task.kind not in ("linear", "fixed", "contracting"):
        raise ValueError(f"oracle_per_step_loss: expected a fully observed linear task kind, got {task.kind!r}")
    data = generate_lds(task, num_sequences, seed=seed, dtype=torch.float64)
    s = data.states
    pred = torch.einsum("bij,btj->bti", data.w_star, s[:, :-1])
    clip = task.effective_clip
    if clip is not None:
        pred = pred.clamp(-clip, clip)
    return 0.5 * (pred - s[:, 1:]).square().sum(-1).mean(0)


# ----------------------------------------------------------------------------------------- run


def _single_layer_diagnostics(config: PerStepLossConfig, curves: dict, states: Tensor, ridge: Tensor, lam: float) -> dict:
    """For ``config.mesa_model`` (one mesa / Sherman-Morrison layer on constructed tokens): the last-position ratio
    of the same layer set to the ridge construction (:func:`set_ridge_construction`, tuned ``lam``), and the
    trained model's ridge-equivalent ``lam`` with ridge's own last-position ratio at it. ``{}`` otherwise."""
    name = config.mesa_model
    model_cfg, train_cfg = recipe(name)
    if name not in curves or model_cfg.layers not in (["mesa"], ["sherman_morrison"]) or model_cfg.embed_dim is not None:
        return {}
    built = set_ridge_construction(build_model(model_cfg), lam)
    with torch.no_grad():
        constructed = per_position_loss(
            built, config.task, num_sequences=config.test_sequences, seed=config.test_seed, tokens=train_cfg.tokens
        )
    lam_eq, gap = ridge_equivalent_lambda(curves[name], states, config.lam_log10_min, config.lam_log10_max)
    out = {
        "construction_ratio_last": float(constructed[-1] / ridge[-1]),
        "construction_ratio_mean": float(constructed.mean() / ridge.mean()),
        "ridge_equivalent_lam": lam_eq,
        "ridge_equivalent_rms_log_gap": gap,
        "ridge_at_equivalent_lam_ratio_last": float(ridge_loss(states, lam_eq)[-1] / ridge[-1]),
    }
    c_last, c_mean, r_eq = (
        out["construction_ratio_last"],
        out["construction_ratio_mean"],
        out["ridge_at_equivalent_lam_ratio_last"],
    )
    out["text"] = (
        f"## Single-layer diagnostics (`{name}`)\n\n"
        f"- The same layer set to the ridge construction (key = s_(t-1) slot, query = value = s_t slot, lam = {lam:.4g}):\n"
        f"  last / ridge = {c_last:.4f}, mean / ridge = {c_mean:.4f}. If these are 1, the layer and its solver reach\n"
        "  ridge and a trained gap is one of optimisation.\n"
        f"- The trained layer's curve is closest to ridge with **lam = {lam_eq:.3g}** (rms log gap {gap:.3f});\n"
        f"  ridge itself at that lam: last / tuned ridge = {r_eq:.4f}.\n"
    )
    return out


def _model(name: str, cfg: PerStepLossConfig, out_dir: Path, progress: bool) -> SequenceModel:
    return load_for_analysis(name, cfg.zoo_root, cfg.train_steps, out_dir, progress=progress)


def _tuning_states(cfg: PerStepLossConfig) -> Tensor:
    return training_states(recipe(cfg.models[0])[1], cfg.tune_sequences)


def _plot(path: Path, curves: dict[str, Tensor], references: dict[str, Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab10")
    for i, (name, curve) in enumerate(curves.items()):
        t = range(1, len(curve) + 1)
        ax.plot(t, curve.numpy(), color=cmap(i % 10), linestyle="-" if i < 10 else "--", linewidth=1.4, label=name)
    for (name, curve), style in zip(references.items(), ["k--", "k:"]):
        ax.plot(range(1, len(curve) + 1), curve.numpy(), style, linewidth=1.8, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("t (tokens seen; predicting s_{t+1})")
    ax.set_ylabel("test loss 1/2 ||pred - s_{t+1}||^2")
    ax.set_title("per-position test loss, fully observed LDS (n_s = 10, T = 50)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_per_step_loss(config: PerStepLossConfig, out_dir: Path = DEFAULT_OUT, *, progress: bool = True) -> dict:
    """Run the analysis (see the module docstring); returns the summary rows and target checks."""
    if not isinstance(config, PerStepLossConfig):
        raise ValueError(f"config: expected a PerStepLossConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    task = config.task

    lam, tune_loss = tune_ridge_lambda(_tuning_states(config), config.lam_log10_min, config.lam_log10_max)
    test_states = generate_lds(task, config.test_sequences, seed=config.test_seed, dtype=torch.float64).states
    ridge = ridge_loss(test_states, lam)
    oracle = oracle_per_step_loss(task, config.test_sequences, config.test_seed)

    curves: dict[str, Tensor] = {}
    layers: dict[str, list[str]] = {}
    for name in config.models:
        model = _model(name, config, out_dir, progress)
        _, train_cfg = recipe(name)
        with torch.no_grad():
            curves[name] = per_position_loss(
                model, task, num_sequences=config.test_sequences, seed=config.test_seed, tokens=train_cfg.tokens
            )
        layers[name] = list(model.config.layers)

    rows = []
    for name, curve in curves.items():
        rows.append(
            {
                "model": name,
                "layers": "+".join(layers[name]),
                "tokens": recipe(name)[1].tokens,
                "loss_last": float(curve[-1]),
                "loss_mean": float(curve.mean()),
                "ratio_ridge_last": float(curve[-1] / ridge[-1]),
                "ratio_ridge_mean": float(curve.mean() / ridge.mean()),
            }
        )
    for name, curve in (("ridge (tuned lam)", ridge), ("oracle W*", oracle)):
        rows.append(
            {
                "model": name,
                "layers": "-",
                "tokens": "-",
                "loss_last": float(curve[-1]),
                "loss_mean": float(curve.mean()),
                "ratio_ridge_last": float(curve[-1] / ridge[-1]),
                "ratio_ridge_mean": float(curve.mean() / ridge.mean()),
            }
        )

    # target 1: a single mesa layer within target_tol of ridge at the last position
    checks = {}
    if config.mesa_model in curves:
        r = float(curves[config.mesa_model][-1] / ridge[-1])
        checks["mesa_within_tol_of_ridge_last"] = {
            "pass": r <= 1.0 + config.target_tol,
            "value": r,
            "text": f"`{config.mesa_model}` loss at the last position / ridge = {r:.4f} (target <= {1 + config.target_tol:g})",
        }
    diagnostics = _single_layer_diagnostics(config, curves, test_states, ridge, lam)
    two_layer = [n for n in curves if len(layers[n]) == 2]
    if config.hybrid_model in two_layer and len(two_layer) > 1:
        rank_mean = sorted(two_layer, key=lambda n: float(curves[n].mean()))
        rank_last = sorted(two_layer, key=lambda n: float(curves[n][-1]))
        checks["hybrid_best_two_layer"] = {
            "pass": rank_mean[0] == config.hybrid_model,
            "value": rank_mean,
            "text": "2-layer models by mean loss: "
            + " < ".join(f"`{n}` ({float(curves[n].mean()):.4g})" for n in rank_mean)
            + "; by loss at the last position: "
            + " < ".join(f"`{n}` ({float(curves[n][-1]):.4g})" for n in rank_last),
        }

    t_len = len(ridge)
    table = [
        {
            "t": t + 1,
            **{n: f"{float(c[t]):.6g}" for n, c in curves.items()},
            "ridge": f"{float(ridge[t]):.6g}",
            "oracle": f"{float(oracle[t]):.6g}",
        }
        for t in range(t_len)
    ]
    write_csv(out_dir / "per_step_loss.csv", table)
    write_csv(out_dir / "summary.csv", [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])
    _plot(out_dir / "per_step_loss.png", curves, {f"ridge (lam = {lam:.3g})": ridge, "oracle W* (noise floor)": oracle})

    lines = "\n".join(
        f"| {r['model']} | {r['layers']} | {r['tokens']} | {r['loss_last']:.5g} | {r['loss_mean']:.5g} | "
        f"{r['ratio_ridge_last']:.4f} | {r['ratio_ridge_mean']:.4f} |"
        for r in rows
    )
    check_lines = (
        "\n".join(f"- **{'PASS' if c['pass'] else 'MISS'}** {c['text']}" for c in checks.values())
        or "- (no target applies to the selected models)"
    )
    md = f"""# per-step-loss: zoo models vs optimal ridge least squares

Task: fully observed LDS, n_s = {task.state_dim}, T = {task.seq_len}, noise {task.noise_std}; {config.test_sequences}
test sequences (seed {config.test_seed}). Ridge: one lam for all positions, tuned on {config.tune_sequences} training
sequences (grid + golden section in log10 lam over [{config.lam_log10_min:g}, {config.lam_log10_max:g}]):
**lam = {lam:.4g}** (regulariser I/lam; tuning loss {tune_loss:.5g}). Oracle: the true W* (noise floor).
"Last" is the last scored position: {t_len} tokens seen, predicting s_T = s_{task.seq_len} (the issue's "t = {task.seq_len}").

| model | layers | tokens | loss last | loss mean over t | last / ridge | mean / ridge |
|---|---|---|---|---|---|---|
{lines}

## Target checks

{check_lines}

{diagnostics.get("text", "")}
Figure: `per_step_loss.png`; all curves: `per_step_loss.csv`.
"""
    (out_dir / "summary.md").write_text(md)
    return {"lam": lam, "rows": rows, "checks": checks, "diagnostics": diagnostics}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt per-step-loss [--out DIR] [--quick] [--models A B ...] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt per-step-loss",
        description="Per-position test loss of zoo models vs tuned ridge least squares.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run (briefly trained models)")
    parser.add_argument("--models", nargs="+", default=None, help=f"zoo entries (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--test-sequences", type=int, default=None)
    parser.add_argument("--tune-sequences", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    fields: dict = {"zoo_root": args.zoo_root}
    if args.quick:
        fields.update(
            models=["linear-1", "mesa-1", "softmax-2", "hybrid-softmax-mesa"], train_steps=3, test_sequences=64, tune_sequences=64
        )
    if args.models is not None:
        fields["models"] = args.models
    if args.test_sequences is not None:
        fields["test_sequences"] = args.test_sequences
    if args.tune_sequences is not None:
        fields["tune_sequences"] = args.tune_sequences
    try:
        config = PerStepLossConfig(**fields)
    except ValueError as e:
        parser.error(str(e))
    result = run_per_step_loss(config, args.out, progress=not args.no_progress)
    for r in result["rows"]:
        print(f"{r['model']:<24} last {r['loss_last']:.5g}  mean {r['loss_mean']:.5g}  last/ridge {r['ratio_ridge_last']:.4f}")
    for c in result["checks"].values():
        print(("PASS " if c["pass"] else "MISS ") + c["text"])
    print(f"wrote {args.out}")
    return 0
