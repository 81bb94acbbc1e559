"""SequenceModel / SeqModelConfig of the mesa-optimization toolkit: shapes, hidden states, block structure,
causality of whole models and config validation."""

from __future__ import annotations

import pytest
import torch

from mesanet.mesaopt.layers import LinearSelfAttention, RegressionMesa, SoftmaxSelfAttention
from mesanet.mesaopt.models import LAYER_KINDS, SeqModelConfig, SequenceModel, sinusoidal_encoding

from helpers import rel_err
from tolerances import MESAOPT_CG_F64_RTOL, MESAOPT_F64_RTOL


def _tokens(b, t, d, seed=0):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(**kw):
    torch.manual_seed(0)
    return SequenceModel(SeqModelConfig(**kw)).double()


EMBEDDED = dict(
    input_dim=5, output_dim=5, embed_dim=16, num_heads=2, key_size=4, positional="sinusoidal", layer_norm=True, mlp=True
)


@pytest.mark.parametrize("layers", [["linear"] * 2, ["softmax", "mesa"], ["mesa_forget", "sherman_morrison"]])
def test_shapes_and_hidden_states(layers):
    model = _model(layers=layers, **EMBEDDED)
    x = _tokens(3, 11, 5)
    pred, hidden = model(x, return_hidden=True)
    assert pred.shape == (3, 11, 5)
    assert len(hidden) == len(layers) + 1 and all(h.shape == (3, 11, 16) for h in hidden)
    assert rel_err(model(x), pred) < MESAOPT_F64_RTOL
    # hidden[0] is the embedded input plus the positional encoding, hidden[i+1] = blocks[i](hidden[i])
    expected0 = x @ model.embed.weight.T + sinusoidal_encoding(11, 16).double()
    assert rel_err(hidden[0], expected0) < MESAOPT_F64_RTOL
    for i, block in enumerate(model.blocks):
        assert rel_err(block(hidden[i]), hidden[i + 1]) < MESAOPT_F64_RTOL
    assert rel_err(pred, model.readout(model.final_norm(hidden[-1]))) < MESAOPT_F64_RTOL


def test_mixer_kinds_follow_the_config():
    model = _model(layers=list(LAYER_KINDS), **EMBEDDED)
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [LinearSelfAttention, SoftmaxSelfAttention, RegressionMesa, RegressionMesa, RegressionMesa]
    assert [b.mixer.variant for b in model.blocks[2:]] == ["mesa", "mesa_forget", "sherman_morrison"]


def test_constructed_model_reads_the_first_dims_of_the_residual_stream():
    model = _model(layers=["linear"], input_dim=9, output_dim=3, num_heads=2, key_size=4, init_std=0.3)
    x = _tokens(2, 6, 9)
    pred, hidden = model(x, return_hidden=True)
    assert hidden[0] is x
    mixer = model.blocks[0].mixer
    assert rel_err(hidden[1], x + mixer(x)) < MESAOPT_F64_RTOL  # no LN, no MLP: e + delta
    assert rel_err(pred, hidden[1][..., :3]) < MESAOPT_F64_RTOL


def test_activation_clip_and_gpt2_block():
    model = _model(layers=["linear"], input_dim=6, output_dim=2, num_heads=1, key_size=3, init_std=1.0, activation_clip=0.5)
    _, hidden = model(_tokens(2, 8, 6) * 3, return_hidden=True)
    assert float(hidden[1].detach().abs().max()) == pytest.approx(0.5)
    gpt = _model(layers=["softmax"], **EMBEDDED)
    block, e = gpt.blocks[0], _tokens(2, 7, 16, seed=3)
    mid = e + block.mixer(block.norm1(e))
    expected = mid + block.fc2(torch.nn.functional.gelu(block.fc1(block.norm2(mid))))
    assert rel_err(block(e), expected) < MESAOPT_F64_RTOL
    assert block.fc1.weight.shape == (64, 16)


def test_init_std_is_used():
    model = SequenceModel(SeqModelConfig(layers=["linear"], input_dim=30, output_dim=10, num_heads=2, key_size=20, init_std=2e-4))
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 1.5e-4 < float(w.std()) < 2.5e-4


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_whole_model_is_causal(kind):
    model = _model(layers=[kind, kind], **EMBEDDED)
    x = _tokens(2, 10, 5, seed=1)
    y = x.clone()
    y[:, 6:] = _tokens(2, 4, 5, seed=2)
    px, py = model(x), model(y)
    assert rel_err(py[:, :6], px[:, :6]) < MESAOPT_CG_F64_RTOL
    assert rel_err(py[:, 6:], px[:, 6:]) > 1e-3


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(layers=[]), "layers"),
        (dict(layers=["linear", "rnn"]), "layers"),
        (dict(input_dim=0), "input_dim"),
        (dict(input_dim=5, output_dim=10), "output_dim"),
        (dict(positional="rope", embed_dim=8), "positional"),
        (dict(positional="sinusoidal"), "positional"),
        (dict(positional="sinusoidal", embed_dim=7), "even"),
        (dict(activation_clip=0.0), "activation_clip"),
        (dict(init_std=-1.0), "init_std"),
        (dict(lam_init=0.0), "lam_init"),
        (dict(num_heads=0), "num_heads"),
    ],
)
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        SeqModelConfig(**kw)


def test_bad_inputs_raise():
    model = _model(layers=["linear"], input_dim=6, output_dim=2, max_len=8, num_heads=1, key_size=3)
    with pytest.raises(ValueError, match="tokens expected"):
        model(_tokens(2, 5, 7))
    with pytest.raises(ValueError, match="max_len"):
        model(_tokens(2, 9, 6))
