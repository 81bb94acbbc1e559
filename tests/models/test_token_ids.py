"""Model forward with bad token ids or labels: a ValueError naming the vocabulary size, from one host sync."""

from __future__ import annotations

import pytest
import torch

from mesanet.models import MesaNetConfig, MesaNetForCausalLM
from mesanet.models.modeling_mesanet import IGNORE_INDEX, check_token_ids

VOCAB = 50
RANGE = r"in \[0, vocab_size\) = \[0, 49\]"


@pytest.fixture(scope="module")
def model() -> MesaNetForCausalLM:
    torch.manual_seed(0)
    config = MesaNetConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_heads=2, head_dim=8, mixer_types=["gla"])
    return MesaNetForCausalLM(config).eval()


def ids(*values: int, dtype=torch.long) -> torch.Tensor:
    return torch.tensor([[3, 7, *values, 11]], dtype=dtype)


@pytest.mark.parametrize(
    "bad, message",
    [
        (ids(VOCAB), rf"MesaNetForCausalLM: expected input_ids {RANGE}, got values from 3 to 50"),
        (ids(10**6), rf"expected input_ids {RANGE}, got values from 3 to 1000000"),
        (ids(-1), rf"expected input_ids {RANGE}, got values from -1 to 11"),
        (ids(IGNORE_INDEX), rf"expected input_ids {RANGE}, got values from -100 to 11"),
        (
            ids(5, dtype=torch.float32),
            r"expected input_ids of an integer dtype \(torch.int64 or torch.int32\), got torch.float32",
        ),
        (ids(1, dtype=torch.bool), r"expected input_ids of an integer dtype .*, got torch.bool"),
        (ids(5, dtype=torch.int16), r"expected input_ids of an integer dtype .*, got torch.int16"),
    ],
)
def test_bad_input_ids_are_value_errors_naming_the_vocabulary(model, bad, message):
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_the_base_model_checks_its_ids_too(model):
    with pytest.raises(ValueError, match=rf"MesaNetModel: expected input_ids {RANGE}, got values from 3 to 99"):
        model.model(ids(99))


@pytest.mark.parametrize(
    "labels, message",
    [
        (ids(VOCAB), rf"expected labels {RANGE} or -100 \(ignored\), got values from 3 to 50"),
        (ids(-2), rf"expected labels {RANGE} or -100 \(ignored\), got values from -2 to 11"),
        (ids(5, dtype=torch.float32), r"expected labels of an integer dtype .*, got torch.float32"),
    ],
)
def test_bad_labels_are_value_errors(model, labels, message):
    with pytest.raises(ValueError, match=message):
        model(ids(5), labels=labels)
    with pytest.raises(ValueError, match=message):  # with inputs_embeds the labels are checked as well
        model(inputs_embeds=model.get_input_embeddings()(ids(5)), labels=labels)


def test_ignored_labels_and_int32_ids_are_fine(model):
    labels = ids(IGNORE_INDEX)
    loss = model(ids(5), labels=labels).loss
    assert torch.isfinite(loss)
    same = model(ids(5, dtype=torch.int32), labels=labels.int()).loss
    assert torch.equal(loss, same)


def test_generate_refuses_an_out_of_range_prompt(model):
    with pytest.raises(ValueError, match=rf"expected input_ids {RANGE}"):
        model.generate(ids(VOCAB + 1), max_new_tokens=2, do_sample=False)


def count_syncs(monkeypatch) -> dict:
    counts = dict(tolist=0, item=0)
    for name in counts:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_ids_and_labels_are_checked_with_one_host_sync(monkeypatch):
    counts = count_syncs(monkeypatch)
    check_token_ids("m", VOCAB, ids(5), ids(IGNORE_INDEX))
    assert counts == dict(tolist=1, item=0)
    same = ids(5)
    check_token_ids("m", VOCAB, same, same)  # labels that are the ids are not checked twice
    assert counts == dict(tolist=2, item=0)


def test_the_value_check_is_skipped_while_compiling(monkeypatch):
    counts = count_syncs(monkeypatch)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_token_ids("m", VOCAB, ids(VOCAB), ids(-5))  # no sync, no error: a graph cannot branch on values
    assert counts == dict(tolist=0, item=0)
    with pytest.raises(ValueError, match="integer dtype"):  # dtypes are static: still checked
        check_token_ids("m", VOCAB, ids(1, dtype=torch.float32))
