"""Files of the CompressedAlg experiment: CSVs (:func:`write_tables`), PNG figures (:func:`plot`) and
``summary.md`` (:func:`write_summary`), all from a :class:`~.results.CompressedAlgResult`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..reporting import write_csv
from .config import CompressedAlgConfig
from .results import CompressedAlgResult, fmt, verdict

__all__ = ["write_tables", "plot", "write_summary"]


def write_tables(out: Path, result: CompressedAlgResult) -> None:
    """``compressed_alg_k.csv`` and, with models, ``compression.csv``, ``compression_heads.csv``, ``interpolation.csv``."""
    write_csv(out / "compressed_alg_k.csv", [r.row() for r in result.ks])
    if result.models:
        write_csv(out / "compression.csv", [r.row() for r in result.models])
        write_csv(out / "compression_heads.csv", [r.row() for r in result.heads])
        write_csv(out / "interpolation.csv", [r.row() for r in result.interpolation])


def plot(out: Path, cfg: CompressedAlgConfig, result: CompressedAlgResult) -> None:
    """``compressed_alg_k.png``, ``compressed_alg_per_position.png`` and, with models, ``loss_bars.png``,
    ``interpolation.png`` and one ``heatmap_<model>.png`` each."""
    k_rows = [r.row() for r in result.ks]
    model_rows = [r.row() for r in result.models]
    interp_rows = [r.row() for r in result.interpolation]
    fixed_loss, ridge_loss, curves = result.fixed_chebyshev, result.ridge_loss, result.curves
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = sorted(fixed_loss)
    ax.plot(ks, [fixed_loss[k] for k in ks], "s--", label="Chebyshev, exact per-position bounds (oracle)")
    ax.plot([r["k"] for r in k_rows], [r["chebyshev_global_loss"] for r in k_rows], "^:", label="Chebyshev, one global bound")
    ax.plot([r["k"] for r in k_rows], [r["learned_loss"] for r in k_rows], "o-", label="learned step sizes")
    ax.axhline(ridge_loss, color="k", lw=1, label="ridge optimum")
    if model_rows:
        ax.plot([r["k"] for r in model_rows], [r["trained_loss"] for r in model_rows], "*", ms=12, label="trained linear-k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("k (iterations = layers)")
    ax.set_ylabel("test loss (mean over positions)")
    ax.set_title("CompressedAlg-k on the fully observed LDS")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.92)
    fig.savefig(out / "compressed_alg_k.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    t = range(1, len(curves["ridge"]) + 1)
    for key, curve in curves.items():
        ax.plot(t, curve.numpy(), lw=1.5 if key == "ridge" else 1, color="k" if key == "ridge" else None, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("position t")
    ax.set_ylabel("test loss")
    ax.legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.95)
    fig.savefig(out / "compressed_alg_per_position.png", dpi=100)
    plt.close(fig)
    if not model_rows:
        return

    labels = ["trained", "compressed", "interp 0.5", "CompressedAlg-k (learned)", "CompressedAlg-k (Chebyshev per-position)"]
    keys = ["trained_loss", "compressed_loss", "interp_half_loss", "compressed_alg_learned_loss", "compressed_alg_fixed_loss"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(keys)
    for i, (lab, key) in enumerate(zip(labels, keys)):
        ax.bar([j + i * width for j in range(len(model_rows))], [r[key] for r in model_rows], width, label=lab)
    ax.axhline(ridge_loss, color="k", lw=1, label="ridge optimum")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(model_rows))], [r["model"] for r in model_rows])
    ax.set_yscale("log")
    ax.set_ylabel("test loss")
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.95)
    fig.savefig(out / "loss_bars.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in cfg.models:
        rows = [r for r in interp_rows if r["model"] == name]
        ax.plot([r["weight"] for r in rows], [r["loss"] for r in rows], "o-", label=name)
    ax.set_xlabel("weight w on the compressed products (0 = trained, 1 = compressed)")
    ax.set_ylabel("test loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.95)
    fig.savefig(out / "interpolation.png", dpi=100)
    plt.close(fig)

    for name, layers in result.heatmaps.items():
        fig, axes = plt.subplots(len(layers), 4, figsize=(10, 2.6 * len(layers)), squeeze=False)
        for row, p in enumerate(layers):
            layer, head, kq, kq_c, pv, pv_c = p.layer, p.head, p.kq, p.kq_compressed, p.pv, p.pv_compressed
            for col, (mat, title) in enumerate(((kq, "W_k^T W_q"), (kq_c, "compressed"), (pv, "P W_v"), (pv_c, "compressed"))):
                ref = (kq if col < 2 else pv).abs().max().item() or 1.0
                axes[row, col].imshow(mat.numpy(), cmap="RdBu_r", vmin=-ref, vmax=ref)
                axes[row, col].set_title(f"L{layer} h{head} {title} (|max| {ref:.2g})", fontsize=8)
                axes[row, col].set_axis_off()
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (2.6 * len(layers)), wspace=0.1, hspace=0.25)
        fig.suptitle(f"{name}: trained products vs block-scalar compression (blue < 0 < red)", fontsize=9)
        fig.savefig(out / f"heatmap_{name}.png", dpi=90)
        plt.close(fig)


def write_summary(out: Path, cfg: CompressedAlgConfig, result: CompressedAlgResult) -> None:
    """``summary.md``: settings, checks, the CompressedAlg-k table, compression and interpolation tables."""
    k_rows = [r.row() for r in result.ks]
    model_rows = [r.row() for r in result.models]
    interp_rows = [r.row() for r in result.interpolation]
    fixed_loss, fixed_lam, lam_star, seconds = result.fixed_chebyshev, result.fixed_lam, result.ridge_lam, result.seconds
    lines = ["# CompressedAlg-k, block-scalar compression and interpolation (paper B, Prop. 2 / Fig. 4)", ""]
    lines += [
        f"Fully observed LDS, n_s = {cfg.task.state_dim}, T = {cfg.task.seq_len}; test loss = 1/2 ||pred - s_(t+1)||^2 "
        f"averaged over {cfg.eval_sequences} sequences (seed {cfg.eval_seed}) and all {cfg.task.seq_len - 1} positions. "
        f"Ridge lambda = {lam_star}; every fixed baseline's lambda is chosen per k on {cfg.val_sequences} validation "
        f"sequences (seed {cfg.val_seed}) from {cfg.ridge_lams}. "
        f"Learned CompressedAlg-k: {cfg.train_steps} Adam steps (batch {cfg.batch_size}, peak lr {cfg.lr}) on scalar "
        "alpha_j > 0, beta_j, lam, eta, initialised at the tuned 'Chebyshev global' baseline of the same k. "
        "k counts iterations from x_0 = 0 = layers (the first iterate alpha_0 s_t is free; k = 1 is one-step GD).",
        "",
    ]
    lines += ["## Checks", "", "| check | result | numbers |", "|---|---|---|"]
    lines += [f"| {c.name} | {verdict(c.ok)} | {c.numbers} |" for c in result.checks]
    lines += [
        "",
        "## CompressedAlg-k",
        "",
        "Chebyshev 'global': scalar coefficients for the bounds [1/lam, 1.05 max_t lambda_max(X_t)] (implementable by "
        "block-scalar weights; the learned run starts there). Chebyshev 'per-position': `compressed_alg_prediction`, "
        "exact lambda_max(X_t) at every position (an oracle no scalar weight can implement).",
        "",
        "| k | learned | Chebyshev global (lam) | Chebyshev per-position (lam) | ridge | learned lam | learned eta | learned alphas | learned betas |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in k_rows:
        lines.append(
            f"| {r['k']} | {fmt(r['learned_loss'])} | {fmt(r['chebyshev_global_loss'])} ({r['chebyshev_global_lam']:g}) | "
            f"{fmt(r['fixed_chebyshev_loss'])} ({r['fixed_chebyshev_lam']:g}) | {fmt(r['ridge_loss'])} | "
            f"{fmt(r['learned_lam'])} | {fmt(r['learned_eta'])} | {r['learned_alphas']} | {r['learned_betas']} |"
        )
    extra = [k for k in sorted(fixed_loss) if k not in cfg.ks]
    if extra:
        lines += [
            "",
            "Per-position Chebyshev at larger k: "
            + ", ".join(f"k={k}: {fmt(fixed_loss[k])} (lam {fixed_lam[k]:g})" for k in extra),
        ]
    if model_rows:
        lines += [
            "",
            "## Compression of trained linear-k models",
            "",
            "Tokens [0, s_t, s_(t-1)]: 3 x 3 = 9 block scalars per product, 18 per head (the paper's 4-slot tokens give "
            "4 x 4 = 16). Energy fraction = ||block-scalar part||_F^2 / ||product||_F^2: all heads of the model pooled "
            "(total) / mean over heads / min over heads (per head: compression_heads.csv).",
            "",
            "| model | trained | compressed | interp 0.5 | CompressedAlg-k learned | Chebyshev per-position | kq energy total/mean/min | pv energy total/mean/min |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in model_rows:
            lines.append(
                f"| {r['model']} | {fmt(r['trained_loss'])} | {fmt(r['compressed_loss'])} | {fmt(r['interp_half_loss'])} | "
                f"{fmt(r['compressed_alg_learned_loss'])} | {fmt(r['compressed_alg_fixed_loss'])} | "
                f"{r['kq_energy_frac_total']:.3f} / {r['kq_energy_frac_mean']:.3f} / {r['kq_energy_frac_min']:.3f} | "
                f"{r['pv_energy_frac_total']:.3f} / {r['pv_energy_frac_mean']:.3f} / {r['pv_energy_frac_min']:.3f} |"
            )
        lines += [
            "",
            "Learned CompressedAlg-k' closest in loss to each trained model: "
            + ", ".join(f"{r['model']}: k' = {r['closest_learned_k']}" for r in model_rows),
        ]
        lines += [
            "",
            "## Interpolation (products (1 - w) trained + w compressed; post-hoc, not during training)",
            "",
            "| model | " + " | ".join(f"w={w}" for w in cfg.weights) + " |",
            "|---|" + "---|" * len(cfg.weights),
        ]
        for name in cfg.models:
            rows = {r["weight"]: r["loss"] for r in interp_rows if r["model"] == name}
            lines.append(f"| {name} | " + " | ".join(fmt(rows[w]) for w in cfg.weights) + " |")
    lines += ["", f"Wall time {seconds:.1f} s (torch threads {torch.get_num_threads()})."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
