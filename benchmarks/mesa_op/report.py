"""The markdown report of the Mesa operator benchmark."""

from __future__ import annotations

from typing import Any

from benchmarks import harness as h

from .cases import INPUT_KINDS, PEER_STEPS, PRECONDITIONER_TOL, REFERENCE_SOLVER
from .targets import find


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
    out = [
        "# Mesa operator benchmark",
        "",
        *h.machine_lines(results["machine"], results["matmul_peak"]),
        *h.quiet_warning(results["quiet_machine"]),
        f"B={shape['batch']}, H={shape['heads']}, Dk={shape['dk']}, Dv={shape['dv']}, C={shape['chunk']}, fp32; inputs: "
        f"{INPUT_KINDS['random']}. Our ops run with validate={cfg['validate']} (the ops' default).",
        "",
    ]
    out += [f"- `{v['name']}`: {v['description']}" for v in cfg["variants"]]
    out += [
        "",
        "`fixed-30` is the paper's setting: tol=0, so only the working precision's residual floor stops a "
        "system before 30 steps; the loop exits once every system has stopped, hence mean / max below 30 on "
        "well-conditioned inputs.",
        "",
        f"Peer: {results['peer']['note']}.",
        "",
        f"FLOP model: {results['flop_formula']}.",
        "",
    ]

    out += [
        "## Side by side",
        "",
        "Median ms per call; peak memory increase over the baseline (MiB); CG steps mean / max over systems; "
        "error: norm-wise relative error of the fp32 output against the float64 reference at the same T; "
        "other load: share of core time other processes took during the fwd / fwd+bwd timings.",
        "",
    ]
    rows = []
    for length in cfg["lengths"]:
        for v in cfg["variants"]:
            f, fb = (
                find(results["runs"], length=length, variant=v["name"], mode="fwd"),
                find(results["runs"], length=length, variant=v["name"], mode="fwd+bwd"),
            )
            if f is None or fb is None:
                continue
            acc = find(results["accuracy"], length=length, variant=v["name"]) or {}
            rows.append(
                [
                    length,
                    v["name"],
                    _steps(f),
                    h.fmt(f["median_s"], ".1f", 1e3),
                    h.fmt(fb["median_s"], ".1f", 1e3),
                    h.fmt(f.get("peak_memory_mib"), ".1f"),
                    h.fmt(fb.get("peak_memory_mib"), ".1f"),
                    h.fmt(f.get("gflops"), ".1f"),
                    h.fmt(f.get("peak_fraction"), ".1%"),
                    h.fmt(acc.get("relative_error"), ".1e"),
                    f"{h.percent(f['foreign_cpu_fraction'])} / {h.percent(fb['foreign_cpu_fraction'])}",
                ]
            )
    out += h.table(
        [
            "T",
            "variant",
            "CG steps",
            "fwd ms",
            "fwd+bwd ms",
            "fwd MiB",
            "fwd+bwd MiB",
            "fwd GFLOP/s",
            "of peak",
            "fp32 rel. error",
            "other load",
        ],
        rows,
    )

    out += ["", "## Targets", ""]
    if not results["quiet_machine"]["passed"]:
        out += ["Noisy machine (see the warning above): the timing flags say little about the operator.", ""]
    out += h.table(
        ["check", "measured", "target", "flag"],
        [[c["check"], _measured(c), _target(c), h.flag(c["passed"])] for c in results["targets"]],
    )

    ref = results["reference_check"]
    out += [
        "",
        "## Accuracy",
        "",
        f"Reference: float64 `mesa` with {REFERENCE_SOLVER} at each T; against the sequential float64 "
        f"`mesa_reference` at T={ref['length']}: rel. error {ref['relative_error']:.1e} (worst row {ref['max_row_relative_error']:.1e}).",
        "",
    ]
    out += h.table(
        ["T", "variant", "rel. error", "worst row rel. error", "CG steps mean / max"],
        [
            [a["length"], a["variant"], f"{a['relative_error']:.2e}", f"{a['max_row_relative_error']:.2e}", _steps(a)]
            for a in results["accuracy"]
        ],
    )

    if results["decode"]:
        out += [
            "",
            "## Decode",
            "",
            f"One token through one layer (H={shape['heads']}, d={shape['dk']}) from a state prefilled to T tokens; "
            f"`mesa_step` at its defaults ({', '.join(f'{k}={v}' for k, v in results['decode_defaults'].items())}), "
            f"the peer's `naive_mesa_net_decoding_one_step` with {PEER_STEPS} steps. Median ms per call over blocks of "
            f"{cfg['decode_inner']} calls; error against a float64 direct solve on the float64 state.",
            "",
        ]
        out += h.table(
            ["B", "prefill T", "impl", "ms / token / layer", "rel. error", "CG steps mean / max", "other load"],
            [
                [
                    r["batch"],
                    r["context"],
                    r["impl"],
                    f"{1e3 * r['median_s']:.3f}",
                    f"{r['relative_error']:.1e}",
                    "-"
                    if not r["cg_steps"]
                    else "direct"
                    if r["cg_steps"]["max"] == 0
                    else f"{r['cg_steps']['mean']:.1f} / {r['cg_steps']['max']}",
                    h.percent(r["foreign_cpu_fraction"]),
                ]
                for r in results["decode"]
            ],
        )

    if results["preconditioners"]:
        out += ["", f"## Preconditioners (tol={PRECONDITIONER_TOL:g}, T={cfg['preconditioner_length']}, forward)", ""]
        out += [f"- `{kind}`: {text}" for kind, text in INPUT_KINDS.items()] + [""]
        out += h.table(
            ["inputs", "preconditioner", "CG steps mean / max", "fwd ms", "rel. error", "max rel. residual"],
            [
                [
                    p["inputs"],
                    p["preconditioner"],
                    _steps(p),
                    f"{1e3 * p['median_s']:.1f}",
                    h.fmt(p.get("relative_error"), ".1e"),
                    h.fmt(p.get("cg_max_relative_residual"), ".1e"),
                ]
                for p in results["preconditioners"]
            ],
        )
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)
