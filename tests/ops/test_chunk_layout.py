"""The chunked layout of batched / packed sequences."""

from __future__ import annotations

import torch

from mesanet.ops.chunk_layout import ChunkLayout


def test_pack_unpack_round_trip_and_padding():
    layout = ChunkLayout.from_lengths([5, 1, 8], chunk_size=4, device=torch.device("cpu"))
    assert (layout.num_tokens, layout.num_chunks, layout.max_chunks) == (14, 5, 2)
    x = torch.arange(14 * 2 * 3, dtype=torch.float64).reshape(14, 2, 3) + 1  # no zero entries
    packed = layout.pack(x)  # [NC, H, C, D]
    assert packed.shape == (5, 2, 4, 3)
    # sequence 0 -> chunks 0,1 (tokens 0..3 | 4 + 3 pads); sequence 1 -> chunk 2 (1 token + 3 pads); sequence 2 -> chunks 3,4
    assert torch.equal(packed[1, :, 0], x[4]) and torch.all(packed[1, :, 1:] == 0)
    assert torch.equal(packed[2, :, 0], x[5]) and torch.all(packed[2, :, 1:] == 0)
    assert torch.equal(packed[4, :, 3], x[13])
    assert torch.equal(layout.unpack(packed), x)
    gates = x[..., 0]  # [T, H]
    assert torch.equal(layout.unpack(layout.pack(gates)), gates)


def test_sequence_view_is_inverse_and_pads_with_zero():
    layout = ChunkLayout.from_lengths([5, 1, 8], chunk_size=4, device=torch.device("cpu"))
    per_chunk = torch.arange(1, 6, dtype=torch.float64)[:, None].expand(5, 3)  # [NC, 3]
    by_seq = layout.by_sequence(per_chunk)  # [N, NCmax, 3]
    assert by_seq[:, :, 0].tolist() == [[1, 2], [3, 0], [4, 5]]
    assert torch.equal(layout.by_chunk(by_seq), per_chunk)


def test_chunk_size_is_capped_at_the_longest_sequence():
    """A chunk longer than every sequence is pure padding: the shared input path caps it."""
    from mesanet.ops.inputs import MESA, prepare_sequences

    from helpers import make_inputs

    inputs = make_inputs(1, 20, 2, 4, 3)
    packed = prepare_sequences(
        "test",
        MESA,
        **{n: inputs[n] for n in ("q", "k", "v", "g", "beta", "lam")},
        initial_state=None,
        cu_seqlens=torch.tensor([0, 7, 20]),
        chunk_size=10**6,
    )
    assert packed.lengths == [7, 13]
    layout = packed.layout(10**6)
    assert (layout.chunk_size, layout.num_chunks) == (13, 2)
    assert packed.layout(4).chunk_size == 4


def test_equal_lengths_reshape_path_matches_the_gather_tables():
    """Sequences of one length pack by reshapes; the result must equal the general gather path."""
    import dataclasses

    for lengths, chunk in (([6, 6, 6], 4), ([8, 8], 4), ([3], 8)):
        fast = ChunkLayout.from_lengths(lengths, chunk_size=chunk, device=torch.device("cpu"))
        general = dataclasses.replace(fast, uniform_length=None)
        assert fast.uniform_length == lengths[0]
        x = torch.randn(sum(lengths), 2, 3, dtype=torch.float64)
        for rows in (x, x[..., 0]):
            assert torch.equal(fast.pack(rows), general.pack(rows))
            packed = general.pack(rows)
            assert torch.equal(fast.unpack(packed), general.unpack(packed))
        per_chunk = torch.randn(fast.num_chunks, 2, dtype=torch.float64)
        assert torch.equal(fast.by_sequence(per_chunk), general.by_sequence(per_chunk))
        assert torch.equal(fast.by_chunk(fast.by_sequence(per_chunk)), per_chunk)
