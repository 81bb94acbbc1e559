"""The comparison: the report writer on fabricated run directories, the variant configs, and (when the
training and data packages are present) a tiny end-to-end comparison that trains, evaluates and reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mesanet.eval import RunSummary, summarize_run, write_compare_report

from eval_helpers import TEXT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fabricate_run(root, name, *, params, loss, ppl2, steps=20, with_eval=True, lr=None, cg=False, mixers=None):
    """A run folder; ``lr``: write a config.yaml with that peak lr; ``cg``: CG columns in metrics.csv (step s:
    mean 3 + s / 10, max s) and a solver report in eval.json (layers with max 7 and 9, mean 4.5)."""
    run = root / name
    run.mkdir(parents=True)
    rows = ["step,lr,train_loss,grad_norm,tokens_per_s,val_loss,elapsed" + (",cg_mean,cg_max" if cg else "")]
    for s in range(1, steps + 1):
        val = f"{loss + 0.05:.4f}" if s == steps else ""
        rows.append(
            f"{s},0.001,{loss + 2.0 / s:.4f},1.0,{1000 + 10 * s},{val},{0.5 * s:.2f}" + (f",{3 + s / 10},{s}" if cg else "")
        )
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    if lr is not None:
        (run / "config.yaml").write_text(f"name: {name}\noptim:\n  lr: {lr}\n")
    if with_eval:
        ev = dict(
            model=dict(params=params, mixer_types=mixers or (["hawk", "mesa"] if "hawk" in name else ["mesa", "mesa"])),
            val=dict(loss=loss, ppl=math.exp(loss)),
            extrapolation={
                "1": dict(factor=1, available=True, ppl=math.exp(loss)),
                "2": dict(factor=2, available=True, ppl=ppl2),
                "4": dict(factor=4, available=False, reason="too short"),
            },
        )
        if cg:
            ev["solver"] = dict(mean_iterations=4.5, layers=[dict(max_iterations=7), dict(max_iterations=9)])
        (run / "eval.json").write_text(json.dumps(ev))
        curve = loss + 1.0 / np.arange(1, 32)
        (run / "per_position.csv").write_text("position,nll_x1\n" + "".join(f"{i + 1},{v:.6f}\n" for i, v in enumerate(curve)))
    return run


def test_report_table_and_plots_from_fabricated_runs(tmp_path):
    a = fabricate_run(tmp_path, "mesanet", params=1_234_567, loss=3.2, ppl2=30.0)
    b = fabricate_run(tmp_path, "hawk-mesa", params=1_300_000, loss=3.0, ppl2=25.5)
    summaries = [summarize_run("mesanet", a, tokens=640_000), summarize_run("hawk-mesa", b)]
    s = summaries[0]
    assert isinstance(s, RunSummary) and s.params == 1_234_567 and s.tokens == 640_000
    assert s.tokens_per_s == float(np.median(1000 + 10 * np.arange(1, 21))) and s.train_time_s == 10.0
    assert s.extrapolation == {1: math.exp(3.2), 2: 30.0, 4: None} and s.per_position_nll.shape == (31,)

    assert s.lr is None and s.cg_train is None and s.cg_eval is None  # no config.yaml, no CG columns

    report = write_compare_report(summaries, tmp_path / "report", title="Tiny comparison", notes=["same data"])
    text = report.read_text()
    assert report.name == "report.md" and text.startswith("# Tiny comparison\n\n- same data\n")
    assert "| run | mixers | params | tokens | lr | val loss | val ppl | ppl x2 | ppl x4 | tokens/s | train time (s) |" in text
    assert "CG train" not in text  # no run has Mesa statistics
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert lines[1].startswith("| hawk-mesa | hawk+mesa | 1,300,000 | — | — | 3.0000 | 20.09 | 25.50 | — | 1,105 | 10.0 |")
    assert lines[2].startswith("| mesanet | mesa | 1,234,567 | 640,000 | — | 3.2000 | 24.53 | 30.00 | — |")  # sorted by loss
    for png in ("loss_curves.png", "per_position.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == PNG_MAGIC and f"]({png})" in text
    saved = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["hawk-mesa", "mesanet"]


def test_report_lr_and_cg_columns(tmp_path):
    a = fabricate_run(tmp_path, "mesanet", params=10, loss=3.2, ppl2=30.0, lr=0.006, cg=True)
    b = fabricate_run(tmp_path, "transformer", params=10, loss=3.0, ppl2=25.0, lr=0.0015)
    s = summarize_run("mesanet", a)
    assert s.lr == 0.006 and s.cg_eval == (4.5, 9)
    assert s.cg_train == (pytest.approx(3 + np.mean(np.arange(1, 21)) / 10), 20)
    text = write_compare_report([s, summarize_run("transformer", b)], tmp_path / "report").read_text()
    assert "| tokens/s | train time (s) | CG train (mean / max) | CG eval (mean / max) |" in text
    rows = {l.split(" | ")[0]: l for l in text.splitlines() if l.startswith("| ")}
    assert rows["| mesanet"].endswith("| 4.0 / 20 | 4.5 / 9 |") and " | 0.006 | " in rows["| mesanet"]
    assert rows["| transformer"].endswith("| — | — |") and " | 0.0015 | " in rows["| transformer"]


def test_report_per_position_difference_to_attention(tmp_path):
    """With an all-attention run, every other model's per-position NLL minus its own (the curves differ by the
    loss: a constant offset)."""
    runs = [
        fabricate_run(tmp_path, "mesanet", params=10, loss=3.2, ppl2=30.0),
        fabricate_run(tmp_path, "transformer", params=10, loss=3.0, ppl2=25.0, mixers=["attention", "attention"]),
        fabricate_run(tmp_path, "hawk-mesa", params=10, loss=2.9, ppl2=25.0),
    ]
    summaries = [summarize_run(r.name, r) for r in runs]
    text = write_compare_report(summaries, tmp_path / "report").read_text()
    assert "## Per-position NLL relative to `transformer`" in text
    assert "| mesanet | +0.2000 | +0.2000 | +0.2000 |" in text and "| hawk-mesa | -0.1000 | -0.1000 | -0.1000 |" in text
    assert "| transformer | " not in text.split("relative to")[1]
    assert (tmp_path / "report" / "per_position_vs_attention.png").read_bytes()[:8] == PNG_MAGIC
    without = write_compare_report(summaries[:1] + summaries[2:], tmp_path / "plain").read_text()
    assert "relative to" not in without and not (tmp_path / "plain" / "per_position_vs_attention.png").exists()


def test_report_errors(tmp_path):
    run = fabricate_run(tmp_path, "plain", params=10, loss=1.0, ppl2=3.0, with_eval=False)
    with pytest.raises(ValueError, match="eval.json' does not exist; evaluate the run first"):
        summarize_run("plain", run)
    (run / "eval.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a valid evaluation file"):
        summarize_run("plain", run)
    with pytest.raises(ValueError, match="expected at least one run summary"):
        write_compare_report([], tmp_path / "out")
    twin = RunSummary(name="x", run_dir=str(run), params=1, val_loss=1.0, val_ppl=math.e)
    with pytest.raises(ValueError, match=r"run names must be unique, got \['x', 'x'\]"):
        write_compare_report([twin, twin], tmp_path / "out")


def _require_training():
    pytest.importorskip("mesanet.train")
    try:
        from mesanet.data import prepare_data  # noqa: F401
    except ImportError:
        pytest.skip("mesanet.data is not there yet")


def test_variant_configs_share_everything_but_the_model():
    _require_training()
    from mesanet.eval.compare import CompareConfig, CompareVariant, tokens_per_run, variant_configs
    from mesanet.utils.config import from_dict, to_dict

    cfg = from_dict(
        CompareConfig,
        dict(
            out_dir="cmp",
            base=dict(model=dict(preset="tiny", overrides=dict(chunk_size=16)), max_steps=7, batch_size=2),
            variants=[
                dict(name="mesanet"),
                dict(name="hawk-mesa", mixer="hawk+mesa", overrides=dict(hawk_expansion=1.5)),
                dict(name="transformer", mixer=["attention", "attention"], lr=1.5e-3),
            ],
        ),
    )
    configs = variant_configs(cfg)
    assert [c.optim.lr for c in configs] == [cfg.base.optim.lr, cfg.base.optim.lr, 1.5e-3]  # only the lr of the variant
    assert configs[2].optim.warmup_steps == cfg.base.optim.warmup_steps and cfg.base.optim.lr != 1.5e-3
    assert [c.name for c in configs] == ["mesanet", "hawk-mesa", "transformer"]
    assert all(c.out_dir == "cmp/runs" for c in configs)
    assert configs[1].model.mixer == ["hawk", "mesa"] and configs[1].model.overrides == dict(chunk_size=16, hawk_expansion=1.5)
    assert configs[0].model.mixer == "mesa" and configs[2].model.mixer == ["attention", "attention"]
    assert len({json.dumps(to_dict(c.data)) for c in configs}) == 1 and len({tokens_per_run(c) for c in configs}) == 1
    with pytest.raises(ValueError, match=r"variant names must be unique"):
        variant_configs(CompareConfig(variants=[CompareVariant("a"), CompareVariant("a")]))
    with pytest.raises(ValueError, match=r"compare: variant 'a': optim.lr: expected 0 < lr <= .*, got -0.001"):
        variant_configs(CompareConfig(variants=[CompareVariant("a", lr=-1e-3)]))
    with pytest.raises(ValueError, match=r"the pattern 'hawk\+mesa\+mesa' \(3 kinds\) does not divide 2 layers"):
        variant_configs(
            from_dict(
                CompareConfig, dict(base=dict(model=dict(preset="tiny")), variants=[dict(name="x", mixer="hawk+mesa+mesa")])
            )
        )


@pytest.mark.slow
def test_compare_end_to_end_trains_evaluates_reports_and_resumes(tmp_path):
    _require_training()
    from mesanet.eval.compare import CompareConfig, compare
    from mesanet.utils.config import from_dict

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text((TEXT + f" document {i}. ") * 3)
    cfg = from_dict(
        CompareConfig,
        dict(
            out_dir=str(tmp_path / "out"),
            title="tiny",
            base=dict(
                data=dict(source=str(corpus), seq_len=32, vocab_size=300, val_fraction=0.25, cache_dir=str(tmp_path / "cache")),
                model=dict(preset="tiny", overrides=dict(chunk_size=16)),
                max_steps=3,
                batch_size=2,
                eval_every=0,
                checkpoint_every=0,
                log_every=1,
                device="cpu",
                optim=dict(warmup_steps=1),
            ),
            variants=[
                dict(name="mesanet", mixer="mesa"),
                dict(name="transformer", mixer="attention"),
                dict(name="hawk-mesa", mixer="hawk+mesa"),
            ],
            extrapolation=[2],
            max_windows=4,
            solver_windows=2,
        ),
    )
    report = compare(cfg, progress=False)
    text = report.read_text()
    table = text.split("\n## ")[0]  # the main table (the per-position section has a table of its own)
    rows = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| run")]
    assert sorted(r.split(" | ")[0][2:] for r in rows) == ["hawk-mesa", "mesanet", "transformer"]
    assert "token budget: 192 tokens per run (3 steps x 2 sequences x 32 tokens)" in text
    for name in ("mesanet", "transformer", "hawk-mesa"):
        run = tmp_path / "out" / "runs" / name
        assert (run / "final" / "config.json").is_file() and (run / "eval.json").is_file() and (run / "summary.md").is_file()
    hawk_eval = json.loads((tmp_path / "out" / "runs" / "hawk-mesa" / "eval.json").read_text())
    assert hawk_eval["model"]["mixer_types"] == ["hawk", "mesa"] and len(hawk_eval["solver"]["layers"]) == 1
    transformer_eval = json.loads((tmp_path / "out" / "runs" / "transformer" / "eval.json").read_text())
    assert "no Mesa layer" in transformer_eval["solver"]["message"]

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*/eval.json")}
    again = compare(cfg, progress=False)  # everything finished: reused, nothing retrained or re-evaluated
    assert again.read_text() == text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_evaluation_reuse_checks_the_solver_overrides(tmp_path):
    """``eval_solver`` overrides match an evaluation whose resolved settings agree on those fields."""
    from mesanet.eval.compare import _evaluation_current
    from mesanet.eval.run_eval import eval_settings
    from mesanet.ops import INFERENCE

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")

    def settings(solver, extrapolation=(2,)):
        return eval_settings(solver=solver, extrapolation=extrapolation, max_windows=4, solver_windows=2)

    (run / "eval.json").write_text(json.dumps({"settings": settings(INFERENCE)}))
    assert _evaluation_current(run, settings(None)) and _evaluation_current(run, settings({"tol": INFERENCE.tol}))
    assert not _evaluation_current(run, settings({"tol": 1e-6}))
    assert not _evaluation_current(run, settings(None, extrapolation=(2, 4)))
    (run / "eval.json").write_text(json.dumps({"settings": {"tol": 1e-4, "max_iter": 30}}))  # an older eval.json
    assert not _evaluation_current(run, settings(None))


def test_a_bad_eval_solver_fails_before_any_training(tmp_path):
    from mesanet.eval.compare import CompareConfig, compare

    with pytest.raises(ValueError, match=r"evaluate_run: solver: unknown solver setting\(s\) \['tolerance'\]"):
        compare(CompareConfig(out_dir=str(tmp_path), eval_solver={"tolerance": 1e-6}), progress=False)
    assert not any(tmp_path.iterdir())
