"""RegBench in ``mesanet synth``: settings per training-set size, held-out automata, config errors, a tiny run
through the runner (cells, report section, target, plot) and the report's selection on hand-made records."""

from __future__ import annotations

import csv
import json
import math

import pytest

from mesanet.synth import build_settings, load_config
from mesanet.synth.__main__ import main
from mesanet.synth.selection import select_best
from mesanet.synth.settings import load_data
from mesanet.synth.targets import check_targets, regbench_rows
from mesanet.synth.tasks import RegBenchBatch, automaton_keys

TINY = [
    "tasks=[regbench]",
    "mixers=[mesa,gated_deltanet]",
    "lrs=[3e-3]",
    "weight_decays=[0.1]",
    "seeds=[0]",
    "steps=3",
    "batch_size=4",
    "num_test=8",
    "num_train_eval=8",
    "hidden_size=16",
    "num_heads=2",
    "head_dim=8",
    "solver_training.max_iter=3",
    "solver_inference.max_iter=3",
    "progress=false",
    "workers=1",
    "regbench_num_train=[8,16]",
    "task_sizes={regbench: {params: {min_strings: 2, max_strings: 4, max_len: 8}}}",
]


def test_settings_one_per_training_size_and_disjoint_test_automata():
    cfg = load_config(None, [*TINY, "num_train=4"])  # the global cap does not shrink RegBench's grid axis
    settings = build_settings(cfg)
    assert [s.name for s in settings] == ["n_train=8", "n_train=16"]
    assert [s.num_train for s in settings] == [8, 16] and all(s.vocab_size == 20 for s in settings)
    assert all(s.config.max_strings == 4 and s.config.max_len == 8 for s in settings)
    train, test = load_data(settings[1], cfg.data_seed)
    assert isinstance(train, RegBenchBatch) and train.inputs.shape[0] == 16 and test.inputs.shape[0] == 8
    assert not automaton_keys(train) & automaton_keys(test)


@pytest.mark.parametrize(
    "override, match",
    [
        ("regbench_num_train=[]", "regbench_num_train"),
        ("regbench_num_train=[8,8]", "regbench_num_train"),
        ("regbench_num_train=[0]", "regbench_num_train"),
        ("task_sizes={regbench: {num_train: 8}}", "task_sizes.regbench.num_train"),
    ],
)
def test_bad_config(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [*TINY, override])


def test_bad_generator_param_names_the_field():
    cfg = load_config(None, [*TINY[:-1], "task_sizes={regbench: {params: {num_letters: 4}}}"])
    with pytest.raises(ValueError, match="unknown field"):
        build_settings(cfg)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("regbench") / "run"
    assert main([*TINY, f"out_dir={out}"]) == 0
    return out


def test_tiny_run_end_to_end(tiny_run):
    for name in ("results.csv", "summary.md", "regbench_accuracy.png", "task_accuracy.png"):
        assert (tiny_run / name).is_file(), name
    cells = sorted((tiny_run / "cells").glob("*.json"))
    assert len(cells) == 2 * 2  # training sizes x mixers
    for path in cells:
        r = json.loads(path.read_text())
        assert r["status"] == "ok" and r["task"] == "regbench"
        assert r["num_train"] in (8, 16)
        for key in ("test_acc", "test_tv", "test_exact_acc", "train_acc", "train_tv", "ngram_acc", "ngram_tv"):
            assert 0.0 <= r[key] <= 1.0, key
        assert r["test_exact_acc"] <= r["test_acc"]  # the sampled target is always readable
        assert math.isfinite(r["test_loss"])
    rows = list(csv.DictReader(open(tiny_run / "results.csv")))
    assert all(row["test_tv"] != "" for row in rows)
    summary = (tiny_run / "summary.md").read_text()
    assert "## RegBench" in summary and "| 16 | gated_deltanet |" in summary
    assert "RegBench (MesaNet Fig. 9)" in summary and "in-context 3-gram" in summary


def _rec(n, mixer, lr, acc, tv):
    return dict(
        task="regbench",
        setting=f"n_train={n}",
        mixer=mixer,
        kind="token",
        lr=lr,
        weight_decay=0.1,
        seed=0,
        num_train=n,
        test_acc=acc,
        test_tv=tv,
        test_exact_acc=acc / 2,
        train_acc=acc,
    )


def test_report_rows_and_target_on_hand_made_records():
    records = [
        _rec(100, "mesa", 1e-3, 0.8, 0.3),
        _rec(100, "mesa", 3e-3, 0.6, 0.4),
        _rec(10, "mesa", 1e-3, 0.5, 0.5),
        _rec(100, "gated_deltanet", 1e-3, 0.7, 0.35),
        _rec(100, "attention", 1e-3, 0.9, 0.2),
        _rec(10, "gated_deltanet", 1e-3, 0.6, 0.45),
    ]
    rows = regbench_rows(select_best(records))
    assert [r["num_train"] for r in rows] == [10, 10, 100, 100, 100]
    mesa = next(r for r in rows if r["num_train"] == 100 and r["mixer"] == "mesa")
    assert mesa["lr"] == 1e-3 and mesa["acc"] == 0.8 and mesa["tv"] == 0.3 and mesa["exact"] == 0.4
    target = check_targets(select_best(records), load_config(None, TINY))[-1]
    assert target.status == "PASS"  # at 100: mesa 0.8 >= gated_deltanet 0.7; attention is not a recurrent mixer
    worse = [r for r in records if not (r["mixer"] == "mesa" and r["num_train"] == 100)] + [_rec(100, "mesa", 1e-3, 0.65, 0.4)]
    assert check_targets(select_best(worse), load_config(None, TINY))[-1].status == "MISS"
    no_rnn = [r for r in records if r["mixer"] != "gated_deltanet"]
    assert check_targets(select_best(no_rnn), load_config(None, TINY))[-1].status == "N/A"
