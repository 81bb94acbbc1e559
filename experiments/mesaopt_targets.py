"""Diagnostics of the two open mesa-optimization targets (README "Mesa-optimization toolkit"; docs/experiments.md).

    OMP_NUM_THREADS=1 python experiments/mesaopt_targets.py mesa [--steps 1500] [--model key=value ...]
        [--train key=value ...] [--lam-lr-scale S] [--tag NAME] [--sequences 2048]
    OMP_NUM_THREADS=1 python experiments/mesaopt_targets.py probes [--tokens constructed|constructed4] [--steps 2000]

``mesa``: the single Mesa layer at t = 50. Prints (1) the layer set to the ridge construction against ridge itself
(float32 and float64), (2) ridge's loss at several ``lam``, then trains the ``mesa-1`` recipe with the given
overrides (cached in ``runs/mesaopt/diag/<tag>``) and prints its ratio to tuned ridge per position, its
ridge-equivalent ``lam``, the leaks of its key / query weights (the ``s_t`` slot in the key, ``s_(t-1)`` in the
query) and "surgery": the same weights with ``lam`` raised and the output gain refitted, with and without the
leaks. ``--lam-lr-scale S`` trains with ``lam = exp(S * p)`` (Adam then moves ``log lam`` S times faster); this
is a patch of this script only, not a library option.

``probes``: the 4-layer linear model (``linear-4``, or its 4-slot-token twin). Prints per layer: the largest
``|e|`` and the fraction at the activation clip, the RMS of every token slot, the preconditioning probe error
(mean over t >= 10) for several ``lam``, the same from each slot alone, and the decodability of ``s_t`` itself.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from mesanet.mesaopt.analysis.compressed import ridge_loss
from mesanet.mesaopt.analysis.per_step_loss import tune_ridge_lambda
from mesanet.mesaopt.analysis.probes import activation_stats, preconditioned_inputs, probe_errors
from mesanet.mesaopt.analysis.ridge_construction import ridge_equivalent_lambda, set_ridge_construction
from mesanet.mesaopt.analysis.seq_training import build_model, per_position_loss, tokens_of, training_states
from mesanet.mesaopt.analysis.zoo import load_or_train, recipe
from mesanet.mesaopt.data.dynamics import generate_lds

ROOT = Path("runs/mesaopt/diag")
N = 10


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _lam_lr_scale(scale: float) -> None:
    from mesanet.mesaopt.layers import regression_mesa as rm

    reset = rm.RegressionMesa.reset_parameters

    def reset_scaled(self):
        reset(self)
        torch.nn.init.constant_(self.log_lam, math.log(self.lam_init) / scale)

    rm.RegressionMesa.lam = property(lambda self: (scale * self.log_lam).exp())
    rm.RegressionMesa.reset_parameters = reset_scaled


def _ratios(curve, ridge) -> str:
    return " ".join(f"{t + 1}:{float(curve[t] / ridge[t]):.3f}" for t in (0, 4, 9, 14, 19, 29, 39, len(curve) - 1))


@torch.no_grad()
def run_mesa(args) -> None:
    model_cfg, train_cfg = recipe("mesa-1")
    task = train_cfg.task
    lam, _ = tune_ridge_lambda(training_states(train_cfg, 2048))
    states = generate_lds(task, args.sequences, seed=1, dtype=torch.float64).states
    ridge = ridge_loss(states, lam)
    print(f"tuned ridge lam {lam:.4g}: last {float(ridge[-1]):.4e}, mean {float(ridge.mean()):.5f}")
    for dtype in (torch.float32, torch.float64):
        built = set_ridge_construction(build_model(model_cfg), lam).to(dtype)
        c = per_position_loss(lambda x, m=built, d=dtype: m(x.to(d)), task, num_sequences=args.sequences, seed=1)
        print(
            f"construction {str(dtype):14s} last/ridge {float(c[-1] / ridge[-1]):.5f} mean/ridge {float(c.mean() / ridge.mean()):.5f}"
        )
    for ref in (1, 3, 10, 15, 30, 100, 300, 1e4):
        r = ridge_loss(states, ref)
        print(f"ridge lam {ref:6g}: last/tuned {float(r[-1] / ridge[-1]):.4f} mean/tuned {float(r.mean() / ridge.mean()):.4f}")

    root = ROOT
    if args.lam_lr_scale != 1.0:  # the scale is not part of the saved configs: keep such models apart
        _lam_lr_scale(args.lam_lr_scale)
        root = ROOT / f"lam-lr-scale-{args.lam_lr_scale:g}"
    model_cfg = replace(model_cfg, **_overrides(args.model))
    train_cfg = replace(train_cfg, steps=args.steps, **_overrides(args.train))
    with torch.enable_grad():
        model = load_or_train(args.tag, root, progress=False, configs=(model_cfg, train_cfg))
    curve = per_position_loss(model, task, num_sequences=args.sequences, seed=1)
    lam_eq, gap = ridge_equivalent_lambda(curve, states)
    print(f"{args.tag}: last/ridge {float(curve[-1] / ridge[-1]):.4f} mean/ridge {float(curve.mean() / ridge.mean()):.4f}")
    print(f"  per t: {_ratios(curve, ridge)}")
    print(
        f"  ridge-equivalent lam {lam_eq:.3g} (rms log gap {gap:.3f}); ridge there: last/tuned {float(ridge_loss(states, lam_eq)[-1] / ridge[-1]):.4f}"
    )
    mixer = model.blocks[0].mixer
    wk, wq = mixer.w_k[0, :, N:], mixer.w_q[0, :, N:]
    print(
        f"  layer lam {float(mixer.lam[0]):.4g}; key singular values on [s_t, s_(t-1)]: {[round(float(v), 4) for v in torch.linalg.svdvals(wk)]}"
    )
    print(
        f"  leaks (Frobenius): s_t in the key {float(wk[:, :N].norm()):.4f} (of {float(wk.norm()):.3f}), s_(t-1) in the query {float(wq[:, N:].norm()):.4f} (of {float(wq.norm()):.3f})"
    )
    if len(model_cfg.layers) != 1 or model_cfg.input_dim != 3 * N:
        return
    fit = generate_lds(task, 1024, seed=7).states
    for clean in (False, True):
        for factor in (1, 3, 10, 100):
            m = load_or_train(args.tag, root, progress=False, configs=(model_cfg, train_cfg))
            mx = m.blocks[0].mixer
            if clean:
                mx.w_k[:, :, N : 2 * N] = 0
                mx.w_q[:, :, 2 * N :] = 0
            mx.log_lam += math.log(factor) / args.lam_lr_scale
            p, y = m(tokens_of(fit, "constructed"))[:, :-1].double(), fit[:, 1:].double()
            gain = float((p * y).sum() / (p * p).sum())
            mx.proj[:, :N] *= gain
            c = per_position_loss(m, task, num_sequences=args.sequences, seed=1)
            print(
                f"  surgery leaks removed={clean!s:5s} lam x{factor:<4g} gain {gain:.4f}: last/ridge {float(c[-1] / ridge[-1]):.4f} mean/ridge {float(c.mean() / ridge.mean()):.4f}"
            )


@torch.no_grad()
def run_probes(args) -> None:
    model_cfg, train_cfg = recipe("linear-4")
    slots = 4 if args.tokens == "constructed4" else 3
    model_cfg = replace(model_cfg, input_dim=slots * N)
    train_cfg = replace(train_cfg, tokens=args.tokens, steps=args.steps)
    tag = f"linear-4-{args.tokens}-steps{args.steps}"
    with torch.enable_grad():
        model = load_or_train(tag, ROOT, progress=False, configs=(model_cfg, train_cfg))
    task = train_cfg.task

    def record(num, seed):
        s = generate_lds(task, num, seed=seed).states
        _, hs = model(tokens_of(s, args.tokens), return_hidden=True)
        return s.double(), torch.stack(hs).double().transpose(1, 2)[:, :-1]  # [L+1, T-1, N, E]

    s_tr, h_tr = record(args.sequences, 11)
    s_te, h_te = record(args.sequences // 2, 12)
    layers = range(h_te.shape[0])
    mean = float(per_position_loss(model, task, num_sequences=1024, seed=1, tokens=args.tokens).mean())
    print(f"{tag}: test loss (mean over t) {mean:.4f}")
    act = activation_stats(h_te, model.config.activation_clip)
    for layer in layers:
        rms = [round(float(h_te[layer][..., i * N : (i + 1) * N].square().sum(-1).mean().sqrt()), 3) for i in range(slots)]
        print(f"  layer {layer}: max|e| {act['max_abs'][layer]:.3f} at clip {act['clipped'][layer]:.2g}; slot RMS {rms}")

    def late(x_tr, y_tr, x_te, y_te) -> str:
        return " ".join(f"{float(probe_errors(x_tr[l], y_tr, x_te[l], y_te, 1e-4)[9:].mean()):.3f}" for l in layers)

    def target(s, lam):
        return preconditioned_inputs(s, lam)[:, :-1].transpose(0, 1)

    for lam in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0):
        print(f"  precond probe lam {lam:<5g} layers 0..L: {late(h_tr, target(s_tr, lam), h_te, target(s_te, lam))}")
    for i in range(slots):
        sl = slice(i * N, (i + 1) * N)
        print(f"  precond lam 1 from slot {i} only:  {late(h_tr[..., sl], target(s_tr, 1.0), h_te[..., sl], target(s_te, 1.0))}")
    cur = (s_tr[:, :-1].transpose(0, 1), s_te[:, :-1].transpose(0, 1))
    nxt = (s_tr[:, 1:].transpose(0, 1), s_te[:, 1:].transpose(0, 1))
    print(f"  s_t probe:                  {late(h_tr, cur[0], h_te, cur[1])}")
    print(f"  target (s_t+1) probe:       {late(h_tr, nxt[0], h_te, nxt[1])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    mesa = sub.add_parser("mesa")
    mesa.add_argument("--steps", type=int, default=1500)
    mesa.add_argument("--model", nargs="*", default=[], help="SeqModelConfig overrides key=value")
    mesa.add_argument("--train", nargs="*", default=[], help="SeqTrainConfig overrides key=value")
    mesa.add_argument("--lam-lr-scale", type=float, default=1.0)
    mesa.add_argument("--tag", default="mesa-1-diag")
    mesa.add_argument("--sequences", type=int, default=2048)
    probes = sub.add_parser("probes")
    probes.add_argument("--tokens", choices=("constructed", "constructed4"), default="constructed")
    probes.add_argument("--steps", type=int, default=2000)
    probes.add_argument("--sequences", type=int, default=2048)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (run_mesa if args.what == "mesa" else run_probes)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
