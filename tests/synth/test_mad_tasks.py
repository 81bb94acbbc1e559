"""MAD generators: shapes, seeding, the defining property of each task, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mesanet.synth.tasks import (
    IGNORE_INDEX,
    MAD_TASKS,
    CompressionConfig,
    FuzzyRecallConfig,
    InContextRecallConfig,
    MemorizationConfig,
    NoisyRecallConfig,
    SelectiveCopyingConfig,
    compression,
    fuzzy_recall,
    in_context_recall,
    mad_settings,
    memorization,
    memorization_map,
    noisy_recall,
    selective_copying,
)

GENERATORS = {
    "in_context_recall": (in_context_recall, 127),
    "noisy_recall": (noisy_recall, 127),
    "fuzzy_recall": (fuzzy_recall, 128),
    "selective_copying": (selective_copying, 256),
    "compression": (compression, 32),
    "memorization": (memorization, 32),
}


@pytest.mark.parametrize("task", list(GENERATORS))
def test_shapes_dtype_and_seeding(task):
    gen, length = GENERATORS[task]
    a = gen(8, 0)
    assert a.inputs.shape == a.targets.shape == (8, length)
    assert a.inputs.dtype == a.targets.dtype == torch.int64
    b = gen(8, 0)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    c = gen(8, 1)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("task", list(GENERATORS))
def test_one_stream_gives_distinct_train_and_test(task):
    gen, _ = GENERATORS[task]
    rng = np.random.default_rng(12345)
    train, test = gen(8, rng), gen(8, rng)
    assert not torch.equal(train.inputs, test.inputs)


def _recall_check(cfg, batch):
    ns = cfg.vocab_size - cfg.noise_vocab_size
    half = ns // 2
    for seq, tgt in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert all(0 <= t < cfg.vocab_size for t in seq)
        full = seq  # pairs sit at even positions; noise slots hold tokens >= ns
        seen: dict[int, int] = {}
        for pos in range(0, len(full) - 1, 2):
            key, val = full[pos], full[pos + 1]
            if key >= ns:
                assert val >= ns and tgt[pos] == IGNORE_INDEX
                continue
            assert key < half and half <= val < ns
            if key in seen:
                assert seen[key] == val and tgt[pos] == val
            else:
                assert tgt[pos] == IGNORE_INDEX
            seen[key] = val
        # the final probe key (last input token) was shown earlier with the value its target asks for
        probe = full[-1]
        assert probe in seen and tgt[-1] == seen[probe]
        assert all(tgt[p] == IGNORE_INDEX for p in range(1, len(tgt) - 1, 2))


def test_recall_queried_keys_were_shown_with_the_target_value():
    cfg = InContextRecallConfig()
    batch = in_context_recall(32, 3)
    _recall_check(cfg, batch)
    # 64 pairs minus the first occurrence of each key: 56 whenever all 8 keys appear (the spec's count)
    distinct = torch.tensor([len(set(row[0:126:2])) for row in batch.inputs.tolist()])
    assert torch.equal((batch.targets != IGNORE_INDEX).sum(1), 64 - distinct)
    assert (distinct == 8).float().mean() > 0.9


def test_noisy_recall_property_and_noise_rate():
    cfg = NoisyRecallConfig(frac_noise=0.6)
    batch = noisy_recall(32, 4, cfg)
    _recall_check(cfg, batch)
    noise = (batch.inputs[:, 0::2] >= 16).float().mean().item()
    assert 0.5 < noise < 0.7


def test_recall_training_targets_are_the_shifted_sequence():
    a = in_context_recall(4, 5, is_training=True)
    assert torch.equal(a.inputs[:, 1:], a.targets[:, :-1])
    assert (a.targets != IGNORE_INDEX).all()


def _parse_motifs(seq, cfg):
    """Split an (unpadded) fuzzy-recall sequence into (key motif, value motif) pairs with positions."""
    kh = cfg.num_key_tokens
    start = next(i for i, t in enumerate(seq) if t != cfg.pad_token)
    pairs, i = [], start
    while i < len(seq):
        j = i
        while j < len(seq) and seq[j] < kh:
            j += 1
        k = j
        while k < len(seq) and kh <= seq[k] < cfg.pad_token:
            k += 1
        assert j > i and k > j, "sequence must alternate key and value motifs"
        pairs.append((tuple(seq[i:j]), tuple(seq[j:k]), j))
        i = k
    return start, pairs


def test_fuzzy_recall_keys_map_to_one_value_and_targets_are_repeat_values():
    cfg = FuzzyRecallConfig()
    batch = fuzzy_recall(32, 6)
    for inp, tgt in zip(batch.inputs.tolist(), batch.targets.tolist()):
        full = inp + [None]  # the last token (final probe's last value token) only shows up as a target
        full[-1] = tgt[-1]
        start, pairs = _parse_motifs(full, cfg)
        assert all(t == cfg.pad_token for t in full[:start])
        seen: dict[tuple, tuple] = {}
        expected = [IGNORE_INDEX] * len(tgt)
        for n, (key, val, vpos) in enumerate(pairs):
            assert len(set(key)) == len(key) == cfg.k_motif_size  # test keys are full-size motifs
            assert len(set(val)) == len(val) <= cfg.v_motif_size
            if key in seen:
                assert seen[key] == val
            if key in seen or n == len(pairs) - 1:
                for off, tok in enumerate(val):
                    expected[vpos + off - 1] = tok
            seen[key] = val
        assert tgt == expected


def test_fuzzy_recall_training_targets_shifted_with_varied_key_sizes():
    batch = fuzzy_recall(8, 7, is_training=True)
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])


def test_selective_copying_targets_are_marked_tokens_in_order():
    cfg = SelectiveCopyingConfig(vocab_size=32, seq_len=100, num_tokens_to_copy=20)
    batch = selective_copying(16, 8, cfg)
    n = cfg.num_tokens_to_copy
    for inp, tgt in zip(batch.inputs.tolist(), batch.targets.tolist()):
        head = inp[: cfg.seq_len - n]
        assert head[-1] == cfg.copy_token and head[-2] != cfg.blank_token
        content = [t for t in head[:-1] if t != cfg.blank_token]
        assert len(content) == n and all(t < cfg.vocab_size - 2 for t in content)
        assert inp[cfg.seq_len - n :] == [cfg.blank_token] * n
        assert tgt == [IGNORE_INDEX] * (cfg.seq_len - n) + content


def test_compression_targets_equal_inputs():
    cfg = CompressionConfig(vocab_size=8, seq_len=20)
    batch = compression(16, 9, cfg)
    assert torch.equal(batch.inputs, batch.targets)
    assert (batch.inputs[:, -1] == 7).all() and (batch.inputs[:, :-1] < 7).all()


def test_memorization_map_is_fixed_across_sequences_and_seeds():
    cfg = MemorizationConfig()
    facts = memorization_map(cfg)
    assert len(facts) == 127 and sorted(facts) == list(range(127))
    assert len(set(facts.values())) == 127 and all(127 <= v < 255 for v in facts.values())
    for seed in (0, 1):
        batch = memorization(16, seed, cfg)
        assert (batch.inputs[:, 1::2] == 255).all() and (batch.targets[:, 0::2] == IGNORE_INDEX).all()
        for k, v in zip(batch.inputs[:, 0::2].flatten().tolist(), batch.targets[:, 1::2].flatten().tolist()):
            assert facts[k] == v
    assert memorization_map(MemorizationConfig(map_seed=1)) != facts


def test_mad_settings_grid():
    counts = {t: len(mad_settings(t)) for t in MAD_TASKS}
    assert counts == {
        "in_context_recall": 11,
        "noisy_recall": 14,
        "fuzzy_recall": 11,
        "selective_copying": 13,
        "compression": 11,
        "memorization": 6,
    }
    nr = {s.name: s for s in mad_settings("noisy_recall")}
    assert nr["vocab_size=144"].config.noise_vocab_size == 16
    assert nr["num_train=800"].num_train == 800 and nr["baseline"].num_train == 12800
    assert mad_settings("memorization")[0].num_train == 256
    with pytest.raises(ValueError, match="task"):
        mad_settings("copying")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: InContextRecallConfig(seq_len=127), "seq_len"),
        (lambda: InContextRecallConfig(vocab_size=1), "vocab_size"),
        (lambda: NoisyRecallConfig(frac_noise=1.0), "frac_noise"),
        (lambda: InContextRecallConfig(frac_noise=0.2), "noise_vocab_size"),
        (lambda: FuzzyRecallConfig(vocab_size=6), "vocab_size"),
        (lambda: FuzzyRecallConfig(seq_len=10), "seq_len"),
        (lambda: SelectiveCopyingConfig(seq_len=33, num_tokens_to_copy=16), "seq_len"),
        (lambda: SelectiveCopyingConfig(vocab_size=2), "vocab_size"),
        (lambda: CompressionConfig(seq_len=1), "seq_len"),
        (lambda: MemorizationConfig(seq_len=31), "seq_len"),
        (lambda: in_context_recall(0, 0), "num_sequences"),
        (lambda: compression(4, -1), "seed"),
        (lambda: compression(4, 1.5), "seed"),
        (lambda: memorization(4, 0, CompressionConfig()), "config"),
    ],
)
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
