"""Typed results of the CompressedAlg experiment: one :class:`LearnedK` per learned ``k``, one
:class:`ModelCompression` per trained model (with its :class:`HeadCompression` rows, :class:`InterpolationPoint`
losses and :class:`HeatmapPanel` products), the :class:`Check` verdicts, all gathered in
:class:`CompressedAlgResult`. ``row()`` gives a CSV row (field order = column order)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import Tensor

from .config import CompressedAlgConfig

__all__ = [
    "LearnedK",
    "ModelCompression",
    "HeadCompression",
    "InterpolationPoint",
    "HeatmapPanel",
    "Check",
    "CompressedAlgResult",
    "fmt",
    "verdict",
    "checks",
]


def fmt(x: float) -> str:
    return f"{x:.5g}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _joined(values: tuple[float, ...]) -> str:
    return " ".join(fmt(v) for v in values)


@dataclass(frozen=True)
class LearnedK:
    """Part (1) at one ``k``: learned CompressedAlg-k against the tuned Chebyshev baselines and ridge."""

    k: int
    learned_loss: float
    chebyshev_global_loss: float
    chebyshev_global_lam: float
    fixed_chebyshev_loss: float
    fixed_chebyshev_lam: float
    ridge_loss: float
    ridge_lam: float
    learned_lam: float
    learned_eta: float
    learned_alphas: tuple[float, ...]
    learned_betas: tuple[float, ...]
    train_final_loss: float

    def row(self) -> dict:
        return {**asdict(self), "learned_alphas": _joined(self.learned_alphas), "learned_betas": _joined(self.learned_betas)}


@dataclass(frozen=True)
class HeadCompression:
    """One head of one layer: product norms, kept energy fractions and the block scalars."""

    model: str
    layer: int
    head: int
    kq_norm: float
    pv_norm: float
    kq_energy_frac: float
    pv_energy_frac: float
    kq_scalars: tuple[float, ...]
    pv_scalars: tuple[float, ...]

    def row(self) -> dict:
        return {**asdict(self), "kq_scalars": _joined(self.kq_scalars), "pv_scalars": _joined(self.pv_scalars)}


@dataclass(frozen=True)
class ModelCompression:
    """Parts (2) + (3) for one trained linear-k model (energy fractions: pooled total / mean / min over heads)."""

    model: str
    k: int
    heads: int
    trained_loss: float
    compressed_loss: float
    interp_half_loss: float
    compressed_alg_learned_loss: float
    compressed_alg_fixed_loss: float
    ridge_loss: float
    closest_learned_k: int
    kq_energy_frac_total: float
    pv_energy_frac_total: float
    kq_energy_frac_mean: float
    pv_energy_frac_mean: float
    kq_energy_frac_min: float
    pv_energy_frac_min: float

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InterpolationPoint:
    model: str
    weight: float
    loss: float

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeatmapPanel:
    """The head of ``layer`` with the largest ``||kq|| ||pv||``: its products and their compressions ``[D, D]``."""

    layer: int
    head: int
    kq: Tensor
    kq_compressed: Tensor
    pv: Tensor
    pv_compressed: Tensor


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    numbers: str


@dataclass
class CompressedAlgResult:
    """Everything ``run_compressed_alg`` measured (``seconds`` is set once the figures are written)."""

    ks: list[LearnedK]
    fixed_chebyshev: dict[int, float]  # k -> test loss of the per-position (oracle) Chebyshev baseline
    fixed_lam: dict[int, float]  # k -> its tuned lam
    ridge_loss: float
    ridge_lam: float
    curves: dict[str, Tensor]  # "ridge" / "learned-<k>" -> per-position test loss [T - 1]
    models: list[ModelCompression] = field(default_factory=list)
    heads: list[HeadCompression] = field(default_factory=list)
    interpolation: list[InterpolationPoint] = field(default_factory=list)
    heatmaps: dict[str, list[HeatmapPanel]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0


def checks(cfg: CompressedAlgConfig, result: CompressedAlgResult) -> list[Check]:
    """The verdicts of the summary: learned beats both Chebyshev baselines and improves with ``k``; every trained
    model is close (relative gap <= ``cfg.rel_tol``) to its compression, their 50/50 mix and CompressedAlg-k."""
    out = []
    learned = {r.k: r.learned_loss for r in result.ks}
    glob = {r.k: r.chebyshev_global_loss for r in result.ks}
    fixed = result.fixed_chebyshev
    out.append(
        Check(
            "learned step sizes beat Chebyshev with one global spectral bound at every k",
            all(learned[k] < glob[k] for k in learned),
            ", ".join(f"k={k}: {fmt(learned[k])} vs {fmt(glob[k])}" for k in learned),
        )
    )
    out.append(
        Check(
            "learned (scalar) step sizes beat Chebyshev with exact per-position bounds (oracle) at every k",
            all(learned[k] < fixed[k] for k in learned),
            ", ".join(f"k={k}: {fmt(learned[k])} vs {fmt(fixed[k])}" for k in learned),
        )
    )
    ks = sorted(learned)
    mono = all(learned[a] >= learned[b] for a, b in zip(ks, ks[1:]))
    out.append(Check("learned CompressedAlg-k loss decreases with k", mono, " > ".join(fmt(learned[k]) for k in ks)))
    tol = cfg.rel_tol

    def gap(a: float, b: float) -> float:
        return abs(a - b) / b

    for r in result.models:
        t, c, h, a = r.trained_loss, r.compressed_loss, r.interp_half_loss, r.compressed_alg_learned_loss
        out.append(
            Check(
                f"{r.model}: compressed model ~ trained (rel. gap <= {tol})",
                gap(c, t) <= tol,
                f"trained {fmt(t)}, compressed {fmt(c)} (gap {gap(c, t):.3f})",
            )
        )
        out.append(
            Check(
                f"{r.model}: 50/50 interpolation ~ both endpoints (rel. gap <= {tol})",
                gap(h, t) <= tol and gap(h, c) <= tol,
                f"interp {fmt(h)} vs trained {fmt(t)} ({gap(h, t):.3f}), compressed {fmt(c)} ({gap(h, c):.3f})",
            )
        )
        out.append(
            Check(
                f"{r.model}: trained ~ learned CompressedAlg-{r.k} (rel. gap <= {tol})",
                gap(a, t) <= tol,
                f"trained {fmt(t)}, CompressedAlg-{r.k} {fmt(a)} (gap {gap(a, t):.3f})",
            )
        )
    return out
