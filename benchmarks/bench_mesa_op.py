# Over 400 lines on purpose for now: one benchmark whose sections (side by side, accuracy, decode,
# preconditioners) fill one result dict and one report; splitting the decode and preconditioner sections
# into their own scripts on benchmarks/harness.py is the open part of the structure issue (benchmarks).
"""Benchmark of the Mesa operator ``mesanet.ops.mesa`` and its decode step ``mesa_step``, side by side
with the peer implementation (flash-linear-attention's pure-PyTorch MesaNet, loaded by path at run time).

Sections (defaults: B=1, H=4, Dk=Dv=64, chunk C=64, fp32; T in {512, 2048, 8192}):

* **Side by side**: forward and forward+backward wall time and peak memory of ``mesa`` at its default
  settings (no ``solver`` argument), of ``mesa`` with the paper's fixed 30 steps
  (``SolverSettings(tol=0.0)``) and of the peer's ``naive_mesa_net_CG`` with 30 steps, in the same run;
  CG steps used (mean / max, ``return_stats=True``); forward GFLOP/s (:mod:`benchmarks.flops`) and its
  share of the measured matmul peak. Every (T, variant, mode) is timed in one fresh worker process and
  its memory measured in another (see :mod:`benchmarks.harness`).
* **Accuracy**: the fp32 output of every variant against a float64 reference at the same T (float64
  ``mesa``, chunk preconditioner, up to ``REFERENCE_SOLVER.max_iter`` steps at the float64 residual
  floor), itself checked against the sequential ``mesa_reference`` at a short T.
* **Targets** (flags, never an exit status): peer fwd+bwd / ours (default) >= 4x, peer fwd / ours >= 3x,
  our fp32 error <= 1e-4 (headline at T=2048); decode <= 0.5 ms per token per layer and >= 3.8x faster
  than the peer at B=1, flat in the context; time and memory T=8192 / T=2048 <= 4.5 (linear scaling);
  fixed-30 forward at T=2048 >= 40% of the matmul peak.
* **Decode**: ``mesa_step`` at its default settings per token per layer at B=1 and B=8 (H=4, d=64),
  from states prefilled to T=512 and T=8192; its error against a float64 direct solve; the peer's
  ``naive_mesa_net_decoding_one_step`` with 30 steps on the same states.
* **Preconditioners** (``--preconditioners``): none / jacobi / chunk (and chunk refreshed every 16 tokens,
  ``chunk/16``) at ``tol=1e-4``: CG steps mean / max, forward time and error, on random keys and on skewed
  keys (channel scales 1..1e-2 before normalisation) with gates near 1 (gamma in [0.99, 1], lam 0.25).

Inputs (``random``): unit-norm q and k, v ~ N(0, 1), gamma ~ U[0.8, 0.99], beta ~ U[0, 1], lam = 1. Our
ops are timed at their defaults, value checks included (``validate=True``; the peer checks nothing).

Usage::

    python -m benchmarks.bench_mesa_op [--quick] [--device cpu|cuda] [--peer PATH] [--preconditioners] [--out DIR]

Writes ``mesa_op.json`` and ``mesa_op.md`` to ``DIR`` (default ``benchmarks/results/``) and prints the
markdown; :func:`run_benchmark` is the same as a function.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

if not __package__:  # run as a file: the repository root (for ``benchmarks``) and src/ on the path
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import harness as h
from benchmarks.flops import FLOP_FORMULA, forward_flops
from mesanet.ops import INFERENCE, SolverSettings, mesa, mesa_reference, mesa_step

MODES = ("fwd", "fwd+bwd")
PEER_FUNCTIONS = ("naive_mesa_net_CG", "naive_mesa_net_decoding_one_step")
PEER_STEPS = 30

#: The issue's targets.
PEER_FWD_BWD_TARGET = 4.0  # peer fwd+bwd time / ours (default settings)
PEER_FWD_TARGET = 3.0  # peer fwd time / ours (default settings)
ERROR_TARGET = 1e-4  # our fp32 relative output error (default settings)
HEADLINE_LENGTH = 2048
DECODE_TIME_TARGET_S = 0.5e-3  # ours, per token per layer at B=1
DECODE_PEER_TARGET = 3.8  # peer decode time / ours at B=1
DECODE_FLAT_TARGET = 1.2  # ours at the longest prefill / the shortest
SCALING_SLACK = 4.5 / 4.0  # time and memory may grow 4.5x when T grows 4x
PEAK_FRACTION_TARGET = 0.40  # fixed-30 forward at T=2048, of the matmul peak

#: Value checks of the ops in the timed calls: on, the ops' default (one host synchronisation per call). The
#: Mesa layer calls the ops with ``validate_inputs=False`` unless asked; the peer checks nothing.
VALIDATE = True

#: The float64 reference: the chunk-preconditioned solve run to the float64 residual floor.
REFERENCE_SOLVER = SolverSettings(max_iter=500, tol=0.0, preconditioner="chunk")


# ---------------------------------------------------------------------------------------------
# Configuration and inputs


@dataclass(frozen=True)
class Shape:
    batch: int = 1
    heads: int = 4
    dk: int = 64
    dv: int = 64
    chunk: int = 64


@dataclass(frozen=True)
class Variant:
    """One implementation and solver: ``impl`` ``"mesa"`` (``solver``: SolverSettings fields, None for the
    operator's default, i.e. no argument) or ``"peer"`` (``naive_mesa_net_CG`` with ``peer_steps``)."""

    name: str
    impl: str = "mesa"
    solver: Optional[dict] = None
    peer_steps: int = PEER_STEPS

    def settings(self) -> Optional[SolverSettings]:
        return None if self.solver is None else SolverSettings(**self.solver)

    def describe(self) -> str:
        if self.impl == "peer":
            return f"peer naive_mesa_net_CG, {self.peer_steps} CG steps, no preconditioner"
        if self.solver is None:
            return f"mesa, no solver argument (default {INFERENCE})"
        return f"mesa, {self.settings()}"


DEFAULT = Variant("default")
FIXED_30 = Variant("fixed-30", solver=dict(tol=0.0))  # SolverSettings(tol=0.0): the paper's 30 steps
PEER = Variant("peer-30", impl="peer")

DEFAULT_LENGTHS = (512, 2048, 8192)
QUICK_LENGTHS = (256, 512)
DEFAULT_DECODE_CONTEXTS = (512, 8192)
QUICK_DECODE_CONTEXTS = (256, 1024)
DECODE_BATCHES = (1, 8)
DEFAULT_POLICY = h.RepeatPolicy(warmup=1, min_repeats=3, max_repeats=10, budget_s=4.0)
QUICK_POLICY = h.RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=0.5)
#: Decode samples are blocks of ``DECODE_INNER`` calls (a step takes tens of microseconds).
DECODE_POLICY = h.RepeatPolicy(warmup=2, min_repeats=5, max_repeats=30, budget_s=1.0)
DECODE_INNER = 20
PRECONDITIONER_TOL = 1e-4


def preconditioner_settings() -> dict[str, dict[str, Any]]:
    """Label -> SolverSettings fields of the preconditioner comparison (``chunk/16``: the chunk
    preconditioner refreshed every 16 tokens, where SolverSettings has ``precondition_every``)."""
    settings = {name: dict(tol=PRECONDITIONER_TOL, preconditioner=name) for name in ("none", "jacobi", "chunk")}
    if "precondition_every" in SolverSettings.__dataclass_fields__:
        settings["chunk/16"] = dict(settings["chunk"], precondition_every=16)
    return settings

INPUT_KINDS = {
    "random": "q,k unit-norm N(0,1); v N(0,1); gamma U[0.8,0.99]; beta U[0,1]; lam=1",
    "skewed": "k channel scales logspace(0,-2) then unit-norm; q unit-norm N(0,1); v N(0,1); gamma U[0.99,1]; "
              "beta U[0,1]; lam=0.25",
}


def make_inputs(shape: Shape, length: int, *, seed: int, kind: str = "random", dtype: torch.dtype = torch.float32,
                device: str = "cpu", requires_grad: bool = False, batch: Optional[int] = None) -> dict[str, Tensor]:
    """Seeded inputs of :data:`INPUT_KINDS`, drawn in float64 on the CPU, then cast and moved (every
    dtype and device sees the same values)."""
    gen = torch.Generator().manual_seed(seed)
    rows = (shape.batch if batch is None else batch, length, shape.heads)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    keys = randn(*rows, shape.dk)
    if kind == "skewed":
        keys = keys * torch.logspace(0, -2, shape.dk, dtype=torch.float64)
        gamma, lam = 0.99 + 0.01 * rand(*rows), 0.25
    elif kind == "random":
        gamma, lam = 0.8 + 0.19 * rand(*rows), 1.0
    else:
        raise ValueError(f"unknown input kind {kind!r}; valid: {list(INPUT_KINDS)}")
    values = dict(q=F.normalize(randn(*rows, shape.dk), dim=-1), k=F.normalize(keys, dim=-1), v=randn(*rows, shape.dv),
                  g=torch.log(gamma), beta=rand(*rows), lam=torch.full((shape.heads, shape.dk), lam, dtype=torch.float64))
    return {n: t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for n, t in values.items()}


_PEERS: dict[str, Any] = {}


def load_peer(path: Optional[str]) -> tuple[Optional[Any], str]:
    """The peer's ``naive.py`` loaded by path (never part of the project), or ``(None, why not)``."""
    key = str(path)
    if key not in _PEERS:
        _PEERS[key] = h.load_module_from_path(path, "mesa_peer_naive", PEER_FUNCTIONS)
    return _PEERS[key]


def _require_peer(path: Optional[str]) -> Any:
    peer, note = load_peer(path)
    if peer is None:
        raise RuntimeError(f"peer implementation: {note}")
    return peer


# ---------------------------------------------------------------------------------------------
# One configuration (inside a worker)


class OpCall:
    """One forward of a variant, plus the backward (random cotangent) in ``fwd+bwd`` mode."""

    def __init__(self, spec: dict[str, Any], length: Optional[int] = None):
        self.shape, self.variant, self.device = Shape(**spec["shape"]), Variant(**spec["variant"]), spec["device"]
        self.backward = spec["mode"] == "fwd+bwd"
        self.inputs = make_inputs(self.shape, length or spec["length"], seed=spec["seed"], kind=spec["inputs"],
                                  device=self.device, requires_grad=self.backward)
        gen = torch.Generator().manual_seed(spec["seed"] + 1)
        self.cotangent = torch.randn(self.inputs["v"].shape, generator=gen).to(self.device)
        self.peer = _require_peer(spec.get("peer")) if self.variant.impl == "peer" else None
        self.solver = self.variant.settings()

    def clear_grads(self) -> None:
        for t in self.inputs.values():
            t.grad = None

    def forward(self):
        """``(output [B, T, H, Dv], SolverStats or None)``."""
        x = self.inputs
        if self.peer is not None:
            out = self.peer.naive_mesa_net_CG(x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], self.shape.chunk,
                                              max_CG_iteration=self.variant.peer_steps)[0]
            return out, None
        kwargs = {} if self.solver is None else dict(solver=self.solver)  # default: no solver argument at all
        result = mesa(**x, chunk_size=self.shape.chunk, return_stats=True, validate=VALIDATE, **kwargs)
        return result.output, result.stats

    def __call__(self):
        self.clear_grads()
        out, stats = self.forward()
        if self.backward:
            out.backward(self.cotangent)
        return stats


def _warmed_up_call(spec: dict[str, Any]) -> OpCall:
    """The call at full size, after a call at one chunk (thread pools, autograd engine)."""
    OpCall(spec, Shape(**spec["shape"]).chunk)()
    return OpCall(spec)


def measure_time(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Wall time, CG steps and forward GFLOP/s of one (variant, mode, length, inputs)."""
    call, device = _warmed_up_call(spec), spec["device"]
    last: dict[str, Any] = {}

    def measure() -> dict[str, Any]:
        record, last["stats"] = h.time_call(call, device, h.RepeatPolicy(**spec["policy"]))
        return record

    result = h.least_contended(measure, spec["retries"])
    shape, variant, stats = call.shape, call.variant, last["stats"]
    if stats is None:  # the peer: a fixed step count
        mean, steps, residual, precond = float(variant.peer_steps), variant.peer_steps, None, "none"
    else:
        mean, steps, residual = stats.mean_iterations, stats.max_iterations, stats.max_relative_residual
        precond = (call.solver or INFERENCE).preconditioner
    result.update(length=spec["length"], variant=variant.name, impl=variant.impl, mode=spec["mode"], inputs=spec["inputs"],
                  device=device, threads=torch.get_num_threads(), cg_mean_iterations=mean, cg_max_iterations=steps,
                  cg_max_relative_residual=residual, preconditioner=precond)
    if spec["mode"] == "fwd":
        flops = forward_flops(shape.batch, shape.heads, spec["length"], shape.dk, shape.dv, shape.chunk, steps, precond)
        result.update(forward_gflop=flops / 1e9, gflops=flops / result["median_s"] / 1e9)
    return result


def measure_memory(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Peak memory of one call after one full-size warm-up call."""
    call = _warmed_up_call(spec)
    return h.peak_memory(call, spec["device"], warmup_calls=1, before=call.clear_grads)


def measure_config(spec: dict[str, Any], isolate: bool = True, memory: bool = True) -> dict[str, Any]:
    """Time (one fresh worker) and peak memory (another, with ``MEMORY_WORKER_ENV``) of one configuration."""
    run = h.call_in_worker("benchmarks.bench_mesa_op:measure_time", spec, isolate=isolate)
    if memory:
        run.update(h.call_in_worker("benchmarks.bench_mesa_op:measure_memory", spec, isolate=isolate, memory_env=True))
    return run


# ---------------------------------------------------------------------------------------------
# Accuracy


def reference_output(shape: Shape, length: int, *, seed: int, kind: str = "random") -> Tensor:
    """Float64 ``mesa`` output with :data:`REFERENCE_SOLVER`."""
    inputs = make_inputs(shape, length, seed=seed, kind=kind, dtype=torch.float64)
    with torch.no_grad():
        return mesa(**inputs, solver=REFERENCE_SOLVER, chunk_size=shape.chunk).output


def check_reference(shape: Shape, length: int, *, seed: int) -> dict[str, Any]:
    """The float64 chunked reference against the sequential float64 ``mesa_reference``."""
    exact, _ = mesa_reference(**make_inputs(shape, length, seed=seed, dtype=torch.float64))
    total, worst = h.relative_errors(reference_output(shape, length, seed=seed), exact)
    return dict(length=length, relative_error=total, max_row_relative_error=worst)


def check_accuracy(shape: Shape, length: int, variants: Sequence[Variant], *, seed: int, device: str,
                   peer: Optional[str], kind: str = "random") -> list[dict[str, Any]]:
    """fp32 output of every variant against :func:`reference_output` at the same length."""
    reference = reference_output(shape, length, seed=seed, kind=kind)
    rows = []
    for variant in variants:
        spec = dict(shape=asdict(shape), variant=asdict(variant), device=device, mode="fwd", length=length, seed=seed,
                    inputs=kind, peer=peer)
        with torch.no_grad():
            out, stats = OpCall(spec).forward()
        total, worst = h.relative_errors(out, reference)
        rows.append(dict(length=length, variant=variant.name, inputs=kind, relative_error=total, max_row_relative_error=worst,
                         cg_mean_iterations=None if stats is None else stats.mean_iterations,
                         cg_max_iterations=variant.peer_steps if stats is None else stats.max_iterations))
    return rows


# ---------------------------------------------------------------------------------------------
# Decode


def decode_defaults() -> dict[str, Any]:
    """The defaults of ``mesa_step``'s solver parameters (whatever its signature is)."""
    params = inspect.signature(mesa_step).parameters
    defaults = {name: repr(p.default) for name, p in params.items()
                if name in ("solver", "max_iter", "tol") and p.default is not inspect.Parameter.empty}
    if defaults.get("solver") == "None":  # SolverSettings | None: the operator's inference default
        defaults["solver"] = f"None, i.e. {INFERENCE}"
    return defaults


def measure_decode(spec: dict[str, Any], log: h.Log = h.print_log) -> list[dict[str, Any]]:
    """Per-token time and error of ``mesa_step`` (default settings) and of the peer's decode step, per
    batch and prefill length; the error against a float64 direct solve on the same float64 state."""
    shape, device, policy = Shape(**spec["shape"]), spec["device"], h.RepeatPolicy(**spec["policy"])
    peer = _require_peer(spec["peer"]) if spec.get("peer") else None
    records = []
    for batch in spec["batches"]:
        for context in spec["contexts"]:
            prefill = make_inputs(shape, context + 1, seed=spec["seed"] + context, dtype=torch.float64, batch=batch)
            token = {n: t[:, -1] if n != "lam" else t for n, t in prefill.items()}  # [B, H, D], [B, H]
            prompt = {n: t[:, :-1] if n != "lam" else t for n, t in prefill.items()}
            with torch.no_grad():  # the states do not depend on the solve: max_iter=0
                state = mesa(**prompt, solver=SolverSettings(max_iter=0, preconditioner="none"), chunk_size=shape.chunk,
                             output_final_state=True).final_state
            gamma, beta = token["g"].exp()[..., None, None], token["beta"][..., None, None]
            h_kk = gamma * state[0] + beta * token["k"].unsqueeze(-1) * token["k"].unsqueeze(-2)
            s_kv = gamma * state[1] + beta * token["k"].unsqueeze(-1) * token["v"].unsqueeze(-2)
            x = torch.linalg.solve(h_kk + torch.diag_embed(token["lam"]), token["q"].unsqueeze(-1)).squeeze(-1)
            exact = torch.einsum("bhkv,bhk->bhv", s_kv, x)
            t32 = {n: t.to(device=device, dtype=torch.float32) for n, t in token.items()}
            s32 = tuple(s.to(device=device, dtype=torch.float32) for s in state)
            calls = {"mesa_step": lambda: mesa_step(t32["q"], t32["k"], t32["v"], t32["g"], t32["beta"], t32["lam"], s32,
                                                    validate=VALIDATE)}
            if peer is not None:
                calls["peer-30"] = lambda: peer.naive_mesa_net_decoding_one_step(
                    t32["q"], t32["k"], t32["v"], t32["g"], t32["lam"], t32["beta"], s32[0], s32[1], max_CG_iteration=PEER_STEPS)
            for impl, call in calls.items():
                with torch.no_grad():
                    out = call()[0]
                    record = h.least_contended(lambda: h.time_call(call, device, policy, inner=spec["inner"])[0], spec["retries"])
                total, _ = h.relative_errors(out, exact)
                steps = None
                if impl == "mesa_step":
                    stats = mesa_step(t32["q"], t32["k"], t32["v"], t32["g"], t32["beta"], t32["lam"], s32, return_stats=True,
                                      validate=VALIDATE).stats
                    steps = dict(mean=stats.mean_iterations, max=stats.max_iterations)
                records.append(dict(record, impl=impl, batch=batch, context=context, relative_error=total, cg_steps=steps))
                log(f"decode {impl:<9s} B={batch} prefill T={context:<6d} {1e3 * record['median_s']:.3f} ms/token/layer  "
                    f"rel. error {total:.1e}  other load {h.percent(record['foreign_cpu_fraction'])}")
    return records


# ---------------------------------------------------------------------------------------------
# Derived checks


def _find(runs: Sequence[dict[str, Any]], **match: Any) -> Optional[dict[str, Any]]:
    return next((r for r in runs if all(r.get(k) == v for k, v in match.items())), None)


def _ratio_check(name: str, measured: Optional[float], target: float, comparison: str, **extra: Any) -> dict[str, Any]:
    passed = None if measured is None else bool(measured >= target if comparison == ">=" else measured <= target)
    return dict(check=name, measured=measured, target=target, comparison=comparison, passed=passed, **extra)


def target_checks(runs, accuracy, decode, lengths) -> list[dict[str, Any]]:
    """The issue's targets as rows (check, measured, target, comparison, passed); ``passed`` None when not measured."""
    checks = []
    headline = HEADLINE_LENGTH if HEADLINE_LENGTH in lengths else max(lengths)
    for length in lengths:
        tag = " (headline)" if length == headline else ""
        for mode, target in (("fwd+bwd", PEER_FWD_BWD_TARGET), ("fwd", PEER_FWD_TARGET)):
            ours, peer = _find(runs, length=length, variant=DEFAULT.name, mode=mode), _find(runs, length=length, variant=PEER.name, mode=mode)
            ratio = peer["median_s"] / ours["median_s"] if ours and peer else None
            checks.append(_ratio_check(f"T={length}: peer {mode} / ours (default){tag}", ratio, target, ">=",
                                       length=length, kind=f"peer_{mode}", headline=length == headline))
        row = _find(accuracy, length=length, variant=DEFAULT.name)
        checks.append(_ratio_check(f"T={length}: ours (default) fp32 rel. error{tag}", row and row["relative_error"],
                                   ERROR_TARGET, "<=", length=length, kind="error", headline=length == headline))
    contexts = sorted({r["context"] for r in decode})
    ours_b1 = [r for r in decode if r["impl"] == "mesa_step" and r["batch"] == 1]
    for r in ours_b1:
        peer = _find(decode, impl="peer-30", batch=1, context=r["context"])
        checks.append(_ratio_check(f"decode B=1 T={r['context']}: ours ms/token/layer", 1e3 * r["median_s"],
                                   1e3 * DECODE_TIME_TARGET_S, "<=", kind="decode_time"))
        checks.append(_ratio_check(f"decode B=1 T={r['context']}: peer / ours", peer and peer["median_s"] / r["median_s"],
                                   DECODE_PEER_TARGET, ">=", kind="decode_peer"))
    for batch in sorted({r["batch"] for r in decode}):
        short = _find(decode, impl="mesa_step", batch=batch, context=contexts[0])
        long = _find(decode, impl="mesa_step", batch=batch, context=contexts[-1])
        if short and long and len(contexts) > 1:
            checks.append(_ratio_check(f"decode B={batch}: ours T={contexts[-1]} / T={contexts[0]} (flat)",
                                       long["median_s"] / short["median_s"], DECODE_FLAT_TARGET, "<=", kind="decode_flat"))
    ordered = sorted(lengths)
    quarter = [n for n in ordered if 4 * n <= ordered[-1]]
    if len(ordered) > 1:
        short, long = (quarter[-1] if quarter else ordered[0]), ordered[-1]
        target = SCALING_SLACK * long / short
        for variant in (DEFAULT.name, FIXED_30.name):
            for mode in MODES:
                a, b = _find(runs, length=short, variant=variant, mode=mode), _find(runs, length=long, variant=variant, mode=mode)
                for key, what in (("median_s", "time"), ("peak_memory_bytes", "memory")):
                    ok = a and b and a.get(key) and b.get(key) is not None
                    checks.append(_ratio_check(f"{variant} {mode}: {what} T={long} / T={short}", b[key] / a[key] if ok else None,
                                               target, "<=", kind="scaling"))
    fixed = _find(runs, length=headline, variant=FIXED_30.name, mode="fwd")
    if fixed is not None:
        checks.append(dict(_ratio_check(f"fixed-30 fwd T={headline}: share of the matmul peak", fixed.get("peak_fraction"),
                                        PEAK_FRACTION_TARGET, ">="), kind="peak_fraction"))
    return checks


# ---------------------------------------------------------------------------------------------
# Report


def _steps(row: dict[str, Any]) -> str:
    if row.get("cg_mean_iterations") is None:
        return "-"
    return f"{row['cg_mean_iterations']:.1f} / {row['cg_max_iterations']}"


def _measured(check: dict[str, Any]) -> str:
    value = check["measured"]
    if value is None:
        return "n/a"
    if check.get("kind") == "error":
        return f"{value:.1e}"
    if check.get("kind") in ("decode_time",):
        return f"{value:.3f} ms"
    if check.get("kind") == "peak_fraction":
        return f"{100 * value:.1f}%"
    return f"{value:.2f}x"


def _target(check: dict[str, Any]) -> str:
    t = check["target"]
    text = {"error": f"{t:.0e}", "decode_time": f"{t:g} ms", "peak_fraction": f"{100 * t:.0f}%"}.get(check.get("kind"), f"{t:g}x")
    return f"{check['comparison']} {text}"


def render_markdown(results: dict[str, Any]) -> str:
    cfg, shape = results["config"], results["config"]["shape"]
    out = ["# Mesa operator benchmark", "", *h.machine_lines(results["machine"], results["matmul_peak"]),
           *h.quiet_warning(results["quiet_machine"]),
           f"B={shape['batch']}, H={shape['heads']}, Dk={shape['dk']}, Dv={shape['dv']}, C={shape['chunk']}, fp32; inputs: "
           f"{INPUT_KINDS['random']}. Our ops run with validate={cfg['validate']} (the ops' default).", ""]
    out += [f"- `{v['name']}`: {v['description']}" for v in cfg["variants"]]
    out += ["", "`fixed-30` is the paper's setting: tol=0, so only the working precision's residual floor stops a "
            "system before 30 steps; the loop exits once every system has stopped, hence mean / max below 30 on "
            "well-conditioned inputs.", "", f"Peer: {results['peer']['note']}.", "", f"FLOP model: {results['flop_formula']}.", ""]

    out += ["## Side by side", "",
            "Median ms per call; peak memory increase over the baseline (MiB); CG steps mean / max over systems; "
            "error: norm-wise relative error of the fp32 output against the float64 reference at the same T; "
            "other load: share of core time other processes took during the fwd / fwd+bwd timings.", ""]
    rows = []
    for length in cfg["lengths"]:
        for v in cfg["variants"]:
            f, fb = _find(results["runs"], length=length, variant=v["name"], mode="fwd"), _find(results["runs"], length=length, variant=v["name"], mode="fwd+bwd")
            if f is None or fb is None:
                continue
            acc = _find(results["accuracy"], length=length, variant=v["name"]) or {}
            rows.append([length, v["name"], _steps(f), h.fmt(f["median_s"], ".1f", 1e3), h.fmt(fb["median_s"], ".1f", 1e3),
                         h.fmt(f.get("peak_memory_mib"), ".1f"), h.fmt(fb.get("peak_memory_mib"), ".1f"),
                         h.fmt(f.get("gflops"), ".1f"), h.fmt(f.get("peak_fraction"), ".1%"),
                         h.fmt(acc.get("relative_error"), ".1e"),
                         f"{h.percent(f['foreign_cpu_fraction'])} / {h.percent(fb['foreign_cpu_fraction'])}"])
    out += h.table(["T", "variant", "CG steps", "fwd ms", "fwd+bwd ms", "fwd MiB", "fwd+bwd MiB", "fwd GFLOP/s", "of peak",
                    "fp32 rel. error", "other load"], rows)

    out += ["", "## Targets", ""]
    if not results["quiet_machine"]["passed"]:
        out += ["Noisy machine (see the warning above): the timing flags say little about the operator.", ""]
    out += h.table(["check", "measured", "target", "flag"],
                   [[c["check"], _measured(c), _target(c), h.flag(c["passed"])] for c in results["targets"]])

    ref = results["reference_check"]
    out += ["", "## Accuracy", "",
            f"Reference: float64 `mesa` with {REFERENCE_SOLVER} at each T; against the sequential float64 "
            f"`mesa_reference` at T={ref['length']}: rel. error {ref['relative_error']:.1e} (worst row {ref['max_row_relative_error']:.1e}).", ""]
    out += h.table(["T", "variant", "rel. error", "worst row rel. error", "CG steps mean / max"],
                   [[a["length"], a["variant"], f"{a['relative_error']:.2e}", f"{a['max_row_relative_error']:.2e}", _steps(a)]
                    for a in results["accuracy"]])

    if results["decode"]:
        out += ["", "## Decode", "",
                f"One token through one layer (H={shape['heads']}, d={shape['dk']}) from a state prefilled to T tokens; "
                f"`mesa_step` at its defaults ({', '.join(f'{k}={v}' for k, v in results['decode_defaults'].items())}), "
                f"the peer's `naive_mesa_net_decoding_one_step` with {PEER_STEPS} steps. Median ms per call over blocks of "
                f"{cfg['decode_inner']} calls; error against a float64 direct solve on the float64 state.", ""]
        out += h.table(["B", "prefill T", "impl", "ms / token / layer", "rel. error", "CG steps mean / max", "other load"],
                       [[r["batch"], r["context"], r["impl"], f"{1e3 * r['median_s']:.3f}", f"{r['relative_error']:.1e}",
                         "-" if not r["cg_steps"] else "direct" if r["cg_steps"]["max"] == 0 else f"{r['cg_steps']['mean']:.1f} / {r['cg_steps']['max']}",
                         h.percent(r["foreign_cpu_fraction"])] for r in results["decode"]])

    if results["preconditioners"]:
        out += ["", f"## Preconditioners (tol={PRECONDITIONER_TOL:g}, T={cfg['preconditioner_length']}, forward)", ""]
        out += [f"- `{kind}`: {text}" for kind, text in INPUT_KINDS.items()] + [""]
        out += h.table(["inputs", "preconditioner", "CG steps mean / max", "fwd ms", "rel. error", "max rel. residual"],
                       [[p["inputs"], p["preconditioner"], _steps(p), f"{1e3 * p['median_s']:.1f}",
                         h.fmt(p.get("relative_error"), ".1e"), h.fmt(p.get("cg_max_relative_residual"), ".1e")]
                        for p in results["preconditioners"]])
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Driver


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
    peer_info = dict(path=peer_path, loaded=peer_module is not None,
                     note=f"`{peer_path}` (loaded at run time)" if peer_module is not None else f"skipped ({note})")
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
        for variant in variants:
            for mode in MODES:
                run = measure_config(dict(common, length=length, variant=asdict(variant), mode=mode, inputs="random"), isolate, memory)
                runs.append(run)
                log(f"T={length:<6d} {variant.name:<9s} {mode:<8s} median {1e3 * run['median_s']:9.1f} ms ({run['repeats']} reps)  "
                    f"peak +{h.fmt(run.get('peak_memory_mib'), '.1f')} MiB  CG {run['cg_mean_iterations']:.1f}/{run['cg_max_iterations']}  "
                    f"other load {h.percent(run['foreign_cpu_fraction'])}")
    accuracy = []
    for length in lengths:
        accuracy += check_accuracy(shape, length, variants, seed=seed, device=device, peer=peer_path)
        log("accuracy T=%d: %s" % (length, ", ".join(f"{a['variant']} {a['relative_error']:.1e}" for a in accuracy[-len(variants):])))
    reference = check_reference(shape, reference_length, seed=seed)

    decode = []
    if decode_contexts:
        decode_spec = dict(common, policy=asdict(decode_policy), contexts=sorted(set(decode_contexts)),
                           batches=list(decode_batches), inner=decode_inner)
        decode = h.call_in_worker("benchmarks.bench_mesa_op:measure_decode", decode_spec, isolate=isolate, log=log)

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
                log(f"preconditioner {name:<8s} {kind:<6s} CG {run['cg_mean_iterations']:.1f}/{run['cg_max_iterations']}  "
                    f"fwd {1e3 * run['median_s']:.1f} ms  rel. error {run['relative_error']:.1e}")

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
        config=dict(lengths=lengths, shape=asdict(shape), policy=asdict(policy), variants=[dict(asdict(v), description=v.describe()) for v in variants],
                    inputs=INPUT_KINDS, decode_contexts=sorted(set(decode_contexts)), decode_batches=list(decode_batches),
                    decode_policy=asdict(decode_policy), decode_inner=decode_inner, preconditioner_length=preconditioner_length,
                    reference_solver=REFERENCE_SOLVER.to_dict(), reference_length=reference_length, matmul_size=matmul_size,
                    seed=seed, isolate=isolate, retries=retries, default_solver=INFERENCE.to_dict(), validate=VALIDATE),
        peer=peer_info, flop_formula=FLOP_FORMULA, matmul_peak=peak, runs=runs, accuracy=accuracy,
        reference_check=reference, decode=decode, decode_defaults=decode_defaults(), preconditioners=precond,
    )
    results["targets"] = target_checks(runs, accuracy, decode, lengths)
    results["quiet_machine"] = h.quiet_machine_check(peak, measured)
    results["total_runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        paths = h.write_results(results, Path(out_dir), "mesa_op", render_markdown)
        log(f"wrote {paths[0]} and {paths[1]}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"T={list(QUICK_LENGTHS)}, decode T={list(QUICK_DECODE_CONTEXTS)}, "
                        "fewer repeats, a small matmul")
    parser.add_argument("--lengths", type=int, nargs="+", help=f"sequence lengths (default {list(DEFAULT_LENGTHS)})")
    parser.add_argument("--peer", help="path of flash-linear-attention's fla/ops/mesa_net/naive.py (side by side; skipped without)")
    parser.add_argument("--preconditioners", action="store_true", help="also compare the preconditioners none / jacobi / chunk")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode section")
    parser.add_argument("--in-process", action="store_true", help="no worker processes (faster; CPU memory only a lower bound)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT, help=f"output directory (default {h.DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retries", type=int, default=h.CONTENDED_RETRIES,
                        help="how often a timing disturbed by other processes is taken again (0 while developing)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    options = dict(peer=args.peer, preconditioners=args.preconditioners, device=args.device, seed=args.seed,
                   isolate=not args.in_process, retries=args.retries, out_dir=args.out)
    if args.quick:
        options.update(lengths=QUICK_LENGTHS, policy=QUICK_POLICY, decode_contexts=QUICK_DECODE_CONTEXTS,
                       decode_policy=QUICK_POLICY, decode_inner=5, preconditioner_length=QUICK_LENGTHS[-1], matmul_size=1024)
    if args.lengths:
        options["lengths"] = args.lengths
    if args.no_decode:
        options["decode_contexts"] = ()
    results = run_benchmark(**options)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
