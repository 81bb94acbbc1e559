"""The decode section of the Mesa operator benchmark: ``mesa_step`` per token and layer, against the peer's one-step
decode, from prefilled states."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from benchmarks import harness as h
from mesanet.ops import INFERENCE, SolverSettings, mesa, mesa_step

from .cases import PEER_STEPS, VALIDATE, Shape, make_inputs, require_peer


def decode_defaults() -> dict[str, Any]:
    """The defaults of ``mesa_step``'s solver parameters (whatever its signature is)."""
    params = inspect.signature(mesa_step).parameters
    defaults = {
        name: repr(p.default)
        for name, p in params.items()
        if name in ("solver", "max_iter", "tol") and p.default is not inspect.Parameter.empty
    }
    if defaults.get("solver") == "None":  # SolverSettings | None: the operator's inference default
        defaults["solver"] = f"None, i.e. {INFERENCE}"
    return defaults


def measure_decode(spec: dict[str, Any], log: h.Log = h.print_log) -> list[dict[str, Any]]:
    """Per-token time and error of ``spec["impl"]``: ``"mesa_step"`` (default settings) or ``"peer-30"`` (the
    peer's decode step), per batch and prefill length; the error against a float64 direct solve on the same
    float64 state.

    One implementation per worker process: a decode step takes a fraction of a millisecond, and after the peer's
    thirty small CG steps the thread pools are still spinning, which slowed our step (LAPACK) from 0.32 to
    0.35-0.44 ms in the same process, timed in turns or one after the other (measured; 2-core CPU). So each side
    is timed in a fresh process with the other never run there."""
    shape, device, policy = Shape(**spec["shape"]), spec["device"], h.RepeatPolicy(**spec["policy"])
    peer = require_peer(spec["peer"]) if spec["impl"] == "peer-30" else None
    records = []
    for batch in spec["batches"]:
        for context in spec["contexts"]:
            prefill = make_inputs(shape, context + 1, seed=spec["seed"] + context, dtype=torch.float64, batch=batch)
            token = {n: t[:, -1] if n != "lam" else t for n, t in prefill.items()}  # [B, H, D], [B, H]
            prompt = {n: t[:, :-1] if n != "lam" else t for n, t in prefill.items()}
            with torch.no_grad():  # the states do not depend on the solve: max_iter=0
                state = mesa(
                    **prompt,
                    solver=SolverSettings(max_iter=0, preconditioner="none"),
                    chunk_size=shape.chunk,
                    output_final_state=True,
                ).final_state
            gamma, beta = token["g"].exp()[..., None, None], token["beta"][..., None, None]
            h_kk = gamma * state[0] + beta * token["k"].unsqueeze(-1) * token["k"].unsqueeze(-2)
            s_kv = gamma * state[1] + beta * token["k"].unsqueeze(-1) * token["v"].unsqueeze(-2)
            x = torch.linalg.solve(h_kk + torch.diag_embed(token["lam"]), token["q"].unsqueeze(-1)).squeeze(-1)
            exact = torch.einsum("bhkv,bhk->bhv", s_kv, x)
            t32 = {n: t.to(device=device, dtype=torch.float32) for n, t in token.items()}
            s32 = tuple(s.to(device=device, dtype=torch.float32) for s in state)
            if peer is None:
                step = lambda s: mesa_step(t32["q"], t32["k"], t32["v"], t32["g"], t32["beta"], t32["lam"], s, validate=VALIDATE)  # noqa: E731
                advance = lambda out: out.final_state  # noqa: E731
            else:
                step = lambda s: peer.naive_mesa_net_decoding_one_step(  # noqa: E731
                    t32["q"], t32["k"], t32["v"], t32["g"], t32["lam"], t32["beta"], s[0], s[1], max_CG_iteration=PEER_STEPS
                )
                advance = lambda out: out[1:]  # noqa: E731
            with torch.no_grad():
                out = step(s32)[0]  # the error: one step from the prefilled state
            # timed as decoding runs: each step on the state the previous one returned (the same token again: the
            # state stays near the prefilled one's scale; a step's cost does not depend on its values)
            current = [s32]

            def call():
                result = step(current[0])
                current[0] = advance(result)
                return result

            with torch.no_grad():
                record = h.least_contended(lambda: h.time_call(call, device, policy, inner=spec["inner"])[0], spec["retries"])
            total, _ = h.relative_errors(out, exact)
            steps = None
            if peer is None:
                stats = mesa_step(
                    t32["q"], t32["k"], t32["v"], t32["g"], t32["beta"], t32["lam"], s32, return_stats=True, validate=VALIDATE
                ).stats
                steps = dict(mean=stats.mean_iterations, max=stats.max_iterations)
            impl = spec["impl"]
            records.append(dict(record, impl=impl, batch=batch, context=context, relative_error=total, cg_steps=steps))
            log(
                f"decode {impl:<9s} B={batch} prefill T={context:<6d} {1e3 * record['median_s']:.3f} ms/token/layer  "
                f"rel. error {total:.1e}  other load {h.percent(record['foreign_cpu_fraction'])}"
            )
    return records
