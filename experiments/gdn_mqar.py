"""One MQAR cell of ``mesanet synth`` with overrides, for the Gated DeltaNet fairness study (docs/results/gdn_mqar.md).

    OMP_NUM_THREADS=1 python experiments/gdn_mqar.py --mixer gated_deltanet --steps 400 --lr 3e-3 \
        [--pairs 8 --seq-len 64 --num-train 10000] [--model key=value ...] [--tag NAME]

``--model key=value`` sets a ``MesaNetConfig`` field of the cell's model (YAML values, e.g.
``gamma_cap=1.0`` or ``forget_init_range=[0.5,0.9]``). Every other field comes from ``configs/synth.yaml``.
One JSON line per run is appended to ``runs/gdn_mqar/log.jsonl`` and printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from mesanet.synth.cells import Cell, run_cell
from mesanet.synth.config import CONFIG_DIR, load_config
from mesanet.synth.settings import build_settings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mixer", default="gated_deltanet")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-train", type=int, default=None, help="MQAR training sequences (synth.yaml: 10000)")
    p.add_argument("--model", nargs="*", default=[], help="MesaNetConfig key=value overrides")
    p.add_argument("--tag", default="")
    p.add_argument("--log", default="runs/gdn_mqar/log.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)

    model = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.model)}
    overrides = [
        "tasks=[mqar]",
        f"mixers=[{args.mixer}]",
        f"lrs=[{args.lr}]",
        f"weight_decays=[{args.wd}]",
        f"seeds=[{args.seed}]",
        f"mqar_seq_lens=[{args.seq_len}]",
        f"mqar_num_pairs=[{args.pairs}]",
        f"steps={args.steps}",
        "progress=false",
        "workers=1",
    ]
    if args.num_train:
        overrides.append(f"task_sizes={{mqar: {{num_train: {args.num_train}}}}}")
    if model:
        overrides.append(f"model_options={json.dumps(model)}")
    cfg = load_config(CONFIG_DIR / "synth.yaml", overrides)
    (setting,) = build_settings(cfg)
    start = time.time()
    rec = run_cell(cfg, Cell(setting, args.mixer, args.lr, args.wd, args.seed))
    out = dict(
        tag=args.tag,
        mixer=args.mixer,
        steps=args.steps,
        lr=args.lr,
        wd=args.wd,
        seed=args.seed,
        seq_len=args.seq_len,
        pairs=args.pairs,
        num_train=rec["num_train"],
        model=model,
        test_acc=round(rec["test_acc"], 4),
        train_acc=round(rec["train_acc"], 4),
        final_train_loss=round(rec["final_train_loss"], 4),
        params=rec["params"],
        seconds=round(time.time() - start, 1),
        status=rec["status"],
    )
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(out) + "\n")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
