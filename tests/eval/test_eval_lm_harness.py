"""A saved MesaNet checkpoint works with lm-evaluation-harness as ``--model hf``.

Drives the harness's ``HFLM`` wrapper (what ``lm_eval --model hf --model_args pretrained=DIR`` builds) on
hand-made loglikelihood requests, no dataset download, and checks its numbers against our own log-likelihoods.
"""

from __future__ import annotations

import math

import pytest
import torch

from eval_helpers import write_choice_task

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval (lm-evaluation-harness) is not installed")

REQUESTS = [("The Mesa layer", " solves a ridge regression"), ("Language models read", " text"), ("It keeps two", " states")]


def our_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether greedy decoding would produce the continuation."""
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    cont = tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids, use_cache=False).logits[0].double(), dim=-1)
    positions = range(len(ctx) - 1, len(ctx) + len(cont) - 1)  # logits at t predict token t + 1
    total = sum(float(logp[p, tok]) for p, tok in zip(positions, cont))
    greedy = all(int(logp[p].argmax()) == tok for p, tok in zip(positions, cont))
    return total, greedy


@pytest.fixture(scope="module")
def harness_model(model_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(model_dir), tokenizer=str(model_dir), device="cpu", batch_size=2, dtype="float32")


def test_loglikelihood_requests_match_our_computation(harness_model, model_dir):
    from lm_eval.api.instance import Instance

    from mesanet.eval import load_checkpoint
    from mesanet.models import MesaNetForCausalLM

    assert isinstance(harness_model.model, MesaNetForCausalLM)
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(REQUESTS)]
    results = harness_model.loglikelihood(requests, disable_tqdm=True)
    loaded = load_checkpoint(model_dir)
    for (context, continuation), (logprob, greedy) in zip(REQUESTS, results):
        expected, expected_greedy = our_loglikelihood(loaded.model, loaded.tokenizer, context, continuation)
        assert math.isclose(logprob, expected, rel_tol=1e-5, abs_tol=1e-4), (context, logprob, expected)
        assert greedy == expected_greedy


def test_rolling_loglikelihood_matches_our_sum_over_the_text(harness_model, model_dir):
    """Perplexity tasks (wikitext-style) score a whole text after the EOT prefix token."""
    from lm_eval.api.instance import Instance

    from mesanet.eval import load_checkpoint

    text = "The Mesa layer solves a ridge regression problem at every token."
    [rolling] = harness_model.loglikelihood_rolling(
        [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)], disable_tqdm=True
    )
    loaded = load_checkpoint(model_dir)
    eot = loaded.tokenizer.eos_token_id
    assert harness_model.prefix_token_id == eot
    ids = torch.tensor([[eot] + loaded.tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(ids, use_cache=False).logits[0, :-1].double(), dim=-1)
    expected = float(logp.gather(-1, ids[0, 1:, None]).sum())
    assert math.isclose(rolling, expected, rel_tol=1e-5)


DOCS = [
    dict(context="The Mesa layer", choices=[" solves a ridge regression", " eats apples"], label=0),
    dict(context="Language models read", choices=[" text", " rocks"], label=0),
    dict(context="It keeps two", choices=[" states", " cats"], label=1),
]


def test_a_local_multiple_choice_task_through_simple_evaluate(model_dir, tmp_path, monkeypatch):
    """``lm_eval.simple_evaluate(model="hf", ...)`` (what ``--model hf`` runs) on a three-question local task:
    its accuracy is what our own log-likelihoods give. Only the local task is indexed (the harness's ~27k
    built-in task files take ~20 s to scan), and the dataset is a local JSON file, read offline."""

    import datasets
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from mesanet.eval import load_checkpoint

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    write_choice_task(tmp_path, DOCS)
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["tiny_choice"],
        device="cpu",
        batch_size=2,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
    )
    accuracy = results["results"]["tiny_choice"]["acc,none"]

    loaded = load_checkpoint(model_dir)
    right = 0
    for doc in DOCS:
        scores = [our_loglikelihood(loaded.model, loaded.tokenizer, doc["context"], c)[0] for c in doc["choices"]]
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert math.isclose(accuracy, right / len(DOCS))


def test_the_harness_command_registers_mesanet_and_hands_over_the_arguments(monkeypatch):
    """``python -m mesanet.eval.harness ARGS`` is the ``lm_eval`` command with MesaNet known to the Auto classes."""
    import sys

    import lm_eval.__main__
    from transformers import AutoConfig

    from mesanet.eval.harness import main

    seen = {}

    def fake_cli():
        seen["argv"] = list(sys.argv)
        seen["config"] = type(AutoConfig.for_model("mesanet", num_hidden_layers=1)).__name__

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fake_cli)
    argv = list(sys.argv)
    main(["--model", "hf", "--tasks", "x"])
    assert seen == {"argv": ["lm_eval", "--model", "hf", "--tasks", "x"], "config": "MesaNetConfig"}
    assert sys.argv == argv  # restored
