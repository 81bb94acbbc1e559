"""MesaNetForRegression: shapes, causality, gradient flow, bad inputs."""

from __future__ import annotations

import pytest
import torch

from mesanet.models import MesaNetConfig
from mesanet.synth.regression_model import MesaNetForRegression


def _config(mixer="mesa"):
    return MesaNetConfig(
        vocab_size=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_heads=2,
        head_dim=8,
        mixer_types=[mixer, mixer],
        chunk_size=8,
        solver_training=dict(max_iter=8),
        solver_inference=dict(max_iter=8),
    )


@pytest.mark.parametrize("mixer", ["mesa", "gated_deltanet"])
def test_shapes_and_gradients(mixer):
    torch.manual_seed(0)
    model = MesaNetForRegression(_config(mixer), in_dim=3, out_dim=2)
    x = torch.randn(4, 10, 3)
    y = model(x)
    assert y.shape == (4, 10, 2)
    y.pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("in_proj.weight", "head.weight", "model.layers.0.mixer.o_proj.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    assert not model.model.embed_tokens.weight.requires_grad  # unused token embedding


def test_causal():
    torch.manual_seed(0)
    model = MesaNetForRegression(_config(), in_dim=3).eval()
    x = torch.randn(2, 12, 3)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 5, 3)
    with torch.no_grad():
        a, b = model(x), model(x2)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="in_dim"):
        MesaNetForRegression(_config(), in_dim=0)
    model = MesaNetForRegression(_config(), in_dim=3)
    with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
        model(torch.randn(2, 5, 4))
