"""The training loop: gradient accumulation, bf16 autocast, evaluation mode, run-directory layout, the
non-finite guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mesanet.train import NonFiniteError, TrainConfig, Trainer, read_metrics, train
from mesanet.train.checkpoint import verify_checkpoint
from mesanet.utils.config import load

from tolerances import TRAIN_BF16_LOSS_RTOL, TRAIN_SPLIT_AFTER_ADAM_RTOL, TRAIN_SPLIT_RTOL


def _trace(result, key: str) -> torch.Tensor:
    return torch.tensor([r[key] for r in read_metrics(result.run_dir / "metrics.csv")], dtype=torch.float64)


def test_grad_accum_matches_one_big_batch(make_cfg):
    ref = train(make_cfg(name="accum1", batch_size=4, grad_accum=1), progress=False)
    for accum in (2, 4):
        got = train(make_cfg(name=f"accum{accum}", batch_size=4, grad_accum=accum), progress=False)
        # the loss trace, and the gradient norm (AdamW is blind to a wrong gradient scale; the norm is not)
        torch.testing.assert_close(_trace(got, "train_loss"), _trace(ref, "train_loss"), rtol=TRAIN_SPLIT_RTOL, atol=0)
        norms, ref_norms = _trace(got, "grad_norm"), _trace(ref, "grad_norm")
        torch.testing.assert_close(norms[:1], ref_norms[:1], rtol=TRAIN_SPLIT_RTOL, atol=0, msg="grad_norm, step 1")
        torch.testing.assert_close(norms, ref_norms, rtol=TRAIN_SPLIT_AFTER_ADAM_RTOL, atol=0, msg="grad_norm")
    assert len(ref.losses) == 4 and ref.losses[-1] < ref.losses[0]


def test_bf16_autocast(make_cfg):
    fp32 = Trainer(make_cfg(name="fp32", max_steps=2), progress=False)
    bf16 = Trainer(make_cfg(name="bf16", max_steps=2, precision="bf16"), progress=False)
    r32, r16 = fp32.fit(), bf16.fit()
    assert all(torch.isfinite(torch.tensor(r16.losses)))
    assert r16.losses != r32.losses  # autocast really ran in bf16 ...
    torch.testing.assert_close(
        torch.tensor(r16.losses), torch.tensor(r32.losses), rtol=TRAIN_BF16_LOSS_RTOL, atol=0
    )  # ... same model
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # fp32 master weights
    assert all(v.dtype == torch.float32 for s in bf16.optimizer.state.values() for v in s.values() if v.dim())


def test_run_directory_layout(make_cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg(max_steps=4, log_every=2, eval_every=3, checkpoint_every=2)
    trainer = Trainer(cfg, progress=False)
    seen_modes = []
    mesa = trainer.model.model.layers[1].mixer
    mesa.register_forward_pre_hook(lambda m, args: seen_modes.append(m.training))
    result = trainer.fit()
    run = result.run_dir
    assert run == Path(cfg.out_dir) / cfg.name and result.steps == 4 and result.start_step == 0

    assert load(TrainConfig, run / "config.yaml") == cfg  # resolved config, loadable
    stats = json.loads((run / "data_stats.json").read_text())
    assert {"corpus_hash", "tokenizer_hash", "eod_id"} <= set(stats)

    rows = read_metrics(run / "metrics.csv")
    assert (run / "metrics.csv").read_text().splitlines()[0] == (
        "step,lr,train_loss,grad_norm,tokens_per_s,val_loss,elapsed,tokens,cg_mean,cg_max,cg_mean_l1,cg_max_l1"
    )
    assert [r["step"] for r in rows] == [2, 3, 4]  # log_every = 2, plus the evaluated step 3 and the last step
    assert [r["val_loss"] is not None for r in rows] == [False, True, True]
    assert [r["tokens"] for r in rows] == [2 * 4 * 32, 3 * 4 * 32, 4 * 4 * 32]
    assert rows[-1]["train_loss"] == result.final_train_loss == result.losses[-1]
    assert rows[-1]["val_loss"] == result.final_val_loss and result.final_val_ppl == pytest.approx(
        torch.tensor(result.final_val_loss).exp().item()
    )
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in rows) and rows[0]["elapsed"] < rows[-1]["elapsed"]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())

    # evaluation ran in eval() mode (Mesa: solver_inference) and training resumed in train() mode
    assert False in seen_modes and seen_modes[-1] is False and seen_modes.count(False) == 2  # two evaluations, one window each
    assert trainer.model.training

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    ckpt = run / "checkpoints" / "step_000004"
    summary = verify_checkpoint(ckpt)
    assert summary["step"] == 4 and {"config.json", "model.safetensors", "trainer_state.pt"} <= set(summary["files"])
    assert (ckpt / "tokenizer.json").is_file() and (ckpt / "trainer_state.json").is_file()

    final = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert len(tok) == final.config.vocab_size
    for name, value in load_file(run / "final" / "model.safetensors").items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name


def test_non_finite_loss_stops_before_the_step(make_cfg):
    trainer = Trainer(make_cfg(max_steps=5, checkpoint_every=1), progress=False)
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        if trainer.step == 2:  # during step 3
            out.loss = out.loss * float("nan")
        return out

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\) at step 3: .*before the optimizer step") as info:
        trainer.fit()
    assert info.value.step == 3 and info.value.quantity == "loss"
    assert "step_000002" in str(info.value)  # names the intact checkpoint
    _assert_no_step_after(trainer, 2)


def test_non_finite_grad_norm_stops_before_the_step(make_cfg):
    trainer = Trainer(make_cfg(max_steps=5, checkpoint_every=1), progress=False)
    weight = trainer.model.model.layers[0].mlp.up.weight
    weight.register_hook(lambda g: g * float("inf") if trainer.step == 1 else g)  # during step 2
    with pytest.raises(NonFiniteError, match=r"non-finite grad_norm \((inf|nan)\) at step 2"):
        trainer.fit()
    _assert_no_step_after(trainer, 1)


def _assert_no_step_after(trainer: Trainer, step: int) -> None:
    """The optimizer made exactly ``step`` updates, the weights equal the intact checkpoint of that step, and no
    (non-finite) gradient was left in ``.grad``."""
    assert all(p.grad is None for p in trainer.model.parameters())
    ckpts = sorted(p.name for p in (trainer.run_dir / "checkpoints").iterdir())
    assert ckpts[-1] == f"step_{step:06d}" and not (trainer.run_dir / "final").exists()
    assert all(int(s["step"]) == step for s in trainer.optimizer.state.values())
    saved = load_file(trainer.run_dir / "checkpoints" / ckpts[-1] / "model.safetensors")
    for name, value in saved.items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name
    verify_checkpoint(trainer.run_dir / "checkpoints" / ckpts[-1])
