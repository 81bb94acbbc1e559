"""Caches are trusted by content, not by size: a token file or tokenizer changed after it was built is named in a
warning, set aside and rebuilt; token ids beyond the vocabulary are a clear error naming the file."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mesanet.data import DataError, packing, prepare_data


def _aside(root: Path, kind: str) -> list[Path]:
    return list((root / kind).glob(".damaged-*"))


@pytest.mark.parametrize(
    "split, damage",
    [
        ("train", "other-valid-ids"),  # same size, every id valid: only the content digest can tell
        ("val", "one-byte-flip"),
    ],
)
def test_changed_token_file_is_named_and_rebuilt(corpus_dir, make_cfg, caplog, split, damage):
    cfg = make_cfg(corpus_dir)
    good = prepare_data(cfg, progress=False)
    original = np.array(getattr(good, split))
    path = good.tokens_dir / f"{split}.bin"
    if damage == "other-valid-ids":
        np.roll(original, 7).astype(original.dtype).tofile(path)
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    assert path.stat().st_size == original.nbytes  # a size check alone would call it intact

    with caplog.at_level(logging.WARNING, logger="mesanet.data.packing"):
        again = prepare_data(cfg, progress=False)
    assert f"token cache file {path} does not match the blake2b digest recorded when it was built" in caplog.text
    assert not again.cache_hits["tokens"] and len(_aside(Path(cfg.cache_dir), "tokens")) == 1
    np.testing.assert_array_equal(getattr(again, split), original)  # rebuilt from the corpus


def test_out_of_range_ids_are_an_error_naming_the_file(corpus_dir, make_cfg):
    cfg = make_cfg(corpus_dir)
    good = prepare_data(cfg, progress=False)
    path = good.tokens_dir / "train.bin"
    ids = np.array(good.train)
    ids[5] = good.vocab_size + 3
    ids.tofile(path)
    meta = json.loads((good.tokens_dir / "meta.json").read_text())
    meta[packing.HASH_NAME]["train"] = packing.file_digest(path)  # the digest re-recorded too: only the range check is left
    (good.tokens_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError,
        match=rf"token cache file {path} holds token id {good.vocab_size + 3}, but the tokenizer "
        rf"has only {good.vocab_size} tokens: .* delete {good.tokens_dir} to rebuild it",
    ):
        prepare_data(cfg, progress=False)


@pytest.mark.parametrize("rerecord", [False, True], ids=["digest-mismatch", "does-not-load"])
def test_damaged_cached_tokenizer_is_named_and_retrained(corpus_dir, make_cfg, caplog, rerecord):
    cfg = make_cfg(corpus_dir)
    good = prepare_data(cfg, progress=False)
    tok_file = good.tokenizer_dir / "tokenizer.json"
    tok_file.write_bytes(b"\xff\xfe not utf-8 \x80")
    if rerecord:  # meta.json updated as well: the digest matches, but the file does not load
        meta = json.loads((good.tokenizer_dir / "meta.json").read_text())
        meta["tokenizer_hash"] = hashlib.sha256(tok_file.read_bytes()).hexdigest()
        (good.tokenizer_dir / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="mesanet.data.tokenizer"):
        again = prepare_data(cfg, progress=False)
    expected = "does not load (" if rerecord else "does not match the sha256 recorded in meta.json"
    assert f"cached tokenizer{' file' if not rerecord else ''} {tok_file} {expected}" in caplog.text
    assert "retraining the tokenizer" in caplog.text
    assert not again.cache_hits["tokenizer"] and again.tokenizer_hash == good.tokenizer_hash
    assert len(_aside(Path(cfg.cache_dir), "tokenizer")) == 1


def test_digests_are_recorded_when_built(corpus_dir, make_cfg):
    good = prepare_data(make_cfg(corpus_dir), progress=False)
    meta = json.loads((good.tokens_dir / "meta.json").read_text())
    for split in packing.SPLITS:
        assert meta[packing.HASH_NAME][split] == packing.file_digest(good.tokens_dir / f"{split}.bin")
    arrays, problem = packing.read_tokens(good.tokens_dir)
    assert problem is None and arrays is not None
    assert packing.read_tokens(good.tokens_dir.parent / "absent") == (None, None)  # a miss, not damage
