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
  per token <= 1.5 (at the longest context). With other lengths the longest measured ones are used. The
  training-step ratio is taken from the two models timed in turns in one more worker (``paired_train``:
  separate workers minutes apart moved it from 1.23x to 1.32x between two runs).

Every model runs in its own fresh worker process (:func:`benchmarks.harness.call_in_worker`). The parts:
:mod:`benchmarks.mixers.build` (models, targets), :mod:`benchmarks.mixers.measure` (inside a worker),
:mod:`benchmarks.mixers.report` (checks and markdown); this script is the driver.

Usage::

    python -m benchmarks.bench_models [--quick] [--device cpu|cuda] [--out DIR] [--mixers mesa attention ...]

Writes ``models.json`` and ``models.md`` to ``DIR`` (default ``benchmarks/results/``) and prints the markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Sequence

if not __package__:  # run as a file: the repository root (for ``benchmarks``) and src/ on the path
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "src")]

import torch

from benchmarks import harness as h
from benchmarks.mixers.build import (  # noqa: F401 - _mixer_params and PRESETS: the benchmark's API
    DEFAULT_CONTEXTS,
    DEFAULT_MIXERS,
    DEFAULT_POLICY,
    DEFAULT_TRAIN_LENGTHS,
    DEFAULT_TRAIN_WARMUP_S,
    MODELS,
    PRESETS,
    QUICK_CONTEXTS,
    QUICK_POLICY,
    QUICK_TRAIN_LENGTHS,
    QUICK_TRAIN_WARMUP_S,
    SEQUENTIAL_MAX_TRAIN_LENGTH,
    SEQUENTIAL_STEP_LIMIT_S,
    TRAIN_RATIO_LENGTH,
    _mixer_params,
    layer_types,
    matched_hawk_expansion,
    solver_fields,
)
from benchmarks.mixers.report import render_markdown, target_checks, timings, worst_foreign_load
from mesanet.models import preset_config
from mesanet.utils.allocator import keep_freed_memory

#: Rounds of the paired training-step timing at least (every round times each model once; the ratio of the
#: medians over 3 rounds moved between 1.11x and 1.24x in two runs minutes apart).
PAIRED_MIN_ROUNDS = 9


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
    log(
        f"model benchmark on {device}: preset {preset}, mixers {list(mixers)}, train T={train_lengths}, "
        f"decode L={contexts}, hawk_expansion {overrides['hawk_expansion']:g}"
    )
    peak_start = h.measure_matmul_peak_quietly(matmul_size, device, retries)
    log(f"fp32 matmul {matmul_size}^2: best {peak_start['best_gflops']:.1f} GFLOP/s")

    target = "benchmarks.mixers.measure:measure_model"
    models, specs = [], []
    for i, name in enumerate(mixers, start=1):
        spec = dict(
            name=name,
            layer_types=layer_types(MODELS[name], config.num_hidden_layers),
            preset=preset,
            config_overrides=overrides,
            train_lengths=train_lengths,
            contexts=contexts,
            decode_steps=decode_steps,
            decode_warmup=decode_warmup,
            prefill_chunk=prefill_chunk,
            policy=asdict(policy),
            train_warmup_s=train_warmup_s,
            retries=retries,
            batch=batch,
            device=device,
            seed=seed,
        )
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

    paired = None
    if "mesa" in mixers and "gated_deltanet" in mixers:  # the training-step target's ratio, under one load
        pair = [specs[list(mixers).index(name)] for name in ("mesa", "gated_deltanet")]
        length = TRAIN_RATIO_LENGTH if TRAIN_RATIO_LENGTH in train_lengths else train_lengths[-1]
        rounds = max(policy.min_repeats, PAIRED_MIN_ROUNDS)
        pair_policy = dict(asdict(policy), min_repeats=rounds, max_repeats=max(policy.max_repeats, rounds))
        pair_spec = dict(pair[0], pair=pair, length=length, policy=pair_policy)
        log(f"[pair] mesa and gated_deltanet, train T={pair_spec['length']} and decode L={max(contexts)} in turns")
        paired = h.call_in_worker("benchmarks.mixers.measure:measure_pair", pair_spec, isolate=isolate, log=log)

    peak = h.matmul_peak_summary(peak_start, h.measure_matmul_peak_quietly(matmul_size, device, retries))
    model_fields = {
        k: v
        for k, v in config.to_dict().items()
        if k
        in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_heads",
            "head_dim",
            "value_head_dim",
            "mlp_expansion",
            "conv_size",
            "chunk_size",
            "attention_window",
            "hawk_expansion",
            "logit_soft_cap",
            "rope_theta",
            "gamma_cap",
        )
    }
    results: dict[str, Any] = dict(
        machine=dict(h.machine_info(device), load_average_1m_at_start=load_before),
        config=dict(
            preset=preset,
            model=model_fields,
            config_overrides=overrides,
            mesa_solver=solver_fields(config),
            mixers=list(mixers),
            train_lengths=train_lengths,
            contexts=contexts,
            batch=batch,
            dtype="float32",
            policy=asdict(policy),
            train_warmup_s=train_warmup_s,
            decode_steps=decode_steps,
            decode_warmup=decode_warmup,
            prefill_chunk=prefill_chunk,
            matmul_size=matmul_size,
            seed=seed,
            isolate=isolate,
            retries=retries,
            reruns=reruns,
            sequential_max_train_length=SEQUENTIAL_MAX_TRAIN_LENGTH,
            sequential_step_limit_s=SEQUENTIAL_STEP_LIMIT_S,
            train_step="model.train(); zero_grad; loss = model(ids, labels=ids).loss; loss.backward(); no optimizer",
            decode_step="model.eval(); no_grad; model(one token, past_key_values=cache, use_cache=True)",
        ),
        matmul_peak=peak,
        models=models,
        paired_train=paired,
    )
    results["targets"] = target_checks(models, paired)
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
    keep_freed_memory()  # as the timing workers (mesanet.utils.allocator)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"train T={list(QUICK_TRAIN_LENGTHS)}, decode L={list(QUICK_CONTEXTS)}, fewer repeats and steps",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT, help=f"output directory (default {h.DEFAULT_OUT})")
    parser.add_argument(
        "--mixers",
        nargs="+",
        default=list(DEFAULT_MIXERS),
        metavar="MIXER",
        help=f"subset of {', '.join(MODELS)} (space- or comma-separated)",
    )
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true", help="no worker processes")
    parser.add_argument(
        "--retries",
        type=int,
        default=h.CONTENDED_RETRIES,
        help="how often a timing disturbed by other processes is taken again (0 while developing)",
    )
    args = parser.parse_args(argv)
    try:
        mixers = _mixer_list(args.mixers)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but torch.cuda.is_available() is False")
    common = dict(
        preset=args.preset,
        batch=args.batch,
        device=args.device,
        seed=args.seed,
        out_dir=args.out,
        isolate=not args.in_process,
        retries=args.retries,
        reruns=min(1, args.retries),
    )
    if args.quick:
        results = run_benchmark(
            mixers,
            train_lengths=QUICK_TRAIN_LENGTHS,
            contexts=QUICK_CONTEXTS,
            policy=QUICK_POLICY,
            decode_steps=16,
            decode_warmup=2,
            train_warmup_s=QUICK_TRAIN_WARMUP_S,
            matmul_size=2048,
            **common,
        )
    else:
        results = run_benchmark(mixers, **common)
    print()
    print(render_markdown(results))


if __name__ == "__main__":
    main()
