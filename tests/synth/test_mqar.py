"""MQAR generator: layout, every query answered by its context pair, seeding, bad arguments."""

from __future__ import annotations

import pytest
import torch

from mesanet.synth.tasks import IGNORE_INDEX, MQARConfig, mqar


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_every_query_was_shown_with_its_value(random_non_queries):
    cfg = MQARConfig(vocab_size=512, seq_len=128, num_kv_pairs=16, random_non_queries=random_non_queries)
    batch = mqar(32, 0, cfg)
    assert batch.inputs.shape == batch.targets.shape == (32, 128)
    n = cfg.num_kv_pairs
    for inp, tgt in zip(batch.inputs.tolist(), batch.targets.tolist()):
        keys, values = inp[0 : 2 * n : 2], inp[1 : 2 * n : 2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert all(1 <= k < 256 for k in keys) and all(256 <= v < 512 for v in values)
        kv = dict(zip(keys, values))
        scored = [p for p, t in enumerate(tgt) if t != IGNORE_INDEX]
        assert len(scored) == n and all(p >= 2 * n and (p - 2 * n) % 2 == 0 for p in scored)
        assert sorted(inp[p] for p in scored) == sorted(keys)  # each key queried exactly once
        assert all(tgt[p] == kv[inp[p]] for p in scored)
        if not random_non_queries:
            assert all(inp[p] == 0 for p in range(2 * n, 128) if p not in scored)


def test_seeding():
    a, b, c = mqar(4, 1), mqar(4, 1), mqar(4, 2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape == (4, 64) and a.inputs.dtype == torch.int64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 63}, "seq_len"),
        ({"seq_len": 64, "num_kv_pairs": 17}, "seq_len"),
        ({"vocab_size": 64, "seq_len": 64}, "vocab_size"),
        ({"power_a": 0.0}, "power_a"),
        ({"num_kv_pairs": 0}, "num_kv_pairs"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MQARConfig(**kwargs)
