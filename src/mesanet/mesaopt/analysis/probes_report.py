"""Result and files of the probes analysis (:mod:`~mesanet.mesaopt.analysis.probes`): the typed
:class:`ProbeResult` (errors per model, probe, layer and time step; the depth check) and ``probes.csv``, the two
figures and ``probes_summary.md``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from .reporting import write_csv

if TYPE_CHECKING:
    from .probes import ProbeConfig

__all__ = ["PROBE_KINDS", "ProbeResult", "write_probes"]

PROBE_KINDS = ("target", "precond")


def _mean_late(err: Tensor, min_t: int) -> Tensor:
    """``[L+1]``: mean over 1-based ``t >= min_t`` of ``err [L+1, T-1]``."""
    return err[:, min_t - 1 :].mean(1)


@dataclass
class ProbeResult:
    """What ``run_probes`` measured: ``errors[model][kind]`` ``[L+1, T-1]`` normalised held-out errors, the relative
    gap between the Chebyshev and exact preconditioned targets, the wall time (set when the files are written) and
    ``activations[model]``: the model's ``activation_clip`` (``clip``, None = off) and, per layer of the held-out
    residual streams, the largest ``|e|`` (``max_abs``) and the fraction of entries at the clip (``clipped``)."""

    config: ProbeConfig
    errors: dict[str, dict[str, Tensor]]
    chebyshev_gap: float
    seconds: float = 0.0
    activations: dict[str, dict] = field(default_factory=dict)

    @property
    def late_mean(self) -> dict[str, dict[str, list[float]]]:
        """model -> kind -> mean error over ``t >= min_t`` per layer ``[L+1]``."""
        return {
            name: {kind: [float(v) for v in _mean_late(err, self.config.min_t)] for kind, err in per_kind.items()}
            for name, per_kind in self.errors.items()
        }

    @property
    def checks(self) -> dict[str, dict[str, bool]]:
        """model -> kind -> the last layer's late error is below ``(1 - depth_margin)`` x layer 1's."""
        out = {}
        for name, per_kind in self.errors.items():
            out[name] = {}
            for kind, err in per_kind.items():
                m = _mean_late(err, self.config.min_t)
                out[name][kind] = bool(m.shape[0] >= 3 and m[-1] < (1 - self.config.depth_margin) * m[1])
        return out

    @property
    def passed(self) -> bool:
        return all(all(c.values()) for c in self.checks.values())


def _plots(results: dict[str, dict[str, Tensor]], cfg: ProbeConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    names = list(results)
    files = []
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 2.2 + 1.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j, kind in enumerate(PROBE_KINDS):
            err = results[name][kind].clamp_min(1e-4).numpy()
            ax = axes[i, j]
            im = ax.imshow(
                err,
                aspect="auto",
                origin="lower",
                cmap="viridis",
                norm=LogNorm(vmin=1e-3, vmax=1.5),
                extent=(0.5, err.shape[1] + 0.5, -0.5, err.shape[0] - 0.5),
            )
            ax.set_title(f"{name}: {kind} probe", fontsize=9)
            ax.set_xlabel("time step t")
            ax.set_ylabel("layer (0 = input)")
            ax.set_yticks(range(err.shape[0]))
            fig.colorbar(im, ax=ax, label="normalised MSE")
    fig.tight_layout()
    fig.savefig(out / "probes_heatmaps.png", dpi=120)
    plt.close(fig)
    files.append("probes_heatmaps.png")

    fig, axes = plt.subplots(len(names), 2, figsize=(10, 2.2 + 1.8 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j, kind in enumerate(PROBE_KINDS):
            err = results[name][kind]
            ax = axes[i, j]
            layers = list(range(err.shape[0]))
            for t in cfg.curve_times:
                if t <= err.shape[1]:
                    ax.plot(layers, err[:, t - 1].numpy(), marker="o", label=f"t = {t}")
            ax.plot(layers, _mean_late(err, cfg.min_t).numpy(), "k--", marker="s", label=f"mean t >= {cfg.min_t}")
            ax.set_yscale("log")
            ax.set_xticks(layers)
            ax.set_xlabel("layer (0 = input)")
            ax.set_ylabel("normalised MSE")
            ax.set_title(f"{name}: {kind} probe", fontsize=9)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "probes_vs_layer.png", dpi=120)
    plt.close(fig)
    files.append("probes_vs_layer.png")
    return files


def write_probes(out: Path, result: ProbeResult, start: float) -> None:
    """``probes.csv``, ``probes_heatmaps.png``, ``probes_vs_layer.png`` and ``probes_summary.md`` (wall time counted
    from ``start``, a ``time.perf_counter()`` value; stored in ``result.seconds``)."""
    config, results, gap = result.config, result.errors, result.chebyshev_gap
    rows = []
    for name, per_kind in results.items():
        for kind, err in per_kind.items():
            for layer in range(err.shape[0]):
                for p in range(err.shape[1]):
                    rows.append(
                        {
                            "model": name,
                            "probe": kind,
                            "layer": layer,
                            "t": p + 1,
                            "normalised_mse": f"{float(err[layer, p]):.6g}",
                        }
                    )
    write_csv(out / "probes.csv", rows)

    late, checks, passed = result.late_mean, result.checks, result.passed
    files = _plots(results, config, out)
    seconds = result.seconds = time.perf_counter() - start

    width = max(len(v["target"]) for v in late.values())
    lines = [
        "# Linear probes per layer and time step (paper B, B.3)",
        "",
        f"Models: {', '.join(config.models)} (zoo root `{config.zoo_root}`). Probes: closed-form ridge "
        f"(relative ridge {config.ridge:g}, intercept) per (layer, t), fit on {config.train_sequences} sequences "
        f"(seed {config.train_seed}), scored on {config.test_sequences} held-out sequences (seed {config.test_seed}). "
        "Error = held-out MSE / target variance (1 = no linear information). Layer 0 = input/embedding, layer l = "
        "residual stream after block l.",
        "",
        f"Preconditioned target `(S_(t-1) S_(t-1)^T + I/lam)^-1 s_t`, lam = {config.lam:g}, computed by "
        f"`{config.precond_method}`. The paper used a {config.chebyshev_steps}-step Chebyshev approximation; on "
        f"held-out data it differs from the exact solve by {gap:.3g} (relative norm, t >= 2).",
        "",
        f"## Mean normalised error over t >= {config.min_t}",
        "",
        "| model | probe | " + " | ".join(f"layer {l}" for l in range(width)) + " |",
        "|---|---|" + "---|" * width,
    ]
    for name in late:
        for kind in PROBE_KINDS:
            cells = [f"{v:.4f}" for v in late[name][kind]]
            cells += [""] * (width - len(cells))
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Target check: probe errors fall with depth",
        "",
        f"Criterion: for each model and probe, mean normalised error over t >= {config.min_t} at the last "
        f"layer < (1 - {config.depth_margin:g}) x that at layer 1 (output of the first block).",
        "",
    ]
    for name in late:
        for kind in PROBE_KINDS:
            v = late[name][kind]
            mono = all(b <= a for a, b in zip(v[1:], v[2:]))
            lines.append(
                f"- {'PASS' if checks[name][kind] else 'MISS'} {name} / {kind}: layer 1 {v[1]:.4f} -> "
                f"layer {len(v) - 1} {v[-1]:.4f} (monotone over layers 1..L: {'yes' if mono else 'no'})"
            )
    if result.activations:
        lines += ["", "## Activation clipping (held-out residual streams, layers 0..L)", ""]
        for name, act in result.activations.items():
            clip = "off" if act["clip"] is None else f"{act['clip']:g}"
            lines.append(
                f"- {name}: clip {clip}; max |e| "
                + " ".join(f"{v:.3g}" for v in act["max_abs"])
                + "; fraction at the clip "
                + " ".join(f"{v:.2g}" for v in act["clipped"])
            )
    lines += [
        "",
        f"Overall: {'PASS' if passed else 'MISS'}",
        "",
        f"Figures: {', '.join(f'`{f}`' for f in files)}. CSV: `probes.csv`. Wall time {seconds:.1f} s.",
        "",
    ]
    (out / "probes_summary.md").write_text("\n".join(lines))
