"""Derived checks (the issue's targets) and the markdown report of the model benchmark."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from benchmarks import harness as h

from .build import DECODE_FLAT_TARGET, DECODE_RATIO_TARGET, MODELS, TRAIN_RATIO_LENGTH, TRAIN_RATIO_TARGET


def _measured(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if not e.get("skipped")]


def timings(model: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every timing of a model."""
    return [(f"{model['name']} train T={r['length']}", r) for r in _measured(model["train"])] + [
        (f"{model['name']} decode L={r['context']}", r) for r in _measured(model["decode"])
    ]


def worst_foreign_load(model: dict[str, Any]) -> float:
    """The largest share of the machine other processes took during any timing of ``model`` (0 if unknown)."""
    return max((r.get("foreign_cpu_fraction") or 0.0 for _, r in timings(model)), default=0.0)


def decode_growth(model: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Decode latency at the longest measured context over the shortest (None with fewer than two)."""
    runs = sorted(_measured(model["decode"]), key=lambda r: r["context"])
    if len(runs) < 2:
        return None
    short, long = runs[0], runs[-1]
    return dict(
        short_context=short["context"],
        long_context=long["context"],
        short_s=short["median_s"],
        long_s=long["median_s"],
        ratio=long["median_s"] / short["median_s"],
    )


def _model(models: Sequence[dict[str, Any]], name: str) -> Optional[dict[str, Any]]:
    return next((m for m in models if m["name"] == name), None)


def _versus(mesa, gdn, section: str, key: str, preferred: Optional[int], target: float) -> dict[str, Any]:
    """Mesa / Gated DeltaNet median time of ``section`` at ``preferred`` (else the longest common ``key``)."""
    check: dict[str, Any] = dict(mixer="mesa", baseline="gated_deltanet", target=target, comparison="<=", passed=None)
    if mesa and gdn:
        a, b = ({r[key]: r for r in _measured(m[section])} for m in (mesa, gdn))
        common = sorted(set(a) & set(b))
        if common:
            at = preferred if preferred in common else common[-1]
            ratio = a[at]["median_s"] / b[at]["median_s"]
            check.update(
                {
                    key: at,
                    "mesa_s": a[at]["median_s"],
                    "baseline_s": b[at]["median_s"],
                    "ratio": ratio,
                    "passed": bool(ratio <= target),
                }
            )
    return check


def target_checks(models: Sequence[dict[str, Any]], paired: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The issue's targets; ``passed`` is None where a model or measurement is missing. ``paired``: the two
    models' training and decode steps timed in turns (:func:`benchmarks.mixers.measure.measure_pair`);
    where given, both ratios are taken from it (one load for both) rather than from the separate workers."""
    mesa, attention, gdn = _model(models, "mesa"), _model(models, "attention"), _model(models, "gated_deltanet")
    targets: dict[str, Any] = {}
    for key, model, target, comparison in (
        ("mesa_decode_flat", mesa, DECODE_FLAT_TARGET, "<="),
        ("attention_decode_grows", attention, 1.0, ">"),
    ):
        growth = decode_growth(model) if model else None
        passed = None if growth is None else bool(growth["ratio"] <= target if comparison == "<=" else growth["ratio"] > target)
        targets[key] = dict(mixer=model and model["name"], target=target, comparison=comparison, **(growth or {}), passed=passed)
    targets["mesa_train_vs_gated_deltanet"] = _versus(mesa, gdn, "train", "length", TRAIN_RATIO_LENGTH, TRAIN_RATIO_TARGET)
    if paired is not None:
        a, b = (paired["records"][n]["median_s"] for n in ("mesa", "gated_deltanet"))
        targets["mesa_train_vs_gated_deltanet"].update(
            length=paired["length"], mesa_s=a, baseline_s=b, ratio=a / b, passed=bool(a / b <= TRAIN_RATIO_TARGET), paired=True
        )
    targets["mesa_decode_vs_gated_deltanet"] = _versus(mesa, gdn, "decode", "context", None, DECODE_RATIO_TARGET)
    if paired is not None and paired.get("decode"):
        d = paired["decode"]
        a, b = (d["median_s"][n] for n in ("mesa", "gated_deltanet"))
        targets["mesa_decode_vs_gated_deltanet"].update(
            context=d["context"], mesa_s=a, baseline_s=b, ratio=a / b, passed=bool(a / b <= DECODE_RATIO_TARGET), paired=True
        )
    return targets


def _context_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _cell(entry: Optional[dict[str, Any]], scale: float, spec: str) -> str:
    if entry is None:
        return "-"
    return "skipped" if entry.get("skipped") else format(scale * entry["median_s"], spec)


def render_markdown(results: dict[str, Any]) -> str:
    """The report: machine, one row per model, targets, skip reasons."""
    cfg = results["config"]
    m = cfg["model"]
    lengths, contexts = cfg["train_lengths"], cfg["contexts"]
    shortest, longest = _context_label(contexts[0]), _context_label(contexts[-1])
    solver = ", ".join(f"{k}={v}" for k, v in cfg["mesa_solver"].items()) or "n/a"
    out = [
        "# Model benchmark: training step and decode latency per mixer",
        "",
        *h.machine_lines(results["machine"], results["matmul_peak"]),
        *h.quiet_warning(results["quiet_machine"]),
        f"Preset `{cfg['preset']}`: D={m['hidden_size']}, {m['num_hidden_layers']} layers, {m['num_heads']} heads x "
        f"{m['head_dim']}, vocab {m['vocab_size']}, MLP x{m['mlp_expansion']}, chunk {m['chunk_size']}, hawk_expansion "
        f"{m['hawk_expansion']:g} (matched to the Mesa mixer's parameters), attention window {m['attention_window']} "
        f"(sliding_attention). fp32, B={cfg['batch']}. Mesa solver (the config's defaults): {solver}.",
        "",
        "## Results",
        "",
        f"Training step: forward + backward of the LM loss, median ms over the repeats (after warm-up). Decode: median "
        f"ms per token over {cfg['decode_steps']} one-token steps (after {cfg['decode_warmup']} warm-up steps; the "
        f"contexts interleaved step by step) with a cache prefilled to L tokens; ratio = decode at L={longest} / "
        f"L={shortest}; cache = bytes of the decoding state at L={longest}. `sliding_attention` trains through a dense "
        f"masked attention, so it is not cheaper than full attention in training here.",
        "",
    ]
    header = ["mixer", "layers", "params (M)", "non-emb. (M)"] + [f"train T={n} (ms)" for n in lengths]
    header += [f"decode L={_context_label(c)} (ms/tok)" for c in contexts] + [
        f"decode {longest}/{shortest}",
        f"cache L={longest} (MiB)",
    ]
    rows, reasons = [], {}
    for model in results["models"]:
        train, decode = {r["length"]: r for r in model["train"]}, {r["context"]: r for r in model["decode"]}
        growth, last = decode_growth(model), decode.get(contexts[-1])
        for entry in list(train.values()) + list(decode.values()):
            if entry.get("skipped") and entry["reason"] not in reasons.setdefault(model["name"], []):
                reasons[model["name"]].append(entry["reason"])
        pattern = list(MODELS.get(model["name"], model["layer_types"]))
        repeats = len(model["layer_types"]) // len(pattern)
        group = pattern[0] if len(pattern) == 1 else f"({', '.join(pattern)})"
        layers = f"{group} x{repeats}" if pattern * repeats == model["layer_types"] else "/".join(model["layer_types"])
        rows.append(
            [model["name"], layers, f"{model['params'] / 1e6:.3f}", f"{model['params_non_embedding'] / 1e6:.3f}"]
            + [_cell(train.get(n), 1e3, ".1f") for n in lengths]
            + [_cell(decode.get(c), 1e3, ".2f") for c in contexts]
            + [
                "-" if growth is None else f"{growth['ratio']:.2f}x",
                "skipped" if last is None or last.get("skipped") else f"{last['cache_mib']:.2f}",
            ]
        )
    out += h.table(header, rows)
    reasons = {k: v for k, v in reasons.items() if v}
    if reasons:
        out += ["", "Skipped:"] + [f"- `{name}`: {'; '.join(r)}." for name, r in reasons.items()]
    out += ["", "## Targets", ""]
    if not results["quiet_machine"]["passed"]:
        out += ["Noisy machine (see the warning above): these flags say little about the models.", ""]
    t, rows = results["targets"], []
    for key, label in (("mesa_decode_flat", "Mesa decode"), ("attention_decode_grows", "Transformer decode")):
        c = t[key]
        what = (
            f"{label}: L={_context_label(c['long_context'])} / L={_context_label(c['short_context'])}"
            if "ratio" in c
            else f"{label}: long / short context"
        )
        rows.append([what, h.fmt(c.get("ratio"), ".2f") + "x", f"{c['comparison']} {c['target']:g}x", h.flag(c["passed"])])
    for key, label, where in (
        ("mesa_train_vs_gated_deltanet", "training step", "length"),
        ("mesa_decode_vs_gated_deltanet", "decode per token", "context"),
    ):
        c = t[key]
        what = f"Mesa / Gated DeltaNet {label}" + (f" at {'T' if where == 'length' else 'L'}={c[where]}" if where in c else "")
        what += " (timed in turns in one process)" if c.get("paired") else ""
        rows.append([what, h.fmt(c.get("ratio"), ".2f") + "x", f"<= {c['target']:g}x", h.flag(c["passed"])])
    out += h.table(["check", "measured", "target", "flag"], rows)
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)
