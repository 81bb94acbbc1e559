"""Evaluation and generation verify the SHA-256 that training recorded (``final/``, checkpoints) and refuse modified
files unless overridden; a run's relative data cache never lands in the current directory."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mesanet.eval import CheckpointError, evaluate_run, generate_from_checkpoint, load_checkpoint, run_eval, run_files
from mesanet.eval.checkpoint import verify_checksums
from mesanet.train import checkpoint as train_ckpt

from eval_helpers import build_model, random_tokens


@pytest.fixture
def final_dir(tmp_path, tokenizer):
    """A run's ``final/`` as training writes it: model, tokenizer and ``checksums.json``."""
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: tiny\ndata:\n  seq_len: 16\n")
    train_ckpt.save_pretrained(run / "final", build_model(["hawk", "mesa"]), tokenizer, checksums=True)
    return run / "final"


def _tamper(model_dir: Path) -> None:
    """Other weights, still a valid safetensors file (what a silent swap or bit rot looks like to a loader)."""
    tensors = load_file(model_dir / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


def test_the_record_names_agree_with_training():
    assert run_files.CHECKSUM_RECORDS == (train_ckpt.CHECKSUMS_FILE, train_ckpt.SUMMARY_FILE)
    assert run_files.TRAINER_STATE == train_ckpt.STATE_FILE


def test_modified_final_weights_are_refused_unless_overridden(final_dir):
    assert verify_checksums(final_dir) >= 3  # model, config, tokenizer files
    _tamper(final_dir)
    message = (
        r"final': model.safetensors does not match the size / SHA-256 that training recorded in checksums.json "
        r"\(modified or damaged since it was written\); pass --allow-modified-weights \(verify=False in Python\)"
    )
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(final_dir)
    with pytest.raises(CheckpointError, match=message):
        evaluate_run(final_dir.parent, val_tokens=random_tokens(64), extrapolation=(), progress=False)
    with pytest.raises(CheckpointError, match=message):
        generate_from_checkpoint(final_dir, "The", max_new_tokens=2, temperature=0)
    assert load_checkpoint(final_dir, verify=False).model is not None
    report = evaluate_run(
        final_dir.parent,
        val_tokens=random_tokens(64),
        extrapolation=(),
        max_windows=2,
        solver_windows=1,
        progress=False,
        verify=False,
    )
    assert report["val"]["loss"] > 0


def test_checkpoint_directories_are_verified_and_a_missing_file_is_named(final_dir, tmp_path):
    step = final_dir.parent / "checkpoints" / "step_000004"
    shutil.copytree(final_dir, step)
    (step / "checksums.json").unlink()
    (step / "trainer_state.pt").write_bytes(b"optimizer state: not needed to evaluate, not checked")
    records = train_ckpt.file_records(step)
    (step / "trainer_state.json").write_text(json.dumps({"format": 1, "step": 4, "files": records}))
    (step / "trainer_state.pt").write_bytes(b"changed")
    assert verify_checksums(step) == len(records) - 1
    (step / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_000004': tokenizer.json is missing \(recorded in trainer_state.json\)"):
        load_checkpoint(step)
    (step / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"trainer_state.json is damaged: it does not list the files' sizes and SHA-256"):
        load_checkpoint(step)


def test_free_standing_model_directories_have_nothing_to_verify(model_dir):
    assert verify_checksums(model_dir) == 0
    load_checkpoint(model_dir)


def test_cli_flag_overrides_the_check(final_dir, capsys):
    from mesanet.cli import build_parser, main

    parser = build_parser()
    assert not parser.parse_args(["generate", "runs/x", "--prompt", "a"]).allow_modified_weights
    assert parser.parse_args(["eval", "runs/x", "--allow-modified-weights"]).allow_modified_weights
    _tamper(final_dir)
    assert main(["generate", str(final_dir.parent), "--prompt", "The", "--max-new-tokens", "2", "--temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-modified-weights" in err
    assert (
        main(
            [
                "generate",
                str(final_dir.parent),
                "--prompt",
                "The",
                "--max-new-tokens",
                "2",
                "--temperature",
                "0",
                "--allow-modified-weights",
            ]
        )
        == 0
    )


def test_a_relative_cache_dir_never_lands_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("MESANET_CACHE")  # the suite's own (tests/conftest.py) would take precedence
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    assert run_eval.resolve_cache_dir("/abs/cache", run) == "/abs/cache"
    assert run_eval.resolve_cache_dir(".cache/mesanet", run) == str(tmp_path / "xdg" / "mesanet")  # nothing recorded
    assert run_eval.resolve_cache_dir(None, run) == str(tmp_path / "xdg" / "mesanet")  # None: the user cache folder
    recorded = tmp_path / "where-training-ran" / ".cache" / "mesanet"
    recorded.mkdir(parents=True)
    (run / "data_stats.json").write_text(json.dumps({"cache_dir": str(recorded)}))
    assert run_eval.resolve_cache_dir(".cache/mesanet", run) == str(recorded)

    seen = []

    @dataclasses.dataclass
    class DataConfig:
        seq_len: int = 16
        cache_dir: str = ".cache/mesanet"

    module = types.ModuleType("mesanet.data")
    module.DataConfig = DataConfig
    module.prepare_data = lambda cfg, progress=True: seen.append(cfg.cache_dir) or types.SimpleNamespace(val=random_tokens(40))
    monkeypatch.setitem(sys.modules, "mesanet.data", module)
    monkeypatch.setattr(run_eval, "_VAL_CACHE", {})
    monkeypatch.chdir(tmp_path)
    run_eval.validation_tokens({"seq_len": 16}, progress=False, run_dir=run)
    run_eval.validation_tokens({"seq_len": 16, "cache_dir": "rel/cache"}, progress=False)
    assert seen == [str(recorded), str(tmp_path / "xdg" / "mesanet")]
    assert not (tmp_path / ".cache").exists() and not (tmp_path / "rel").exists()
