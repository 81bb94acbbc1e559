"""Linear probes per layer and per time step ("Uncovering mesa-optimization algorithms in Transformers"; analysis 3 of the toolkit, README "Mesa-optimization toolkit").

For a trained :class:`~mesanet.mesaopt.models.SequenceModel` the residual stream after the embedding (layer 0) and
after every block (layers 1..L) is recorded on fresh LDS sequences. For every ``(layer, t)`` a separate
ridge-regularised linear regression (closed form, with intercept) maps the activation ``e^l_t [E]`` to

* ``"target"``:  the next token ``s_{t+1}`` (target probes);
* ``"precond"``: the preconditioned input ``(S_{t-1} S_{t-1}^T + I/lam)^{-1} s_t``, ``S_{t-1} = [s_1..s_{t-1}]``
  (``S_0`` empty: ``lam s_1``), computed exactly with a solve (the paper uses a 6-step Chebyshev
  approximation; ``precond_method="chebyshev"`` reproduces that, and the summary reports how far apart the two are).

Probes are fit on training sequences and scored on held-out ones by the normalised MSE
``sum_d E(y_d - yhat_d)^2 / sum_d Var(y_d)`` (held-out statistics): 0 = perfectly decodable, ~1 = no linear
information. Times ``t`` are 1-based token indices (position ``p = t - 1``), ``t = 1..T-1``.

Target check (README "Mesa-optimization toolkit": "probe errors fall with depth"): for every model and both probes, the mean normalised
error over ``t >= min_t`` (default 10) at the last layer is below ``(1 - depth_margin)`` (default 0.95) times
that at the first layer (layer 1, the output of the first block).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mesanet.utils.config import to_dict
from mesanet.utils.validation import check_int, is_int

from ..data.dynamics import generate_lds
from .compressed import chebyshev_solve
from .probes_report import PROBE_KINDS, ProbeResult, write_probes
from .seq_training import tokens_of
from .zoo import DEFAULT_ROOT, load_or_train, recipe

__all__ = [
    "PROBE_KINDS",
    "ProbeConfig",
    "preconditioned_inputs",
    "fit_ridge_probe",
    "probe_predict",
    "normalised_probe_error",
    "probe_errors",
    "activation_stats",
    "ProbeResult",
    "run_probes",
    "main",
]

_PRECOND_METHODS = ("solve", "chebyshev")
DEFAULT_OUT = Path("runs/mesaopt/probes")


@dataclass
class ProbeConfig:
    """Probe analysis settings (CPU-small defaults)."""

    models: list[str] = field(default_factory=lambda: ["linear-4", "softmax-2"])
    zoo_root: str = str(DEFAULT_ROOT)
    train_sequences: int = 4096
    test_sequences: int = 2048
    ridge: float = 1e-4
    lam: float = 1.0
    precond_method: str = "solve"
    chebyshev_steps: int = 6
    min_t: int = 10
    depth_margin: float = 0.05
    curve_times: list[int] = field(default_factory=lambda: [2, 5, 10, 25, 49])
    train_seed: int = 11
    test_seed: int = 12
    chunk: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.models, tuple):
            self.models = list(self.models)
        if not isinstance(self.models, list) or not self.models or not all(isinstance(m, str) for m in self.models):
            raise ValueError(f"ProbeConfig.models: expected a non-empty list of zoo names, got {self.models!r}")
        for name in ("train_sequences", "test_sequences", "chebyshev_steps", "min_t", "chunk"):
            v = getattr(self, name)
            check_int(f"ProbeConfig.{name}", v, minimum=1)
        for name in ("train_seed", "test_seed"):
            v = getattr(self, name)
            check_int(f"ProbeConfig.{name}", v, minimum=0)
        if self.train_seed == self.test_seed:
            raise ValueError(f"ProbeConfig: train_seed and test_seed must differ (held-out data), got {self.train_seed}")
        if not (isinstance(self.ridge, (int, float)) and math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ProbeConfig.ridge: expected a finite float >= 0, got {self.ridge!r}")
        if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"ProbeConfig.lam: expected a finite float > 0, got {self.lam!r}")
        if not (isinstance(self.depth_margin, (int, float)) and 0 <= self.depth_margin < 1):
            raise ValueError(f"ProbeConfig.depth_margin: expected a float in [0, 1), got {self.depth_margin!r}")
        if self.precond_method not in _PRECOND_METHODS:
            raise ValueError(f"ProbeConfig.precond_method: expected one of {_PRECOND_METHODS}, got {self.precond_method!r}")
        if isinstance(self.curve_times, tuple):
            self.curve_times = list(self.curve_times)
        if not isinstance(self.curve_times, list) or not all(is_int(t, 1) for t in self.curve_times):
            raise ValueError(f"ProbeConfig.curve_times: expected a list of ints >= 1, got {self.curve_times!r}")


# ----------------------------------------------------------------------------------------- math


def preconditioned_inputs(states: Tensor, lam: float = 1.0, method: str = "solve", steps: int = 6) -> Tensor:
    """``(S_{t-1} S_{t-1}^T + I/lam)^{-1} s_t`` at every position, ``states [B, T, n] -> [B, T, n]``.

    ``S_{t-1} = [s_1..s_{t-1}]`` are the tokens strictly before ``t`` (empty at ``t = 1``: ``lam s_1``).
    ``method="solve"``: exact (``torch.linalg.solve``); ``"chebyshev"``: ``steps`` Chebyshev iterations on the
    exact spectrum bounds ``[1/lam, 1/lam + ||S S^T||]`` (the paper's 6-step approximation).
    """
    if not isinstance(states, Tensor) or states.dim() != 3:
        raise ValueError(f"preconditioned_inputs: states expected [B, T, n], got {getattr(states, 'shape', states)!r}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"preconditioned_inputs: lam expected a finite float > 0, got {lam!r}")
    if method not in _PRECOND_METHODS:
        raise ValueError(f"preconditioned_inputs: method expected one of {_PRECOND_METHODS}, got {method!r}")
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-1]], dim=1)
    gram = torch.cumsum(prev.unsqueeze(-1) * prev.unsqueeze(-2), dim=1)  # sum_{t' < t} s_t' s_t'^T
    eye = torch.eye(states.shape[-1], dtype=states.dtype, device=states.device)
    mat = gram + eye / lam
    if method == "solve":
        return torch.linalg.solve(mat, states.unsqueeze(-1)).squeeze(-1)
    top = torch.linalg.eigvalsh(mat)[..., -1]
    return chebyshev_solve(mat, states, steps, lam_min=1.0 / lam, lam_max=top, method="chebyshev")


def _check_xy(x: Tensor, y: Tensor, name: str) -> None:
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"{name}: expected features [P, N, E] and targets [P, N, n] with equal P, N, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def fit_ridge_probe(x: Tensor, y: Tensor, ridge: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Closed-form ridge regression with intercept, one independent probe per leading index.

    ``x [P, N, E]`` features, ``y [P, N, n]`` targets (``P`` probes of ``N`` samples each) -> ``(W [P, E, n],
    b [P, n])`` minimising ``mean_N ||y - x W - b||^2 + ridge * s * ||W||_F^2`` with ``s`` the mean feature
    variance of that probe (so the ridge is relative to the activation scale; the intercept is not penalised).
    Computed in float64.
    """
    _check_xy(x, y, "fit_ridge_probe")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"fit_ridge_probe: ridge expected a finite float >= 0, got {ridge!r}")
    x, y = x.double(), y.double()
    xm, ym = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    xc, yc = x - xm, y - ym
    n = x.shape[1]
    cov = xc.transpose(1, 2) @ xc / n  # [P, E, E]
    scale = torch.diagonal(cov, dim1=1, dim2=2).mean(-1).clamp_min(1e-12)  # [P]
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    w = torch.linalg.solve(cov + ridge * scale[:, None, None] * eye, xc.transpose(1, 2) @ yc / n)
    b = (ym - xm @ w).squeeze(1)
    return w, b


def probe_predict(w: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """``x [P, N, E] -> x W + b  [P, N, n]`` (float64)."""
    return x.double() @ w + b[:, None, :]


def normalised_probe_error(pred: Tensor, y: Tensor) -> Tensor:
    """``[P]``: ``sum_d mean_N (y - pred)^2 / sum_d Var_N(y)`` per probe; ``pred, y [P, N, n]``."""
    _check_xy(pred, y, "normalised_probe_error")
    y = y.double()
    mse = (pred.double() - y).square().mean(1).sum(-1)
    var = y.var(1, unbiased=False).sum(-1)
    return mse / var.clamp_min(1e-30)


def probe_errors(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, ridge: float) -> Tensor:
    """Fit on ``train_*`` and score on ``test_*`` (all ``[P, N, .]``); the ``[P]`` normalised held-out errors."""
    w, b = fit_ridge_probe(train_x, train_y, ridge)
    return normalised_probe_error(probe_predict(w, b, test_x), test_y)


# ----------------------------------------------------------------------------------------- data


@torch.no_grad()
def _record(model, task, tokens: str, num: int, seed: int, cfg: ProbeConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Hidden states ``[L+1, T, N, E]`` and probe targets ``{kind: [T-1, N, n]}`` on ``num`` fresh sequences."""
    states = generate_lds(task, num, seed=seed).states.double()
    hidden = []
    for start in range(0, num, cfg.chunk):
        s = states[start : start + cfg.chunk]
        _, hs = model(tokens_of(s.float(), tokens), return_hidden=True)
        hidden.append(torch.stack(hs).double())  # [L+1, b, T, E]
    h = torch.cat(hidden, 1).transpose(1, 2)  # [L+1, T, N, E]
    t_len = states.shape[1]
    pre = preconditioned_inputs(states, cfg.lam, cfg.precond_method, cfg.chebyshev_steps)
    targets = {"target": states[:, 1:].transpose(0, 1), "precond": pre[:, : t_len - 1].transpose(0, 1)}
    return h[:, : t_len - 1], targets


def activation_stats(hidden: Tensor, clip: float | None) -> dict:
    """``{"clip", "max_abs", "clipped"}`` of residual streams ``hidden [L+1, ...]``: per layer the largest ``|e|``
    and the fraction of entries at the activation clip (``|e| >= clip``; 0 without a clip)."""
    flat = hidden.abs().flatten(1)
    at_clip = (flat >= clip).double().mean(1) if clip is not None else torch.zeros(flat.shape[0], dtype=torch.float64)
    return {"clip": clip, "max_abs": [float(v) for v in flat.amax(1)], "clipped": [float(v) for v in at_clip]}


def _model_errors(name: str, cfg: ProbeConfig, progress: bool, configs, activations: dict) -> dict[str, Tensor]:
    """``{kind: [L+1, T-1]}`` normalised held-out probe errors of zoo model ``name`` (recipe ``configs``); also
    stores :func:`activation_stats` of the held-out streams in ``activations[name]``."""
    model = load_or_train(name, Path(cfg.zoo_root), progress=progress, configs=configs)
    train_cfg = configs[1]
    htr, ytr = _record(model, train_cfg.task, train_cfg.tokens, cfg.train_sequences, cfg.train_seed, cfg)
    hte, yte = _record(model, train_cfg.task, train_cfg.tokens, cfg.test_sequences, cfg.test_seed, cfg)
    activations[name] = activation_stats(hte, model.config.activation_clip)
    out = {}
    for kind in PROBE_KINDS:
        out[kind] = torch.stack([probe_errors(htr[l], ytr[kind], hte[l], yte[kind], cfg.ridge) for l in range(htr.shape[0])])
    return out


def _chebyshev_gap(cfg: ProbeConfig, task) -> float:
    """Relative distance ``||cheb_6 - solve|| / ||solve||`` of the two preconditioned targets over t >= 2."""
    states = generate_lds(task, 256, seed=cfg.test_seed).states.double()
    exact = preconditioned_inputs(states, cfg.lam, "solve")[:, 1:]
    approx = preconditioned_inputs(states, cfg.lam, "chebyshev", cfg.chebyshev_steps)[:, 1:]
    return float((approx - exact).norm() / exact.norm())


def run_probes(
    config: ProbeConfig, out_dir: Path | str = DEFAULT_OUT, *, progress: bool = True, recipes: dict | None = None
) -> ProbeResult:
    """Run the probe analysis; writes ``probes.csv``, ``probes_summary.md``, two PNGs and ``config.yaml``.

    Models come from :func:`~mesanet.mesaopt.analysis.zoo.load_or_train` (trained on first use); ``recipes`` maps
    names outside the zoo to ``(SeqModelConfig, SeqTrainConfig)``.

    Returns the typed :class:`~.probes_report.ProbeResult` (``errors``, ``late_mean``, ``checks``, ``passed``,
    ``chebyshev_gap``, ``seconds``, ``activations``).
    """
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"run_probes: expected a ProbeConfig, got {type(config).__name__}")
    import yaml
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    start = time.perf_counter()
    results: dict[str, dict[str, Tensor]] = {}
    activations: dict[str, dict] = {}
    recipes = dict(recipes or {})
    configs = {name: recipes[name] if name in recipes else recipe(name) for name in config.models}  # fail early
    for name in tqdm(config.models, desc="probes", disable=not progress, leave=False):
        results[name] = _model_errors(name, config, progress, configs[name], activations)
    gap = _chebyshev_gap(config, configs[config.models[0]][1].task)

    result = ProbeResult(config=config, errors=results, chebyshev_gap=gap, activations=activations)
    write_probes(out, result, start)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt probes [--out DIR] [--quick] [--models ...] [--zoo-root DIR] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt probes", description="Linear target / preconditioning probes per layer and time step."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--quick", action="store_true", help="seconds-scale smoke run: a tiny untrained-ish 2-layer model and few sequences"
    )
    parser.add_argument("--models", nargs="+", default=None, help="zoo names (default: linear-4 softmax-2)")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--train-sequences", type=int, default=None)
    parser.add_argument("--test-sequences", type=int, default=None)
    parser.add_argument("--lam", type=float, default=None)
    parser.add_argument("--ridge", type=float, default=None)
    parser.add_argument("--precond-method", choices=_PRECOND_METHODS, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    cfg, recipes = ProbeConfig(), None
    if args.quick:
        cfg = ProbeConfig(
            models=[_QUICK_NAME], zoo_root=str(args.out / "zoo"), train_sequences=256, test_sequences=128, curve_times=[2, 10]
        )
        recipes = {_QUICK_NAME: quick_recipe()}
    overrides = {
        "models": args.models,
        "zoo_root": args.zoo_root,
        "train_sequences": args.train_sequences,
        "test_sequences": args.test_sequences,
        "lam": args.lam,
        "ridge": args.ridge,
        "precond_method": args.precond_method,
    }
    cfg = ProbeConfig(**{**to_dict(cfg), **{k: v for k, v in overrides.items() if v is not None}})
    res = run_probes(cfg, args.out, progress=not args.no_progress, recipes=recipes)
    for name, per_kind in res.late_mean.items():
        for kind, v in per_kind.items():
            print(f"{name} {kind}: mean err t>={cfg.min_t} per layer " + " ".join(f"{x:.4f}" for x in v))
    print(f"target check (errors fall with depth): {'PASS' if res.passed else 'MISS'}; wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------------------- quick mode

_QUICK_NAME = "quick-linear-3"


def quick_recipe():
    """A tiny 3-layer constructed-token linear model (n_s = 4, T = 16) trained for 30 steps: smoke runs only."""
    from dataclasses import replace

    from ..data.dynamics import LDSConfig

    model_cfg, train_cfg = recipe("linear-4")
    model_cfg = replace(model_cfg, layers=["linear"] * 3, input_dim=12, output_dim=4, num_heads=2, key_size=4)
    train_cfg = replace(train_cfg, steps=30, batch_size=16, warmup_steps=5, task=LDSConfig(state_dim=4, seq_len=16))
    return model_cfg, train_cfg


if __name__ == "__main__":
    sys.exit(main())
