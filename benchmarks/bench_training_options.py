"""Training options of a model: activation (gradient) checkpointing and ``torch.compile``.

For each mixer: one training step (forward + backward) of ``--batch`` x ``--length`` tokens

* plain, with ``activation_checkpointing_enable()`` and compiled (``--backend``, default inductor): median step
  time (:func:`benchmarks.harness.time_call`) and peak memory (:func:`benchmarks.harness.peak_memory`: CUDA
  allocator peak, or the process high-water mark on CPU);
* the activation memory autograd keeps for the backward pass, counted exactly by a ``saved_tensors_hooks`` pair
  (bytes of every tensor saved during the forward; device-independent, so the checkpointing saving is measured even
  where the process high-water mark is noisy);
* the compile time: the first compiled call (graph capture and code generation), and the graph breaks counted by
  ``torch._dynamo.explain``.

Writes ``training_options.json`` and ``training_options.md`` into ``--out``::

    python -m benchmarks.bench_training_options --mixers mesa gated_deltanet --preset cpu-small --length 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from benchmarks import harness as h
from mesanet.models import MIXER_KINDS, PRESETS, MesaNetForCausalLM, preset_config
from mesanet.utils.allocator import keep_freed_memory


def build(mixer: str, preset: str, overrides: dict[str, Any], device: str, seed: int = 0) -> MesaNetForCausalLM:
    torch.manual_seed(seed)
    kinds = mixer.split("+")  # a hybrid such as hawk+mesa alternates its kinds over the layers
    layers = {**PRESETS[preset], **overrides}["num_hidden_layers"]
    config = preset_config(preset, mixer=[kinds[i % len(kinds)] for i in range(layers)], **overrides)
    return MesaNetForCausalLM(config).to(device).train()


def saved_activation_bytes(step) -> int:
    """Bytes of the tensors autograd saves for the backward pass during one forward (``step`` returns the loss)."""
    total = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        nonlocal total
        key = id(t.untyped_storage()) if t.device.type != "meta" else id(t)
        if key not in seen:  # a storage saved twice (views, parameters) is kept once
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return total


def measure_mixer(
    mixer: str,
    *,
    preset: str,
    overrides: dict[str, Any],
    batch: int,
    length: int,
    device: str,
    backend: str,
    policy: h.RepeatPolicy,
    compile_model: bool = True,
) -> dict[str, Any]:
    model = build(mixer, preset, overrides, device)
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device, generator=torch.Generator().manual_seed(0))

    def zero() -> None:
        for p in params:
            p.grad = None

    def step_of(forward):
        def step() -> float:
            zero()
            loss = forward(input_ids=ids, labels=ids).loss
            loss.backward()
            return float(loss)

        return step

    record: dict[str, Any] = dict(name=mixer, params=sum(p.numel() for p in params))
    for variant in ("plain", "checkpointing"):
        if variant == "checkpointing":
            model.activation_checkpointing_enable()
        parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        zero()
        saved = saved_activation_bytes(lambda: model(input_ids=ids, labels=ids).loss)
        timing, _ = h.time_call(step_of(model), device, policy)
        memory = h.peak_memory(step_of(model), device, before=zero)
        record[variant] = dict(
            saved_activation_bytes=saved,
            saved_activation_mib=saved / h.MIB,
            median_step_s=timing["median_s"],
            timing=timing,
            parameter_mib=parameter_bytes / h.MIB,
            **memory,
        )
    model.gradient_checkpointing_disable() if not hasattr(
        model, "activation_checkpointing_disable"
    ) else model.activation_checkpointing_disable()
    plain, ckpt = record["plain"], record["checkpointing"]
    record["checkpointing_saves_activation_fraction"] = 1 - ckpt["saved_activation_bytes"] / max(
        plain["saved_activation_bytes"], 1
    )
    record["checkpointing_time_ratio"] = ckpt["median_step_s"] / plain["median_step_s"]

    if compile_model:
        import torch._dynamo as dynamo

        dynamo.reset()
        explained = dynamo.explain(lambda ids: model(input_ids=ids, labels=ids).loss)(ids)
        dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        start = time.perf_counter()
        step_of(compiled)()
        h.synchronize(device)
        compile_s = time.perf_counter() - start
        timing, _ = h.time_call(step_of(compiled), device, policy)
        record["compiled"] = dict(
            backend=backend,
            compile_s=compile_s,
            median_step_s=timing["median_s"],
            timing=timing,
            graph_breaks=explained.graph_break_count,
            graphs=explained.graph_count,
            speedup=plain["median_step_s"] / timing["median_s"],
        )
    return record


def render_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        "# Training options: activation checkpointing and torch.compile",
        "",
        f"Preset `{cfg['preset']}`, {cfg['batch']} x {cfg['length']} tokens per step, device {cfg['device']}, "
        f"compile backend `{cfg['backend']}`. Saved activations: bytes autograd keeps for the backward pass (exact).",
        "",
    ]
    rows = []
    for m in results["models"]:
        p, c, comp = m["plain"], m["checkpointing"], m.get("compiled")
        rows.append(
            [
                m["name"],
                h.fmt(p["saved_activation_mib"], ".1f"),
                h.fmt(c["saved_activation_mib"], ".1f"),
                h.percent(m["checkpointing_saves_activation_fraction"]),
                h.fmt(p["peak_memory_mib"], ".1f"),
                h.fmt(c["peak_memory_mib"], ".1f"),
                h.fmt(p["median_step_s"] * 1e3, ".1f"),
                h.fmt(c["median_step_s"] * 1e3, ".1f"),
                "—" if comp is None else str(comp["graph_breaks"]),
                "—" if comp is None else h.fmt(comp["compile_s"], ".1f"),
                "—" if comp is None else h.fmt(comp["median_step_s"] * 1e3, ".1f"),
                "—" if comp is None else h.fmt(comp["speedup"], ".2f"),
            ]
        )
    lines += h.table(
        [
            "mixer",
            "saved act. MiB",
            "ckpt saved MiB",
            "saved less",
            "peak MiB",
            "ckpt peak MiB",
            "step ms",
            "ckpt step ms",
            "graph breaks",
            "compile s",
            "compiled step ms",
            "speedup",
        ],
        rows,
    )
    lines += ["", f"Peak memory: {results['models'][0]['plain']['memory_method']}." if results["models"] else "", ""]
    return "\n".join(lines)


def run_benchmark(
    mixers: Sequence[str],
    *,
    preset: str = "cpu-small",
    overrides: Optional[dict[str, Any]] = None,
    batch: int = 1,
    length: int = 512,
    device: str = "cpu",
    backend: str = "inductor",
    policy: h.RepeatPolicy = h.RepeatPolicy(),
    compile_model: bool = True,
    out_dir: Path = h.DEFAULT_OUT,
    log: h.Log = h.print_log,
) -> dict[str, Any]:
    started = time.perf_counter()
    models = []
    for mixer in mixers:
        log(f"{mixer}: plain, checkpointing{', compiled' if compile_model else ''} ...")
        models.append(
            measure_mixer(
                mixer,
                preset=preset,
                overrides=dict(overrides or {}),
                batch=batch,
                length=length,
                device=device,
                backend=backend,
                policy=policy,
                compile_model=compile_model,
            )
        )
    results = dict(
        machine=h.machine_info(device),
        models=models,
        total_runtime_s=time.perf_counter() - started,
        config=dict(preset=preset, overrides=dict(overrides or {}), batch=batch, length=length, device=device, backend=backend),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "training_options.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "training_options.md").write_text(render_markdown(results))
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    keep_freed_memory()  # as the timing workers (mesanet.utils.allocator)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mixers",
        nargs="+",
        default=["mesa", "gated_deltanet", "hawk+mesa"],
        metavar="MIXER",
        help=f"registry kinds or hybrids such as hawk+mesa; kinds: {sorted(MIXER_KINDS)}",
    )
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--out", type=Path, default=h.DEFAULT_OUT)
    args = parser.parse_args(argv)
    results = run_benchmark(
        args.mixers,
        preset=args.preset,
        batch=args.batch,
        length=args.length,
        device=args.device,
        backend=args.backend,
        compile_model=not args.no_compile,
        out_dir=args.out,
    )
    print(render_markdown(results))


if __name__ == "__main__":
    main()
