"""Batches from a packed 1-D token stream: ``TokenBatches`` for training, ``eval_windows`` for evaluation.

The stream is cut into non-overlapping windows of ``seq_len`` tokens starting at 0 (a tail shorter
than ``seq_len`` is unused). Training visits the windows in a fresh seeded permutation every epoch,
forever. The *global* stream of window indices is ``perm(epoch 0) ++ perm(epoch 1) ++ ...``;
global batch ``k`` is its slice ``[k*W*B, (k+1)*W*B)`` for ``W`` ranks of ``B`` rows, and rank ``r``
gets rows ``[r*B, (r+1)*B)`` of it - exactly what one process with batch ``W*B`` would see, so
DDP runs are equivalent to single-process runs. The position (``step`` = global batches taken) is
the whole state: ``state_dict`` / ``load_state_dict`` resume the identical sequence.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from mesanet.utils.validation import check_int


def _as_tokens(tokens: Any, where: str) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    if not isinstance(tokens, np.ndarray):
        raise TypeError(f"{where}: expected a 1-D numpy array (or tensor) of token ids, got {type(tokens).__name__}")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"{where}: expected a 1-D integer array of token ids, got shape {tuple(tokens.shape)} and dtype {tokens.dtype}"
        )
    return tokens


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    index = starts[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


class TokenBatches:
    """Deterministic, resumable, infinite iterator of ``LongTensor [batch_size, seq_len]`` training batches.

    ``batch_size`` is per rank; see the module docstring for the order and the DDP slicing.
    """

    def __init__(self, tokens: Any, seq_len: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        where = "TokenBatches"
        self.tokens = _as_tokens(tokens, where)
        self.seq_len = check_int(f"{where}: seq_len", seq_len, minimum=1)
        self.batch_size = check_int(f"{where}: batch_size", batch_size, minimum=1)
        self.seed = check_int(f"{where}: seed", seed, minimum=0)
        self.world_size = check_int(f"{where}: world_size", world_size, minimum=1)
        self.rank = check_int(f"{where}: rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"{where}: rank must be in [0, world_size={self.world_size}), got {rank}")
        self.num_windows = len(self.tokens) // self.seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"{where}: the token stream has {len(self.tokens)} tokens, fewer than one window of seq_len={self.seq_len}"
            )
        self.global_batch_size = self.batch_size * self.world_size
        self.step = 0  # global batches taken
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def epoch(self) -> float:
        """Passes over the windows completed so far (fractional)."""
        return self.step * self.global_batch_size / self.num_windows

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._perm, self._perm_epoch = rng.permutation(self.num_windows), epoch
        return self._perm

    def _window_ids(self, begin: int, end: int) -> np.ndarray:
        """Entries ``[begin, end)`` of the global window-index stream."""
        out = np.empty(end - begin, dtype=np.int64)
        pos = begin
        while pos < end:
            epoch, offset = divmod(pos, self.num_windows)
            take = min(end - pos, self.num_windows - offset)
            out[pos - begin : pos - begin + take] = self._permutation(epoch)[offset : offset + take]
            pos += take
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        begin = self.step * self.global_batch_size + self.rank * self.batch_size
        ids = self._window_ids(begin, begin + self.batch_size)
        self.step += 1
        return _windows(self.tokens, ids * self.seq_len, self.seq_len)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state['step']``; the stream layout (seed, seq_len, global batch, windows) must match."""
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"TokenBatches.load_state_dict: expected a dict from state_dict(), got {state!r}")
        mine = self.state_dict()
        for key in ("seed", "seq_len", "global_batch_size", "num_windows"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"TokenBatches.load_state_dict: saved {key}={state[key]} but this stream has {key}={mine[key]}; "
                    f"resuming would not continue the same sequence of batches (same data, seq_len, seed and "
                    f"batch_size x world_size are required)"
                )
        self.step = check_int("TokenBatches.load_state_dict: step", state["step"], minimum=0)

    def __repr__(self) -> str:
        return (
            f"TokenBatches(windows={self.num_windows}, seq_len={self.seq_len}, batch_size={self.batch_size}, "
            f"rank={self.rank}/{self.world_size}, seed={self.seed}, step={self.step})"
        )


def eval_windows(tokens: Any, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """The first ``max_windows`` (default: all) non-overlapping ``seq_len`` windows, ``LongTensor [N, seq_len]``."""
    where = "eval_windows"
    tokens = _as_tokens(tokens, where)
    seq_len = check_int(f"{where}: seq_len", seq_len, minimum=1)
    n = len(tokens) // seq_len
    if n < 1:
        raise ValueError(
            f"{where}: the token stream has {len(tokens)} tokens, fewer than one window of "
            f"seq_len={seq_len}; use seq_len <= {len(tokens)} or more validation data"
        )
    if max_windows is not None:
        n = min(n, check_int(f"{where}: max_windows", max_windows, minimum=1))
    return _windows(tokens, np.arange(n, dtype=np.int64) * seq_len, seq_len)
