"""Per-head weight products ``(W_k^T W_q, P W_v)`` of trained all-linear models: read them, compress them to
block-scalar form, interpolate them, and run a model with them overridden."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...models import SequenceModel
from ..compressed import compress_block_scalar, reconstruct_block_scalar

__all__ = ["Products", "model_products", "compress_products", "interpolate_products", "run_with_products"]

Products = list[tuple[Tensor, Tensor]]


def _linear_mixers(model: SequenceModel) -> list:
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model: expected a SequenceModel, got {type(model).__name__}")
    bad = [k for k in model.config.layers if k != "linear"]
    if bad:
        raise ValueError(f"model: expected only 'linear' layers, got layers {model.config.layers}")
    return [block.mixer for block in model.blocks]


@torch.no_grad()
def model_products(model: SequenceModel) -> Products:
    """Per layer ``(W_k^T W_q, P W_v)``, each ``[H, D, D]`` (detached), of an all-linear :class:`SequenceModel`."""
    return [(m.kq_products().detach().clone(), m.pv_products().detach().clone()) for m in _linear_mixers(model)]


def compress_products(products: Products, block_size: int) -> Products:
    """Every product replaced by its block-scalar projection (blocks ``block_size`` wide), same shapes."""
    return [
        (
            reconstruct_block_scalar(compress_block_scalar(kq, block_size), block_size),
            reconstruct_block_scalar(compress_block_scalar(pv, block_size), block_size),
        )
        for kq, pv in products
    ]


def interpolate_products(first: Products, second: Products, weight: float) -> Products:
    """``(1 - weight) * first + weight * second`` per product (``weight`` 0 / 1 return the endpoints exactly)."""
    if len(first) != len(second) or any(a.shape != b.shape for pa, pb in zip(first, second) for a, b in zip(pa, pb)):
        raise ValueError("products: expected two lists of equally shaped (kq, pv) pairs")
    if not math.isfinite(weight):
        raise ValueError(f"weight: expected a finite float, got {weight!r}")
    w = float(weight)
    return [tuple((1.0 - w) * a + w * b for a, b in zip(pa, pb)) for pa, pb in zip(first, second)]


def run_with_products(model: SequenceModel, tokens: Tensor, products: Products) -> Tensor:
    """The forward pass of an all-linear ``model`` with every layer's per-head products overridden:
    ``tokens [B, T, input_dim] -> pred [B, T, output_dim]`` (norms, MLP, clip and read-out as in the model)."""
    mixers = _linear_mixers(model)
    if len(products) != len(mixers):
        raise ValueError(f"products: expected one (kq, pv) pair per layer ({len(mixers)}), got {len(products)}")
    e = model.embed_tokens(tokens)
    for block, (kq, pv) in zip(model.blocks, products):
        e = e + block.mixer(block.norm1(e), products=(kq, pv))
        if block.fc1 is not None:
            e = e + block.fc2(torch.nn.functional.gelu(block.fc1(block.norm2(e))))
        if block.clip is not None:
            e = e.clamp(-block.clip, block.clip)
    return model.read_out(e)
