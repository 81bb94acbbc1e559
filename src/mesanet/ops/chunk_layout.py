"""Chunked layout of a batch of (possibly packed) sequences.

Every sequence is cut into chunks of ``C`` tokens (its last chunk zero-padded) and the chunks of
all sequences are stacked into one chunk axis ``NC``. Chunk-local work (CG matvecs, outputs) is
batched over that axis with no waste beyond the per-sequence padding; the recurrence across
chunks runs over a ``[N, NCmax]`` (sequence, chunk position) view so that it never crosses a
sequence boundary. A padded ``[B, T]`` batch is just ``B`` sequences of length ``T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor


@dataclass(frozen=True)
class ChunkLayout:
    chunk_size: int
    num_tokens: int  # tokens over all sequences
    num_chunks: int  # NC
    max_chunks: int  # NCmax, chunks of the longest sequence
    slot_token: Tensor  # [NC * C] long: source token of each slot; num_tokens marks a padding slot
    token_slot: Tensor  # [num_tokens] long: slot of each token
    chunk_of: Tensor  # [N, NCmax] long: flat chunk of (sequence, position); num_chunks past the end

    @classmethod
    def from_lengths(cls, lengths: list[int], chunk_size: int, device: torch.device) -> "ChunkLayout":
        """Layout for sequences of the given lengths, laid end to end in token order."""
        n_tokens = torch.tensor(lengths, dtype=torch.long, device=device)  # [N]
        n_chunks = (n_tokens + chunk_size - 1) // chunk_size  # [N]
        first_chunk = n_chunks.cumsum(0) - n_chunks  # [N]
        first_token = n_tokens.cumsum(0) - n_tokens  # [N]
        num_tokens, num_chunks, max_chunks = sum(lengths), int(n_chunks.sum()), int(n_chunks.max())
        seq = torch.repeat_interleave(torch.arange(len(lengths), device=device), n_tokens)  # [num_tokens]
        position = torch.arange(num_tokens, device=device) - first_token[seq]
        token_slot = first_chunk[seq] * chunk_size + position
        slot_token = torch.full((num_chunks * chunk_size,), num_tokens, dtype=torch.long, device=device)
        slot_token[token_slot] = torch.arange(num_tokens, device=device)
        steps = torch.arange(max_chunks, device=device)  # [NCmax]
        chunk_of = torch.where(steps < n_chunks[:, None], first_chunk[:, None] + steps, num_chunks)  # [N, NCmax]
        return cls(chunk_size, num_tokens, num_chunks, max_chunks, slot_token, token_slot, chunk_of)

    def pack(self, x: Tensor) -> Tensor:
        """Token rows ``[num_tokens, H(, D)]`` -> chunks ``[NC, H, C(, D)]``; padding slots are 0."""
        rows = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])[self.slot_token]  # [NC*C, H(, D)]
        if x.dim() == 2:
            return rearrange(rows, "(n c) h -> n h c", c=self.chunk_size).contiguous()
        return rearrange(rows, "(n c) h d -> n h c d", c=self.chunk_size).contiguous()

    def unpack(self, y: Tensor) -> Tensor:
        """Chunks ``[NC, H, C(, D)]`` -> token rows ``[num_tokens, H(, D)]`` (padding dropped)."""
        if y.dim() == 3:
            return rearrange(y, "n h c -> (n c) h")[self.token_slot]
        return rearrange(y, "n h c d -> (n c) h d")[self.token_slot]

    def by_sequence(self, per_chunk: Tensor) -> Tensor:
        """Per-chunk values ``[NC, ...]`` -> ``[N, NCmax, ...]``; positions past a sequence's end are 0."""
        padded = torch.cat([per_chunk, per_chunk.new_zeros((1, *per_chunk.shape[1:]))])
        return padded[self.chunk_of]

    def by_chunk(self, per_sequence: Tensor) -> Tensor:
        """Inverse of :meth:`by_sequence`: ``[N, NCmax, ...]`` -> ``[NC, ...]``."""
        # Chunks are numbered in (sequence, position) order, the order boolean indexing walks.
        return per_sequence[self.chunk_of < self.num_chunks]
