"""CG steps of a trained model's Mesa layers, per preconditioner: the statistics the solver is tuned on.

Loads a training run's model (``runs/small`` by default, the ``make run`` job), runs its validation windows
at ``--length`` tokens through the model in eval mode once per solver setting, and reports per layer the CG
steps to the tolerance (mean and max over every token x head system). Steps do not depend on the machine's
load. With ``--time`` it also times the model's whole forward per setting (interleaved rounds, one thread by
default: ratios between settings are taken under one load; time nothing else meanwhile), and the layers' Mesa
ops alone on the inputs they received in that forward (the solves with their setup, states and outputs, without
the rest of the model): the cost the preconditioners are compared by. Settings: ``none``,
``jacobi``, ``chunk`` (once per chunk), ``chunk/16`` (refreshed every 16 tokens) and ``chunk-keys`` (with the
block's own keys) once per chunk and every 32 / 16 / 8 tokens, all at ``--tol`` (default 1e-4, the paper's
inference tolerance) with at most 30 steps.

Usage::

    python -m benchmarks.bench_solver_steps [RUN_DIR] [--length 1024] [--windows 2] [--tol 1e-4] [--time] [--threads 1] [--out DIR]

Writes ``solver_steps.json`` and ``solver_steps.md`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from benchmarks import harness as h
from mesanet.data import eval_windows
from mesanet.eval.checkpoint import load_checkpoint
from mesanet.eval.run_eval import validation_tokens
from mesanet.eval.run_files import load_run_config, resolve_model_dir
from mesanet.layers import collect_solver_stats, mesa_layer
from mesanet.ops import SolverSettings, mesa
from mesanet.utils.allocator import describe as describe_allocator
from mesanet.utils.allocator import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN = REPO / "runs" / "small"
DEFAULT_OUT = REPO / "benchmarks" / "results"

#: (label, preconditioner, precondition_every) compared at one tolerance.
SETTINGS = (
    ("none", "none", None),
    ("jacobi", "jacobi", None),
    ("chunk", "chunk", None),
    ("chunk/16", "chunk", 16),
    ("chunk-keys", "chunk-keys", None),
    ("chunk-keys/32", "chunk-keys", 32),
    ("chunk-keys/16", "chunk-keys", 16),
    ("chunk-keys/8", "chunk-keys", 8),
)

#: The issue's targets for the chunk preconditioner on the trained model: max steps at tol 1e-4.
MAX_STEPS_TARGET, MAX_STEPS_STRETCH = 6, 4


#: Timing rounds of ``--time``: every round runs each setting's forward once, in rotating order.
TIME_POLICY = h.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=5, budget_s=20.0)


def measure(run_dir: Path, length: int, windows: int, tol: float, max_iter: int = 30, time: bool = False) -> dict[str, Any]:
    model_dir, run = resolve_model_dir(run_dir)
    model = load_checkpoint(model_dir).model.eval()
    config = load_run_config(run)
    tokens = validation_tokens(config["data"], progress=False, run_dir=Path(run))
    inputs = eval_windows(tokens, length, max_windows=windows)  # [windows, length]
    rows, calls = [], {}
    op_calls = _capture_op_calls(model, inputs) if time else []
    for label, preconditioner, every in SETTINGS:
        solver = SolverSettings(max_iter=max_iter, tol=tol, preconditioner=preconditioner, precondition_every=every)
        with torch.no_grad(), collect_solver_stats(model, solver) as collector:
            model(input_ids=inputs, use_cache=False)
            summary = collector.summary()
        calls[label] = functools.partial(_forward, model, inputs, solver)
        if time:
            calls[f"{label} ops"] = functools.partial(_ops, op_calls, solver)
        rows.append(
            dict(
                setting=label,
                preconditioner=preconditioner,
                precondition_every=every,
                layers=[
                    dict(layer=s.layer_index, mean=s.mean_iterations, max=s.max_iterations, max_residual=s.max_relative_residual)
                    for s in summary
                ],
            )
        )
    if time:
        records, _ = h.time_interleaved(calls, "cpu", TIME_POLICY)
        for row in rows:
            row["forward_ms"] = 1e3 * records[row["setting"]]["min_s"]
            row["ops_ms"] = 1e3 * records[f"{row['setting']} ops"]["min_s"]
            row["foreign_cpu_fraction"] = max(
                records[key]["foreign_cpu_fraction"] or 0.0 for key in (row["setting"], f"{row['setting']} ops")
            )
    return dict(
        run=str(run_dir),
        threads=torch.get_num_threads(),
        allocator=describe_allocator(),
        length=length,
        windows=int(inputs.shape[0]),
        tol=tol,
        max_iter=max_iter,
        rows=rows,
        target=dict(max_steps=MAX_STEPS_TARGET, stretch=MAX_STEPS_STRETCH),
    )


def _forward(model: torch.nn.Module, inputs: torch.Tensor, solver: SolverSettings) -> None:
    """The whole model forward with every Mesa layer on ``solver`` (what ``--time`` times)."""
    with torch.no_grad(), collect_solver_stats(model, solver):
        model(input_ids=inputs, use_cache=False)


def _capture_op_calls(model: torch.nn.Module, inputs: torch.Tensor) -> list[tuple[tuple, dict]]:
    """The arguments of every Mesa layer's op call in one forward of the model (detached)."""
    calls, original = [], mesa_layer.mesa

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append((tuple(a.detach() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        return original(*args, **kwargs)

    mesa_layer.mesa = record
    try:
        with torch.no_grad():
            model(input_ids=inputs, use_cache=False)
    finally:
        mesa_layer.mesa = original
    return calls


def _ops(op_calls: list[tuple[tuple, dict]], solver: SolverSettings) -> None:
    """Every layer's Mesa op on its recorded inputs with ``solver`` (what ``--time`` times as "ops")."""
    with torch.no_grad():
        for args, kwargs in op_calls:
            mesa(*args, **{**kwargs, "solver": solver, "return_stats": False})


def render_markdown(results: dict[str, Any]) -> str:
    layers = [entry["layer"] for entry in results["rows"][0]["layers"]]
    out = [
        "# CG steps on a trained model",
        "",
        f"Run `{results['run']}`: {results['windows']} validation windows of {results['length']} tokens; "
        f"tol {results['tol']:g}, at most {results['max_iter']} steps. Steps mean / max over every (token, head) "
        f"system of each Mesa layer. Target: max <= {results['target']['max_steps']} "
        f"(stretch <= {results['target']['stretch']}).",
        "",
    ]
    timed = all("forward_ms" in row for row in results["rows"])
    header = ["setting", *[f"layer {i}" for i in layers], "mean over layers", "max over layers"]
    if timed:
        base = next(row["forward_ms"] for row in results["rows"] if row["setting"] == "chunk")
        ops_base = next(row["ops_ms"] for row in results["rows"] if row["setting"] == "jacobi")
        header += ["forward ms", "/ chunk", "Mesa ops ms", "/ jacobi"]
        load = max(row["foreign_cpu_fraction"] or 0.0 for row in results["rows"])
        out += [
            f"Forward: the whole model on these windows; Mesa ops: the layers' Mesa ops alone on the inputs they "
            f"received there (solve, its setup, states and outputs). {results['threads']} thread(s), fastest of "
            f"interleaved rounds (other load on the machine meanwhile: {h.percent(load)}); allocator: "
            f"{results.get('allocator', 'not recorded')}.",
            "",
        ]
    body = []
    for row in results["rows"]:
        cells = [f"{e['mean']:.1f} / {e['max']}" for e in row["layers"]]
        mean = sum(e["mean"] for e in row["layers"]) / len(row["layers"])
        line = [f"`{row['setting']}`", *cells, f"{mean:.1f}", max(e["max"] for e in row["layers"])]
        if timed:
            line += [f"{row['forward_ms']:.0f}", f"{row['forward_ms'] / base:.2f}x"]
            line += [f"{row['ops_ms']:.0f}", f"{row['ops_ms'] / ops_base:.2f}x"]
        body.append(line)
    return "\n".join(out + h.table(header, body)) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    keep_freed_memory()  # as the timing workers (mesanet.utils.allocator)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=DEFAULT_RUN, help=f"training run directory (default {DEFAULT_RUN})")
    parser.add_argument("--length", type=int, default=1024, help="tokens per window (default 1024)")
    parser.add_argument("--windows", type=int, default=2, help="validation windows (default 2)")
    parser.add_argument("--tol", type=float, default=1e-4, help="CG tolerance (default 1e-4)")
    parser.add_argument("--time", action="store_true", help="also time the model's forward per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        parser.error(f"expected a training run directory, got {str(args.run)!r} (train one with `make run`)")
    if args.threads < 1:
        parser.error(f"--threads: expected an integer >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    results = measure(args.run, args.length, args.windows, args.tol, time=args.time)
    _, md = h.write_results(results, args.out, "solver_steps", render_markdown)
    print(md.read_text())


if __name__ == "__main__":
    main()
