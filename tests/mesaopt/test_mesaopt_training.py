"""Sequence-model training on LDS data: batches, the eq.-1 loss, per-step test loss, a short training run,
the zoo's save / reload / stale-config logic and the ``python -m mesanet.mesaopt`` dispatcher."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mesanet.mesaopt.__main__ import ANALYSES, resolve
from mesanet.mesaopt.__main__ import main as analysis_main
from mesanet.mesaopt.analysis import ZOO, SeqTrainConfig, lds_batch_fn, load_or_train, next_token_mse, per_position_loss
from mesanet.mesaopt.analysis.seq_training import build_model, train_sequence_model
from mesanet.mesaopt.analysis.zoo import recipe
from mesanet.mesaopt.data.dynamics import LDSConfig, generate_lds
from mesanet.mesaopt.models import SeqModelConfig

from tolerances import MESAOPT_F64_RTOL

TASK = LDSConfig(state_dim=3, seq_len=12)


def _tiny(layers=("linear",), tokens="constructed", steps=30, **train_kw):
    n = TASK.state_dim
    if tokens == "constructed":
        model = SeqModelConfig(layers=list(layers), input_dim=3 * n, output_dim=n, num_heads=1, key_size=4, init_std=0.05)
    else:
        model = SeqModelConfig(
            layers=list(layers),
            input_dim=n,
            output_dim=n,
            embed_dim=8,
            num_heads=2,
            key_size=4,
            positional="sinusoidal",
            layer_norm=True,
            mlp=True,
            max_len=TASK.seq_len,
        )
    kw = dict(steps=steps, batch_size=16, lr=1e-2, warmup_steps=2, min_lr_ratio=0.1, tokens=tokens, task=TASK)
    kw.update(train_kw)
    return model, SeqTrainConfig(**kw)


def test_batches_are_seeded_fresh_and_match_the_generator():
    _, cfg = _tiny()
    fn = lds_batch_fn(cfg)
    (x0, y0), (x0b, _), (x1, _) = fn(0), fn(0), fn(1)
    assert x0.shape == (16, 12, 9) and y0.shape == (16, 11, 3)
    assert torch.equal(x0, x0b) and not torch.equal(x0, x1)
    assert torch.equal(x0[..., 3:6][:, 1:], y0)  # constructed tokens carry s_t in the middle block
    assert torch.equal(x0[..., 6:][:, 1:], x0[..., 3:6][:, :-1])  # and s_{t-1} in the last one
    other = lds_batch_fn(replace(cfg, seed=1))(0)[0]
    assert not torch.equal(x0, other)
    xu, yu = lds_batch_fn(replace(cfg, tokens="unconstructed"))(0)
    assert xu.shape == (16, 12, 3) and torch.equal(xu[:, 1:], yu)


def test_next_token_mse_is_half_squared_error_per_position():
    pred = torch.randn(4, 6, 3, dtype=torch.float64)
    targets = torch.randn(4, 5, 3, dtype=torch.float64)
    manual = sum(0.5 * float(((pred[b, t] - targets[b, t]) ** 2).sum()) for b in range(4) for t in range(5)) / 20
    assert abs(float(next_token_mse(pred, targets)) - manual) < MESAOPT_F64_RTOL * manual
    with pytest.raises(ValueError, match="targets"):
        next_token_mse(pred[:, :4], targets)


def test_per_step_loss_of_a_known_predictor():
    def predict(tokens):  # the oracle "s_{t+1} = s_t": error is the step (W* - I) s_t + noise
        return tokens[..., 3:6]

    curve = per_position_loss(predict, TASK, num_sequences=40, seed=3, tokens="constructed", chunk=16)
    states = generate_lds(TASK, 40, seed=3).states.double()
    expected = 0.5 * (states[:, 1:] - states[:, :-1]).square().sum(-1).mean(0)
    assert curve.shape == (11,)
    assert float((curve - expected).abs().max()) < MESAOPT_F64_RTOL * float(expected.max())


@pytest.mark.parametrize(
    "layers, tokens, steps, factor",
    [  # measured held-out ratios after/before: 0.80, 0.87, 0.93 (the hybrid first learns the mean scale)
        (("linear",), "constructed", 60, 0.9),
        (("mesa",), "constructed", 30, 0.95),
        (("softmax", "mesa"), "unconstructed", 30, 0.97),
    ],
)
def test_training_lowers_the_held_out_loss(layers, tokens, steps, factor):
    model_cfg, train_cfg = _tiny(layers, tokens, steps=steps, lr=3e-2)
    model, result = train_sequence_model(model_cfg, train_cfg, progress=False)
    assert len(result.losses) == steps and not model.training
    untrained = build_model(model_cfg, train_cfg.seed)  # the same initialisation, before training
    held_out = dict(num_sequences=64, seed=7, tokens=tokens)
    before = float(per_position_loss(untrained, TASK, **held_out).mean())
    after = float(per_position_loss(model, TASK, **held_out).mean())
    assert after < factor * before


def test_training_is_deterministic_in_the_seed():
    model_cfg, train_cfg = _tiny(steps=3)
    a = train_sequence_model(model_cfg, train_cfg, progress=False)[1].losses
    b = train_sequence_model(model_cfg, train_cfg, progress=False)[1].losses
    c = train_sequence_model(model_cfg, replace(train_cfg, seed=5), progress=False)[1].losses
    assert a == b and a != c


def test_load_or_train_saves_reloads_and_refuses_stale_configs(tmp_path):
    model_cfg, train_cfg = _tiny(("linear", "mesa"), steps=3)
    trained = load_or_train("tiny", tmp_path, configs=(model_cfg, train_cfg), progress=False)
    run = tmp_path / "tiny"
    for f in ("model.safetensors", "model_config.yaml", "train_config.yaml", "losses.csv", "train_info.yaml"):
        assert (run / f).is_file()
    assert len((run / "losses.csv").read_text().strip().splitlines()) == 1 + 3
    stamp = (run / "model.safetensors").stat().st_mtime_ns
    reloaded = load_or_train("tiny", tmp_path, configs=(model_cfg, train_cfg), progress=False)
    assert (run / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    x = lds_batch_fn(train_cfg)(99)[0]
    with torch.no_grad():
        assert torch.equal(trained(x), reloaded(x))
    assert trained.state_dict().keys() == reloaded.state_dict().keys()
    with pytest.raises(ValueError, match="stale.*steps"):
        load_or_train("tiny", tmp_path, configs=(model_cfg, replace(train_cfg, steps=4)), progress=False)
    with pytest.raises(ValueError, match="stale.*key_size"):
        load_or_train("tiny", tmp_path, configs=(replace(model_cfg, key_size=5), train_cfg), progress=False)
    retrained = load_or_train("tiny", tmp_path, configs=(model_cfg, replace(train_cfg, steps=4)), progress=False, overwrite=True)
    assert len((run / "losses.csv").read_text().strip().splitlines()) == 1 + 4
    assert not torch.equal(retrained(x), trained(x))


def test_zoo_recipes_are_consistent():
    for name, (model_cfg, train_cfg) in ZOO.items():
        n = train_cfg.task.state_dim
        assert model_cfg.output_dim == n, name
        assert model_cfg.input_dim == (3 * n if train_cfg.tokens == "constructed" else n), name
        assert (model_cfg.embed_dim is None) == (train_cfg.tokens == "constructed"), name
    copy, _ = recipe("linear-1")
    copy.layers.append("mesa")
    assert ZOO["linear-1"][0].layers == ["linear"]  # recipe() hands out copies
    with pytest.raises(ValueError, match="unknown zoo model"):
        load_or_train("no-such-model")


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=0), "steps"),
        (dict(tokens="raw"), "tokens"),
        (dict(lr=0.0), "lr"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_train_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SeqTrainConfig(**{"steps": 5, **kw})


def test_model_task_mismatch_raises():
    model_cfg, train_cfg = _tiny()
    with pytest.raises(ValueError, match="input_dim"):
        train_sequence_model(model_cfg, replace(train_cfg, tokens="unconstructed"), progress=False)


def test_analysis_dispatcher(capsys):
    assert ANALYSES["train"] == "mesanet.mesaopt.analysis.train:main"
    assert callable(resolve("train"))
    with pytest.raises(ValueError, match="unknown analysis"):
        resolve("nope")
    assert analysis_main(["nope"]) == 2
    assert analysis_main(["--help"]) == 0 and "train" in capsys.readouterr().out
