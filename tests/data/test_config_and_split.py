"""DataConfig validation and the deterministic selection / split / ordering rules."""

from __future__ import annotations

import pytest

from mesanet.data import DataConfig, DataError
from mesanet.data.split import assign_validation, cut_document, keyed_unit, packing_order, select_subset
from mesanet.utils.config import ConfigError, from_dict


def test_defaults_are_valid():
    cfg = DataConfig()
    assert (cfg.source, cfg.seq_len, cfg.vocab_size, cfg.val_fraction) == ("stdlib", 256, 4096, 0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(val_fraction=0.0), r"val_fraction: expected a number strictly between 0 and 1, got 0.0"),
        (dict(val_fraction=1.0), r"val_fraction: expected a number strictly between 0 and 1, got 1.0"),
        (dict(val_fraction=-0.1), r"strictly between 0 and 1"),
        (dict(val_fraction="0.1"), r"val_fraction: expected a number in \(0, 1\), got '0.1'"),
        (dict(vocab_size=257), r"vocab_size: expected an integer >= 258 \(256 byte symbols \+ 2 special tokens"),
        (dict(vocab_size=2**32), r"vocab_size: expected at most"),
        (dict(seq_len=1), r"seq_len: expected an integer >= 2 \(one prediction needs two tokens\), got 1"),
        (dict(seq_len=16.0), r"seq_len: expected an integer >= 2 .*got 16.0"),
        (dict(seed=-1), r"seed: expected an integer >= 0, got -1"),
        (dict(max_documents=0), r"max_documents: expected None or an integer >= 1 \(None: all documents\), got 0"),
        (dict(source=""), r"source: expected 'stdlib', a path to a text file or folder, or 'hf:NAME'"),
        (dict(source="  "), r"source: expected"),
        (dict(cache_dir=""), r"cache_dir: expected a folder path"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(DataError, match=match):
        DataConfig(**kwargs)


def test_config_from_dict_is_strict():
    cfg = from_dict(DataConfig, {"source": "data/", "seq_len": 64, "val_fraction": 0.1, "max_documents": None})
    assert cfg.seq_len == 64 and cfg.max_documents is None
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict(DataConfig, {"seqlen": 64})
    with pytest.raises(ValueError, match="val_fraction"):
        from_dict(DataConfig, {"val_fraction": 2})


def test_keyed_unit_is_stable_and_seeded():
    assert keyed_unit("a/b.py", 0, "split") == keyed_unit("a/b.py", 0, "split")
    assert keyed_unit("a/b.py", 0, "split") != keyed_unit("a/b.py", 1, "split")
    assert keyed_unit("a/b.py", 0, "split") != keyed_unit("a/b.py", 0, "order")
    # a fixed value: the split must never change across versions/machines (it would move documents)
    assert keyed_unit("os.py", 0, "split") == 0.7384590914807179
    assert 0.0 <= keyed_unit("x", 0, "split") < 1.0


def test_split_is_stable_under_additions():
    names = [f"pkg/mod_{i}.py" for i in range(200)]
    before = dict(zip(names, assign_validation(names, 0.2, seed=3)))
    more = names + [f"new/extra_{i}.py" for i in range(100)]
    after = dict(zip(more, assign_validation(more, 0.2, seed=3)))
    assert all(after[n] == before[n] for n in names)
    share = sum(before.values()) / len(before)
    assert 0.1 < share < 0.3
    assert assign_validation(names, 0.2, seed=4) != list(before.values())


def test_split_never_leaves_a_split_empty():
    assert sum(assign_validation(["a", "b"], 1e-9, seed=0)) == 1
    assert sum(assign_validation(["a", "b"], 1 - 1e-9, seed=0)) == 1


def test_subset_is_deterministic_and_capped():
    names = [f"f{i}" for i in range(50)]
    sub = select_subset(names, 10, seed=0)
    assert sub == select_subset(names, 10, seed=0) and len(sub) == 10 and sub == sorted(sub)
    assert sub != list(range(10))  # a sample, not the alphabetically first files
    assert select_subset(names, None, 0) == list(range(50)) and select_subset(names, 99, 0) == list(range(50))


def test_packing_order_is_a_seeded_permutation():
    names = [f"f{i}" for i in range(20)]
    order = packing_order(names, 0)
    assert sorted(order) == list(range(20)) and order != list(range(20)) and order != packing_order(names, 1)


def test_cut_document_at_line_break():
    text = "".join(f"line {i}\n" for i in range(100))
    head, tail = cut_document(text, 0.1, "x.txt")
    assert head + tail == text and head.endswith("\n") and tail.startswith("line ")
    assert 0.05 < len(tail) / len(text) < 0.15
    head, tail = cut_document("no line breaks at all", 0.5, "x")
    assert head and tail and head + tail == "no line breaks at all"
    with pytest.raises(DataError, match="single document"):
        cut_document("x", 0.5, "x.txt")
