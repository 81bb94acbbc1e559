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
    chunk_slot: Tensor  # [NC] long: flat (sequence * NCmax + position) of each chunk
    uniform_length: int | None = None  # the length of every sequence when they are all equal (reshapes, no gathers)

    @classmethod
    def from_lengths(cls, lengths: list[int], chunk_size: int, device: torch.device) -> "ChunkLayout":
        """Layout for sequences of the given lengths, laid end to end in token order.

        The counts are Python integers, so building a layout never reads a tensor back from the device
        (no host synchronisation, no graph break under ``torch.compile``).
        """
        chunks = [-(-n // chunk_size) for n in lengths]  # [N] chunks per sequence
        first_chunks = [sum(chunks[:i]) for i in range(len(chunks))]
        first_tokens = [sum(lengths[:i]) for i in range(len(lengths))]
        num_tokens, num_chunks, max_chunks = sum(lengths), sum(chunks), max(chunks)
        if len(set(lengths)) == 1:  # equal lengths: every index is an arange, no per-token gather tables
            seq = torch.arange(num_tokens, device=device) // lengths[0]
        else:
            seq = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
        first_chunk = torch.tensor(first_chunks, dtype=torch.long, device=device)  # [N]
        first_token = torch.tensor(first_tokens, dtype=torch.long, device=device)  # [N]
        position = torch.arange(num_tokens, device=device) - first_token[seq]
        token_slot = first_chunk[seq] * chunk_size + position
        slot_token = torch.full((num_chunks * chunk_size,), num_tokens, dtype=torch.long, device=device)
        slot_token = slot_token.scatter(0, token_slot, torch.arange(num_tokens, device=device))
        steps = torch.arange(max_chunks, device=device)  # [NCmax]
        n_chunks = torch.tensor(chunks, dtype=torch.long, device=device)  # [N]
        chunk_of = torch.where(steps < n_chunks[:, None], first_chunk[:, None] + steps, num_chunks)  # [N, NCmax]
        slots = [i * max_chunks + j for i, n in enumerate(chunks) for j in range(n)]
        chunk_slot = torch.tensor(slots, dtype=torch.long, device=device)  # [NC]
        uniform = lengths[0] if len(set(lengths)) == 1 else None
        return cls(chunk_size, num_tokens, num_chunks, max_chunks, slot_token, token_slot, chunk_of, chunk_slot, uniform)

    def pack(self, x: Tensor) -> Tensor:
        """Token rows ``[num_tokens, H(, D)]`` -> chunks ``[NC, H, C(, D)]``; padding slots are 0."""
        if self.uniform_length is not None:  # N sequences of one length: pad each to NCmax * C and reshape
            rows = x.view(-1, self.uniform_length, *x.shape[1:])  # [N, L, H(, D)]
            pad = self.max_chunks * self.chunk_size - self.uniform_length
            if pad:
                rows = torch.cat([rows, rows.new_zeros((rows.shape[0], pad, *rows.shape[2:]))], dim=1)
            rows = rows.reshape(-1, *x.shape[1:])  # [NC*C, H(, D)]
        else:
            rows = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])[self.slot_token]  # [NC*C, H(, D)]
        if x.dim() == 2:
            return rearrange(rows, "(n c) h -> n h c", c=self.chunk_size).contiguous()
        return rearrange(rows, "(n c) h d -> n h c d", c=self.chunk_size).contiguous()

    def unpack(self, y: Tensor) -> Tensor:
        """Chunks ``[NC, H, C(, D)]`` -> token rows ``[num_tokens, H(, D)]`` (padding dropped)."""
        rows = rearrange(y, "n h c -> (n c) h") if y.dim() == 3 else rearrange(y, "n h c d -> (n c) h d")
        if self.uniform_length is not None:
            per_sequence = rows.view(-1, self.max_chunks * self.chunk_size, *rows.shape[1:])  # [N, NCmax*C, H(, D)]
            return per_sequence[:, : self.uniform_length].reshape(-1, *rows.shape[1:])
        return rows[self.token_slot]

    def by_sequence(self, per_chunk: Tensor) -> Tensor:
        """Per-chunk values ``[NC, ...]`` -> ``[N, NCmax, ...]``; positions past a sequence's end are 0."""
        if self.uniform_length is not None:  # every sequence has NCmax chunks
            return per_chunk.view(-1, self.max_chunks, *per_chunk.shape[1:])
        padded = torch.cat([per_chunk, per_chunk.new_zeros((1, *per_chunk.shape[1:]))])
        return padded[self.chunk_of]

    def by_chunk(self, per_sequence: Tensor) -> Tensor:
        """Inverse of :meth:`by_sequence`: ``[N, NCmax, ...]`` -> ``[NC, ...]``."""
        if self.uniform_length is not None:
            return per_sequence.flatten(0, 1)
        return per_sequence.flatten(0, 1)[self.chunk_slot]
