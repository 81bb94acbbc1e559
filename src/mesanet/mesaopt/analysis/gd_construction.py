"""Analysis "gd-construction": a trained 1-layer linear self-attention model vs Proposition 1 (paper B, B.3).

The zoo model ``linear-1`` (2 heads, constructed tokens ``[0, s_t, s_{t-1}]``, fully observed LDS, n_s = 10,
T = 50) is compared with the one-step-GD construction of :mod:`mesanet.mesaopt.analysis.one_step_gd`, tuned on
training batches of the same recipe:

* ``eta`` in closed form (:func:`~mesanet.mesaopt.analysis.one_step_gd.optimal_eta`) with ``Phi0 = 0`` (the
  construction the model can express exactly on ``[0, s_t, s_{t-1}]`` tokens), and
* optionally ``(eta, c)`` with ``Phi0 = c I`` (golden-section search on ``c``, closed-form ``eta`` for each
  ``c``); this is Proposition 1 on its own tokens ``[c s_t, s_t, s_{t-1}]``, whose ``c s_t`` the trained model
  cannot produce (its token's first block is 0). It is the reference only where it beats ``Phi0 = 0`` on the
  tuning data.

Outputs (``out_dir``): ``per_step_loss.csv`` / ``per_step_loss.png`` (test loss per position of the trained
model and the constructions), ``similarity.csv`` (per head and summed), ``products.png`` (heatmaps of the per-head
products ``W_k^T W_q`` and ``P W_v``, their sum over heads and the construction's, after balancing each head),
``summary.csv``, ``summary.md`` (target: trained within 2 % of the tuned construction) and ``config.yaml``.

Similarity of weight products: the layer's output is ``delta_t[i] = sum_h sum_{t'} sum_{jkl} PV_h[i,j]
x_{t'}[j] x_{t'}[k] KQ_h[k,l] x_t[l]``, so the function is fixed by the effective tensor ``E[i,j,k,l] =
sum_h PV_h[i,j] KQ_h[k,l]`` symmetrised over ``(j, k)``, which is invariant to the per-head gauge ``(a PV, KQ/a)``.
Only its functional part is compared: output rows of block 0 (the prediction) and inputs from blocks 1-2
(block 0 of the input token is zero). Reported: the cosine similarity of the flattened functional tensors,
the implied step size (least-squares scale of the construction's tensor with ``eta = 1`` onto the trained one)
and the fraction of Frobenius mass of each product inside the construction's non-zero blocks.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mesanet.utils.config import save as save_config
from mesanet.utils.validation import check_int

from ..layers.linear_self_attention import LinearSelfAttention
from ..models import SequenceModel
from .gd_construction_report import GDConstructionResult, write_gd_construction
from .one_step_gd import GDConstruction, one_step_gd_prediction, optimal_eta
from .seq_training import per_position_loss, training_states
from .zoo import load_for_analysis, recipe

__all__ = [
    "GDConstructionConfig",
    "tune_construction",
    "construction_as_layer",
    "balance_heads",
    "effective_tensor",
    "block_mass_fraction",
    "product_similarity",
    "GDConstructionResult",
    "run_gd_construction",
    "main",
]

DEFAULT_OUT = Path("runs/mesaopt/gd-construction")


@dataclass
class GDConstructionConfig:
    """``model``: zoo entry (a single ``linear`` layer on constructed tokens). ``tune_sequences``: training
    sequences (the recipe's own training batches, from step 0) used to tune the construction;
    ``test_sequences`` fresh sequences from ``test_seed``. ``tune_phi0``: also tune ``Phi0 = c I`` with
    ``|c| <= phi0_range``; ``Phi0 = c I`` becomes the reference only if it lowers the tuning loss by more than
    ``phi0_min_gain`` (relative). ``zoo_root``: where zoo models live (None: ``runs/mesaopt/models``).
    ``train_steps``: if set, train the recipe for only this many steps into ``<out_dir>/models`` instead
    (smoke runs)."""

    model: str = "linear-1"
    tune_sequences: int = 2048
    test_sequences: int = 4096
    test_seed: int = 1
    tune_phi0: bool = True
    phi0_range: float = 1.0
    phi0_min_gain: float = 1e-3
    target_ratio: float = 0.02
    zoo_root: str | None = None
    train_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("tune_sequences", "test_sequences"):
            v = getattr(self, name)
            check_int(f"GDConstructionConfig.{name}", v, minimum=1)
        check_int("GDConstructionConfig.test_seed", self.test_seed, minimum=0)
        if not (math.isfinite(self.phi0_range) and self.phi0_range > 0):
            raise ValueError(f"GDConstructionConfig.phi0_range: expected a finite float > 0, got {self.phi0_range!r}")
        if not (math.isfinite(self.phi0_min_gain) and self.phi0_min_gain >= 0):
            raise ValueError(f"GDConstructionConfig.phi0_min_gain: expected a float >= 0, got {self.phi0_min_gain!r}")
        if not (math.isfinite(self.target_ratio) and self.target_ratio > 0):
            raise ValueError(f"GDConstructionConfig.target_ratio: expected a float > 0, got {self.target_ratio!r}")
        check_int("GDConstructionConfig.train_steps", self.train_steps, minimum=1, optional=True)
        model_cfg, train_cfg = recipe(self.model)  # ValueError for unknown names
        if model_cfg.layers != ["linear"] or train_cfg.tokens != "constructed" or model_cfg.embed_dim is not None:
            raise ValueError(
                f"GDConstructionConfig.model: expected a zoo entry with one 'linear' layer on constructed tokens and no "
                f"embeddings, got {self.model!r} (layers={model_cfg.layers}, tokens={train_cfg.tokens!r})"
            )


# ----------------------------------------------------------------------------------------- construction


def _gd_loss(tokens: Tensor, targets: Tensor, eta: float, phi0: Tensor | None) -> float:
    pred = one_step_gd_prediction(tokens, eta, phi0)[:, : targets.shape[1]]
    return float(0.5 * (pred - targets).square().sum(-1).mean())


def tune_construction(states: Tensor, *, tune_phi0: bool = True, phi0_range: float = 1.0, iters: int = 40) -> dict:
    """Tune Proposition 1 on ``states [B, T, n]`` (float64 inside): closed-form ``eta`` with ``Phi0 = 0`` and,
    with ``tune_phi0``, ``(eta, c)`` for ``Phi0 = c I`` (golden section on ``c`` in ``[-phi0_range, phi0_range]``).

    Returns ``{"eta0", "loss0", "eta_c", "c", "loss_c"}`` (training losses: eq. 1 per position); the ``*_c``
    entries equal the ``Phi0 = 0`` ones without ``tune_phi0``.
    """
    if states.dim() != 3 or states.shape[1] < 2:
        raise ValueError(f"states: expected [B, T >= 2, n], got {tuple(states.shape)}")
    from ..data.dynamics import constructed_tokens

    s = states.double()
    tokens, targets = constructed_tokens(s), s[:, 1:]
    n = s.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    eta0 = optimal_eta(tokens, targets)
    loss0 = _gd_loss(tokens, targets, eta0, None)
    out = {"eta0": eta0, "loss0": loss0, "eta_c": eta0, "c": 0.0, "loss_c": loss0}
    if not tune_phi0:
        return out

    def objective(c: float) -> tuple[float, float]:
        eta = optimal_eta(tokens, targets, c * eye)
        return _gd_loss(tokens, targets, eta, c * eye), eta

    lo, hi = -float(phi0_range), float(phi0_range)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = objective(a)[0], objective(b)[0]
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = objective(a)[0]
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = objective(b)[0]
    c = (lo + hi) / 2.0
    loss_c, eta_c = objective(c)
    if loss_c < loss0:
        out.update(eta_c=eta_c, c=c, loss_c=loss_c)
    return out


def construction_as_layer(construction: GDConstruction) -> LinearSelfAttention:
    """A one-head :class:`LinearSelfAttention` (key size ``n``, dtype of the construction) holding the
    construction's weights: ``x + layer(x) == construction.forward(x)``."""
    n, d = construction.w_q.shape
    layer = LinearSelfAttention(d, 1, n).to(construction.w_q.dtype)
    with torch.no_grad():
        layer.w_q.copy_(construction.w_q[None])
        layer.w_k.copy_(construction.w_k[None])
        layer.w_v.copy_(construction.w_v[None])
        layer.proj.copy_(construction.proj[None])
    return layer


# ----------------------------------------------------------------------------------------- products


def _check_products(kq: Tensor, pv: Tensor) -> None:
    if kq.dim() != 3 or kq.shape != pv.shape or kq.shape[-1] != kq.shape[-2]:
        raise ValueError(f"kq/pv: expected equal shapes [H, D, D], got {tuple(kq.shape)} and {tuple(pv.shape)}")


def balance_heads(kq: Tensor, pv: Tensor, ref_kq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per head, the gauge ``(KQ a, PV / a)`` (same function) with ``||KQ_h||_F = ||PV_h||_F`` and, given
    ``ref_kq [D, D]``, the sign that makes ``<KQ_h, ref_kq> >= 0``. ``kq, pv [H, D, D]``."""
    _check_products(kq, pv)
    nk = kq.flatten(1).norm(dim=1)
    npv = pv.flatten(1).norm(dim=1)
    scale = torch.where((nk > 0) & (npv > 0), (npv / nk.clamp_min(1e-300)).sqrt(), torch.ones_like(nk))
    kq_b, pv_b = kq * scale[:, None, None], pv / scale[:, None, None]
    if ref_kq is not None:
        sign = torch.where((kq_b * ref_kq).sum((-1, -2)) < 0, -1.0, 1.0).to(kq.dtype)
        kq_b, pv_b = kq_b * sign[:, None, None], pv_b * sign[:, None, None]
    return kq_b, pv_b


def effective_tensor(kq: Tensor, pv: Tensor, out_idx: Tensor, in_idx: Tensor) -> Tensor:
    """``E[i,j,k,l] = 1/2 sum_h (PV_h[i,j] KQ_h[k,l] + PV_h[i,k] KQ_h[j,l])`` for ``i`` in ``out_idx`` and
    ``j, k, l`` in ``in_idx``: ``[len(out), len(in), len(in), len(in)]`` (the layer's function on inputs
    supported on ``in_idx``, read at ``out_idx``). ``kq, pv [H, D, D]``."""
    _check_products(kq, pv)
    p = pv[:, out_idx][:, :, in_idx]
    q = kq[:, in_idx][:, :, in_idx]
    e = torch.einsum("hij,hkl->ijkl", p, q)
    return 0.5 * (e + e.transpose(1, 2))


def block_mass_fraction(matrix: Tensor, mask: Tensor) -> float:
    """Fraction of ``||matrix||_F^2`` on the entries where ``mask`` is True (``matrix [..., D, D]``, ``mask [D, D]``)."""
    total = float(matrix.square().sum())
    if total == 0:
        return float("nan")
    return float((matrix.square() * mask.to(matrix.dtype)).sum() / total)


def _support(matrix: Tensor, n: int) -> Tensor:
    """Boolean ``[D, D]`` mask of the ``n x n`` blocks of ``matrix`` that are not identically zero."""
    nb = matrix.shape[-1] // n
    blocks = matrix.reshape(nb, n, nb, n).abs().amax(dim=(1, 3)) > 0
    return blocks.repeat_interleave(n, 0).repeat_interleave(n, 1)


def product_similarity(kq: Tensor, pv: Tensor, construction: GDConstruction) -> dict:
    """Compare trained products ``kq, pv [H, D, D]`` (``D = 3n``) with the construction's (all in float64).

    Returns per-head and summed quantities: ``cosine`` of the functional effective tensors (per head: that
    head alone), ``implied_eta`` (least-squares multiple of the construction's tensor at ``eta = 1``),
    ``kq_mass`` / ``pv_mass`` (Frobenius mass fraction in the construction's non-zero blocks; for the sum,
    of the balanced, sign-aligned head sum).
    """
    _check_products(kq, pv)
    kq, pv = kq.double(), pv.double()
    ckq, cpv = construction.kq_product.double(), construction.pv_product.double()
    d = ckq.shape[-1]
    if kq.shape[-1] != d:
        raise ValueError(f"kq/pv: expected [H, {d}, {d}] to match the construction, got {tuple(kq.shape)}")
    n = construction.w_q.shape[0]
    out_idx, in_idx = torch.arange(n), torch.arange(n, d)
    eta = float(construction.proj[0, 0])
    ref = effective_tensor(ckq[None], cpv[None], out_idx, in_idx)
    unit = ref / eta if eta != 0 else ref
    kq_mask, pv_mask = _support(ckq, n), _support(cpv, n)
    kq_b, pv_b = balance_heads(kq, pv, ckq)

    def compare(k: Tensor, p: Tensor) -> tuple[float, float]:
        e = effective_tensor(k, p, out_idx, in_idx)
        denom = float(e.norm() * ref.norm())
        cos = float((e * ref).sum()) / denom if denom > 0 else float("nan")
        return cos, float((e * unit).sum() / unit.square().sum())

    rows = []
    for h in range(kq.shape[0]):
        cos, implied = compare(kq[h : h + 1], pv[h : h + 1])
        rows.append(
            {
                "head": str(h),
                "cosine": cos,
                "implied_eta": implied,
                "kq_mass": block_mass_fraction(kq[h], kq_mask),
                "pv_mass": block_mass_fraction(pv[h], pv_mask),
            }
        )
    cos, implied = compare(kq, pv)
    rows.append(
        {
            "head": "sum",
            "cosine": cos,
            "implied_eta": implied,
            "kq_mass": block_mass_fraction(kq_b.sum(0), kq_mask),
            "pv_mass": block_mass_fraction(pv_b.sum(0), pv_mask),
        }
    )
    return {"rows": rows, "construction_eta": eta}


# ----------------------------------------------------------------------------------------- run


def _model(cfg: GDConstructionConfig, out_dir: Path, progress: bool) -> SequenceModel:
    return load_for_analysis(cfg.model, cfg.zoo_root, cfg.train_steps, out_dir, progress=progress)


def _tuning_states(cfg: GDConstructionConfig) -> Tensor:
    return training_states(recipe(cfg.model)[1], cfg.tune_sequences)


def run_gd_construction(
    config: GDConstructionConfig, out_dir: Path = DEFAULT_OUT, *, progress: bool = True
) -> GDConstructionResult:
    """Run the analysis (see the module docstring), write its files; returns the typed result (``.summary``: the
    numbers of ``summary.csv``)."""
    if not isinstance(config, GDConstructionConfig):
        raise ValueError(f"config: expected a GDConstructionConfig, got {type(config).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    model_cfg, train_cfg = recipe(config.model)
    task, n = train_cfg.task, train_cfg.task.state_dim
    model = _model(config, out_dir, progress)

    tuned = tune_construction(_tuning_states(config), tune_phi0=config.tune_phi0, phi0_range=config.phi0_range)
    eye = torch.eye(n, dtype=torch.float64)
    phi_c = tuned["c"] * eye
    gd0 = GDConstruction.build(n, tuned["eta0"])
    gdc = GDConstruction.build(n, tuned["eta_c"], phi_c)
    use_c = config.tune_phi0 and tuned["loss_c"] < (1.0 - config.phi0_min_gain) * tuned["loss0"]
    reference = gdc if use_c else gd0

    def evaluate(predict) -> Tensor:
        return per_position_loss(predict, task, num_sequences=config.test_sequences, seed=config.test_seed, tokens="constructed")

    with torch.no_grad():
        curves = {
            "trained " + config.model: evaluate(model),
            f"GD, Phi0 = 0 (eta = {tuned['eta0']:.4g})": evaluate(
                lambda tok: one_step_gd_prediction(tok.double(), tuned["eta0"])
            ),
        }
        if config.tune_phi0:
            curves[f"GD, Phi0 = cI (c = {tuned['c']:+.3g}, eta = {tuned['eta_c']:.4g})"] = evaluate(
                lambda tok: one_step_gd_prediction(tok.double(), tuned["eta_c"], phi_c)
            )
    mixer = model.blocks[0].mixer
    kq, pv = mixer.kq_products().detach().double(), mixer.pv_products().detach().double()
    sim = product_similarity(kq, pv, reference)  # block masses: the support of the reference's products

    ckq, cpv = reference.kq_product.double(), reference.pv_product.double()
    kq_b, pv_b = balance_heads(kq, pv, ckq)
    ckq_b, cpv_b = balance_heads(ckq[None], cpv[None])
    result = GDConstructionResult(
        config=config,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        tuned=tuned,
        use_c=use_c,
        reference=reference,
        curves=curves,
        kq=kq,
        pv=pv,
        similarity=sim,
        kq_balanced=kq_b,
        pv_balanced=pv_b,
        construction_kq_balanced=ckq_b,
        construction_pv_balanced=cpv_b,
    )
    write_gd_construction(out_dir, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt gd-construction [--out DIR] [--quick] [--model NAME] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt gd-construction",
        description="Trained 1-layer linear SA vs the tuned one-step-GD construction.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run (briefly trained model)")
    parser.add_argument("--model", default="linear-1")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--test-sequences", type=int, default=None)
    parser.add_argument("--tune-sequences", type=int, default=None)
    parser.add_argument("--no-phi0", action="store_true", help="tune eta only (Phi0 = 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    fields = {"model": args.model, "zoo_root": args.zoo_root, "tune_phi0": not args.no_phi0}
    if args.quick:
        fields.update(train_steps=10, tune_sequences=128, test_sequences=128)
    if args.test_sequences is not None:
        fields["test_sequences"] = args.test_sequences
    if args.tune_sequences is not None:
        fields["tune_sequences"] = args.tune_sequences
    summary = run_gd_construction(GDConstructionConfig(**fields), args.out, progress=not args.no_progress).summary
    print(
        f"trained {summary['test_loss_trained']:.6g} vs construction ({summary['reference']}) "
        f"{summary['test_loss_reference']:.6g}: ratio {summary['ratio_trained_over_reference']:.4f} -> "
        f"{'PASS' if summary['target_pass'] else 'MISS'}; cosine {summary['cosine_sum']:.4f}; wrote {args.out}"
    )
    return 0
