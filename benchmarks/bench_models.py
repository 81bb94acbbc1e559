# Over 400 lines on purpose for now: one benchmark (every mixer: training step, decode latency, targets)
# measured in worker processes and rendered into one report; the split into measuring and reporting
# modules is the open part of the structure issue (benchmarks).
"""Model-level benchmark: every mixer in the same small language model, training step and decode latency.

What is measured (defaults: preset ``cpu-small``, D=256, 4 layers, 4 heads x 64, vocab 4096, fp32, B=1):

* **Parameter count** (all, tied embedding once, and without the embedding). Every model has the same
  backbone; only the token mixers differ. Hawk's recurrence width (``hawk_expansion``) is matched to
  the Mesa mixer's parameter count (:func:`matched_hawk_expansion`).
* **Training step** at T in {512, 2048}: ``model.train()``, ``zero_grad``, forward with ``labels`` and
  ``loss.backward()`` (no optimizer step); warm-up calls (at least ``policy.warmup`` and
  ``train_warmup_s`` seconds: the first full-size steps run up to ~30% slow), then the median over repeats.
* **Decode latency per token** at context L in {1k, 4k, 16k}: ``model.eval()``, ``no_grad``; a real
  cache prefilled (in segments of ``prefill_chunk`` tokens) to every L, then one-token steps feeding the
  cache back, ``decode_warmup`` untimed and ``decode_steps`` timed per context, the contexts interleaved
  step by step (the machine drifts between ~40%-apart phases lasting a few hundred ms; interleaving
  spreads them over all contexts). Median seconds per token and the cache's bytes at L.
* Models are built through the public config API (``preset_config``) with the config's default Mesa
  solver settings for training and inference (reported from the config, whatever its field names).
* Mixers: ``mesa``, ``gated_deltanet``, ``deltanet``, ``gla``, ``mamba2``, ``hawk``, ``attention``,
  ``sliding_attention``, the hybrid ``hawk+mesa`` and ``sherman_morrison`` (sequential in T: trained only
  at T <= 512 when a probe projects a step under ``SEQUENTIAL_STEP_LIMIT_S``; its decode is skipped).
* **Other load** and the **matmul peak** as in :mod:`benchmarks.harness`: a timing above 10% foreign
  load is taken again; a model still above it is measured once more at the end (``reruns``).
* **Targets** (flags, never an exit status): Mesa decode(16k) / decode(1k) <= 1.2; the Transformer's
  decode cost grows; Mesa / Gated DeltaNet training step at T=2048 <= 1.3; Mesa / Gated DeltaNet decode
  per token <= 1.5 (at the longest context). With other lengths the longest measured ones are used.

Every model runs in its own fresh worker process (:func:`benchmarks.harness.call_in_worker`).

Usage::

    python -m benchmarks.bench_models [--quick] [--device cpu|cuda] [--out DIR] [--mixers mesa attention ...]

Writes ``models.json`` and ``models.md`` to ``DIR`` (default ``benchmarks/results/``) and prints the markdown.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

if not __package__:  # run as a file: the repository root (for ``benchmarks``) and src/ on the path
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import torch
from torch import Tensor

from benchmarks import harness as h
from mesanet.layers.registry import build_mixer
from mesanet.models import PRESETS, MesaNetCache, MesaNetForCausalLM, preset_config

#: Benchmark name -> the layer pattern (repeated over the layers).
MODELS: dict[str, tuple[str, ...]] = {
    "mesa": ("mesa",),
    "gated_deltanet": ("gated_deltanet",),
    "deltanet": ("deltanet",),
    "gla": ("gla",),
    "mamba2": ("mamba2",),
    "hawk": ("hawk",),
    "attention": ("attention",),
    "sliding_attention": ("sliding_attention",),
    "hawk+mesa": ("hawk", "mesa"),
    "sherman_morrison": ("sherman_morrison",),
}
DEFAULT_MIXERS = tuple(MODELS)

#: Mixers whose parallel form is a Python loop over tokens.
SEQUENTIAL_MIXERS = ("sherman_morrison",)
SEQUENTIAL_MAX_TRAIN_LENGTH = 512
SEQUENTIAL_STEP_LIMIT_S = 20.0
SEQUENTIAL_PROBE_LENGTH = 64

DEFAULT_TRAIN_LENGTHS = (512, 2048)
DEFAULT_CONTEXTS = (1024, 4096, 16384)
QUICK_TRAIN_LENGTHS = (256, 1024)
QUICK_CONTEXTS = (256, 1024)
DEFAULT_POLICY = h.RepeatPolicy(warmup=2, min_repeats=3, max_repeats=7, budget_s=3.0)
QUICK_POLICY = h.RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=1.0)
DEFAULT_TRAIN_WARMUP_S = 1.5
QUICK_TRAIN_WARMUP_S = 0.3

#: Targets of the issue.
DECODE_FLAT_TARGET = 1.2  # Mesa decode(longest context) / decode(shortest)
TRAIN_RATIO_TARGET = 1.3  # Mesa training step / Gated DeltaNet's at TRAIN_RATIO_LENGTH
TRAIN_RATIO_LENGTH = 2048
DECODE_RATIO_TARGET = 1.5  # Mesa decode per token / Gated DeltaNet's (longest common context)


# ---------------------------------------------------------------------------------------------
# Models


def layer_types(pattern: Sequence[str], num_layers: int) -> list[str]:
    """``pattern`` repeated over ``num_layers`` layers (``("hawk", "mesa")`` -> hawk, mesa, hawk, mesa)."""
    return [pattern[i % len(pattern)] for i in range(num_layers)]


def _mixer_params(kind: str, fields: dict[str, Any], **options) -> int:
    mixer = build_mixer(kind, fields["hidden_size"], fields["num_heads"], fields["head_dim"], **options)
    return sum(p.numel() for p in mixer.parameters())


def matched_hawk_expansion(preset: str, overrides: Optional[dict[str, Any]] = None) -> float:
    """``hawk_expansion`` (a whole number of channels per head) whose Hawk mixer has the parameter count
    closest to the Mesa mixer of the same preset (ties: the smaller width)."""
    fields = {**PRESETS[preset], **(overrides or {})}
    config = preset_config(preset, mixer="mesa", **(overrides or {}))
    target = _mixer_params("mesa", fields, value_head_dim=config.value_head_dim, conv_size=config.conv_size)
    head_dim = fields["head_dim"]
    best = min(range(1, 4 * head_dim + 1),
               key=lambda w: (abs(_mixer_params("hawk", fields, expansion=w / head_dim, conv_size=config.conv_size) - target), w))
    return best / head_dim


def solver_fields(config) -> dict[str, Any]:
    """The Mesa solver settings of a config, whatever they are called (``solver_*`` dicts or ``cg_*`` keys)."""
    return {k: v for k, v in config.to_dict().items() if k.startswith(("solver", "cg_")) or k == "decode_solver"}


def build_model(spec: dict[str, Any]) -> MesaNetForCausalLM:
    torch.manual_seed(spec["seed"])
    config = preset_config(spec["preset"], mixer=spec["layer_types"], **spec["config_overrides"])
    return MesaNetForCausalLM(config).to(device=spec["device"], dtype=torch.float32)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor reachable from a cache state (dataclasses, dicts, lists, tuples)."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def copy_cache(cache: MesaNetCache) -> MesaNetCache:
    """A cache that decoding can advance without touching ``cache`` (layer states are replaced, never mutated)."""
    new = copy.copy(cache)
    new.states = list(cache.states)
    return new


# ---------------------------------------------------------------------------------------------
# Measurements (inside a worker)


def _tokens(vocab: int, batch: int, length: int, seed: int, device: str) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


class TrainStep:
    """Forward + backward of the LM loss on ``B x T`` random tokens (``model.train()``, no optimizer)."""

    def __init__(self, model: MesaNetForCausalLM, batch: int, length: int, seed: int, device: str):
        self.model = model
        self.ids = _tokens(model.config.vocab_size, batch, length, seed, device)

    def __call__(self) -> float:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        loss = self.model(input_ids=self.ids, labels=self.ids, use_cache=False).loss
        loss.backward()
        return float(loss.detach())


def _attempts(record: dict[str, Any]) -> str:
    return "" if record["attempts"] == 1 else f" ({record['attempts']} attempts)"


def measure_train(model, spec: dict[str, Any], length: int, log: h.Log) -> dict[str, Any]:
    step = TrainStep(model, spec["batch"], length, spec["seed"], spec["device"])
    policy = h.RepeatPolicy(**spec["policy"])
    last: dict[str, float] = {}

    def measure() -> dict[str, Any]:
        record, last["loss"] = h.time_call(step, spec["device"], policy, min_warmup_s=spec["train_warmup_s"])
        return record

    result = h.least_contended(measure, spec["retries"], wait=None)
    result.update(length=length, batch=spec["batch"], tokens_per_s=spec["batch"] * length / result["median_s"], loss=last["loss"])
    model.zero_grad(set_to_none=True)
    log(f"  {spec['name']:<18s} train  T={length:<6d} median {1e3 * result['median_s']:9.1f} ms ({result['repeats']} reps)  "
        f"{result['tokens_per_s']:8.0f} tok/s  other load {h.percent(result['foreign_cpu_fraction'])}{_attempts(result)}")
    return result


def _skipped(key: str, value: int, reason: str, log: h.Log, name: str, what: str) -> dict[str, Any]:
    log(f"  {name:<18s} {what:<6s} {key}={value:<6d} skipped: {reason}")
    return {key: value, "skipped": True, "reason": reason}


@torch.no_grad()
def prefill(model, spec: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Caches at every context, built by one prefill in segments of ``prefill_chunk`` tokens (each
    continuing from the cache); per context the cache, its bytes and the prefill seconds since the previous one."""
    device, contexts = spec["device"], sorted(spec["contexts"])
    ids = _tokens(model.config.vocab_size, spec["batch"], contexts[-1], spec["seed"] + 1, device)
    cache, filled, caches = None, 0, {}
    for context in contexts:
        prefill_s = 0.0
        while filled < context:
            n = min(spec["prefill_chunk"], context - filled)
            seconds, out = h.timed(lambda: model(input_ids=ids[:, filled:filled + n], past_key_values=cache,
                                                 use_cache=True, logits_to_keep=1), device)
            cache, filled, prefill_s = out.past_key_values, filled + n, prefill_s + seconds
        assert cache.seen == context
        caches[context] = dict(cache=copy_cache(cache), prefill_s=prefill_s, cache_bytes=sum(_tensor_bytes(s) for s in cache.states))
    return caches


@torch.no_grad()
def measure_decode(model, spec: dict[str, Any], log: h.Log) -> list[dict[str, Any]]:
    """Per-token decode latency at every context: ``decode_warmup`` + ``decode_steps`` one-token steps
    per prefilled cache, the contexts interleaved step by step (every cycle rotated by one)."""
    model.eval()
    device, batch, contexts = spec["device"], spec["batch"], sorted(spec["contexts"])
    steps, warmup = spec["decode_steps"], spec["decode_warmup"]
    caches = prefill(model, spec)
    new_tokens = _tokens(model.config.vocab_size, batch, warmup + steps, spec["seed"] + 2, device)

    def measure() -> dict[str, Any]:
        foreign = h.ForeignLoad()
        foreign.start()
        work = {c: copy_cache(caches[c]["cache"]) for c in contexts}  # every attempt starts from the prefill
        times: dict[int, list[float]] = {c: [] for c in contexts}
        for i in range(warmup + steps):
            for j in range(len(contexts)):
                context = contexts[(i + j) % len(contexts)]
                seconds, out = h.timed(lambda: model(input_ids=new_tokens[:, i:i + 1], past_key_values=work[context],
                                                     use_cache=True), device)
                work[context] = out.past_key_values
                if i >= warmup:
                    times[context].append(seconds)
        return dict(times=times, foreign_cpu_fraction=foreign.fraction())

    timing = h.least_contended(measure, spec["retries"], wait=None)
    results = []
    for context in contexts:
        times, c = timing["times"][context], caches[context]
        median = statistics.median(times)
        results.append(dict(
            context=context, batch=batch, steps=steps, warmup_steps=warmup, times_s=times, median_s=median, min_s=min(times),
            p90_s=h.percentile(times, 0.9), foreign_cpu_fraction=timing["foreign_cpu_fraction"], attempts=timing["attempts"],
            prefill_s=c["prefill_s"], prefill_chunk=spec["prefill_chunk"], cache_bytes=c["cache_bytes"], cache_mib=c["cache_bytes"] / h.MIB,
        ))
        log(f"  {spec['name']:<18s} decode L={context:<6d} median {1e3 * median:7.2f} ms/token ({steps} steps)  "
            f"cache {c['cache_bytes'] / h.MIB:7.2f} MiB  prefill +{c['prefill_s']:.1f} s  "
            f"other load {h.percent(timing['foreign_cpu_fraction'])}{_attempts(timing)}")
    return results


def measure_model(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Everything about one model (``spec``: name, layer_types, preset, config_overrides, train_lengths,
    contexts, decode_steps, decode_warmup, prefill_chunk, policy, train_warmup_s, retries, batch, device, seed)."""
    started = time.perf_counter()
    model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    result: dict[str, Any] = dict(name=spec["name"], layer_types=spec["layer_types"], params=params,
                                  params_non_embedding=params - embedding, threads=torch.get_num_threads(), train=[], decode=[])
    log(f"  {spec['name']:<18s} {params / 1e6:.3f} M parameters ({(params - embedding) / 1e6:.3f} M without the embedding)")
    TrainStep(model, spec["batch"], model.config.chunk_size, spec["seed"], spec["device"])()  # thread pools, autograd, lazy init

    sequential = any(kind in SEQUENTIAL_MIXERS for kind in spec["layer_types"])
    if sequential:
        probe = TrainStep(model, spec["batch"], SEQUENTIAL_PROBE_LENGTH, spec["seed"], spec["device"])
        probe()
        probe_s = h.timed(probe, spec["device"])[0]
        per_token_s = probe_s / SEQUENTIAL_PROBE_LENGTH
        result["sequential_probe"] = dict(length=SEQUENTIAL_PROBE_LENGTH, step_s=probe_s)
    for length in sorted(spec["train_lengths"]):
        if sequential and length > SEQUENTIAL_MAX_TRAIN_LENGTH:
            reason = (f"sequential in T (a Python loop over tokens); trained only at T <= {SEQUENTIAL_MAX_TRAIN_LENGTH} "
                      f"(a step would take about {per_token_s * length:.0f} s)")
            result["train"].append(_skipped("length", length, reason, log, spec["name"], "train"))
        elif sequential and per_token_s * length > SEQUENTIAL_STEP_LIMIT_S:
            reason = (f"sequential in T: projected {per_token_s * length:.0f} s per step "
                      f"(probe at T={SEQUENTIAL_PROBE_LENGTH}) exceeds the {SEQUENTIAL_STEP_LIMIT_S:.0f} s limit")
            result["train"].append(_skipped("length", length, reason, log, spec["name"], "train"))
        else:
            result["train"].append(measure_train(model, spec, length, log))
    gc.collect()
    if sequential:
        reason = "sequential in T: the prefill is the same Python loop over tokens; decode not measured"
        result["decode"] = [_skipped("context", c, reason, log, spec["name"], "decode") for c in sorted(spec["contexts"])]
    else:
        result["decode"] = measure_decode(model, spec, log)
    result["runtime_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------
# Derived checks


def _measured(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if not e.get("skipped")]


def timings(model: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of every timing of a model."""
    return ([(f"{model['name']} train T={r['length']}", r) for r in _measured(model["train"])]
            + [(f"{model['name']} decode L={r['context']}", r) for r in _measured(model["decode"])])


def worst_foreign_load(model: dict[str, Any]) -> float:
    """The largest share of the machine other processes took during any timing of ``model`` (0 if unknown)."""
    return max((r.get("foreign_cpu_fraction") or 0.0 for _, r in timings(model)), default=0.0)


def decode_growth(model: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Decode latency at the longest measured context over the shortest (None with fewer than two)."""
    runs = sorted(_measured(model["decode"]), key=lambda r: r["context"])
    if len(runs) < 2:
        return None
    short, long = runs[0], runs[-1]
    return dict(short_context=short["context"], long_context=long["context"], short_s=short["median_s"],
                long_s=long["median_s"], ratio=long["median_s"] / short["median_s"])


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
            check.update({key: at, "mesa_s": a[at]["median_s"], "baseline_s": b[at]["median_s"], "ratio": ratio,
                          "passed": bool(ratio <= target)})
    return check


def target_checks(models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets; ``passed`` is None where a model or measurement is missing."""
    mesa, attention, gdn = _model(models, "mesa"), _model(models, "attention"), _model(models, "gated_deltanet")
    targets: dict[str, Any] = {}
    for key, model, target, comparison in (("mesa_decode_flat", mesa, DECODE_FLAT_TARGET, "<="),
                                           ("attention_decode_grows", attention, 1.0, ">")):
        growth = decode_growth(model) if model else None
        passed = None if growth is None else bool(growth["ratio"] <= target if comparison == "<=" else growth["ratio"] > target)
        targets[key] = dict(mixer=model and model["name"], target=target, comparison=comparison, **(growth or {}), passed=passed)
    targets["mesa_train_vs_gated_deltanet"] = _versus(mesa, gdn, "train", "length", TRAIN_RATIO_LENGTH, TRAIN_RATIO_TARGET)
    targets["mesa_decode_vs_gated_deltanet"] = _versus(mesa, gdn, "decode", "context", None, DECODE_RATIO_TARGET)
    return targets


# ---------------------------------------------------------------------------------------------
# Report


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
    out = ["# Model benchmark: training step and decode latency per mixer", "",
           *h.machine_lines(results["machine"], results["matmul_peak"]), *h.quiet_warning(results["quiet_machine"]),
           f"Preset `{cfg['preset']}`: D={m['hidden_size']}, {m['num_hidden_layers']} layers, {m['num_heads']} heads x "
           f"{m['head_dim']}, vocab {m['vocab_size']}, MLP x{m['mlp_expansion']}, chunk {m['chunk_size']}, hawk_expansion "
           f"{m['hawk_expansion']:g} (matched to the Mesa mixer's parameters), attention window {m['attention_window']} "
           f"(sliding_attention). fp32, B={cfg['batch']}. Mesa solver (the config's defaults): {solver}.", "",
           "## Results", "",
           f"Training step: forward + backward of the LM loss, median ms over the repeats (after warm-up). Decode: median "
           f"ms per token over {cfg['decode_steps']} one-token steps (after {cfg['decode_warmup']} warm-up steps; the "
           f"contexts interleaved step by step) with a cache prefilled to L tokens; ratio = decode at L={longest} / "
           f"L={shortest}; cache = bytes of the decoding state at L={longest}. `sliding_attention` trains through a dense "
           f"masked attention, so it is not cheaper than full attention in training here.", ""]
    header = ["mixer", "layers", "params (M)", "non-emb. (M)"] + [f"train T={n} (ms)" for n in lengths]
    header += [f"decode L={_context_label(c)} (ms/tok)" for c in contexts] + [f"decode {longest}/{shortest}", f"cache L={longest} (MiB)"]
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
        rows.append([model["name"], layers, f"{model['params'] / 1e6:.3f}", f"{model['params_non_embedding'] / 1e6:.3f}"]
                    + [_cell(train.get(n), 1e3, ".1f") for n in lengths] + [_cell(decode.get(c), 1e3, ".2f") for c in contexts]
                    + ["-" if growth is None else f"{growth['ratio']:.2f}x",
                       "skipped" if last is None or last.get("skipped") else f"{last['cache_mib']:.2f}"])
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
        what = f"{label}: L={_context_label(c['long_context'])} / L={_context_label(c['short_context'])}" if "ratio" in c else f"{label}: long / short context"
        rows.append([what, h.fmt(c.get("ratio"), ".2f") + "x", f"{c['comparison']} {c['target']:g}x", h.flag(c["passed"])])
    for key, label, where in (("mesa_train_vs_gated_deltanet", "training step", "length"), ("mesa_decode_vs_gated_deltanet", "decode per token", "context")):
        c = t[key]
        what = f"Mesa / Gated DeltaNet {label}" + (f" at {'T' if where == 'length' else 'L'}={c[where]}" if where in c else "")
        rows.append([what, h.fmt(c.get("ratio"), ".2f") + "x", f"<= {c['target']:g}x", h.flag(c["passed"])])
    out += h.table(["check", "measured", "target", "flag"], rows)
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Driver


def run_benchmark(
    mixers: Sequence[str] = DEFAULT_MIXERS,
    *,
    preset: str = "cpu-small",
    config_overrides: Optional[dict[str, Any]] = None,
    train_lengths: Sequence[int] = DEFAULT_TRAIN_LENGTHS,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    batch: int = 1,
    policy: h.RepeatPolicy = DEFAULT_POLICY,
    decode_steps: int = 64,
    decode_warmup: int = 4,
    train_warmup_s: float = DEFAULT_TRAIN_WARMUP_S,
    prefill_chunk: int = 2048,
    matmul_size: int = 4096,
    device: str = "cpu",
    seed: int = 0,
    isolate: bool = True,
    retries: int = h.CONTENDED_RETRIES,
    reruns: int = 1,
    out_dir: Optional[Path] = h.DEFAULT_OUT,
    log: h.Log = h.print_log,
) -> dict[str, Any]:
    """Run every model, write ``models.json`` / ``models.md`` to ``out_dir`` (unless None), return the results.

    ``config_overrides``: extra ``MesaNetConfig`` fields for every model (default: none; the Mesa solver
    stays at the config's defaults). ``isolate=False`` measures every model in this process. ``retries``:
    how often a disturbed timing is taken again; ``reruns``: how often a model with a timing still
    disturbed is measured again at the end.
    """
    started, load_before = time.perf_counter(), h.load_average()
    unknown = sorted(set(mixers) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown mixers {unknown}; valid: {list(MODELS)}")
    train_lengths, contexts = sorted(set(train_lengths)), sorted(set(contexts))
    overrides = dict(config_overrides or {})
    if "hawk_expansion" not in overrides:
        overrides["hawk_expansion"] = matched_hawk_expansion(preset, overrides)
    config = preset_config(preset, mixer="mesa", **overrides)
    log(f"model benchmark on {device}: preset {preset}, mixers {list(mixers)}, train T={train_lengths}, "
        f"decode L={contexts}, hawk_expansion {overrides['hawk_expansion']:g}")
    peak_start = h.measure_matmul_peak_quietly(matmul_size, device, retries)
    log(f"fp32 matmul {matmul_size}^2: best {peak_start['best_gflops']:.1f} GFLOP/s")

    target = "benchmarks.bench_models:measure_model"
    models, specs = [], []
    for i, name in enumerate(mixers, start=1):
        spec = dict(name=name, layer_types=layer_types(MODELS[name], config.num_hidden_layers), preset=preset,
                    config_overrides=overrides, train_lengths=train_lengths, contexts=contexts, decode_steps=decode_steps,
                    decode_warmup=decode_warmup, prefill_chunk=prefill_chunk, policy=asdict(policy),
                    train_warmup_s=train_warmup_s, retries=retries, batch=batch, device=device, seed=seed)
        log(f"[{i:2d}/{len(mixers)}] {name} ({'/'.join(spec['layer_types'])})")
        models.append(dict(h.call_in_worker(target, spec, isolate=isolate, log=log), measured_runs=1))
        specs.append(spec)
        log(f"[{i:2d}/{len(mixers)}] {name} done in {models[-1]['runtime_s']:.1f} s")
    for _ in range(reruns):
        for i, spec in enumerate(specs):
            if worst_foreign_load(models[i]) <= h.FOREIGN_LOAD_LIMIT:
                continue
            log(f"[rerun] {spec['name']}: other processes took up to {h.percent(worst_foreign_load(models[i]))} of the machine")
            again, runs = h.call_in_worker(target, spec, isolate=isolate, log=log), models[i]["measured_runs"] + 1
            if worst_foreign_load(again) < worst_foreign_load(models[i]):
                models[i] = again
            models[i]["measured_runs"] = runs

    peak = h.matmul_peak_summary(peak_start, h.measure_matmul_peak_quietly(matmul_size, device, retries))
    model_fields = {k: v for k, v in config.to_dict().items()
                    if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "value_head_dim",
                             "mlp_expansion", "conv_size", "chunk_size", "attention_window", "hawk_expansion", "logit_soft_cap",
                             "rope_theta", "gamma_cap")}
    results: dict[str, Any] = dict(
        machine=dict(h.machine_info(device), load_average_1m_at_start=load_before),
        config=dict(preset=preset, model=model_fields, config_overrides=overrides, mesa_solver=solver_fields(config),
                    mixers=list(mixers), train_lengths=train_lengths, contexts=contexts, batch=batch, dtype="float32",
                    policy=asdict(policy), train_warmup_s=train_warmup_s, decode_steps=decode_steps, decode_warmup=decode_warmup,
                    prefill_chunk=prefill_chunk, matmul_size=matmul_size, seed=seed, isolate=isolate, retries=retries,
                    reruns=reruns, sequential_max_train_length=SEQUENTIAL_MAX_TRAIN_LENGTH,
                    sequential_step_limit_s=SEQUENTIAL_STEP_LIMIT_S,
                    train_step="model.train(); zero_grad; loss = model(ids, labels=ids).loss; loss.backward(); no optimizer",
                    decode_step="model.eval(); no_grad; model(one token, past_key_values=cache, use_cache=True)"),
        matmul_peak=peak,
        models=models,
    )
    results["targets"] = target_checks(models)
    results["quiet_machine"] = h.quiet_machine_check(peak, [t for m in models for t in timings(m)])
    results["total_runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        paths = h.write_results(results, Path(out_dir), "models", render_markdown)
        log(f"wrote {paths[0]} and {paths[1]}")
    return results


def _mixer_list(values: Sequence[str]) -> list[str]:
    names = [n for v in values for n in v.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mixers {unknown}; valid: {list(MODELS)}")
    return names


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"train T={list(QUICK_TRAIN_LENGTHS)}, decode L={list(QUICK_CONTEXTS)}, fewer repeats and steps")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT, help=f"output directory (default {h.DEFAULT_OUT})")
    parser.add_argument("--mixers", nargs="+", default=list(DEFAULT_MIXERS), metavar="MIXER",
                        help=f"subset of {', '.join(MODELS)} (space- or comma-separated)")
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="no worker processes")
    parser.add_argument("--retries", type=int, default=h.CONTENDED_RETRIES,
                        help="how often a timing disturbed by other processes is taken again (0 while developing)")
    args = parser.parse_args(argv)
    try:
        mixers = _mixer_list(args.mixers)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    common = dict(preset=args.preset, batch=args.batch, device=args.device, seed=args.seed, out_dir=args.out,
                  isolate=not args.in_process, retries=args.retries, reruns=min(1, args.retries))
    if args.quick:
        results = run_benchmark(mixers, train_lengths=QUICK_TRAIN_LENGTHS, contexts=QUICK_CONTEXTS, policy=QUICK_POLICY,
                                decode_steps=16, decode_warmup=2, train_warmup_s=QUICK_TRAIN_WARMUP_S, matmul_size=2048, **common)
    else:
        results = run_benchmark(mixers, **common)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
