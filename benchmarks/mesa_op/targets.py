"""The issue's targets of the Mesa operator benchmark as rows (check, measured, target, comparison, passed)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .cases import (
    DECODE_FLAT_TARGET,
    DECODE_PEER_TARGET,
    DECODE_TIME_TARGET_S,
    DEFAULT,
    ERROR_TARGET,
    FIXED_30,
    HEADLINE_LENGTH,
    MODES,
    PEAK_FRACTION_TARGET,
    PEER,
    PEER_FWD_BWD_TARGET,
    PEER_FWD_TARGET,
    SCALING_SLACK,
)


def find(runs: Sequence[dict[str, Any]], **match: Any) -> Optional[dict[str, Any]]:
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
            ours, peer = (
                find(runs, length=length, variant=DEFAULT.name, mode=mode),
                find(runs, length=length, variant=PEER.name, mode=mode),
            )
            ratio = peer["median_s"] / ours["median_s"] if ours and peer else None
            checks.append(
                _ratio_check(
                    f"T={length}: peer {mode} / ours (default){tag}",
                    ratio,
                    target,
                    ">=",
                    length=length,
                    kind=f"peer_{mode}",
                    headline=length == headline,
                )
            )
        row = find(accuracy, length=length, variant=DEFAULT.name)
        checks.append(
            _ratio_check(
                f"T={length}: ours (default) fp32 rel. error{tag}",
                row and row["relative_error"],
                ERROR_TARGET,
                "<=",
                length=length,
                kind="error",
                headline=length == headline,
            )
        )
    contexts = sorted({r["context"] for r in decode})
    ours_b1 = [r for r in decode if r["impl"] == "mesa_step" and r["batch"] == 1]
    for r in ours_b1:
        peer = find(decode, impl="peer-30", batch=1, context=r["context"])
        checks.append(
            _ratio_check(
                f"decode B=1 T={r['context']}: ours ms/token/layer",
                1e3 * r["median_s"],
                1e3 * DECODE_TIME_TARGET_S,
                "<=",
                kind="decode_time",
            )
        )
        checks.append(
            _ratio_check(
                f"decode B=1 T={r['context']}: peer / ours",
                peer and peer["median_s"] / r["median_s"],
                DECODE_PEER_TARGET,
                ">=",
                kind="decode_peer",
            )
        )
    for batch in sorted({r["batch"] for r in decode}):
        short = find(decode, impl="mesa_step", batch=batch, context=contexts[0])
        long = find(decode, impl="mesa_step", batch=batch, context=contexts[-1])
        if short and long and len(contexts) > 1:
            checks.append(
                _ratio_check(
                    f"decode B={batch}: ours T={contexts[-1]} / T={contexts[0]} (flat)",
                    long["median_s"] / short["median_s"],
                    DECODE_FLAT_TARGET,
                    "<=",
                    kind="decode_flat",
                )
            )
    ordered = sorted(lengths)
    quarter = [n for n in ordered if 4 * n <= ordered[-1]]
    if len(ordered) > 1:
        short, long = (quarter[-1] if quarter else ordered[0]), ordered[-1]
        target = SCALING_SLACK * long / short
        for variant in (DEFAULT.name, FIXED_30.name):
            for mode in MODES:
                a, b = find(runs, length=short, variant=variant, mode=mode), find(runs, length=long, variant=variant, mode=mode)
                for key, what in (("median_s", "time"), ("peak_memory_bytes", "memory")):
                    ok = a and b and a.get(key) and b.get(key) is not None
                    checks.append(
                        _ratio_check(
                            f"{variant} {mode}: {what} T={long} / T={short}",
                            b[key] / a[key] if ok else None,
                            target,
                            "<=",
                            kind="scaling",
                        )
                    )
    fixed = find(runs, length=headline, variant=FIXED_30.name, mode="fwd")
    if fixed is not None:
        checks.append(
            dict(
                _ratio_check(
                    f"fixed-30 fwd T={headline}: share of the matmul peak", fixed.get("peak_fraction"), PEAK_FRACTION_TARGET, ">="
                ),
                kind="peak_fraction",
            )
        )
    return checks
