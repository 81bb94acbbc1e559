"""Loading checkpoints and resolving run directories: clear errors for anything that is not a MesaNet model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mesanet.eval import CheckpointError, load_checkpoint, resolve_model_dir
from mesanet.models import MesaNetForCausalLM

from eval_helpers import build_model


def copy_of(model_dir, tmp_path, name="copy"):
    return shutil.copytree(model_dir, tmp_path / name)


def test_loads_model_and_tokenizer_in_eval_mode(model_dir):
    loaded = load_checkpoint(model_dir)
    assert isinstance(loaded.model, MesaNetForCausalLM) and not loaded.model.training
    assert loaded.model.config.mixer_types == ["hawk", "mesa"]
    assert loaded.tokenizer.eos_token == "<|endoftext|>"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = build_model(["hawk", "mesa"])(ids).logits  # same seed, same weights
        assert torch.allclose(loaded.model(ids).logits, expected)


def test_another_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a 'gpt2' model, not a MesaNet model \(expected model_type 'mesanet'"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(CheckpointError, match="is a None model, not a MesaNet model"):
        load_checkpoint(tmp_path)


def test_corrupt_or_truncated_weights(model_dir, tmp_path):
    path = copy_of(model_dir, tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors' are corrupt or truncated: .*"):
        load_checkpoint(path)
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="are corrupt or truncated"):
        load_checkpoint(path)


def test_corrupt_config_missing_weights_missing_tensors_missing_tokenizer(model_dir, tmp_path):
    path = copy_of(model_dir, tmp_path)
    good_config = (path / "config.json").read_text()
    (path / "config.json").write_text(good_config[:40])
    with pytest.raises(CheckpointError, match="is corrupt: config.json is not valid JSON"):
        load_checkpoint(path)
    (path / "config.json").write_text(good_config)

    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    dropped = sorted(k for k in tensors if k.endswith("mlp.down.weight"))[0]
    del tensors[dropped]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"does not match its config: .*'missing_keys': \\['{dropped}'\\]"):
        load_checkpoint(path)

    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no weights: expected one of \['model.safetensors'"):
        load_checkpoint(path)

    bare = tmp_path / "bare"
    build_model("hawk").save_pretrained(bare)
    with pytest.raises(CheckpointError, match="has no loadable tokenizer"):
        load_checkpoint(bare)
    assert load_checkpoint(bare, tokenizer=False).tokenizer is None


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist or is not a directory"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="has no config.json: not a save_pretrained model directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="does not exist: expected a run directory"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(
        ValueError, match=r"is neither a model directory \(no config.json\) nor a run directory \(no config.yaml\)"
    ):
        resolve_model_dir(tmp_path)


def test_run_directory_resolution(model_dir, tmp_path):
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  seq_len: 16\n")
    with pytest.raises(
        ValueError, match="has no model yet: neither final/config.json nor checkpoints/step_\\*/config.json exists"
    ):
        resolve_model_dir(run)
    for step in ("step_000010", "step_000020"):
        shutil.copytree(model_dir, run / "checkpoints" / step)
    (run / "checkpoints" / "step_000030").mkdir()  # incomplete: no config.json
    assert resolve_model_dir(run) == (run / "checkpoints" / "step_000020", run)
    shutil.copytree(model_dir, run / "final")
    assert resolve_model_dir(run) == (run / "final", run)
    model_path, run_dir = resolve_model_dir(run / "checkpoints" / "step_000010")  # a model dir inside a run
    assert model_path == run / "checkpoints" / "step_000010" and run_dir == run.resolve()
    assert resolve_model_dir(model_dir)[1] is None  # free-standing model
