"""Result and files of the gd-construction analysis (:mod:`~mesanet.mesaopt.analysis.gd_construction`): the typed
:class:`GDConstructionResult` (its ``summary`` is ``summary.csv``), the CSVs, the two figures and ``summary.md``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .compressed import compress_block_scalar
from .one_step_gd import GDConstruction
from .reporting import write_csv

if TYPE_CHECKING:
    from .gd_construction import GDConstructionConfig

__all__ = ["GDConstructionResult", "write_gd_construction"]


@dataclass(frozen=True)
class GDConstructionResult:
    """What ``run_gd_construction`` measured. ``curves``: per-position test loss of the trained model (first), the
    ``Phi0 = 0`` construction (second) and, when tuned, the ``Phi0 = cI`` one (third); ``tuned``: the output of
    ``tune_construction``; ``similarity``: of ``product_similarity`` (its last row sums the heads)."""

    config: GDConstructionConfig
    model_cfg: Any  # the zoo recipe's SeqModelConfig
    train_cfg: Any  # the zoo recipe's SeqTrainConfig
    tuned: dict[str, float]
    use_c: bool  # the reference is the Phi0 = cI construction
    reference: GDConstruction
    curves: dict[str, Tensor]
    kq: Tensor  # trained per-head W_k^T W_q [H, D, D] (float64)
    pv: Tensor  # trained per-head P W_v [H, D, D] (float64)
    similarity: dict
    kq_balanced: Tensor  # kq, pv with each head balanced and sign-aligned to the reference ([H, D, D])
    pv_balanced: Tensor
    construction_kq_balanced: Tensor  # the reference's products balanced the same way ([1, D, D])
    construction_pv_balanced: Tensor

    @property
    def trained_curve(self) -> Tensor:
        return list(self.curves.values())[0]

    @property
    def gd0_curve(self) -> Tensor:
        return list(self.curves.values())[1]

    @property
    def phi_c_curve(self) -> Tensor | None:
        return list(self.curves.values())[2] if self.config.tune_phi0 else None

    @property
    def ref_curve(self) -> Tensor:
        return self.phi_c_curve if self.use_c else self.gd0_curve

    @property
    def ratio(self) -> float:
        return float(self.trained_curve.mean()) / float(self.ref_curve.mean())

    @property
    def passed(self) -> bool:
        return abs(self.ratio - 1.0) <= self.config.target_ratio

    @cached_property
    def summary(self) -> dict:
        """The numbers of ``summary.csv`` (metric -> value)."""
        config, tuned, sim = self.config, self.tuned, self.similarity
        return {
            "model": config.model,
            "eta_phi0_zero": tuned["eta0"],
            "tune_loss_phi0_zero": tuned["loss0"],
            "phi0_c": tuned["c"],
            "eta_phi0_cI": tuned["eta_c"],
            "tune_loss_phi0_cI": tuned["loss_c"],
            "reference": "Phi0 = cI" if self.use_c else "Phi0 = 0",
            "test_loss_trained": float(self.trained_curve.mean()),
            "test_loss_gd_phi0_zero": float(self.gd0_curve.mean()),
            "test_loss_reference": float(self.ref_curve.mean()),
            "ratio_trained_over_reference": self.ratio,
            "test_loss_last_trained": float(self.trained_curve[-1]),
            "test_loss_last_reference": float(self.ref_curve[-1]),
            "cosine_sum": sim["rows"][-1]["cosine"],
            "implied_eta_sum": sim["rows"][-1]["implied_eta"],
            "kq_mass_sum": sim["rows"][-1]["kq_mass"],
            "pv_mass_sum": sim["rows"][-1]["pv_mass"],
            "target": f"|ratio - 1| <= {config.target_ratio}",
            "target_pass": self.passed,
        }


def _plot_losses(path: Path, curves: dict[str, Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = range(1, len(next(iter(curves.values()))) + 1)
    styles = ["-", "--", ":"]
    for (name, curve), style in zip(curves.items(), styles):
        ax.plot(t, curve.numpy(), style, label=name, linewidth=1.6)
    ax.set_xlabel("t (tokens seen; predicting s_{t+1})")
    ax.set_ylabel("test loss 1/2 ||pred - s_{t+1}||^2")
    ax.set_title("1-layer linear SA vs Proposition 1 (one GD step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_products(path: Path, result: GDConstructionResult, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kq_b, pv_b, ckq_b, cpv_b = (
        result.kq_balanced,
        result.pv_balanced,
        result.construction_kq_balanced,
        result.construction_pv_balanced,
    )
    heads = kq_b.shape[0]
    columns = [f"head {h}" for h in range(heads)] + ["sum over heads", "construction"]
    mats = {"W_k^T W_q": list(kq_b) + [kq_b.sum(0), ckq_b[0]], "P W_v": list(pv_b) + [pv_b.sum(0), cpv_b[0]]}
    fig, axes = plt.subplots(2, len(columns), figsize=(3.1 * len(columns), 6.2))
    for r, (row_name, row) in enumerate(mats.items()):
        for c, (col_name, m) in enumerate(zip(columns, row)):
            ax = axes[r, c]
            vmax = float(m.abs().max()) or 1.0
            im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            for k in range(1, m.shape[0] // n):
                ax.axhline(k * n - 0.5, color="k", linewidth=0.5)
                ax.axvline(k * n - 0.5, color="k", linewidth=0.5)
            ax.set_title(f"{row_name}: {col_name}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("per-head products (balanced gauge, sign-aligned to the construction); blocks [0, s_t, s_{t-1}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _block_table(matrix: Tensor, n: int) -> str:
    s = compress_block_scalar(matrix, n)
    names = ["0", "s_t", "s_{t-1}"]
    lines = ["| block | " + " | ".join(names) + " |", "|---|---|---|---|"]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(f"{float(v):+.4g}" for v in s[i]) + " |")
    return "\n".join(lines)


def write_gd_construction(out_dir: Path, result: GDConstructionResult) -> None:
    """``per_step_loss.csv``, ``similarity.csv``, ``per_step_loss.png``, ``products.png``, ``summary.csv`` and
    ``summary.md`` in ``out_dir``."""
    config, model_cfg, train_cfg, tuned = result.config, result.model_cfg, result.train_cfg, result.tuned
    task, n = train_cfg.task, train_cfg.task.state_dim
    curves, sim, reference, use_c = result.curves, result.similarity, result.reference, result.use_c
    names = list(curves)
    trained_curve, gd0_curve, ref_curve = result.trained_curve, result.gd0_curve, result.ref_curve
    trained_loss, ratio, passed = float(trained_curve.mean()), result.ratio, result.passed
    summary = result.summary
    floor = 0.5 * n * task.noise_std**2
    write_csv(
        out_dir / "per_step_loss.csv",
        [
            {
                "t": t + 1,
                "trained": f"{float(trained_curve[t]):.6g}",
                "gd_phi0_zero": f"{float(gd0_curve[t]):.6g}",
                **({"gd_phi0_cI": f"{float(curves[names[2]][t]):.6g}"} if config.tune_phi0 else {}),
            }
            for t in range(len(trained_curve))
        ],
    )
    write_csv(
        out_dir / "similarity.csv",
        [{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in sim["rows"]],
    )
    _plot_losses(out_dir / "per_step_loss.png", curves)
    _plot_products(out_dir / "products.png", result, n)

    write_csv(out_dir / "summary.csv", [{"metric": k, "value": v} for k, v in summary.items()])
    kq_b, pv_b = result.kq_balanced, result.pv_balanced
    head_rows = "\n".join(
        f"| {r['head']} | {r['cosine']:.4f} | {r['implied_eta']:.5g} | {r['kq_mass']:.4f} | {r['pv_mass']:.4f} |"
        for r in sim["rows"]
    )
    md = f"""# gd-construction: trained 1-layer linear SA vs Proposition 1

Model `{config.model}` (zoo recipe: {model_cfg.num_heads} heads x key {model_cfg.key_size}, {train_cfg.steps} steps,
tokens `[0, s_t, s_{{t-1}}]`, LDS n_s = {n}, T = {task.seq_len}, noise {task.noise_std}). Construction tuned on
{config.tune_sequences} training sequences (the recipe's own batches); losses on {config.test_sequences} fresh
test sequences (seed {config.test_seed}), eq. 1 per position averaged over the {task.seq_len - 1} scored positions.

Tuned: `eta` in closed form with `Phi0 = 0` -> eta = {tuned["eta0"]:.5g} (tuning loss {tuned["loss0"]:.5g});
{"with `Phi0 = c I` (golden section on c, closed-form eta): c = %+.4g, eta = %.5g (tuning loss %.5g)." % (tuned["c"], tuned["eta_c"], tuned["loss_c"]) if config.tune_phi0 else "Phi0 not tuned."}
Reference construction: **{summary["reference"]}** (Phi0 = cI only where it lowers the tuning loss by more than
{100 * config.phi0_min_gain:g} %).

| | mean test loss | loss at last position (t = {task.seq_len - 1}, predicting s_T) |
|---|---|---|
| trained `{config.model}` | {trained_loss:.6g} | {float(trained_curve[-1]):.6g} |
| GD, Phi0 = 0 | {float(gd0_curve.mean()):.6g} | {float(gd0_curve[-1]):.6g} |
{f"| GD, Phi0 = cI | {float(curves[names[2]].mean()):.6g} | {float(curves[names[2]][-1]):.6g} |" if config.tune_phi0 else ""}
| noise floor 0.5 n sigma^2 | {floor:.3g} | {floor:.3g} |

**Target (trained within {100 * config.target_ratio:g} % of the tuned construction): {"PASS" if passed else "MISS"}** -
ratio trained / construction = {ratio:.4f} (mean over positions); at the last position
{float(trained_curve[-1] / ref_curve[-1]):.4f}.

## Weight products vs the construction

Effective tensor `E = sum_h PV_h (x) KQ_h` (symmetrised over the two key/value token factors; output rows of
block 0, inputs from blocks 1-2): cosine similarity with the construction's, the implied step size (projection
onto the construction at eta = 1; the tuned eta is {reference.proj[0, 0].item():.5g}), and the fraction of each
product's Frobenius mass inside the construction's non-zero blocks (KQ: block (s_{{t-1}}, s_t); PV: block
{"(0, s_t) and (0, s_{t-1})" if use_c else "(0, s_t)"}; "sum": balanced, sign-aligned heads summed). Per-head products are only
defined up to the gauge (a PV, KQ / a); the heatmaps show each head balanced (equal norms) and sign-aligned.

| head | cosine | implied eta | KQ mass in blocks | PV mass in blocks |
|---|---|---|---|---|
{head_rows}

Block means (mean diagonal of every n x n block, rows = output / key block, columns = input / query block) of the
balanced head sums:

W_k^T W_q (sum over heads):

{_block_table(kq_b.sum(0), n)}

P W_v (sum over heads):

{_block_table(pv_b.sum(0), n)}

Figures: `per_step_loss.png` (per-position test loss), `products.png` (heatmaps). Numbers: `per_step_loss.csv`,
`similarity.csv`, `summary.csv`.
"""
    (out_dir / "summary.md").write_text(md)
