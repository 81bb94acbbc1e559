"""Results and report of the few-shot analysis (:mod:`~mesanet.mesaopt.analysis.fewshot`): the typed
:class:`FewShotResult`, the figures and the markdown summary with its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .fewshot import FewShotRepurposeConfig

__all__ = ["VARIANTS", "LSQ_NAMES", "TuneInfo", "FewShotResult", "plot_fewshot", "summarise_fewshot"]

VARIANTS = ("plain", "eos", "prefix")  # the prompt variants of the analysis (fewshot.py)
LSQ_NAMES = ("lsq_plain", "lsq_autoregressive")


@dataclass(frozen=True)
class TuneInfo:
    """One EOS / prefix tuning run: its loss per Adam step, the first / last 20-step means, its seconds."""

    losses: list[float]
    start: float
    end: float
    seconds: float


@dataclass
class FewShotResult:
    """What ``run_fewshot`` measured. ``curves[(model, variant)]`` and ``lsq[name]`` are the mean loss per pair
    ``[pairs]``; ``rows`` are the CSV rows (mean, median, s.e.m. per pair); ``seconds`` is set before the summary."""

    dim: int
    lengths: dict[str, int]  # model -> training length
    rows: list[dict]
    curves: dict[tuple[str, str], Tensor]
    lsq: dict[str, Tensor]
    zero_loss: float
    tuning: dict[str, TuneInfo] = field(default_factory=dict)  # "model/variant" -> tuning run
    seconds: float = 0.0


def plot_fewshot(result: FewShotResult, out_dir: Path) -> list[Path]:
    """``fewshot_loss.png`` (one panel per model) and, after tuning, ``fewshot_tuning.png``; returns the paths."""
    rows, zero_loss, model_names = result.rows, result.zero_loss, list(result.lengths)
    tune_curves = {key: info.losses for key, info in result.tuning.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(model_names), figsize=(5.5 * len(model_names), 4.2), squeeze=False)
    styles = {"plain": "-", "eos": "-", "prefix": "-", "lsq_plain": ":", "lsq_autoregressive": "--"}
    for ax, mname in zip(axes[0], model_names):
        for variant in (*VARIANTS, *LSQ_NAMES):
            pts = [
                (r["i"], r["loss_mean"])
                for r in rows
                if r["variant"] == variant and (r["model"] == mname or (r["model"] == "lsq" and variant in LSQ_NAMES))
            ]
            if pts:
                ax.plot(
                    *zip(*pts),
                    styles[variant],
                    marker="o" if variant in VARIANTS else None,
                    ms=3,
                    label=variant,
                    color="gray" if variant in LSQ_NAMES else None,
                )
        ax.axhline(zero_loss, color="k", lw=0.7, alpha=0.5, label="zero predictor")
        ax.set_title(mname)
        ax.set_xlabel("in-context pair i")
        ax.set_ylabel("L_i = 1/2 E||y_i - f(x_i)||^2")
        ax.set_ylim(bottom=0, top=2.0 * zero_loss)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "fewshot_loss.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    if tune_curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, losses in tune_curves.items():
            ax.plot(losses, label=key)
        ax.set_xlabel("Adam step")
        ax.set_ylabel("mean pair loss (tuning batch)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "fewshot_tuning.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarise_fewshot(cfg: FewShotRepurposeConfig, result: FewShotResult) -> tuple[str, dict]:
    """The markdown of ``fewshot_summary.md`` (table, checks, tuning) and the metrics of the checks."""
    dim, curves, lsq, zero_loss, lengths = result.dim, result.curves, result.lsq, result.zero_loss, result.lengths
    tune_info, seconds = result.tuning, result.seconds
    lines = [
        "# Few-shot regression with LDS-trained models",
        "",
        f"Prompts: W* Haar-orthogonal (n = {dim}), x ~ "
        + (f"U(-{cfg.x_range}, {cfg.x_range})" if cfg.x_dist == "uniform" else "N(0, I)")
        + f", label noise {cfg.noise_std}; {cfg.eval_batch} test prompts per variant (seed {cfg.seed}). "
        f"EOS / prefix tuning: Adam lr {cfg.tune_lr}, {cfg.tune_steps} steps x batch {cfg.tune_batch} "
        f"(paper: 5000 x 256), model frozen; prefix length {cfg.prefix_len} (paper: 20). "
        f"LSQ controls with ridge {cfg.ridge}. Zero predictor: {zero_loss:.3f}.",
        f"Training lengths: {lengths}. The zoo has no recipe with a longer training length"
        + (
            f"; a softmax-2 copy trained at T = {cfg.long_train_len} was added."
            if cfg.long_train_len
            else " (run with --long-train-len to add one)."
        ),
        "",
    ]
    metrics: dict = {"zero_loss": zero_loss}
    lines += [
        "| model | variant | pairs | L_1 | min L_i (i) | L_last | mean L | early ascent max_{i<=8} L_i |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (mname, variant), mean in curves.items():
        i_min = int(mean.argmin())
        lines.append(
            f"| {mname} | {variant} | {mean.numel()} | {mean[0]:.3f} | {mean[i_min]:.3f} ({i_min + 1}) | "
            f"{mean[-1]:.3f} | {mean.mean():.3f} | {mean[:8].max():.3f} |"
        )
    for name, mean in lsq.items():
        lines.append(
            f"| lsq | {name} | {mean.numel()} | {mean[0]:.3f} | {mean.min():.3f} ({int(mean.argmin()) + 1}) | "
            f"{mean[-1]:.3f} | {mean.mean():.3f} | {mean[:8].max():.3f} |"
        )
    lines += ["", "## Checks", ""]
    for mname in {m for m, _ in curves}:
        plain = curves.get((mname, "plain"))
        if plain is not None:
            late = float(plain[-5:].mean())
            ok = late < 0.9 * float(plain[0])
            metrics[f"{mname}/icl_ratio"] = late / float(plain[0])
            lines.append(
                f"- {_verdict(ok)} ICL emerges ({mname}, plain): mean L over the last 5 pairs {late:.3f} "
                f"< 0.9 x L_1 = {0.9 * float(plain[0]):.3f}."
            )
            lsq_last = float(lsq["lsq_plain"][plain.numel() - 1])
            lines.append(
                f"- {_verdict(late > lsq_last)} sub-optimal vs plain LSQ ({mname}): L_last {float(plain[-1]):.3f} vs "
                f"LSQ {lsq_last:.3f} at i = {plain.numel()}."
            )
            asc = float(plain[1:8].max())
            lines.append(
                f"- {_verdict(asc > float(plain[0]))} early ascent ({mname}, plain): max_(2<=i<=8) L_i = "
                f"{asc:.3f} vs L_1 = {float(plain[0]):.3f} (token-binding LSQ: "
                f"{float(lsq['lsq_autoregressive'][1:8].max()):.3f} vs {float(lsq['lsq_autoregressive'][0]):.3f})."
            )
        eos = curves.get((mname, "eos"))
        if plain is not None and eos is not None:
            m = min(plain.numel(), eos.numel())
            a, b = float(plain[:m].mean()), float(eos[:m].mean())
            metrics[f"{mname}/eos_gain"] = a - b
            lines.append(
                f"- {_verdict(b < a)} EOS tuning helps ({mname}): mean L over pairs 1..{m} {b:.3f} (EOS) vs {a:.3f} (plain)."
            )
        prefix = curves.get((mname, "prefix"))
        if eos is not None and prefix is not None:
            a, b = float(eos[:5].mean()), float(prefix[:5].mean())
            metrics[f"{mname}/prefix_gain_early"] = a - b
            m = min(eos.numel(), prefix.numel())
            lines.append(
                f"- {_verdict(b < a)} prefix tuning improves the early pairs ({mname}): mean L over pairs 1..5 "
                f"{b:.3f} (prefix+EOS) vs {a:.3f} (EOS); over pairs 1..{m}: {float(prefix[:m].mean()):.3f} vs "
                f"{float(eos[:m].mean()):.3f}."
            )
    if tune_info:
        lines += [
            "",
            "Tuning (first -> last 20-step mean of the training loss, seconds): "
            + "; ".join(f"{k}: {v.start:.3f} -> {v.end:.3f} ({v.seconds:.0f} s)" for k, v in tune_info.items()),
        ]
    lines += ["", f"Total wall time {seconds:.0f} s on {torch.get_num_threads()} thread(s).", ""]
    return "\n".join(lines), metrics
