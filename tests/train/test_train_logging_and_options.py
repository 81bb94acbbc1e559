"""Training options of the ecosystem issue: the resolved config in TensorBoard (text and hparams), the optional
Weights & Biases logger (never required: a stand-in module here), gradient checkpointing and torch.compile."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import yaml

from mesanet import cli
from mesanet.train import train
from mesanet.train.metrics import read_metrics
from mesanet.utils.config import to_dict

from tolerances import CHECKPOINT_TRAIN_LOSS_RTOL


def tensorboard_events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_the_resolved_config_goes_into_tensorboard_as_text_and_hparams(make_cfg, one_thread):
    cfg = make_cfg(max_steps=2)
    result = train(cfg, progress=False)
    acc = tensorboard_events(result.run_dir)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text.removeprefix("```yaml\n").removesuffix("```")) == to_dict(cfg)
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin and "_hparams_/session_start_info" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(cfg.optim.lr)
    assert start.hparams["model.preset"].string_value == "tiny"


def test_wandb_is_off_by_default_and_a_missing_package_is_one_line(make_cfg, tmp_path, monkeypatch, capsys):
    assert make_cfg().logging.wandb is False
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed (import raises ImportError)
    code = cli.main(["train", "tiny", f"out_dir={tmp_path / 'runs'}", "logging.wandb=true", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install wandb" in err[0], err
    assert not (tmp_path / "runs").exists()  # stopped before anything was written


def test_wandb_gets_the_config_and_the_metrics(make_cfg, monkeypatch, one_thread):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    stub = types.ModuleType("wandb")
    stub.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    stub.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", stub)
    cfg = make_cfg(max_steps=2, logging=dict(wandb=True, wandb_project="proj"))
    result = train(cfg, progress=False)
    init = calls[0][1]
    assert init["project"] == "proj" and init["name"] == "run" and init["id"] == "abc123" and init["config"] == to_dict(cfg)
    logged = [c for c in calls if c[0] == "log"]
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert [c[1] for c in logged] == [r["step"] for r in rows]
    assert [c[2]["train/loss"] for c in logged] == [r["train_loss"] for r in rows]
    assert calls[-1] == ("finish",)
    assert (result.run_dir / "wandb_run_id").read_text().strip() == "abc123"  # a resume continues the same W&B run


def test_gradient_checkpointing_trains_the_same_loss_trace(make_cfg, tmp_path, one_thread):
    plain = train(make_cfg(name="plain", max_steps=3), progress=False)
    checkpointed = train(make_cfg(name="ckpt", max_steps=3, gradient_checkpointing=True), progress=False)
    a = [r["train_loss"] for r in read_metrics(plain.run_dir / "metrics.csv")]
    b = [r["train_loss"] for r in read_metrics(checkpointed.run_dir / "metrics.csv")]
    assert len(a) == 3
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=CHECKPOINT_TRAIN_LOSS_RTOL, atol=0)


def test_train_compile_runs_the_compiled_forward(make_cfg, one_thread, monkeypatch):
    """``compile: true`` trains through ``torch.compile`` (the eager backend here: inductor takes minutes on CPU)."""
    import torch._dynamo as dynamo

    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or real(model, **kw))
    dynamo.reset()
    plain = train(make_cfg(name="plain", max_steps=2), progress=False)
    compiled = train(make_cfg(name="compiled", max_steps=2, compile=True, compile_backend="eager"), progress=False)
    assert calls == [{"backend": "eager"}]
    a = [r["train_loss"] for r in read_metrics(plain.run_dir / "metrics.csv")]
    b = [r["train_loss"] for r in read_metrics(compiled.run_dir / "metrics.csv")]
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=CHECKPOINT_TRAIN_LOSS_RTOL, atol=0)
