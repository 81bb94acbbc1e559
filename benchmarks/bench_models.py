"""Model-level benchmark: every mixer in the same small language model, training step and decode latency.

What is measured (defaults: preset ``cpu-small``, D=256, 4 layers, 4 heads x 64, vocab 4096, fp32, B=1):

* **Parameter count** of every model (all parameters, tied embedding counted once, and without the
  embedding). Every model has the same backbone (embedding, norms, gated MLPs); only the token mixers
  differ. Hawk's recurrence width is set through ``hawk_expansion`` to the value whose Hawk mixer comes
  closest to the Mesa mixer's parameter count (see :func:`matched_hawk_expansion`); the counts in the
  report are the actual ones.
* **Training step** at T in {512, 2048}: ``model.train()``, ``zero_grad``, forward with ``labels`` (the
  mean next-token loss) and ``loss.backward()``; no optimizer step. A tiny warm-up call, then full-size
  warm-up calls (at least ``policy.warmup`` and at least ``train_warmup_s`` seconds: the first few
  full-size steps run up to ~30% slow while the allocator settles), then the median (and min) of the
  repeats (count from the warm-up time, see ``RepeatPolicy`` of ``bench_mesa_op.py``), timed with
  ``time.perf_counter``. Mesa trains with a fixed 30 CG steps (``cg_max_iter_train=30, cg_tol_train=0``).
* **Decode latency per token** at context L in {1k, 4k, 16k}: ``model.eval()``, ``torch.no_grad()``; a
  real cache is built by a prefill of random tokens up to every L (in segments of ``prefill_chunk``
  tokens, each continuing from the cache, so attention's prefill memory stays bounded), and the cache at
  every L is kept. Then one-token forwards, each feeding the returned cache back (starting from a copy
  of the cache at L), ``decode_warmup`` untimed and ``decode_steps`` timed ones per context, with the
  contexts interleaved step by step (every cycle visits each context once, in an order rotated by one
  per cycle). One-token steps of this small model take a few ms, mostly per-operator overhead, and the
  machine drifts between phases ~40% apart that last a few hundred ms; interleaving spreads them over
  all contexts, so the ratios between contexts are much steadier than with one window per context.
  Reported: the median seconds per token (plus min / 90th percentile and the prefill time in the JSON)
  and the bytes of the cache at L. Mesa decodes with the config's eval settings: 30 CG steps, no
  tolerance.
* Mixers: ``mesa``, ``gated_deltanet``, ``deltanet``, ``gla``, ``mamba2``, ``hawk``, ``attention``
  (the Transformer), ``sliding_attention`` (window ``attention_window``), the hybrid ``hawk+mesa``
  (alternating layers, Hawk first) and ``sherman_morrison``. Sherman-Morrison is sequential in T (a
  Python loop over tokens): it is trained only at T <= 512 and only if a short probe projects one step
  under ``SEQUENTIAL_STEP_LIMIT_S``; its other lengths and its decode (whose prefill is the same loop)
  are reported as skipped, with the reason.
* **Other load**, as in ``bench_mesa_op.py``: every timing (a training length, a decode context, the
  matmul) records the share of the machine's core time that other processes took meanwhile
  (``ForeignLoad``); a timing above 10% is taken again (``retries``, twice by default; for decode all
  contexts, from the same prefilled caches) and the least disturbed one is kept. A model with a timing
  still above the limit is measured once more at the end (``reruns``), in a fresh worker, and the run
  whose worst timing was less disturbed is kept.
* **Machine fp32 matmul throughput** at the start and the end (``measure_matmul_peak``). A drift above
  15%, or a timing still above the 10% other-load limit, marks the run as noisy, with a warning in
  the report.
* **Targets** (flags, never an exit status): Mesa decode(16k) / decode(1k) <= 1.2 (constant-size
  state); the Transformer's decode cost grows (ratio > 1); Mesa training step / Gated DeltaNet step at
  T=2048 <= 3. With other lengths (``--quick``) the longest and shortest measured ones are used.

Every model runs in its own fresh subprocess (``--worker``), so memory and caches of one model cannot
affect the next; progress lines of the worker are relayed as they come.

Usage::

    python benchmarks/bench_models.py [--quick] [--device cpu|cuda] [--out DIR] [--mixers mesa attention ...]

Writes ``models.json`` and ``models.md`` to ``DIR`` (default ``benchmarks/results/``) and prints the
markdown. :func:`run_benchmark` is the same thing as a function (used by the smoke test).

Reused from ``bench_mesa_op.py`` (loaded from its path): ``timed``, ``ForeignLoad``,
``measure_matmul_peak``, ``machine_info``, ``RepeatPolicy``, the noise limits and the markdown helpers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent


def _load_op_benchmark():
    """``benchmarks/bench_mesa_op.py`` as a module (its helpers are shared, not copied)."""
    name = "bench_mesa_op"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "bench_mesa_op.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


_op = _load_op_benchmark()  # also puts src/ on sys.path for a checkout without ``pip install -e .``
RepeatPolicy, ForeignLoad, timed = _op.RepeatPolicy, _op.ForeignLoad, _op.timed
_quiet_warning = _op._quiet_warning  # the same noisy-machine warning in both reports
MATMUL_DRIFT_LIMIT, FOREIGN_LOAD_LIMIT, CONTENDED_RETRIES = _op.MATMUL_DRIFT_LIMIT, _op.FOREIGN_LOAD_LIMIT, _op.CONTENDED_RETRIES

from mesanet.layers.registry import build_mixer  # noqa: E402
from mesanet.models import MesaNetCache, MesaNetForCausalLM, PRESETS, preset_config  # noqa: E402

REPO = HERE.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
RESULT_MARKER = "@@bench-result@@ "
MIB = 2.0**20

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
#: Longest training length measured for a sequential mixer.
SEQUENTIAL_MAX_TRAIN_LENGTH = 512
#: A sequential mixer is trained only if a probe projects one step below this many seconds.
SEQUENTIAL_STEP_LIMIT_S = 20.0
SEQUENTIAL_PROBE_LENGTH = 64

#: Mesa's solver in training and decoding (the paper's 30 steps, no tolerance).
MESA_SOLVER = dict(cg_max_iter_train=30, cg_tol_train=0.0, cg_max_iter_eval=30, cg_tol_eval=0.0)

DEFAULT_TRAIN_LENGTHS = (512, 2048)
DEFAULT_CONTEXTS = (1024, 4096, 16384)
QUICK_TRAIN_LENGTHS = (256, 1024)
QUICK_CONTEXTS = (256, 1024)
DEFAULT_POLICY = RepeatPolicy(warmup=2, min_repeats=3, max_repeats=7, budget_s=3.0)
QUICK_POLICY = RepeatPolicy(warmup=1, min_repeats=2, max_repeats=3, budget_s=1.0)
#: Training warm-up: at least ``policy.warmup`` calls and at least this many seconds.
DEFAULT_TRAIN_WARMUP_S = 1.5
QUICK_TRAIN_WARMUP_S = 0.3

#: Targets of the issue.
DECODE_FLAT_TARGET = 1.2  # Mesa decode(longest) / decode(shortest)
TRAIN_RATIO_TARGET = 3.0  # Mesa step / Gated DeltaNet step at the longest length
TRAIN_RATIO_LENGTH = 2048


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
    best = min(
        range(1, 4 * head_dim + 1),
        key=lambda w: (abs(_mixer_params("hawk", fields, expansion=w / head_dim, conv_size=config.conv_size) - target), w),
    )
    return best / head_dim


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
    """A cache that decoding can advance without touching ``cache`` (layer states are replaced, never
    mutated, so sharing them is safe)."""
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


def _contended(run: dict[str, Any]) -> bool:
    return (run.get("foreign_cpu_fraction") or 0.0) > FOREIGN_LOAD_LIMIT


def least_contended(measure: Callable[[], dict[str, Any]], retries: int) -> dict[str, Any]:
    """``measure()``, taken again (at most ``retries`` times) while other processes used more than
    ``FOREIGN_LOAD_LIMIT`` of the machine; the least disturbed result, with ``attempts``."""
    best, attempts = measure(), 1
    while _contended(best) and attempts <= retries:
        again, attempts = measure(), attempts + 1
        if (again["foreign_cpu_fraction"] or 0.0) < (best["foreign_cpu_fraction"] or 0.0):
            best = again
    return dict(best, attempts=attempts)


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def measure_train(model, spec: dict[str, Any], length: int, log: Callable[[str], None]) -> dict[str, Any]:
    policy, device = RepeatPolicy(**spec["policy"]), spec["device"]
    step = TrainStep(model, spec["batch"], length, spec["seed"], device)

    def measure() -> dict[str, Any]:
        foreign = ForeignLoad()
        foreign.start()
        warmup: list[float] = []
        while len(warmup) < policy.warmup or sum(warmup) < spec["train_warmup_s"]:
            warmup.append(timed(step, device)[0])
        repeats = policy.repeats(min(warmup) if warmup else 0.0)
        times, losses = [], []
        for _ in range(repeats):
            seconds, loss = timed(step, device)
            times.append(seconds)
            losses.append(loss)
        median = statistics.median(times)
        return dict(length=length, batch=spec["batch"], repeats=repeats, times_s=times, median_s=median,
                    min_s=min(times), warmup_s=warmup, tokens_per_s=spec["batch"] * length / median, loss=losses[-1],
                    foreign_cpu_fraction=foreign.fraction())

    result = least_contended(measure, spec["retries"])
    model.zero_grad(set_to_none=True)
    log(f"  {spec['name']:<18s} train  T={length:<6d} median {1e3 * result['median_s']:9.1f} ms ({result['repeats']} reps)  "
        f"{result['tokens_per_s']:8.0f} tok/s  other load {_percent(result['foreign_cpu_fraction'])}"
        f"{'' if result['attempts'] == 1 else ' (' + str(result['attempts']) + ' attempts)'}")
    return result


def _skipped(key: str, value: int, reason: str, log: Callable[[str], None], name: str, what: str) -> dict[str, Any]:
    log(f"  {name:<18s} {what:<6s} {key}={value:<6d} skipped: {reason}")
    return {key: value, "skipped": True, "reason": reason}


def sequential_probe(model, spec: dict[str, Any]) -> tuple[float, float]:
    """(seconds of one training step at ``SEQUENTIAL_PROBE_LENGTH`` tokens, after a warm-up call, and
    the projected seconds per token)."""
    step = TrainStep(model, spec["batch"], SEQUENTIAL_PROBE_LENGTH, spec["seed"], spec["device"])
    step()
    seconds, _ = timed(step, spec["device"])
    return seconds, seconds / SEQUENTIAL_PROBE_LENGTH


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@torch.no_grad()
def prefill(model, spec: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Caches at every context, built by one prefill in segments of ``prefill_chunk`` tokens (each
    continuing from the cache); per context the cache, its bytes and the prefill seconds since the
    previous context."""
    device, contexts = spec["device"], sorted(spec["contexts"])
    ids = _tokens(model.config.vocab_size, spec["batch"], contexts[-1], spec["seed"] + 1, device)
    cache, filled, caches = None, 0, {}
    for context in contexts:
        prefill_s = 0.0
        while filled < context:
            n = min(spec["prefill_chunk"], context - filled)
            seconds, out = timed(lambda: model(input_ids=ids[:, filled:filled + n], past_key_values=cache,
                                               use_cache=True, logits_to_keep=1), device)
            cache, filled, prefill_s = out.past_key_values, filled + n, prefill_s + seconds
        assert cache.seen == context
        caches[context] = dict(cache=copy_cache(cache), prefill_s=prefill_s,
                               cache_bytes=sum(_tensor_bytes(s) for s in cache.states))
    return caches


@torch.no_grad()
def measure_decode(model, spec: dict[str, Any], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-token decode latency at every context: the prefilled caches, then ``decode_warmup`` +
    ``decode_steps`` one-token steps per context, the contexts interleaved step by step."""
    model.eval()
    device, batch, contexts = spec["device"], spec["batch"], sorted(spec["contexts"])
    steps, warmup = spec["decode_steps"], spec["decode_warmup"]
    caches = prefill(model, spec)
    new_tokens = _tokens(model.config.vocab_size, batch, warmup + steps, spec["seed"] + 2, device)

    def measure() -> dict[str, Any]:
        foreign = ForeignLoad()
        foreign.start()
        work = {c: copy_cache(caches[c]["cache"]) for c in contexts}  # every attempt starts from the prefill
        times: dict[int, list[float]] = {c: [] for c in contexts}
        for i in range(warmup + steps):
            for j in range(len(contexts)):
                context = contexts[(i + j) % len(contexts)]
                seconds, out = timed(lambda: model(input_ids=new_tokens[:, i:i + 1], past_key_values=work[context],
                                                   use_cache=True), device)
                work[context] = out.past_key_values
                if i >= warmup:
                    times[context].append(seconds)
        return dict(times=times, foreign_cpu_fraction=foreign.fraction())

    timing = least_contended(measure, spec["retries"])
    results = []
    for context in contexts:
        times, c = timing["times"][context], caches[context]
        median = statistics.median(times)
        results.append(dict(
            context=context, batch=batch, steps=steps, warmup_steps=warmup, times_s=times, median_s=median, min_s=min(times), p90_s=_percentile(times, 0.9),
            foreign_cpu_fraction=timing["foreign_cpu_fraction"], attempts=timing["attempts"],
            prefill_s=c["prefill_s"], prefill_chunk=spec["prefill_chunk"], cache_bytes=c["cache_bytes"],
            cache_mib=c["cache_bytes"] / MIB,
        ))
        log(f"  {spec['name']:<18s} decode L={context:<6d} median {1e3 * median:7.2f} ms/token ({steps} steps)  "
            f"cache {c['cache_bytes'] / MIB:7.2f} MiB  prefill +{c['prefill_s']:.1f} s  "
            f"other load {_percent(timing['foreign_cpu_fraction'])}"
            f"{'' if timing['attempts'] == 1 else ' (' + str(timing['attempts']) + ' attempts)'}")
    return results


def measure_model(spec: dict[str, Any], log: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict[str, Any]:
    """Everything about one model (``spec``: name, layer_types, preset, config_overrides, train_lengths,
    contexts, decode_steps, decode_warmup, prefill_chunk, policy, train_warmup_s, retries, batch, device, seed)."""
    started = time.perf_counter()
    model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    result: dict[str, Any] = dict(
        name=spec["name"], layer_types=spec["layer_types"], params=params, params_non_embedding=params - embedding,
        threads=torch.get_num_threads(), train=[], decode=[],
    )
    log(f"  {spec['name']:<18s} {params / 1e6:.3f} M parameters ({(params - embedding) / 1e6:.3f} M without the embedding)")

    # a tiny call first: thread pools, the autograd engine, lazy initialisations
    TrainStep(model, spec["batch"], model.config.chunk_size, spec["seed"], spec["device"])()

    sequential = any(kind in SEQUENTIAL_MIXERS for kind in spec["layer_types"])
    train_lengths = sorted(spec["train_lengths"])
    if sequential:
        probe_s, per_token_s = sequential_probe(model, spec)
        result["sequential_probe"] = dict(length=SEQUENTIAL_PROBE_LENGTH, step_s=probe_s)
    for length in train_lengths:
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
# Workers


def run_worker(spec: dict[str, Any], isolate: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """:func:`measure_model` in a fresh interpreter running this file with ``--worker`` (its progress
    lines relayed to ``log``), or in this process with ``isolate=False``."""
    if not isolate:
        return measure_model(spec, log)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    result = None
    with tempfile.TemporaryFile("w+") as stderr:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(RESULT_MARKER):
                    result = json.loads(line[len(RESULT_MARKER):])
                else:
                    log(line.rstrip("\n"))
        stderr.seek(0)
        errors = stderr.read()
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}) for {spec['name']}:\n{errors[-4000:]}")
    return result


# ---------------------------------------------------------------------------------------------
# Derived checks


def _measured(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if not e.get("skipped")]


def worst_foreign_load(model: dict[str, Any]) -> float:
    """The largest share of the machine other processes took during any timing of ``model`` (0 if unknown)."""
    return max((r.get("foreign_cpu_fraction") or 0.0 for r in _measured(model["train"]) + _measured(model["decode"])),
               default=0.0)


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


def target_checks(models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three targets; ``passed`` is None where a model or measurement is missing."""
    targets: dict[str, Any] = {}
    mesa, attention = _model(models, "mesa"), _model(models, "attention")
    growth = decode_growth(mesa) if mesa else None
    targets["mesa_decode_flat"] = dict(
        mixer="mesa", target=DECODE_FLAT_TARGET, comparison="<=", **(growth or {}),
        passed=None if growth is None else bool(growth["ratio"] <= DECODE_FLAT_TARGET),
    )
    growth = decode_growth(attention) if attention else None
    targets["attention_decode_grows"] = dict(
        mixer="attention", target=1.0, comparison=">", **(growth or {}),
        passed=None if growth is None else bool(growth["ratio"] > 1.0),
    )
    gdn = _model(models, "gated_deltanet")
    check: dict[str, Any] = dict(mixer="mesa", baseline="gated_deltanet", target=TRAIN_RATIO_TARGET, comparison="<=", passed=None)
    if mesa and gdn:
        a = {r["length"]: r for r in _measured(mesa["train"])}
        b = {r["length"]: r for r in _measured(gdn["train"])}
        common = sorted(set(a) & set(b))
        if common:
            length = TRAIN_RATIO_LENGTH if TRAIN_RATIO_LENGTH in common else common[-1]
            ratio = a[length]["median_s"] / b[length]["median_s"]
            check.update(length=length, mesa_s=a[length]["median_s"], baseline_s=b[length]["median_s"], ratio=ratio,
                         passed=bool(ratio <= TRAIN_RATIO_TARGET))
    targets["mesa_train_vs_gated_deltanet"] = check
    return targets


def quiet_machine_check(peak: dict[str, Any], models: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whether the timings can be trusted (the rule of ``bench_mesa_op.py``): matmul throughput at start
    and end within ``MATMUL_DRIFT_LIMIT``, and no timing taken while other processes used more than
    ``FOREIGN_LOAD_LIMIT`` of the machine's core time."""
    measured = [("matmul (start)", peak["start"]), ("matmul (end)", peak["end"])]
    for m in models:
        measured += [(f"{m['name']} train T={r['length']}", r) for r in _measured(m["train"])]
        measured += [(f"{m['name']} decode L={r['context']}", r) for r in _measured(m["decode"])]
    loads = [(name, r["foreign_cpu_fraction"]) for name, r in measured if r.get("foreign_cpu_fraction") is not None]
    worst = max(loads, key=lambda item: item[1], default=(None, None))
    drift_ok = abs(peak["drift"]) <= MATMUL_DRIFT_LIMIT
    load_ok = worst[1] is None or worst[1] <= FOREIGN_LOAD_LIMIT
    return dict(matmul_drift=peak["drift"], drift_limit=MATMUL_DRIFT_LIMIT, worst_foreign_cpu_fraction=worst[1],
                worst_foreign_cpu_measurement=worst[0], foreign_cpu_limit=FOREIGN_LOAD_LIMIT,
                passed=bool(drift_ok and load_ok))


# ---------------------------------------------------------------------------------------------
# Report


def _context_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _cell(entry: Optional[dict[str, Any]], scale: float, fmt: str) -> str:
    if entry is None:
        return "-"
    if entry.get("skipped"):
        return "skipped"
    return format(scale * entry["median_s"], fmt)


def render_markdown(results: dict[str, Any]) -> str:
    """The report: machine, one row per model, targets, skip reasons."""
    m, peak, cfg = results["machine"], results["matmul_peak"], results["config"]
    model_cfg = cfg["model"]
    lengths, contexts = cfg["train_lengths"], cfg["contexts"]
    shortest, longest = _context_label(contexts[0]), _context_label(contexts[-1])
    out = [
        "# Model benchmark: training step and decode latency per mixer",
        "",
        f"Device `{m['device']}`{' (' + m['gpu'] + ')' if 'gpu' in m else ''}, CPU `{m['cpu_model']}`, "
        f"{m['torch_threads']} torch threads, torch {m['torch_version']}. "
        f"1-minute load average at start / end: {_op._load(m.get('load_average_1m_at_start'))} / "
        f"{_op._load(m.get('load_average_1m_at_end'))}.",
        "",
        f"Preset `{cfg['preset']}`: D={model_cfg['hidden_size']}, {model_cfg['num_hidden_layers']} layers, "
        f"{model_cfg['num_heads']} heads x {model_cfg['head_dim']}, vocab {model_cfg['vocab_size']}, MLP x{model_cfg['mlp_expansion']}, "
        f"chunk {model_cfg['chunk_size']}, hawk_expansion {model_cfg['hawk_expansion']:g} (matched to the Mesa mixer's "
        f"parameters), attention window {model_cfg['attention_window']} (sliding_attention). fp32, B={cfg['batch']}. "
        f"Mesa: {cfg['mesa_solver']['cg_max_iter_train']} CG steps in training and "
        f"{cfg['mesa_solver']['cg_max_iter_eval']} in decoding (no tolerance).",
        "",
        f"fp32 matmul {peak['size']}x{peak['size']}: best {peak['start']['best_gflops']:.1f} GFLOP/s at the start, "
        f"{peak['end']['best_gflops']:.1f} GFLOP/s at the end; peak = {peak['peak_gflops']:.1f} GFLOP/s. "
        f"Largest share of the machine taken by other processes during a timing: "
        f"{_percent(results['quiet_machine']['worst_foreign_cpu_fraction'])}.",
        "",
        *_quiet_warning(results["quiet_machine"]),
        *([""] if not results["quiet_machine"]["passed"] else []),
        "## Results",
        "",
        f"Training step: forward + backward of the LM loss, median ms over the repeats (after warm-up). "
        f"Decode: median ms per token over {cfg['decode_steps']} one-token steps (after {cfg['decode_warmup']} warm-up "
        f"steps; the contexts interleaved step by step) with a cache prefilled to L tokens; "
        f"ratio = decode at L={longest} / L={shortest}; "
        f"cache = bytes of the decoding state at L={longest}.",
        "",
        "At this model size a one-token step is dominated by per-operator overhead, so the recurrent models' decode "
        "costs follow their operator counts (Mesa: a 30-step CG solve per layer) more than their FLOPs. "
        "`sliding_attention` trains through a dense masked attention (all T x T scores, then the window mask), "
        "so it is not cheaper than full attention in training here; its decode attends to the last "
        f"{model_cfg['attention_window'] - 1} cached keys plus the new one.",
        "",
    ]
    header = ["mixer", "layers", "params (M)", "non-emb. (M)"]
    header += [f"train T={n} (ms)" for n in lengths]
    header += [f"decode L={_context_label(c)} (ms/tok)" for c in contexts]
    header += [f"decode {longest}/{shortest}", f"cache L={longest} (MiB)"]
    rows, reasons = [], {}
    for model in results["models"]:
        train = {r["length"]: r for r in model["train"]}
        decode = {r["context"]: r for r in model["decode"]}
        growth = decode_growth(model)
        last = decode.get(contexts[-1])
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
            + ["-" if growth is None else f"{growth['ratio']:.2f}x",
               "skipped" if last is None or last.get("skipped") else f"{last['cache_mib']:.2f}"]
        )
    out += _op._table(header, rows)
    if reasons:
        out += ["", "Skipped:"] + [f"- `{name}`: {'; '.join(r)}." for name, r in reasons.items()]
    out += ["", "## Targets", ""]
    if not results["quiet_machine"]["passed"]:
        out += ["Noisy machine (see the warning above): these flags say little about the models.", ""]
    t = results["targets"]
    rows = []
    for key, label in (("mesa_decode_flat", "Mesa decode"), ("attention_decode_grows", "Transformer decode")):
        c = t[key]
        what = (f"{label}: L={_context_label(c['long_context'])} / L={_context_label(c['short_context'])}"
                if "ratio" in c else f"{label}: long / short context")
        rows.append([what, f"{c['ratio']:.2f}x" if "ratio" in c else "n/a", f"{c['comparison']} {c['target']:g}x",
                     _op._flag(c["passed"])])
    c = t["mesa_train_vs_gated_deltanet"]
    what = f"Mesa ({cfg['mesa_solver']['cg_max_iter_train']} CG steps) / Gated DeltaNet training step"
    what += f" at T={c['length']}" if "ratio" in c else ""
    rows.append([what, f"{c['ratio']:.2f}x" if "ratio" in c else "n/a", f"<= {c['target']:g}x", _op._flag(c["passed"])])
    out += _op._table(["check", "measured", "target", "flag"], rows)
    out += ["", f"Total runtime {results['total_runtime_s']:.1f} s.", ""]
    return "\n".join(out)


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    return _op.write_results(results, out_dir, "models", render_markdown)


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
    policy: RepeatPolicy = DEFAULT_POLICY,
    decode_steps: int = 64,
    decode_warmup: int = 4,
    train_warmup_s: float = DEFAULT_TRAIN_WARMUP_S,
    prefill_chunk: int = 2048,
    matmul_size: int = 4096,
    device: str = "cpu",
    seed: int = 0,
    isolate: bool = True,
    retries: int = CONTENDED_RETRIES,
    reruns: int = 1,
    out_dir: Optional[Path] = DEFAULT_OUT,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> dict[str, Any]:
    """Run every model, write ``models.json`` / ``models.md`` to ``out_dir`` (unless None), return the results.

    ``isolate=False`` measures every model in this process instead of one fresh subprocess each.
    ``retries``: how often a timing disturbed by other processes is taken again (see :func:`least_contended`);
    ``reruns``: how often a model with a timing still disturbed is measured again at the end.
    """
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    unknown = sorted(set(mixers) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown mixers {unknown}; valid: {list(MODELS)}")
    train_lengths, contexts = sorted(set(train_lengths)), sorted(set(contexts))
    overrides = dict(MESA_SOLVER, **(config_overrides or {}))
    if "hawk_expansion" not in overrides:
        overrides["hawk_expansion"] = matched_hawk_expansion(preset, overrides)
    config = preset_config(preset, mixer="mesa", **overrides)
    log(f"model benchmark on {device}: preset {preset}, mixers {list(mixers)}, train T={train_lengths}, "
        f"decode L={contexts}, hawk_expansion {overrides['hawk_expansion']:g}")
    peak_start = _op.measure_matmul_peak(matmul_size, device)
    log(f"fp32 matmul {matmul_size}^2: best {peak_start['best_gflops']:.1f} GFLOP/s, median {peak_start['median_gflops']:.1f} GFLOP/s")

    models, specs = [], []
    for i, name in enumerate(mixers, start=1):
        spec = dict(
            name=name, layer_types=layer_types(MODELS[name], config.num_hidden_layers), preset=preset,
            config_overrides=overrides, train_lengths=train_lengths, contexts=contexts, decode_steps=decode_steps, decode_warmup=decode_warmup, prefill_chunk=prefill_chunk, policy=asdict(policy),
            train_warmup_s=train_warmup_s, retries=retries, batch=batch,
            device=device, seed=seed,
        )
        log(f"[{i:2d}/{len(mixers)}] {name} ({'/'.join(spec['layer_types'])})")
        models.append(dict(run_worker(spec, isolate, log), measured_runs=1))
        specs.append(spec)
        log(f"[{i:2d}/{len(mixers)}] {name} done in {models[-1]['runtime_s']:.1f} s")
    for _ in range(reruns):
        for i, spec in enumerate(specs):
            if worst_foreign_load(models[i]) <= FOREIGN_LOAD_LIMIT:
                continue
            log(f"[rerun] {spec['name']}: other processes took up to {_percent(worst_foreign_load(models[i]))} of the "
                f"machine during a timing; measuring it again")
            again = run_worker(spec, isolate, log)
            runs = models[i]["measured_runs"] + 1
            if worst_foreign_load(again) < worst_foreign_load(models[i]):
                models[i] = again
            models[i]["measured_runs"] = runs
            log(f"[rerun] {spec['name']}: kept the run with up to {_percent(worst_foreign_load(models[i]))} other load")

    peak_end = _op.measure_matmul_peak(matmul_size, device)
    log(f"fp32 matmul {matmul_size}^2 again: best {peak_end['best_gflops']:.1f} GFLOP/s")
    peak = dict(start=peak_start, end=peak_end, size=matmul_size,
                peak_gflops=max(peak_start["best_gflops"], peak_end["best_gflops"]),
                drift=peak_end["best_gflops"] / peak_start["best_gflops"] - 1.0)
    machine = dict(_op.machine_info(device), load_average_1m_at_start=load_before)
    model_fields = {k: v for k, v in config.to_dict().items()
                    if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "value_head_dim",
                             "mlp_expansion", "conv_size", "chunk_size", "attention_window", "hawk_expansion", "logit_soft_cap",
                             "rope_theta", "gamma_cap")}
    results: dict[str, Any] = dict(
        machine=machine,
        config=dict(preset=preset, model=model_fields, config_overrides=overrides, mesa_solver=MESA_SOLVER,
                    mixers=list(mixers), train_lengths=train_lengths, contexts=contexts, batch=batch, dtype="float32",
                    policy=asdict(policy), train_warmup_s=train_warmup_s, decode_steps=decode_steps,
                    decode_warmup=decode_warmup,
                    prefill_chunk=prefill_chunk, matmul_size=matmul_size, seed=seed, isolate=isolate, retries=retries, reruns=reruns,
                    sequential_max_train_length=SEQUENTIAL_MAX_TRAIN_LENGTH,
                    sequential_step_limit_s=SEQUENTIAL_STEP_LIMIT_S,
                    train_step="model.train(); zero_grad; loss = model(ids, labels=ids).loss; loss.backward(); no optimizer",
                    decode_step="model.eval(); no_grad; model(one token, past_key_values=cache, use_cache=True)"),
        matmul_peak=peak,
        models=models,
    )
    results["targets"] = target_checks(models)
    results["quiet_machine"] = quiet_machine_check(peak, models)
    results["total_runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        json_path, md_path = write_results(results, Path(out_dir))
        log(f"wrote {json_path} and {md_path}")
    log(f"total runtime {results['total_runtime_s']:.1f} s")
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--mixers", nargs="+", default=list(DEFAULT_MIXERS), metavar="MIXER",
                        help=f"subset of {', '.join(MODELS)} (space- or comma-separated)")
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one model as JSON
    args = parser.parse_args(argv)
    if args.worker is not None:
        result = measure_model(json.loads(args.worker))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    try:
        mixers = _mixer_list(args.mixers)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    common = dict(preset=args.preset, batch=args.batch, device=args.device, seed=args.seed, out_dir=args.out)
    if args.quick:
        results = run_benchmark(mixers, train_lengths=QUICK_TRAIN_LENGTHS, contexts=QUICK_CONTEXTS, policy=QUICK_POLICY,
                                decode_steps=16, decode_warmup=2, train_warmup_s=QUICK_TRAIN_WARMUP_S,
                                matmul_size=2048, **common)
    else:
        results = run_benchmark(mixers, **common)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
