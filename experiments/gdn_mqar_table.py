"""Markdown rows from the JSON lines of ``experiments/gdn_mqar.py`` (``runs/gdn_mqar/log.jsonl`` by default).

python experiments/gdn_mqar_table.py [LOG.jsonl]
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/gdn_mqar/log.jsonl"
    print("| tag | mixer | L, pairs | steps | lr | num_train | seed | model options | test acc | train acc | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            options = ", ".join(f"{k}={v}" for k, v in r["model"].items()) or "-"
            print(
                f"| {r['tag']} | {r['mixer']} | {r['seq_len']}, {r['pairs']} | {r['steps']} | {r['lr']:g} | {r['num_train']} "
                f"| {r['seed']} | {options} | {r['test_acc']:.4f} | {r['train_acc']:.4f} | {r['final_train_loss']:.4f} |"
            )


if __name__ == "__main__":
    main()
