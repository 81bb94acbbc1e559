"""TokenBatches (deterministic, resumable, DDP-sliced training batches) and eval_windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mesanet.data import TokenBatches, eval_windows


@pytest.fixture
def tokens() -> np.ndarray:
    return (np.arange(1003, dtype=np.int64) * 7 % 4096).astype(np.uint16)  # 1003 // 10 = 100 windows


def take(batches: TokenBatches, n: int) -> list[torch.Tensor]:
    return [next(batches) for _ in range(n)]


def test_shapes_dtype_and_windows(tokens):
    b = TokenBatches(tokens, seq_len=10, batch_size=4, seed=0)
    x = next(b)
    assert x.shape == (4, 10) and x.dtype == torch.long
    starts = tokens.astype(np.int64)
    for row in x:  # each row is one aligned, non-overlapping window of the stream
        matches = [s for s in range(0, 1000, 10) if np.array_equal(starts[s : s + 10], row.numpy())]
        assert len(matches) == 1
    assert b.num_windows == 100 and b.step == 1


def test_every_epoch_visits_each_window_once_in_a_new_order(tokens):
    b = TokenBatches(tokens, seq_len=10, batch_size=5, seed=0)
    first = torch.cat(take(b, 20))[:, 0]  # 100 windows = one epoch
    second = torch.cat(take(b, 20))[:, 0]
    expected = sorted(tokens[0:1000:10].astype(np.int64).tolist())
    assert sorted(first.tolist()) == expected and sorted(second.tolist()) == expected
    assert first.tolist() != second.tolist()
    assert b.epoch == pytest.approx(2.0)


def test_deterministic_and_seeded(tokens):
    a, b, c = (TokenBatches(tokens, 10, 4, seed=s) for s in (3, 3, 4))
    xa, xb, xc = take(a, 30), take(b, 30), take(c, 30)
    assert all(torch.equal(u, v) for u, v in zip(xa, xb))
    assert not all(torch.equal(u, v) for u, v in zip(xa, xc))


def test_resume_gives_identical_batches(tokens):
    ref = TokenBatches(tokens, 10, 7, seed=1)
    expected = take(ref, 40)  # crosses several epoch boundaries (100 windows / 7 per batch)
    run = TokenBatches(tokens, 10, 7, seed=1)
    take(run, 13)
    state = run.state_dict()
    resumed = TokenBatches(tokens, 10, 7, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(u, v) for u, v in zip(take(resumed, 27), expected[13:]))
    assert state == {"step": 13, "seed": 1, "seq_len": 10, "global_batch_size": 7, "num_windows": 100}


def test_resume_rejects_a_different_stream(tokens):
    state = TokenBatches(tokens, 10, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"saved seed=0 but this stream has seed=1"):
        TokenBatches(tokens, 10, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved global_batch_size=4 but this stream has global_batch_size=8"):
        TokenBatches(tokens, 10, 4, seed=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="expected a dict from state_dict"):
        TokenBatches(tokens, 10, 4, seed=0).load_state_dict({"nope": 1})


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_slices_equal_the_single_process_batch(tokens, world_size):
    B = 3
    single = take(TokenBatches(tokens, 10, world_size * B, seed=5), 25)  # crosses epoch boundaries
    ranks = [take(TokenBatches(tokens, 10, B, seed=5, rank=r, world_size=world_size), 25) for r in range(world_size)]
    for step in range(25):
        assert torch.equal(torch.cat([ranks[r][step] for r in range(world_size)]), single[step])


def test_ddp_resume_per_rank(tokens):
    full = take(TokenBatches(tokens, 10, 2, seed=0, rank=1, world_size=2), 10)
    b = TokenBatches(tokens, 10, 2, seed=0, rank=1, world_size=2)
    take(b, 4)
    c = TokenBatches(tokens, 10, 2, seed=0, rank=1, world_size=2)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(u, v) for u, v in zip(take(c, 6), full[4:]))


def test_accepts_memmap_and_tensor(tokens, tmp_path):
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    a = next(TokenBatches(mm, 10, 4, seed=0))
    b = next(TokenBatches(torch.from_numpy(tokens.astype(np.int64)), 10, 4, seed=0))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(seq_len=0), ValueError, r"seq_len: expected an integer >= 1, got 0"),
        (dict(batch_size=0), ValueError, r"batch_size: expected an integer >= 1, got 0"),
        (dict(seed=-1), ValueError, r"seed: expected an integer >= 0, got -1"),
        (dict(rank=2, world_size=2), ValueError, r"rank must be in \[0, world_size=2\), got 2"),
        (dict(world_size=0), ValueError, r"world_size: expected an integer >= 1, got 0"),
        (dict(seq_len=2000), ValueError, r"1003 tokens, fewer than one window of seq_len=2000"),
    ],
)
def test_bad_arguments(tokens, kwargs, err, match):
    args = dict(seq_len=10, batch_size=4, seed=0) | kwargs
    with pytest.raises(err, match=match):
        TokenBatches(tokens, args.pop("seq_len"), args.pop("batch_size"), **args)


def test_bad_token_arrays():
    with pytest.raises(ValueError, match=r"expected a 1-D integer array of token ids, got shape \(2, 5\)"):
        TokenBatches(np.zeros((2, 5), dtype=np.int64), 2, 1, seed=0)
    with pytest.raises(ValueError, match="dtype float32"):
        eval_windows(np.zeros(10, dtype=np.float32), 2)
    with pytest.raises(TypeError, match="expected a 1-D numpy array"):
        eval_windows([1, 2, 3], 2)


def test_eval_windows(tokens):
    w = eval_windows(tokens, 10)
    assert w.shape == (100, 10) and w.dtype == torch.long
    assert torch.equal(w, torch.from_numpy(tokens[:1000].astype(np.int64)).view(100, 10))
    assert torch.equal(eval_windows(tokens, 10, max_windows=3), w[:3])
    assert eval_windows(tokens, 40, max_windows=1000).shape == (25, 40)  # longer windows (extrapolation)
    assert eval_windows(tokens, 1003).shape == (1, 1003)
    with pytest.raises(ValueError, match=r"1003 tokens, fewer than one window of seq_len=1004; use seq_len <= 1003"):
        eval_windows(tokens, 1004)
    with pytest.raises(ValueError, match="max_windows: expected an integer >= 1, got 0"):
        eval_windows(tokens, 10, max_windows=0)
