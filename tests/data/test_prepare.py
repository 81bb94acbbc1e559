"""prepare_data on local folders: determinism, split, packing with EOD, tokenizer, caches, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from mesanet.data import DataError, packing, prepare_data
from mesanet.data import cache as cache_mod
from mesanet.data import tokenizer as tokenizer_mod

from data_helpers import make_text, write_corpus


def _split_at_eod(tokens: np.ndarray, eod: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(np.asarray(tokens) == eod)
    return [np.asarray(tokens[a + 1 : b]) for a, b in zip(cuts[:-1], cuts[1:])]


def _tmp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


class Counter:
    """Wraps a function and counts its calls (to prove a cached run does no work)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **k):
        self.calls += 1
        return self.fn(*a, **k)


@pytest.fixture
def counters(monkeypatch):
    train = Counter(tokenizer_mod.train_bpe)
    pack = Counter(packing.pack_split)
    monkeypatch.setattr(tokenizer_mod, "train_bpe", train)
    monkeypatch.setattr(packing, "pack_split", pack)
    return train, pack


def test_local_folder_end_to_end(corpus_dir, make_cfg):
    data = prepare_data(make_cfg(corpus_dir), progress=False)
    names = data.documents["train"] + data.documents["val"]
    # the folder scan: text files only, recursively; binary, hidden, empty and non-text files skipped
    assert sorted(names) == sorted(p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("file_*"))
    assert not set(data.documents["train"]) & set(data.documents["val"])  # disjoint documents
    assert data.documents["train"] and data.documents["val"]
    assert data.stats["skipped_binary"] == 1 and data.stats["candidate_documents"] == 13  # 12 + blob.txt
    # arrays: 1-D memory maps, uint16, read-only
    for arr in (data.train, data.val):
        assert isinstance(arr, np.memmap) and arr.ndim == 1 and arr.dtype == np.uint16 and not arr.flags.writeable
    # packing: EOD d1 EOD d2 ... EOD; every segment decodes to exactly one document, in packing order
    for split, arr in (("train", data.train), ("val", data.val)):
        assert arr[0] == data.eod_id and arr[-1] == data.eod_id
        segments = _split_at_eod(arr, data.eod_id)
        assert len(segments) == len(data.documents[split]) == data.stats[split]["documents"]
        for seg, name in zip(segments, data.documents[split]):
            assert data.tokenizer.decode(seg.tolist()) == (corpus_dir / name).read_text(encoding="utf-8")
        assert data.pad_id not in set(np.asarray(arr).tolist())
        assert data.stats[split]["tokens"] == arr.size
    assert data.eod_id == 0 and data.pad_id == 1 and data.vocab_size == 300
    json.dumps(data.stats)  # recorded with every run
    assert data.stats["corpus_hash"] == data.corpus_hash and data.stats["tokenizer_hash"] == data.tokenizer_hash
    assert not _tmp_leftovers(Path(make_cfg(corpus_dir).cache_dir))


def test_deterministic_across_cache_dirs(corpus_dir, make_cfg, tmp_path):
    a = prepare_data(make_cfg(corpus_dir, cache_dir=str(tmp_path / "c1")), progress=False)
    b = prepare_data(make_cfg(corpus_dir, cache_dir=str(tmp_path / "c2")), progress=False)
    assert (a.corpus_hash, a.tokenizer_hash) == (b.corpus_hash, b.tokenizer_hash)
    assert a.documents == b.documents
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.val, b.val)
    c = prepare_data(make_cfg(corpus_dir, cache_dir=str(tmp_path / "c3"), seed=1), progress=False)
    assert c.corpus_hash != a.corpus_hash  # the seed chooses the split / packing order


def test_tokenizer_round_trip(corpus_dir, make_cfg, tmp_path):
    data = prepare_data(make_cfg(corpus_dir), progress=False)
    tok = data.tokenizer
    texts = [
        "def f(x):\n\treturn x ** 2  # squared\r\n",
        "naïve café 東京 ✓ 🤖 \x00 ctrl",
        "",
        "   leading spaces",
        "<|endoftext|> inside text",
    ]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text  # no special tokens added on encoding
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id) == (data.eod_id, data.eod_id, data.pad_id)
    # saved beside a model: AutoTokenizer.from_pretrained loads the same tokenizer
    from mesanet.models import MesaNetConfig

    model_dir = tmp_path / "model"
    MesaNetConfig(vocab_size=data.vocab_size).save_pretrained(str(model_dir))
    data.save_tokenizer(model_dir)
    loaded = AutoTokenizer.from_pretrained(str(model_dir))
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (data.eod_id, data.pad_id, len(tok))
    batch = loaded(["a b", "a b c d e"], padding=True)
    assert batch["input_ids"][0][-1] == data.pad_id


def test_second_call_hits_all_caches(corpus_dir, make_cfg, counters):
    train, pack = counters
    first = prepare_data(make_cfg(corpus_dir), progress=False)
    assert (train.calls, pack.calls) == (1, 2)
    assert first.cache_hits == {"corpus_memo": False, "tokenizer": False, "tokens": False}
    mtimes = {p: p.stat().st_mtime_ns for p in Path(make_cfg(corpus_dir).cache_dir).rglob("*") if p.is_file()}
    t0 = time.perf_counter()
    second = prepare_data(make_cfg(corpus_dir), progress=False)
    elapsed = time.perf_counter() - t0
    assert (train.calls, pack.calls) == (1, 2)  # no retraining, no retokenising
    assert second.cache_hits["tokenizer"] and second.cache_hits["tokens"]
    assert second.corpus_hash == first.corpus_hash and second.tokenizer_hash == first.tokenizer_hash
    np.testing.assert_array_equal(second.train, first.train)
    for p, m in mtimes.items():
        if "corpus" not in p.parts:  # the memo may be refreshed; tokenizer and token files are untouched
            assert p.stat().st_mtime_ns == m, p
    assert elapsed < 2.0


def test_corpus_memo_skips_reading_unchanged_old_files(corpus_dir, make_cfg, monkeypatch):
    old = time.time() - 3600
    for p in corpus_dir.rglob("*"):
        os.utime(p, (old, old))
    first = prepare_data(make_cfg(corpus_dir), progress=False)
    import mesanet.data.sources as sources

    reads = Counter(sources.read_text_file)
    monkeypatch.setattr(sources, "read_text_file", reads)
    second = prepare_data(make_cfg(corpus_dir), progress=False)
    assert second.cache_hits == {"corpus_memo": True, "tokenizer": True, "tokens": True} and reads.calls == 0
    assert second.stats == first.stats and second.documents == first.documents
    # an edit changes size/mtime: the memo no longer applies and the corpus is re-read and re-hashed
    target = corpus_dir / second.documents["val"][0]
    target.write_text(target.read_text() + "one more line\n")
    os.utime(target, (old + 5, old + 5))
    third = prepare_data(make_cfg(corpus_dir), progress=False)
    assert reads.calls > 0 and not third.cache_hits["corpus_memo"]
    assert third.corpus_hash != first.corpus_hash


def test_rebuild_when_corpus_or_vocab_changes(corpus_dir, make_cfg, counters):
    train, pack = counters
    base = prepare_data(make_cfg(corpus_dir), progress=False)
    # a validation document changes: same training split -> tokenizer reused, tokens rebuilt
    val_file = corpus_dir / base.documents["val"][0]
    val_file.write_text(val_file.read_text() + "validation edit\n")
    v = prepare_data(make_cfg(corpus_dir), progress=False)
    assert v.corpus_hash != base.corpus_hash and v.tokenizer_hash == base.tokenizer_hash
    assert v.cache_hits["tokenizer"] and not v.cache_hits["tokens"] and (train.calls, pack.calls) == (1, 4)
    # a new training document: new tokenizer, new tokens
    (corpus_dir / "added.txt").write_text(make_text(99))
    t = prepare_data(make_cfg(corpus_dir), progress=False)
    assert "added.txt" in t.documents["train"] + t.documents["val"]
    assert t.corpus_hash != v.corpus_hash and train.calls >= 1 and pack.calls == 6
    # vocab size: new tokenizer and tokens from the same corpus
    w = prepare_data(make_cfg(corpus_dir, vocab_size=320), progress=False)
    assert w.corpus_hash == t.corpus_hash and w.tokenizer_hash != t.tokenizer_hash and len(w.tokenizer) == 320
    assert not w.cache_hits["tokenizer"] and not w.cache_hits["tokens"]
    # every earlier entry is still there: nothing is ever overwritten
    root = Path(make_cfg(corpus_dir).cache_dir)
    assert len(list((root / "tokens").glob("[!.]*"))) == 4 and len(list((root / "tokenizer").glob("[!.]*"))) >= 2
    again = prepare_data(make_cfg(corpus_dir), progress=False)
    assert again.cache_hits["tokenizer"] and again.cache_hits["tokens"]


def test_failed_build_leaves_previous_cache_intact(corpus_dir, make_cfg, monkeypatch):
    cfg = make_cfg(corpus_dir)
    good = prepare_data(cfg, progress=False)
    good_train = np.array(good.train)
    root = Path(cfg.cache_dir)
    entries = sorted(p.name for p in (root / "tokens").iterdir())
    (corpus_dir / "file_00.txt").unlink(missing_ok=True)
    (corpus_dir / "docs" / "file_00.txt").write_text(make_text(123))

    original = packing.pack_split

    def crash_on_val(backend, texts, eod_id, dtype, out, progress=True, desc=""):
        if out.name == "val.bin":
            out.write_bytes(b"\x00\x01partial")
            raise KeyboardInterrupt("simulated interruption mid-build")
        return original(backend, texts, eod_id, dtype, out, progress, desc)

    monkeypatch.setattr(packing, "pack_split", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False)
    assert sorted(p.name for p in (root / "tokens").iterdir()) == entries  # no new (partial) entry
    assert not _tmp_leftovers(root)
    monkeypatch.setattr(packing, "pack_split", original)
    # the old corpus still loads from its intact cache
    (corpus_dir / "docs" / "file_00.txt").write_text(make_text(0))
    back = prepare_data(cfg, progress=False)
    assert back.cache_hits["tokens"] and back.corpus_hash == good.corpus_hash
    np.testing.assert_array_equal(back.train, good_train)


def test_killed_build_leftovers_are_cleaned(corpus_dir, make_cfg, monkeypatch):
    cfg = make_cfg(corpus_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)

    # a hard kill leaves the temporary folder behind: simulate by skipping the cleanup once
    monkeypatch.setattr(cache_mod.shutil, "rmtree", lambda *a, **k: None)

    def crash(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(packing, "pack_split", crash)
    with pytest.raises(RuntimeError):
        prepare_data(cfg, progress=False)
    monkeypatch.undo()
    leftovers = _tmp_leftovers(Path(cfg.cache_dir) / "tokens")
    assert len(leftovers) == 1
    stale = leftovers[0].with_name(leftovers[0].name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    leftovers[0].rename(stale)
    data = prepare_data(cfg, progress=False)
    assert not stale.exists() and not _tmp_leftovers(Path(cfg.cache_dir))
    assert data.stats["train"]["tokens"] > 0


def test_interrupted_tokenizer_training_writes_nothing(corpus_dir, make_cfg, monkeypatch):
    cfg = make_cfg(corpus_dir)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer_mod.PreTrainedTokenizerFast, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False)
    root = Path(cfg.cache_dir)
    assert not list((root / "tokenizer").glob("[!.]*")) and not _tmp_leftovers(root)


def test_single_file_source_is_cut_into_train_and_val(tmp_path, make_cfg):
    path = tmp_path / "book.txt"
    text = make_text(7, words=3000)
    path.write_text(text)
    data = prepare_data(make_cfg(path, val_fraction=0.1), progress=False)
    assert data.documents == {"train": ["book.txt[head]"], "val": ["book.txt[tail]"]}
    head = data.tokenizer.decode(_split_at_eod(data.train, data.eod_id)[0].tolist())
    tail = data.tokenizer.decode(_split_at_eod(data.val, data.eod_id)[0].tolist())
    assert head + tail == text and 0.05 < len(tail) / len(text) < 0.15
    assert data.stats["single_document_cut"]


def test_max_documents_caps_deterministically(tmp_path, make_cfg):
    folder = write_corpus(tmp_path / "big", n_files=30, words=60)
    a = prepare_data(make_cfg(folder, max_documents=8), progress=False)
    b = prepare_data(make_cfg(folder, max_documents=8), progress=False)
    assert a.documents == b.documents and a.stats["selected_documents"] == 8
    assert len(a.documents["train"]) + len(a.documents["val"]) <= 8


def test_prepare_progress_bars_do_not_break(corpus_dir, make_cfg, capsys):
    prepare_data(make_cfg(corpus_dir), progress=True)


# ---------------------------------------------------------------- bad input: clear messages, nothing lost


def test_missing_path(tmp_path, make_cfg):
    with pytest.raises(DataError, match=r"data source '.*nope' does not exist: expected 'stdlib', an existing"):
        prepare_data(make_cfg(tmp_path / "nope"), progress=False)
    assert not (tmp_path / "cache").exists()  # nothing written for a bad input


def test_empty_folder_and_no_text_files(tmp_path, make_cfg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no non-empty text files"):
        prepare_data(make_cfg(tmp_path / "empty"), progress=False)
    other = tmp_path / "binaries"
    other.mkdir()
    (other / "a.bin").write_bytes(b"\x00" * 10)
    (other / "b.txt").write_bytes(b"\x00\x00 nul")
    (other / "c.txt").write_text("   \n\n")
    with pytest.raises(DataError, match=r"no non-empty text documents .*\(2 selected: 1 binary, 1 empty"):
        prepare_data(make_cfg(other), progress=False)


def test_empty_file(tmp_path, make_cfg):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare_data(make_cfg(tmp_path / "e.txt"), progress=False)


def test_seq_len_larger_than_validation_split(corpus_dir, make_cfg, counters):
    ok = prepare_data(make_cfg(corpus_dir), progress=False)
    n_val = ok.stats["val"]["tokens"]
    with pytest.raises(DataError, match=rf"seq_len={n_val + 1} is larger than the whole val split \({n_val} tokens"):
        prepare_data(make_cfg(corpus_dir, seq_len=n_val + 1), progress=False)
    again = prepare_data(make_cfg(corpus_dir, seq_len=n_val), progress=False)  # caches kept and reused
    assert again.cache_hits["tokens"] and counters[0].calls == 1


def test_prepare_rejects_non_config():
    with pytest.raises(TypeError, match="expected a DataConfig"):
        prepare_data({"source": "stdlib"})


def _prepare_in_child(cfg, barrier, queue):
    barrier.wait()
    d = prepare_data(cfg, progress=False)
    queue.put((d.corpus_hash, d.tokenizer_hash, dict(d.cache_hits)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_concurrent_builders_share_one_entry(corpus_dir, make_cfg):
    """Two processes (e.g. DDP ranks) preparing at once: one builds, both get the same data."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # forked children need not import torch / transformers again
    cfg = make_cfg(corpus_dir)
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(cfg, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert results[0][:2] == results[1][:2]
    assert sum(r[2]["tokens"] for r in results) >= 1  # the second one found the first one's entry
    root = Path(cfg.cache_dir)
    assert len(list((root / "tokens").glob("[!.]*"))) == 1 and not _tmp_leftovers(root)


def test_damaged_entries_are_set_aside_and_rebuilt(corpus_dir, make_cfg):
    cfg = make_cfg(corpus_dir)
    good = prepare_data(cfg, progress=False)
    with open(good.tokens_dir / "train.bin", "r+b") as f:  # damaged by hand
        f.truncate(10)
    (good.tokenizer_dir / "tokenizer.json").unlink()
    fixed = prepare_data(cfg, progress=False)
    assert not fixed.cache_hits["tokens"] and not fixed.cache_hits["tokenizer"]
    assert fixed.tokenizer_hash == good.tokenizer_hash and fixed.stats["train"]["tokens"] == good.stats["train"]["tokens"]
    root = Path(cfg.cache_dir)
    assert len(list((root / "tokens").glob(".damaged-*"))) == 1  # kept for inspection, not deleted
    assert len(list((root / "tokenizer").glob(".damaged-*"))) == 1


def test_large_vocab_uses_uint32(corpus_dir, make_cfg, caplog):
    data = prepare_data(make_cfg(corpus_dir, vocab_size=70000), progress=False)
    assert data.train.dtype == np.uint32 and data.stats["token_dtype"] == "uint32"
    assert data.stats["vocab_size"] == {"requested": 70000, "actual": len(data.tokenizer)} and len(data.tokenizer) < 70000
    assert "ran out of BPE merges" in caplog.text
    assert (
        data.tokenizer.decode(_split_at_eod(data.val, data.eod_id)[0].tolist())
        == (corpus_dir / data.documents["val"][0]).read_text()
    )
