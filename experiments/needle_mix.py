"""Needle-in-a-haystack after training on the needle mix (docs/results/needle.md): one model per mixer, one budget.

    OMP_NUM_THREADS=1 python experiments/needle_mix.py [--mixers attention gated_deltanet mesa sliding_attention]
        [--steps 600] [--device cpu] [--report-only] [--copy-curve RUN] [key=value ...]

For each mixer, in turn: ``mesanet train needle-mix model.mixer=M name=needle-M [key=value ...]`` (the preset
``configs/needle-mix.yaml``: same data, steps, batch, learning rate for all), then ``mesanet needle
runs/needle/needle-M``. Finished runs are reused (the trainer resumes). Writes ``runs/needle/summary.md``: exact
match per (haystack, length) averaged over depths, per model, the training budget in tokens, and an
in-distribution check (:func:`copy_gain`).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

OUT = Path("runs/needle")
MIXERS = ["attention", "gated_deltanet", "mesa", "sliding_attention"]


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - start


def grid(run_dir: Path) -> dict:
    """(haystack, length) -> mean exact match over depths, plus the per-depth rows."""
    with open(run_dir / "needle.csv") as fh:
        rows = list(csv.DictReader(fh))
    out: dict = {}
    for r in rows:
        out.setdefault((r["haystack"], int(r["length"])), []).append(float(r["exact_match"]))
    return {k: sum(v) / len(v) for k, v in out.items()}


def copy_gain(run_dir: Path, model_dir: Path | None = None, docs: int = 40) -> dict:
    """In-distribution check on validation needle documents (training keys, the run's own settings): log-probability
    per digit of the value where it is hidden (unpredictable: about -2.30) and where it is asked for at the end (a
    model that copies: near 0). Equal values mean the model does not retrieve at all."""
    from mesanet.data import DataConfig
    from mesanet.data.needle_docs import needle_documents
    from mesanet.eval.checkpoint import load_checkpoint
    from mesanet.eval.needle import corpus_documents
    from mesanet.utils.config import from_dict

    data = from_dict(DataConfig, yaml.safe_load((run_dir / "config.yaml").read_text())["data"])
    texts, _ = corpus_documents(data)
    made = needle_documents(
        texts,
        "val",
        fraction=0.05,
        seed=data.seed,
        keys=data.needle_keys,
        max_chars=data.needle_doc_chars,
        min_digits=data.needle_min_digits,
        max_digits=data.needle_max_digits,
    )[:docs]
    loaded = load_checkpoint(model_dir or run_dir / "final", device="cpu", verify=False)
    model, tok = loaded.model.eval(), loaded.tokenizer
    out: dict = {"needle": [], "query": []}
    for d in made:
        for where, at in (("needle", d.needle_at), ("query", d.query_at)):
            prompt = [tok.eos_token_id] + tok(d.text[:at] + f'{d.key} = "', add_special_tokens=False).input_ids
            full = [tok.eos_token_id] + tok(d.text[:at] + d.line, add_special_tokens=False).input_ids
            if full[: len(prompt)] != prompt:
                continue
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
            value = full[len(prompt) : -1]  # without the closing quote
            lp = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(value))
            out[where].append(lp / len(d.value))
    return {k: float(np.mean(v)) for k, v in out.items()}


def summary(mixers: list[str], seconds: dict) -> str:
    lines = ["# Needle mix: exact match per model (mean over 5 depths, 8 trials each)", ""]
    config = yaml.safe_load((OUT / f"needle-{mixers[0]}" / "config.yaml").read_text())
    tokens = config["max_steps"] * config["batch_size"] * config["data"]["seq_len"]
    lines.append(
        f"budget: {config['max_steps']} steps x {config['batch_size']} x {config['data']['seq_len']} tokens = "
        f"{tokens:,} tokens per model; needle_fraction {config['data']['needle_fraction']}"
    )
    lines.append("")
    cols = None
    for m in mixers:
        g = grid(OUT / f"needle-{m}")
        if cols is None:
            cols = sorted(g)
            lines += [
                "| model | " + " | ".join(f"{h} {n}" for h, n in cols) + " | lp/digit hidden / asked | seconds |",
                "|---|" + "---:|" * (len(cols) + 2),
            ]
        gain = copy_gain(OUT / f"needle-{m}")
        lines.append(
            f"| {m} | " + " | ".join(f"{g[c]:.2f}" for c in cols) + f" | {gain['needle']:.2f} / {gain['query']:.2f} | "
            f"{seconds.get(m, float('nan')):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mixers", nargs="+", default=MIXERS)
    p.add_argument("--steps", type=int, default=None, help="max_steps (default: the preset's)")
    p.add_argument("--device", default="cpu", help="device of training and the needle test: cpu, cuda, auto")
    p.add_argument("--report-only", action="store_true", help="only write the summary of existing runs")
    p.add_argument("--copy-curve", default=None, metavar="RUN", help="only print copy_gain of every checkpoint of RUN")
    p.add_argument("overrides", nargs="*", help="TrainConfig key=value overrides for every run")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.copy_curve:
        run_dir = Path(args.copy_curve)
        for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
            gain = copy_gain(run_dir, ckpt)
            print(f"{ckpt.name}: lp/digit hidden {gain['needle']:.2f}, asked {gain['query']:.2f}", flush=True)
        return
    exe = [sys.executable, "-m", "mesanet"]
    seconds = {}
    for m in [] if args.report_only else args.mixers:
        extra = [f"max_steps={args.steps}"] if args.steps else []
        t = run(
            [
                *exe,
                "train",
                "needle-mix",
                f"model.mixer={m}",
                f"name=needle-{m}",
                f"device={args.device}",
                *extra,
                *args.overrides,
                "--no-progress",
            ]
        )
        t += run([*exe, "needle", str(OUT / f"needle-{m}"), "--device", args.device, "--no-progress"])
        seconds[m] = t
    text = summary(args.mixers, seconds)
    (OUT / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
