"""Result and files of the linearize analysis (:mod:`~mesanet.mesaopt.analysis.linearize`): one
:class:`SwapVariant` per set of swapped layers, gathered in :class:`LinearizeResult` with the check; the CSVs,
figures and ``linearize_summary.md``."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .reporting import write_csv

if TYPE_CHECKING:
    from .linearize import LinearizeConfig

__all__ = ["SwapVariant", "LinearizeResult", "write_linearize"]


@dataclass(frozen=True)
class SwapVariant:
    """Layers ``swapped`` (0-based) replaced by their distilled linear copies: the per-position test loss, and the
    loss ratio of the control that replaces the same mixers by zero."""

    name: str
    swapped: list[int]
    curve: Tensor
    ablation_ratio: float


@dataclass
class LinearizeResult:
    """What ``run_linearize`` measured (layer indices 0-based; the distillation errors per softmax layer)."""

    config: LinearizeConfig
    model_layers: list[str]
    tokens: str
    num_heads: int
    key_size: int
    layers: list[int]  # the softmax layers
    original_curve: Tensor
    distil_error_train: dict[int, float]
    distil_error_heldout: dict[int, float]
    variants: list[SwapVariant] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def original_loss(self) -> float:
        return float(self.original_curve.mean())

    @property
    def ratios(self) -> dict[str, float]:
        """Variant name -> test loss of the swapped model / original."""
        return {v.name: float(v.curve.mean()) / self.original_loss for v in self.variants}

    @property
    def checks(self) -> tuple[bool, bool]:
        """(the first layer's single-swap ratio is the largest, all-but-first ratio <= max_ratio); both False for
        a single softmax layer."""
        if len(self.layers) < 2:
            return False, False
        ratios = self.ratios
        single = {l: ratios[f"layer {l + 1}"] for l in self.layers}
        return (
            all(single[self.layers[0]] > single[l] for l in self.layers[1:]),
            ratios["all but first"] <= self.config.max_ratio,
        )

    @property
    def passed(self) -> bool:
        return all(self.checks) and len(self.layers) > 1

    def rows(self) -> list[dict]:
        """The rows of ``linearize.csv``."""
        config, base, train_err, held_err, ratios = (
            self.config,
            self.original_loss,
            self.distil_error_train,
            self.distil_error_heldout,
            self.ratios,
        )
        rows = []
        for v in self.variants:
            name, swap, curve, ablated = v.name, v.swapped, v.curve, v.ablation_ratio
            rows.append(
                {
                    "model": config.model,
                    "variant": name,
                    "swapped_layers": "+".join(str(l + 1) for l in swap),
                    "test_loss": f"{float(curve.mean()):.6g}",
                    "original_loss": f"{base:.6g}",
                    "loss_ratio": f"{ratios[name]:.6g}",
                    "ablation_ratio": f"{ablated:.6g}",
                    "recovered": f"{(ablated - ratios[name]) / (ablated - 1):.4g}" if abs(ablated - 1) > 1e-9 else "",
                    "distil_error_train": f"{train_err[swap[0]]:.6g}" if len(swap) == 1 else "",
                    "distil_error_heldout": f"{held_err[swap[0]]:.6g}" if len(swap) == 1 else "",
                }
            )
        return rows


def _plots(result: LinearizeResult, out: Path) -> list[str]:
    config, ratios = result.config, result.ratios
    variants = {v.name: v.swapped for v in result.variants}
    ablations = {v.name: v.ablation_ratio for v in result.variants}
    curves = {"original": result.original_curve, **{v.name: v.curve for v in result.variants}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(variants), 3.8))
    names = list(variants)
    pos = torch.arange(len(names), dtype=torch.float64)
    ax.bar(pos - 0.2, [ratios[n] for n in names], width=0.4, color="C0", label="linearised (distilled linear SA)")
    ax.bar(pos + 0.2, [ablations[n] for n in names], width=0.4, color="0.75", hatch="//", label="control: layer(s) removed")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(pos.tolist())
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("test loss ratio (modified / original)")
    ax.set_title(f"{config.model}: softmax layers distilled into linear SA", fontsize=9)
    for i, n in enumerate(names):
        ax.text(i - 0.2, ratios[n], f"{ratios[n]:.3g}", ha="center", va="bottom", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "linearize_ratios.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    seen = set()
    for name, curve in curves.items():
        key = tuple(variants.get(name, ()))
        if key in seen:  # e.g. "all but first" == "layer 2" for a 2-layer model
            continue
        seen.add(key)
        ax.plot(range(1, curve.shape[0] + 1), curve.numpy(), label=name, lw=2 if name == "original" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("test loss 1/2 ||s_(t+1) - pred||^2")
    ax.set_title(f"{config.model}: per-step loss, original vs linearised", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "linearize_curves.png", dpi=120)
    plt.close(fig)
    return ["linearize_ratios.png", "linearize_curves.png"]


def write_linearize(out: Path, result: LinearizeResult, start: float) -> None:
    """``linearize.csv``, ``linearize_curves.csv``, the two figures and ``linearize_summary.md`` (its wall time
    counted from ``start``, a ``time.perf_counter()`` value; stored in ``result.seconds``)."""
    config, layers, ratios, tok = result.config, result.layers, result.ratios, result.tokens
    base, base_curve = result.original_loss, result.original_curve
    curves = {"original": base_curve, **{v.name: v.curve for v in result.variants}}
    rows = result.rows()
    write_csv(out / "linearize.csv", rows)
    with open(out / "linearize_curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t"] + list(curves))
        for p in range(base_curve.shape[0]):
            writer.writerow([p + 1] + [f"{float(c[p]):.6g}" for c in curves.values()])
    single = {l: ratios[f"layer {l + 1}"] for l in layers}
    (first_largest, rest_ok), passed = result.checks, result.passed
    files = _plots(result, out)
    seconds = result.seconds = time.perf_counter() - start

    lines = [
        "# Linearisation of softmax attention layers (paper B, B.3 / SI F.2)",
        "",
        f"Model `{config.model}` ({'+'.join(result.model_layers)}, {tok} tokens, zoo root `{config.zoo_root}`). "
        f"Each softmax layer's mixer input/output was recorded on {config.record_sequences} sequences and distilled "
        f"into a linear self-attention layer ({result.num_heads} heads x key {result.key_size}) with Adam "
        f"({config.steps} steps, batch {config.batch_size}, lr {config.lr:g} cosine). Distillation error = "
        f"||delta - LSA(x)||^2 / ||delta||^2 on {config.heldout_sequences} held-out sequences. Loss ratio = "
        f"test loss (eq. 1, mean over positions, {config.test_sequences} sequences) of the swapped model / "
        f"original ({base:.5g}). Control: the ablation ratio, the same layers' mixers replaced by zero; "
        "recovered = (ablation ratio - loss ratio) / (ablation ratio - 1), the share of the layers' contribution "
        "to the loss that the linear layers reproduce (1 = all of it).",
        "",
        "| variant | swapped layers | test loss | loss ratio | ablation ratio | recovered | distil err (train) | distil err (held-out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['swapped_layers']} | {r['test_loss']} | {float(r['loss_ratio']):.4f} | "
            f"{float(r['ablation_ratio']):.4f} | {r['recovered']} | {r['distil_error_train']} | {r['distil_error_heldout']} |"
        )
    lines += [
        "",
        "## Check: every layer but the first behaves linearly (paper, SI F.2)",
        "",
        f"Criterion (no number in the issue): the first layer's single-swap ratio is the largest, and swapping "
        f"all layers but the first at once gives a ratio <= {config.max_ratio:g}.",
        "",
    ]
    if len(layers) > 1:
        lines.append(
            f"- first layer ratio largest: {'yes' if first_largest else 'no'} ("
            + ", ".join(f"layer {l + 1}: {single[l]:.4f}" for l in layers)
            + ")"
        )
        lines.append(f"- all but first: {ratios['all but first']:.4f} <= {config.max_ratio:g}: {'yes' if rest_ok else 'no'}")
        lines.append(f"- {'PASS' if passed else 'MISS'}")
    else:
        lines.append("- not applicable (the model has a single softmax layer)")
    lines += [
        "",
        f"Figures: {', '.join(f'`{f}`' for f in files)}. CSV: `linearize.csv`, `linearize_curves.csv`. "
        f"Wall time {seconds:.1f} s.",
        "",
    ]
    (out / "linearize_summary.md").write_text("\n".join(lines))
