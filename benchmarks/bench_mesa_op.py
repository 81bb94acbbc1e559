"""Benchmark of the Mesa operator ``mesanet.ops.mesa`` and its decode step ``mesa_step``, side by side
with the peer implementation (flash-linear-attention's pure-PyTorch MesaNet, loaded by path at run time).

Sections (defaults: B=1, H=4, Dk=Dv=64, chunk C=64, fp32; T in {512, 2048, 8192}):

* **Side by side**: forward and forward+backward wall time and peak memory of ``mesa`` at its default
  settings (no ``solver`` argument), of ``mesa`` with the paper's fixed 30 steps
  (``SolverSettings(tol=0.0)``) and of the peer's ``naive_mesa_net_CG`` with 30 steps, in the same run;
  CG steps used (mean / max, ``return_stats=True``); forward GFLOP/s (:mod:`benchmarks.flops`) and its
  share of the measured matmul peak. The variants of one (T, mode) are timed in turns in one fresh worker
  process (:func:`benchmarks.harness.time_interleaved`: every round times each once), so the ratios to the
  peer are taken under the same load; each variant's memory is measured in a worker of its own.
* **Accuracy**: the fp32 output of every variant against a float64 reference at the same T (float64
  ``mesa``, chunk preconditioner, up to ``REFERENCE_SOLVER.max_iter`` steps at the float64 residual
  floor), itself checked against the sequential ``mesa_reference`` at a short T.
* **Targets** (flags, never an exit status): peer fwd+bwd / ours (default) >= 4x, peer fwd / ours >= 3x,
  our fp32 error <= 1e-4 (headline at T=2048); decode <= 0.5 ms per token per layer and >= 3.8x faster
  than the peer at B=1, flat in the context; time and memory T=8192 / T=2048 <= 4.5 (linear scaling);
  fixed-30 forward at T=2048 >= 40% of the matmul peak.
* **Decode**: ``mesa_step`` at its default settings per token per layer at B=1 and B=8 (H=4, d=64),
  from states prefilled to T=512 and T=8192; its error against a float64 direct solve; the peer's
  ``naive_mesa_net_decoding_one_step`` with 30 steps on the same states. Each implementation is timed in a
  worker process of its own (not in turns: a step of a fraction of a millisecond is slowed by the other's
  still-spinning thread pools, see :func:`benchmarks.mesa_op.decode.measure_decode`).
* **Preconditioners** (``--preconditioners``): none / jacobi / chunk / chunk-keys (and the last two refreshed
  every 16 tokens, ``chunk/16``, ``chunk-keys/16``) at ``tol=1e-4``: CG steps mean / max, forward time and
  error, on random keys and on skewed keys (channel scales 1..1e-2 before normalisation) with gates near 1
  (gamma in [0.99, 1], lam 0.25).

Inputs (``random``): unit-norm q and k, v ~ N(0, 1), gamma ~ U[0.8, 0.99], beta ~ U[0, 1], lam = 1. Our
ops are timed at their defaults, value checks included (``validate=True``; the peer checks nothing).

Usage::

    python -m benchmarks.bench_mesa_op [--quick] [--device cpu|cuda] [--peer PATH] [--preconditioners] [--out DIR]

Writes ``mesa_op.json`` and ``mesa_op.md`` to ``DIR`` (default ``benchmarks/results/``) and prints the
markdown; :func:`run_benchmark` is the same as a function.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

if not __package__:  # run as a file: the repository root (for ``benchmarks``) and src/ on the path
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import torch

from benchmarks import harness as h
from benchmarks.flops import FLOP_FORMULA
from benchmarks.mesa_op.cases import (  # noqa: F401 - Variant and make_inputs: the benchmark's API
    DECODE_BATCHES,
    DECODE_INNER,
    DECODE_POLICY,
    DEFAULT,
    DEFAULT_DECODE_CONTEXTS,
    DEFAULT_LENGTHS,
    DEFAULT_POLICY,
    FIXED_30,
    HEADLINE_LENGTH,
    INPUT_KINDS,
    MODES,
    PEER,
    PRECONDITIONER_TOL,
    QUICK_DECODE_CONTEXTS,
    QUICK_LENGTHS,
    QUICK_POLICY,
    REFERENCE_SOLVER,
    VALIDATE,
    Shape,
    Variant,
    load_peer,
    make_inputs,
    preconditioner_settings,
)
from benchmarks.mesa_op.decode import decode_defaults
from benchmarks.mesa_op.measure import OpCall, check_accuracy, check_reference, measure_config, measure_group, reference_output
from benchmarks.mesa_op.report import render_markdown
from benchmarks.mesa_op.targets import target_checks
from mesanet.ops import INFERENCE
from mesanet.utils.allocator import keep_freed_memory


def run_benchmark(
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    *,
    peer: Optional[str] = None,
    shape: Shape = Shape(),
    policy: h.RepeatPolicy = DEFAULT_POLICY,
    decode_contexts: Sequence[int] = DEFAULT_DECODE_CONTEXTS,
    decode_batches: Sequence[int] = DECODE_BATCHES,
    decode_policy: h.RepeatPolicy = DECODE_POLICY,
    decode_inner: int = DECODE_INNER,
    preconditioners: bool = False,
    preconditioner_length: int = HEADLINE_LENGTH,
    reference_length: int = 256,
    matmul_size: int = 4096,
    device: str = "cpu",
    seed: int = 0,
    isolate: bool = True,
    memory: bool = True,
    retries: int = h.CONTENDED_RETRIES,
    out_dir: Optional[Path] = h.DEFAULT_OUT,
    log: h.Log = h.print_log,
) -> dict[str, Any]:
    """Run every section, write ``mesa_op.json`` / ``mesa_op.md`` to ``out_dir`` (unless None), return the results.

    ``peer``: path of the peer's ``naive.py`` (the side-by-side columns are skipped, with a note, when it
    is None or cannot be loaded). ``isolate=False`` measures in this process (faster; CPU memory figures
    are then only lower bounds). ``memory=False`` skips the memory workers. Empty ``decode_contexts``
    skips the decode section.
    """
    started, load_before = time.perf_counter(), h.load_average()
    lengths = sorted(set(lengths))
    peer_module, note = load_peer(peer)
    peer_path = str(Path(peer).expanduser().resolve()) if peer_module is not None else None
    peer_info = dict(
        path=peer_path,
        loaded=peer_module is not None,
        note=f"`{peer_path}` (loaded at run time)" if peer_module is not None else f"skipped ({note})",
    )
    if peer_module is None:
        log(f"peer implementation skipped: {note}")
    variants = [DEFAULT, FIXED_30] + ([PEER] if peer_module is not None else [])
    if peer_module is not None and any(n % shape.chunk for n in lengths):
        raise ValueError(f"the peer needs T divisible by the chunk size {shape.chunk}; got T={lengths}")
    log(f"mesa benchmark on {device}: T={lengths}, variants {[v.name for v in variants]}")
    peak_start = h.measure_matmul_peak_quietly(matmul_size, device, retries)
    log(f"fp32 matmul {matmul_size}^2: best {peak_start['best_gflops']:.1f} GFLOP/s")
    common = dict(shape=asdict(shape), policy=asdict(policy), device=device, seed=seed, retries=retries, peer=peer_path)

    runs = []
    for length in lengths:
        for mode in MODES:  # every variant of one (T, mode) timed in turns in one worker: their ratios under one load
            group = measure_group(
                dict(common, length=length, variants=[asdict(v) for v in variants], mode=mode, inputs="random"), isolate, memory
            )
            runs += group
            for run in group:
                log(
                    f"T={length:<6d} {run['variant']:<9s} {mode:<8s} median {1e3 * run['median_s']:9.1f} ms ({run['repeats']} reps)  "
                    f"peak +{h.fmt(run.get('peak_memory_mib'), '.1f')} MiB  CG {run['cg_mean_iterations']:.1f}/{run['cg_max_iterations']}  "
                    f"other load {h.percent(run['foreign_cpu_fraction'])}"
                )
    runs.sort(key=lambda r: (r["length"], [v.name for v in variants].index(r["variant"]), MODES.index(r["mode"])))
    accuracy = []
    for length in lengths:
        accuracy += check_accuracy(shape, length, variants, seed=seed, device=device, peer=peer_path)
        log(
            "accuracy T=%d: %s"
            % (length, ", ".join(f"{a['variant']} {a['relative_error']:.1e}" for a in accuracy[-len(variants) :]))
        )
    reference = check_reference(shape, reference_length, seed=seed)

    decode = []
    if decode_contexts:
        decode_spec = dict(
            common,
            policy=asdict(decode_policy),
            contexts=sorted(set(decode_contexts)),
            batches=list(decode_batches),
            inner=decode_inner,
        )
        for impl in ["mesa_step"] + (["peer-30"] if peer_module is not None else []):  # each in a process of its own
            decode += h.call_in_worker(
                "benchmarks.mesa_op.decode:measure_decode", dict(decode_spec, impl=impl), isolate=isolate, log=log
            )

    precond = []
    if preconditioners:
        for kind in INPUT_KINDS:
            reference_out = reference_output(shape, preconditioner_length, seed=seed, kind=kind)
            for name, solver in preconditioner_settings().items():
                variant = Variant(f"tol-{PRECONDITIONER_TOL:g}-{name}", solver=solver)
                spec = dict(common, length=preconditioner_length, variant=asdict(variant), mode="fwd", inputs=kind)
                run = dict(measure_config(spec, isolate, memory=False), preconditioner=name)
                with torch.no_grad():
                    out, _ = OpCall(spec).forward()
                run["relative_error"] = h.relative_errors(out, reference_out)[0]
                precond.append(run)
                log(
                    f"preconditioner {name:<13s} {kind:<6s} CG {run['cg_mean_iterations']:.1f}/{run['cg_max_iterations']}  "
                    f"fwd {1e3 * run['median_s']:.1f} ms  rel. error {run['relative_error']:.1e}"
                )

    peak_end = h.measure_matmul_peak_quietly(matmul_size, device, retries)
    peak = h.matmul_peak_summary(peak_start, peak_end)
    for run in runs + precond:
        if "gflops" in run:
            run["peak_fraction"] = run["gflops"] / peak["peak_gflops"]
    measured = [(f"T={r['length']} {r['variant']} {r['mode']}", r) for r in runs]
    measured += [(f"decode {r['impl']} B={r['batch']} T={r['context']}", r) for r in decode]
    measured += [(f"preconditioner {r['variant']} {r['inputs']}", r) for r in precond]
    results: dict[str, Any] = dict(
        machine=dict(h.machine_info(device), load_average_1m_at_start=load_before),
        config=dict(
            lengths=lengths,
            shape=asdict(shape),
            policy=asdict(policy),
            variants=[dict(asdict(v), description=v.describe()) for v in variants],
            inputs=INPUT_KINDS,
            decode_contexts=sorted(set(decode_contexts)),
            decode_batches=list(decode_batches),
            decode_policy=asdict(decode_policy),
            decode_inner=decode_inner,
            preconditioner_length=preconditioner_length,
            reference_solver=REFERENCE_SOLVER.to_dict(),
            reference_length=reference_length,
            matmul_size=matmul_size,
            seed=seed,
            isolate=isolate,
            retries=retries,
            default_solver=INFERENCE.to_dict(),
            validate=VALIDATE,
        ),
        peer=peer_info,
        flop_formula=FLOP_FORMULA,
        matmul_peak=peak,
        runs=runs,
        accuracy=accuracy,
        reference_check=reference,
        decode=decode,
        decode_defaults=decode_defaults(),
        preconditioners=precond,
    )
    results["targets"] = target_checks(runs, accuracy, decode, lengths)
    results["quiet_machine"] = h.quiet_machine_check(peak, measured)
    results["total_runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        paths = h.write_results(results, Path(out_dir), "mesa_op", render_markdown)
        log(f"wrote {paths[0]} and {paths[1]}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    keep_freed_memory()  # as the timing workers (mesanet.utils.allocator)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"T={list(QUICK_LENGTHS)}, decode T={list(QUICK_DECODE_CONTEXTS)}, fewer repeats, a small matmul",
    )
    parser.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths (default {list(DEFAULT_LENGTHS)})")
    parser.add_argument(
        "--peer", help="path of flash-linear-attention's fla/ops/mesa_net/naive.py (side by side; skipped without)"
    )
    parser.add_argument(
        "--preconditioners", action="store_true", help="also compare the preconditioners none / jacobi / chunk / chunk-keys"
    )
    parser.add_argument("--no-decode", action="store_true", help="skip the decode section")
    parser.add_argument("--in-process", action="store_true", help="no worker processes (faster; CPU memory only a lower bound)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT, help=f"output directory (default {h.DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--retries",
        type=int,
        default=h.CONTENDED_RETRIES,
        help="how often a timing disturbed by other processes is taken again (0 while developing)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    options = dict(
        peer=args.peer,
        preconditioners=args.preconditioners,
        device=args.device,
        seed=args.seed,
        isolate=not args.in_process,
        retries=args.retries,
        out_dir=args.out,
    )
    if args.quick:
        options.update(
            lengths=QUICK_LENGTHS,
            policy=QUICK_POLICY,
            decode_contexts=QUICK_DECODE_CONTEXTS,
            decode_policy=QUICK_POLICY,
            decode_inner=5,
            preconditioner_length=QUICK_LENGTHS[-1],
            matmul_size=1024,
        )
    if args.lengths:
        options["lengths"] = args.lengths
    if args.no_decode:
        options["decode_contexts"] = ()
    results = run_benchmark(**options)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
