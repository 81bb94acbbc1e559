"""Needle in a haystack: prompt construction (length, depth, determinism, corpus text), exact metrics with stub
models, the cached and uncached scoring paths of a real model, validation, and the files / CLI of a run."""

from __future__ import annotations

import csv
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mesanet.data import DataConfig
from mesanet.eval import NeedleConfig, needle_in_a_haystack, run_needle
from mesanet.eval.needle import DOC_SEPARATOR, corpus_documents, main, make_prompts, score_prompts
from mesanet.eval.needle.prompts import _Pieces

from eval_helpers import build_model
from tolerances import NEEDLE_CACHE_LOGPROB_ATOL, NEEDLE_SUM_RTOL


@pytest.fixture(scope="module")
def stdlib_docs():
    """Some standard-library documents through the data module (40-document subset, training split)."""
    docs, _ = corpus_documents(DataConfig(max_documents=40), split="train")
    return docs


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("kind", ["noise", "text"])
def test_prompt_length_needle_depth_and_query(tokenizer, stdlib_docs, kind):
    config = NeedleConfig(train_len=100, depths=[0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 1.0], seed=3)
    pieces = _Pieces(tokenizer, config.key)
    for length in (60, 97, 160):
        for trial in range(2):
            prompts = make_prompts(tokenizer, config, kind, length, trial, stdlib_docs, pieces)
            assert len({p.value for p in prompts}) == 1  # one haystack and value per trial, every depth
            for p in prompts:
                assert len(p.ids) == length and p.ids[0] == tokenizer.bos_token_id
                assert re.fullmatch(r"[1-9]\d{3,5}", p.value)
                text = _decode(tokenizer, p.ids[1:])
                needle = f'\n{config.key} = "{p.value}"'
                assert text.count(needle) == 1 and text.endswith(f'\n{config.key} = "')
                assert text.count(config.key) == 2  # the haystack never holds the key
                # the needle's tokens sit at needle_start and decode to the needle line
                assert _decode(tokenizer, p.ids[p.needle_start : p.needle_start + p.needle_len]) == needle
                assert 1 + p.haystack_len + p.needle_len + len(pieces.head) == length
                # it starts within one line of depth * h: at most one line break between the two positions
                hay = np.concatenate(
                    [p.ids[1 : p.needle_start], p.ids[p.needle_start + p.needle_len : length - len(pieces.head)]]
                )
                assert len(hay) == p.haystack_len
                target = int(round(p.depth * p.haystack_len))
                lo, hi = sorted((p.position, target))
                assert len(re.findall(r"\n\s*", _decode(tokenizer, hay[lo:hi]))) <= 1, (p.depth, p.position, target)
                assert p.actual_depth == p.position / p.haystack_len
                if p.depth == 0.0:
                    assert p.position == 0
                if p.depth == 1.0:
                    assert p.position == p.haystack_len  # right before the query
            # the answer's tokens are the needle's own value tokens
            p = prompts[0]
            assert p.ids[p.needle_start + len(pieces.head) : p.needle_start + p.needle_len].tolist() == p.target.tolist()


def test_prompts_are_deterministic_for_a_seed(tokenizer, stdlib_docs):
    config = NeedleConfig(train_len=64, seed=7)
    for kind in ("noise", "text"):
        a = make_prompts(tokenizer, config, kind, 80, 1, stdlib_docs)
        b = make_prompts(tokenizer, config, kind, 80, 1, stdlib_docs)
        assert all(np.array_equal(x.ids, y.ids) and x.value == y.value for x, y in zip(a, b))
        other = make_prompts(tokenizer, NeedleConfig(train_len=64, seed=8), kind, 80, 1, stdlib_docs)
        assert not np.array_equal(a[0].ids, other[0].ids)
        next_trial = make_prompts(tokenizer, config, kind, 80, 2, stdlib_docs)
        assert not np.array_equal(a[0].ids, next_trial[0].ids)


def test_text_haystack_comes_from_the_corpus(tokenizer, stdlib_docs):
    config = NeedleConfig(train_len=150, depths=[0.4])
    corpus = DOC_SEPARATOR.join(stdlib_docs * 2)
    starts = set()
    for trial in range(4):
        (p,) = make_prompts(tokenizer, config, "text", 150, trial, stdlib_docs)
        before, after = (
            p.ids[1 : p.needle_start],
            p.ids[p.needle_start + p.needle_len : -len(_Pieces(tokenizer, config.key).head)],
        )
        first, second = _decode(tokenizer, before[1:]), _decode(tokenizer, after)  # [1:]: may start inside a character
        assert len(first) > 20 and len(second) > 20
        assert first in corpus and second in corpus and first + second in corpus
        starts.add(corpus.find(first + second))
    assert len(starts) == 4  # every trial reads another place of the corpus
    noise = make_prompts(tokenizer, config, "noise", 150, 0, stdlib_docs)[0]
    assert _decode(tokenizer, noise.ids[2 : noise.needle_start]) not in corpus


class CopyStub(nn.Module):
    """Induction head as a lookup: predicts the token that followed the longest earlier match of the current
    suffix (log-probability 0 for it, -inf for every other token); no cache."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        ids = input_ids.cpu().numpy()
        batch, length = ids.shape
        keep = logits_to_keep or length
        logits = torch.full((batch, keep, self.vocab), -torch.inf)
        for b in range(batch):
            for k, t in enumerate(range(length - keep, length)):
                alive, best = ids[b, :t] == ids[b, t], 0
                for back in range(1, t + 1):
                    if not alive.any():
                        break
                    best = int(np.flatnonzero(alive)[-1]) + 1
                    alive[back:] &= ids[b, : t - back] == ids[b, t - back]
                    alive[:back] = False
                logits[b, k, ids[b, best]] = 0.0
        return SimpleNamespace(logits=logits)


class GarbageStub(nn.Module):
    """Uniform logits: the greedy token is always id 0 (the end-of-document token)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        keep = logits_to_keep or input_ids.shape[1]
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], keep, self.vocab))


@pytest.mark.parametrize("kind", ["noise", "text"])
def test_metrics_are_exact_for_a_copying_and_a_garbage_model(tokenizer, stdlib_docs, kind):
    config = NeedleConfig(train_len=48, factors=[1.0, 2.0], depths=[0.0, 0.5, 1.0], haystacks=[kind], trials=2, batch_size=4)
    copy = needle_in_a_haystack(CopyStub(len(tokenizer)), tokenizer, config, documents=stdlib_docs, progress=False)
    assert len(copy.cells) == 6 and len(copy.trials) == 12
    for c in copy.cells:
        assert (c.exact_match, c.token_acc, c.value_logprob, c.trials) == (1.0, 1.0, 0.0, 2)
    assert all(t.answer == t.value + '"' for t in copy.trials)

    garbage = needle_in_a_haystack(GarbageStub(len(tokenizer)), tokenizer, config, documents=stdlib_docs, progress=False)
    per_token = float(torch.zeros(len(tokenizer)).log_softmax(-1)[0])  # -ln V in float32
    pieces = _Pieces(tokenizer, config.key)
    for t in garbage.trials:
        assert not t.exact and t.token_acc == 0.0 and t.answer == ""
        tokens = len(pieces.encode(t.value))
        assert t.value_logprob == pytest.approx(tokens * per_token, rel=NEEDLE_SUM_RTOL)
        assert t.logprob_per_digit == pytest.approx(tokens * per_token / len(t.value), rel=NEEDLE_SUM_RTOL)
    assert all(c.exact_match == 0.0 and c.token_acc == 0.0 for c in garbage.cells)
    # copy_trials at the same (length, depth, trial) saw the same values
    assert [t.value for t in copy.trials] == [t.value for t in garbage.trials]


def test_real_model_cache_path_matches_full_recomputation(tokenizer, stdlib_docs):
    """Scoring through MesaNet's recurrent cache gives the teacher-forced log-probabilities and the greedy
    tokens of plain full-sequence forwards."""
    torch.manual_seed(0)
    model = build_model(["hawk", "mesa"])
    config = NeedleConfig(train_len=80, depths=[0.0, 0.6], trials=1)
    prompts = make_prompts(tokenizer, config, "noise", 80, 0, stdlib_docs) + make_prompts(
        tokenizer, config, "text", 120, 0, stdlib_docs
    )
    scored = score_prompts(model, prompts[:2]) + score_prompts(model, prompts[2:])  # one length per batch
    with pytest.raises(ValueError, match="one length"):
        score_prompts(model, prompts)
    for p, s in zip(prompts, scored):
        full = torch.as_tensor(np.concatenate([p.ids, p.target]))[None]
        with torch.no_grad():
            logp = model(input_ids=full, use_cache=False).logits[0].log_softmax(-1)
        start = len(p.ids) - 1
        expected = logp[start : start + len(p.target)].gather(-1, torch.as_tensor(p.target)[:, None])[:, 0]
        np.testing.assert_allclose(s["logprobs"], expected.double().numpy(), rtol=0, atol=NEEDLE_CACHE_LOGPROB_ATOL)
        seq = torch.as_tensor(p.ids)[None]
        greedy = []
        with torch.no_grad():
            for _ in range(len(p.target) + 2):
                nxt = int(model(input_ids=seq, use_cache=False).logits[0, -1].argmax())
                greedy.append(nxt)
                seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
        assert s["answer"] == greedy


def test_bad_arguments_are_value_errors(tokenizer):
    with pytest.raises(ValueError, match=r"depth fractions in \[0, 1\].*\[1\.5\]"):
        NeedleConfig(depths=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"depth fractions in \[0, 1\]"):
        NeedleConfig(depths=[-0.1])
    with pytest.raises(ValueError, match=r"unknown haystack\(s\) \['grass'\]; expected some of \['noise', 'text'\]"):
        NeedleConfig(haystacks=["noise", "grass"])
    with pytest.raises(ValueError, match="positive multiples of the training length"):
        NeedleConfig(factors=[0.0, 1.0])
    with pytest.raises(ValueError, match="Python identifier"):
        NeedleConfig(key="secret code")
    with pytest.raises(ValueError, match="trials"):
        NeedleConfig(trials=0)
    pieces = _Pieces(tokenizer, "SECRET_CODE")
    need = pieces.overhead(6) + 1
    model = GarbageStub(len(tokenizer))
    short = NeedleConfig(train_len=need - 1, factors=[1.0, 2.0], haystacks=["noise"], depths=[0.5], trials=1)
    with pytest.raises(
        ValueError, match=rf"lengths \[{need - 1}\].*shorter than BOS \+ needle \+ query \+ 1 haystack token = {need} tokens"
    ):
        needle_in_a_haystack(model, tokenizer, short, progress=False)
    fits = NeedleConfig(train_len=need, haystacks=["noise"], depths=[0.0, 1.0], factors=[1.0], trials=3)
    result = needle_in_a_haystack(model, tokenizer, fits, progress=False)  # the shortest length that fits
    assert {t.length for t in result.trials} == {need}


def test_run_needle_writes_the_files_and_the_cli_works(model_dir, tmp_path, tokenizer, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}  # file{i}\n\n" for j in range(40)))
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"name: tiny\ndata:\n  source: {docs}\n  seq_len: 48\n  vocab_size: 300\n  val_fraction: 0.2\n"
    )
    shutil.copytree(model_dir, run / "final")

    result = run_needle(run, factors=[1, 2], depths=[0.0, 1.0], trials=1, progress=False)
    val_docs, source = corpus_documents(dict(source=str(docs), seq_len=48, vocab_size=300, val_fraction=0.2))
    assert result.text_source == source and "val split" in source and 0 < len(val_docs) < 12
    assert result.config.train_len == 48 and [n for _, n in result.config.lengths()] == [48, 96]
    for name in ("needle.csv", "needle_trials.csv", "needle.md", "needle.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0
    with (run / "needle.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 and {r["haystack"] for r in rows} == {"noise", "text"}
    for row, cell in zip(rows, result.cells):
        assert (row["haystack"], int(row["length"]), float(row["depth"])) == (cell.haystack, cell.length, cell.depth)
        assert float(row["exact_match"]) == cell.exact_match and int(row["trials"]) == 1
    with (run / "needle_trials.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 8
    md = (run / "needle.md").read_text()
    assert md.startswith("# Needle in a haystack: tiny") and "## noise haystack" in md and "## text haystack" in md
    assert "![needle heatmap](needle.png)" in md

    # the text haystack of that run comes from its held-out documents
    val_names = {re.search(r"file(\d+)", d).group(1) for d in val_docs}
    (p,) = make_prompts(tokenizer, NeedleConfig(train_len=48, depths=[0.5]), "text", 96, 0, val_docs)
    assert set(re.findall(r"file(\d+)", _decode(tokenizer, p.ids))) <= val_names

    out = tmp_path / "cli"
    code = main(
        [
            str(run),
            "--lengths",
            "1",
            "--depths",
            "0",
            "0.5",
            "--trials",
            "1",
            "--haystack",
            "noise",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0 and (out / "needle.csv").is_file() and "## noise haystack" in capsys.readouterr().out
    assert main([str(run), "--depths", "2", "--out", str(out), "--no-progress"]) == 2
    assert "depth fractions in [0, 1]" in capsys.readouterr().err
    assert main([str(run), "--haystack", "grass", "--no-progress"]) == 2
    assert "unknown haystack" in capsys.readouterr().err
