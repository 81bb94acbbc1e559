"""The needle training mix (DataConfig.needle_*): determinism, the fraction, every needle where claimed, caches, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mesanet import cli
from mesanet.data import DataConfig, DataError, prepare_data
from mesanet.data.corpus import build_corpus
from mesanet.data.needle_docs import DEFAULT_KEYS, is_needle_document, needle_documents
from mesanet.data.sources import resolve_source
from mesanet.eval.needle import NeedleConfig, corpus_documents
from mesanet.utils.config import ConfigError, from_dict

from data_helpers import make_text
from tolerances import NEEDLE_TOKEN_SHARE_ATOL

TEXTS = [make_text(i, 300) for i in range(6)]


def _corpus(cfg: DataConfig):
    return build_corpus(cfg, resolve_source(cfg), progress=False)


def _split_at_eod(tokens: np.ndarray, eod: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(np.asarray(tokens) == eod)
    return [np.asarray(tokens[a + 1 : b]) for a, b in zip(cuts[:-1], cuts[1:])]


def test_needle_documents_are_deterministic_in_seed_split_and_texts():
    first = needle_documents(TEXTS, "train", fraction=0.3, seed=0)
    assert first == needle_documents(TEXTS, "train", fraction=0.3, seed=0)
    assert [d.text for d in first] != [d.text for d in needle_documents(TEXTS, "train", fraction=0.3, seed=1)]
    assert [d.text for d in first] != [d.text for d in needle_documents(TEXTS, "val", fraction=0.3, seed=0)]
    assert [d.text for d in first] != [d.text for d in needle_documents(TEXTS[1:], "train", fraction=0.3, seed=0)]
    assert needle_documents(TEXTS, "train", fraction=0.0, seed=0) == []


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.75])
def test_needle_characters_are_the_fraction_of_the_split_up_to_one_document(fraction):
    docs = needle_documents(TEXTS, "train", fraction=fraction, seed=3, max_chars=200)
    base = sum(len(t) for t in TEXTS)
    needle = sum(len(d.text) for d in docs)
    share = needle / (needle + base)
    longest = max(len(d.text) for d in docs)
    assert fraction <= share <= fraction + longest / (needle + base)
    assert all(is_needle_document(d.name) for d in docs) and len({d.name for d in docs}) == len(docs)


def test_every_needle_document_holds_its_key_and_value_where_claimed():
    keys = ["ALPHA_PIN", "BETA_PIN", "GAMMA_PIN"]
    docs = needle_documents(TEXTS, "train", fraction=0.5, seed=0, keys=keys, max_chars=300, min_digits=3, max_digits=7)
    assert {d.key for d in docs} == set(keys)
    for d in docs:
        assert re.fullmatch(r"[1-9][0-9]{2,6}", d.value)
        line = f'{d.key} = "{d.value}"'
        assert d.line == line
        assert d.text[d.needle_at :].startswith(line + "\n") and (d.needle_at == 0 or d.text[d.needle_at - 1] == "\n")
        assert d.text[d.query_at :] == line and d.text[d.query_at - 1] == "\n" and d.query_at > d.needle_at
        # the key occurs exactly in the needle and the query: the filler never holds it
        assert len(re.findall(rf"(?<![A-Za-z0-9_]){d.key}(?![A-Za-z0-9_])", d.text)) == 2
        filler = d.text[: d.needle_at] + d.text[d.needle_at + len(line) + 1 : d.query_at]
        assert all(piece in "".join(TEXTS) for piece in filler.split("\n") if piece)  # whole lines of the split


def test_default_keys_never_hold_the_needle_tests_key():
    assert NeedleConfig().key not in DEFAULT_KEYS and len(set(DEFAULT_KEYS)) == len(DEFAULT_KEYS) > 100
    docs = needle_documents(TEXTS, "train", fraction=0.5, seed=0)
    assert all(NeedleConfig().key not in d.text for d in docs)


def test_corpus_mixes_needles_into_both_splits_from_their_own_text(corpus_dir, make_cfg):
    plain = _corpus(make_cfg(corpus_dir))
    mixed = _corpus(make_cfg(corpus_dir, needle_fraction=0.4))
    assert _corpus(make_cfg(corpus_dir, needle_fraction=0.4)).corpus_hash == mixed.corpus_hash
    for split in ("train", "val"):
        p, m = getattr(plain, split), getattr(mixed, split)
        own = [(n, t) for n, t in zip(m.names, m.texts) if not is_needle_document(n)]
        assert sorted(own) == sorted(zip(p.names, p.texts))  # the source's split does not depend on the needles
        needles = [t for n, t in zip(m.names, m.texts) if is_needle_document(n)]
        stats = mixed.stats["needle"][split]
        assert stats["documents"] == len(needles) > 0 and stats["chars"] == sum(len(t) for t in needles)
        assert 0.4 <= stats["char_share"] < 0.5
        source_lines = set("\n".join(p.texts).split("\n"))
        for text in needles:  # filler from the split's own lines only (no training text in validation)
            lines = text.split("\n")
            assert all(line in source_lines or re.fullmatch(r'[A-Z_]+ = "[0-9]+"', line) for line in lines)
    assert mixed.stats["needle"]["fraction"] == 0.4 and mixed.stats["needle"]["keys"] is None
    assert "needle" not in plain.stats


def test_needle_token_share_matches_the_option(corpus_dir, make_cfg):
    data = prepare_data(make_cfg(corpus_dir, needle_fraction=0.3, needle_doc_chars=300), progress=False)
    for split in ("train", "val"):
        docs = _split_at_eod(getattr(data, split), data.eod_id)
        names = data.documents[split]
        assert len(docs) == len(names)
        needle = sum(len(d) for d, n in zip(docs, names) if is_needle_document(n))
        chars = data.stats["needle"][split]["char_share"]  # 0.3 up to one document (tested above)
        assert 0.3 <= chars and abs(needle / sum(len(d) for d in docs) - chars) <= NEEDLE_TOKEN_SHARE_ATOL
        assert sum(map(is_needle_document, names)) / len(names) > 0.6  # many short documents: not a share of documents
        for d, n in zip(docs, names):  # every needle document ends with its query and answer, as tokens too
            if is_needle_document(n):
                text = data.tokenizer.decode(d.tolist())
                assert re.search(r'\n[A-Z_]+ = "[1-9][0-9]{3,5}"$', text), text[-60:]


def test_needle_settings_separate_the_caches(corpus_dir, make_cfg):
    plain = prepare_data(make_cfg(corpus_dir), progress=False)
    mixed = prepare_data(make_cfg(corpus_dir, needle_fraction=0.3), progress=False)
    assert mixed.cache_hits == {"corpus_memo": False, "tokenizer": False, "tokens": False}
    assert mixed.corpus_hash != plain.corpus_hash and mixed.tokens_dir != plain.tokens_dir
    assert mixed.stats["train"]["tokens"] > plain.stats["train"]["tokens"]
    hashes = {plain.corpus_hash, mixed.corpus_hash}
    for change in (
        dict(needle_fraction=0.2),
        dict(needle_fraction=0.3, needle_doc_chars=100),
        dict(needle_fraction=0.3, needle_min_digits=2),
        dict(needle_fraction=0.3, needle_max_digits=9),
        dict(needle_fraction=0.3, needle_keys=["ONLY_KEY"]),
        dict(needle_fraction=0.3, seed=1),
    ):
        hashes.add(prepare_data(make_cfg(corpus_dir, **change), progress=False).corpus_hash)
    assert len(hashes) == 8
    again = prepare_data(make_cfg(corpus_dir, needle_fraction=0.3), progress=False)
    assert again.cache_hits["tokens"] and again.corpus_hash == mixed.corpus_hash
    # without needles the needle fields change nothing: the plain corpus and its caches are shared
    same = prepare_data(make_cfg(corpus_dir, needle_doc_chars=5, needle_keys=["X"]), progress=False)
    assert same.corpus_hash == plain.corpus_hash and same.cache_hits["tokens"]


def test_the_eval_text_haystack_never_holds_needle_documents(corpus_dir, make_cfg):
    mixed, _ = corpus_documents(make_cfg(corpus_dir, needle_fraction=0.5))
    plain, _ = corpus_documents(make_cfg(corpus_dir))
    assert mixed == plain


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(needle_fraction=1.0), r"needle_fraction: expected a number in \[0, 1\) \(0: no needle documents\), got 1.0"),
        (dict(needle_fraction=-0.1), r"needle_fraction: expected a number in \[0, 1\)"),
        (dict(needle_fraction="0.2"), r"needle_fraction: expected a number in \[0, 1\) .*got '0.2'"),
        (dict(needle_fraction=float("nan")), r"needle_fraction: expected"),
        (dict(needle_doc_chars=0), r"needle_doc_chars: expected an integer >= 1 \(the longest needle filler\), got 0"),
        (dict(needle_min_digits=0), r"needle_min_digits: expected an integer in \[1, 18\], got 0"),
        (dict(needle_min_digits=5, needle_max_digits=4), r"needle_max_digits: expected an integer in \[5, 18\] .*got 4"),
        (dict(needle_max_digits=19), r"needle_max_digits: expected an integer in \[4, 18\]"),
        (dict(needle_keys=[]), r"needle_keys: expected null \(the built-in keys\) or a non-empty list of Python identifiers"),
        (dict(needle_keys=["OK", "not ok"]), r"needle_keys: expected .* got \['OK', 'not ok'\]"),
        (dict(needle_keys="KEY"), r"needle_keys: expected null"),
        (dict(needle_keys=["A", "A"]), r"needle_keys: expected distinct keys, got \['A', 'A'\]"),
    ],
)
def test_bad_needle_values_are_one_clear_line(kwargs, match):
    with pytest.raises(DataError, match=match) as info:
        DataConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_needle_fields_from_yaml_and_print_config(capsys):
    assert from_dict(DataConfig, {"needle_fraction": 0.25, "needle_keys": ["A_PIN"]}).needle_keys == ["A_PIN"]
    with pytest.raises(ConfigError, match=r"unknown keys \['needle_frac'\]"):
        from_dict(DataConfig, {"needle_frac": 0.2})
    assert cli.main(["train", "tiny", "data.needle_fraction=0.2", "data.needle_max_digits=7", "--print-config"]) in (0, None)
    out = capsys.readouterr().out
    for line in (
        "needle_fraction: 0.2",
        "needle_doc_chars: 800",
        "needle_min_digits: 4",
        "needle_max_digits: 7",
        "needle_keys: null",
    ):
        assert line in out
