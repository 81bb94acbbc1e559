"""Measurements of the model benchmark inside a worker: training step, prefill and decode latency per token."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch
from torch import Tensor

from benchmarks import harness as h
from mesanet.models import MesaNetForCausalLM

from .build import (
    SEQUENTIAL_MAX_TRAIN_LENGTH,
    SEQUENTIAL_MIXERS,
    SEQUENTIAL_PROBE_LENGTH,
    SEQUENTIAL_STEP_LIMIT_S,
    _tensor_bytes,
    build_model,
    copy_cache,
)


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
    log(
        f"  {spec['name']:<18s} train  T={length:<6d} median {1e3 * result['median_s']:9.1f} ms ({result['repeats']} reps)  "
        f"{result['tokens_per_s']:8.0f} tok/s  other load {h.percent(result['foreign_cpu_fraction'])}{_attempts(result)}"
    )
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
            seconds, out = h.timed(
                lambda: model(input_ids=ids[:, filled : filled + n], past_key_values=cache, use_cache=True, logits_to_keep=1),
                device,
            )
            cache, filled, prefill_s = out.past_key_values, filled + n, prefill_s + seconds
        assert cache.seen == context
        caches[context] = dict(
            cache=copy_cache(cache), prefill_s=prefill_s, cache_bytes=sum(_tensor_bytes(s) for s in cache.states)
        )
    return caches


def _decode_in_turns(runs: dict[Any, tuple[Any, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """One-token decode steps of every ``(model, prefilled cache)`` in ``runs``, interleaved step by step (every
    cycle rotated by one), ``decode_warmup`` + ``decode_steps`` each; each attempt starts from the prefills. Returns
    the seconds per step by key (warm-up dropped), the other load and the attempts (:func:`h.least_contended`)."""
    keys, steps, warmup = list(runs), spec["decode_steps"], spec["decode_warmup"]
    vocab = next(iter(runs.values()))[0].config.vocab_size
    new_tokens = _tokens(vocab, spec["batch"], warmup + steps, spec["seed"] + 2, spec["device"])

    def measure() -> dict[str, Any]:
        foreign = h.ForeignLoad()
        foreign.start()
        work = {key: copy_cache(cache) for key, (_, cache) in runs.items()}
        times: dict[Any, list[float]] = {key: [] for key in keys}
        for i in range(warmup + steps):
            for j in range(len(keys)):
                key = keys[(i + j) % len(keys)]
                seconds, out = h.timed(
                    lambda: runs[key][0](input_ids=new_tokens[:, i : i + 1], past_key_values=work[key], use_cache=True),
                    spec["device"],
                )
                work[key] = out.past_key_values
                if i >= warmup:
                    times[key].append(seconds)
        return dict(times=times, foreign_cpu_fraction=foreign.fraction())

    return h.least_contended(measure, spec["retries"], wait=None)


@torch.no_grad()
def measure_decode(model, spec: dict[str, Any], log: h.Log) -> list[dict[str, Any]]:
    """Per-token decode latency at every context: ``decode_warmup`` + ``decode_steps`` one-token steps
    per prefilled cache, the contexts interleaved step by step (every cycle rotated by one)."""
    model.eval()
    batch, contexts = spec["batch"], sorted(spec["contexts"])
    steps, warmup = spec["decode_steps"], spec["decode_warmup"]
    caches = prefill(model, spec)
    timing = _decode_in_turns({c: (model, caches[c]["cache"]) for c in contexts}, spec)
    results = []
    for context in contexts:
        times, c = timing["times"][context], caches[context]
        median = statistics.median(times)
        results.append(
            dict(
                context=context,
                batch=batch,
                steps=steps,
                warmup_steps=warmup,
                times_s=times,
                median_s=median,
                min_s=min(times),
                p90_s=h.percentile(times, 0.9),
                foreign_cpu_fraction=timing["foreign_cpu_fraction"],
                attempts=timing["attempts"],
                prefill_s=c["prefill_s"],
                prefill_chunk=spec["prefill_chunk"],
                cache_bytes=c["cache_bytes"],
                cache_mib=c["cache_bytes"] / h.MIB,
            )
        )
        log(
            f"  {spec['name']:<18s} decode L={context:<6d} median {1e3 * median:7.2f} ms/token ({steps} steps)  "
            f"cache {c['cache_bytes'] / h.MIB:7.2f} MiB  prefill +{c['prefill_s']:.1f} s  "
            f"other load {h.percent(timing['foreign_cpu_fraction'])}{_attempts(timing)}"
        )
    return results


def measure_model(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """Everything about one model (``spec``: name, layer_types, preset, config_overrides, train_lengths,
    contexts, decode_steps, decode_warmup, prefill_chunk, policy, train_warmup_s, retries, batch, device, seed)."""
    started = time.perf_counter()
    model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    result: dict[str, Any] = dict(
        name=spec["name"],
        layer_types=spec["layer_types"],
        params=params,
        params_non_embedding=params - embedding,
        threads=torch.get_num_threads(),
        train=[],
        decode=[],
    )
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
            reason = (
                f"sequential in T (a Python loop over tokens); trained only at T <= {SEQUENTIAL_MAX_TRAIN_LENGTH} "
                f"(a step would take about {per_token_s * length:.0f} s)"
            )
            result["train"].append(_skipped("length", length, reason, log, spec["name"], "train"))
        elif sequential and per_token_s * length > SEQUENTIAL_STEP_LIMIT_S:
            reason = (
                f"sequential in T: projected {per_token_s * length:.0f} s per step "
                f"(probe at T={SEQUENTIAL_PROBE_LENGTH}) exceeds the {SEQUENTIAL_STEP_LIMIT_S:.0f} s limit"
            )
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


def measure_pair(spec: dict[str, Any], log: h.Log = h.print_log) -> dict[str, Any]:
    """The training step and the decode step of two models timed in turns in one process, so that their ratios
    are taken under one load (``spec``: ``pair`` = two model specs as :func:`measure_model`'s, and ``length``).
    Each model warms up for ``train_warmup_s`` first; decode runs at the longest of ``contexts``."""
    length, steps, models = spec["length"], {}, {}
    for model_spec in spec["pair"]:
        models[model_spec["name"]] = model = build_model(model_spec)
        step = TrainStep(model, spec["batch"], length, spec["seed"], spec["device"])
        started = time.perf_counter()
        step()
        while time.perf_counter() - started < spec["train_warmup_s"]:
            step()
        steps[model_spec["name"]] = step
    records, _ = h.time_interleaved(steps, spec["device"], h.RepeatPolicy(**spec["policy"]))
    (a, b) = list(steps)
    ratio = records[a]["median_s"] / records[b]["median_s"]
    log(
        f"  paired train T={length}: {a} {1e3 * records[a]['median_s']:.1f} ms, {b} {1e3 * records[b]['median_s']:.1f} ms "
        f"in turns ({records[a]['repeats']} rounds): ratio {ratio:.2f}, other load {h.percent(records[a]['foreign_cpu_fraction'])}"
    )
    del steps
    gc.collect()
    decode = _paired_decode(models, dict(spec, contexts=[max(spec["contexts"])]), log)
    return dict(length=length, names=[a, b], records=records, ratio=ratio, decode=decode)


@torch.no_grad()
def _paired_decode(models: dict[str, Any], spec: dict[str, Any], log: h.Log) -> dict[str, Any]:
    """One-token decode steps of several models in turns, each from its own cache prefilled to the context
    ``spec["contexts"][0]``: per model the median seconds per token, under one load."""
    context, steps = spec["contexts"][0], spec["decode_steps"]
    names = list(models)
    for model in models.values():
        model.eval()
    timing = _decode_in_turns({name: (models[name], prefill(models[name], spec)[context]["cache"]) for name in names}, spec)
    medians = {name: statistics.median(timing["times"][name]) for name in names}
    log(
        f"  paired decode L={context}: "
        + ", ".join(f"{name} {1e3 * medians[name]:.2f} ms/token" for name in names)
        + f" in turns ({steps} steps): ratio {medians[names[0]] / medians[names[1]]:.2f}, "
        f"other load {h.percent(timing['foreign_cpu_fraction'])}"
    )
    return dict(
        context=context,
        steps=steps,
        median_s=medians,
        foreign_cpu_fraction=timing["foreign_cpu_fraction"],
        attempts=timing["attempts"],
    )
