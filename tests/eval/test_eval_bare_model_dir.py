"""``mesanet eval`` / ``generate`` take ``--device`` (default ``auto``: CUDA when present, like ``train``), and
``mesanet eval`` of a bare ``save_pretrained`` folder works with ``--train-len`` and ``--val-text``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mesanet import cli


@pytest.mark.parametrize("command", ["eval", "generate"])
def test_device_defaults_to_auto(command):
    parser = cli.build_parser().commands[command]
    assert parser.get_default("device") == "auto"
    extra = ["--prompt", "x"] if command == "generate" else []
    assert parser.parse_args(["some/dir", *extra, "--device", "cpu"]).device == "cpu"


def test_eval_of_a_bare_model_dir_needs_and_takes_explicit_options(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["eval", str(model_dir), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--train-len" in err[0], err  # names a flag that exists

    text = tmp_path / "val.txt"
    text.write_text("def parse(line):\n    return line.split(',')\n" * 40)
    code = cli.main(
        [
            "eval",
            str(model_dir),
            "--train-len",
            "32",
            "--val-text",
            str(text),
            "--out",
            str(out),
            "--extrapolation",
            "2",
            "--max-windows",
            "2",
            "--no-progress",
            "--device",
            "auto",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["train_len"] == 32
    from mesanet.eval.checkpoint import load_tokenizer

    expected = len(load_tokenizer(model_dir)(text.read_text(), add_special_tokens=False).input_ids)
    assert report["val_split_tokens"] == expected
    assert np.isfinite(report["val"]["loss"])
    assert not (model_dir / "eval.json").exists()  # the model folder stays as it was

    code = cli.main(["eval", str(model_dir), "--train-len", "32", "--val-text", str(tmp_path / "missing.txt"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing.txt" in err[0]
