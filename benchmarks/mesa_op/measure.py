"""Measurements of the Mesa operator benchmark inside a worker: every variant of one (T, mode, inputs) timed in
turns in one process (their ratios under the same load), peak memory of one call, and the fp32 error against a
float64 reference."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from benchmarks import harness as h
from benchmarks.flops import forward_flops
from mesanet.ops import INFERENCE, mesa, mesa_reference

from .cases import REFERENCE_SOLVER, VALIDATE, Shape, Variant, make_inputs, require_peer


class OpCall:
    """One forward of a variant, plus the backward (random cotangent) in ``fwd+bwd`` mode."""

    def __init__(self, spec: dict[str, Any], length: Optional[int] = None):
        self.shape, self.variant, self.device = Shape(**spec["shape"]), Variant(**spec["variant"]), spec["device"]
        self.backward = spec["mode"] == "fwd+bwd"
        self.inputs = make_inputs(
            self.shape,
            length or spec["length"],
            seed=spec["seed"],
            kind=spec["inputs"],
            device=self.device,
            requires_grad=self.backward,
        )
        gen = torch.Generator().manual_seed(spec["seed"] + 1)
        self.cotangent = torch.randn(self.inputs["v"].shape, generator=gen).to(self.device)
        self.peer = require_peer(spec.get("peer")) if self.variant.impl == "peer" else None
        self.solver = self.variant.settings()

    def clear_grads(self) -> None:
        for t in self.inputs.values():
            t.grad = None

    def forward(self):
        """``(output [B, T, H, Dv], SolverStats or None)``."""
        x = self.inputs
        if self.peer is not None:
            out = self.peer.naive_mesa_net_CG(
                x["q"], x["k"], x["v"], x["g"], x["lam"], x["beta"], self.shape.chunk, max_CG_iteration=self.variant.peer_steps
            )[0]
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


def _describe(call: OpCall, stats, record: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A timing record completed with what was run and the CG steps (and, forward only, GFLOP/s)."""
    shape, variant = call.shape, call.variant
    if stats is None:  # the peer: a fixed step count
        mean, steps, residual, precond, block = float(variant.peer_steps), variant.peer_steps, None, "none", None
    else:
        mean, steps, residual = stats.mean_iterations, stats.max_iterations, stats.max_relative_residual
        precond, block = (call.solver or INFERENCE).preconditioner, (call.solver or INFERENCE).precondition_every
    result = dict(
        record,
        length=spec["length"],
        variant=variant.name,
        impl=variant.impl,
        mode=spec["mode"],
        inputs=spec["inputs"],
        device=spec["device"],
        threads=torch.get_num_threads(),
        cg_mean_iterations=mean,
        cg_max_iterations=steps,
        cg_max_relative_residual=residual,
        preconditioner=precond,
        precondition_every=block,
    )
    if spec["mode"] == "fwd":
        length, dk, dv, chunk = spec["length"], shape.dk, shape.dv, shape.chunk
        flops = forward_flops(shape.batch, shape.heads, length, dk, dv, chunk, steps, precond, block)
        result.update(forward_gflop=flops / 1e9, gflops=flops / result["median_s"] / 1e9)
    return result


def measure_times(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Wall time, CG steps and forward GFLOP/s of every variant in ``spec["variants"]`` at one (mode, length,
    inputs), timed in turns in this process (:func:`benchmarks.harness.time_interleaved`): ``{"runs": [...]}``."""
    calls = {}
    for variant in spec["variants"]:
        one = dict(spec, variant=variant)
        calls[variant["name"]] = _warmed_up_call(one)
    policy, last = h.RepeatPolicy(**spec["policy"]), {}

    def measure() -> dict[str, Any]:
        records, last["stats"] = h.time_interleaved(calls, spec["device"], policy)
        return dict(records=records, foreign_cpu_fraction=next(iter(records.values()))["foreign_cpu_fraction"])

    best = h.least_contended(measure, spec["retries"])
    return dict(
        runs=[
            _describe(call, last["stats"][name], dict(best["records"][name], attempts=best["attempts"]), spec)
            for name, call in calls.items()
        ]
    )


def measure_memory(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Peak memory of one call after one full-size warm-up call."""
    call = _warmed_up_call(spec)
    return h.peak_memory(call, spec["device"], warmup_calls=1, before=call.clear_grads)


def measure_group(spec: dict[str, Any], isolate: bool = True, memory: bool = True) -> list[dict[str, Any]]:
    """Every variant of ``spec["variants"]`` timed in turns in one fresh worker; the peak memory of each in a worker
    of its own (with ``MEMORY_WORKER_ENV``)."""
    runs = h.call_in_worker("benchmarks.mesa_op.measure:measure_times", spec, isolate=isolate)["runs"]
    if memory:
        for run, variant in zip(runs, spec["variants"]):
            one = {k: v for k, v in spec.items() if k != "variants"}
            run.update(
                h.call_in_worker(
                    "benchmarks.mesa_op.measure:measure_memory", dict(one, variant=variant), isolate=isolate, memory_env=True
                )
            )
    return runs


def measure_config(spec: dict[str, Any], isolate: bool = True, memory: bool = True) -> dict[str, Any]:
    """Time and peak memory of one configuration (``spec["variant"]``), each in a fresh worker."""
    variant = spec["variant"]
    group = dict({k: v for k, v in spec.items() if k != "variant"}, variants=[variant])
    return measure_group(group, isolate, memory)[0]


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


def check_accuracy(
    shape: Shape, length: int, variants: Sequence[Variant], *, seed: int, device: str, peer: Optional[str], kind: str = "random"
) -> list[dict[str, Any]]:
    """fp32 output of every variant against :func:`reference_output` at the same length."""
    reference = reference_output(shape, length, seed=seed, kind=kind)
    rows = []
    for variant in variants:
        spec = dict(
            shape=asdict(shape),
            variant=asdict(variant),
            device=device,
            mode="fwd",
            length=length,
            seed=seed,
            inputs=kind,
            peer=peer,
        )
        with torch.no_grad():
            out, stats = OpCall(spec).forward()
        total, worst = h.relative_errors(out, reference)
        rows.append(
            dict(
                length=length,
                variant=variant.name,
                inputs=kind,
                relative_error=total,
                max_row_relative_error=worst,
                cg_mean_iterations=None if stats is None else stats.mean_iterations,
                cg_max_iterations=variant.peer_steps if stats is None else stats.max_iterations,
            )
        )
    return rows
