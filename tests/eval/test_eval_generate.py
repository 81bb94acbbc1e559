"""generate_text: greedy and seeded sampling, top-k / top-p, streaming, argument checks."""

from __future__ import annotations

import pytest
import torch

from mesanet.eval import generate_from_checkpoint, generate_text
from mesanet.eval.generate import generate_ids

from eval_helpers import build_model

PROMPT = "The Mesa layer"


@pytest.fixture(scope="module")
def model():
    # EOS never stops these runs (no eos id in the config; stop_at_eos=False below) so lengths are fixed
    return build_model(["hawk", "mesa"], eos_token_id=None)


def greedy_by_hand(model, tokenizer, prompt: str, steps: int) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(steps):  # full forwards, no cache
            next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)


def test_greedy_is_deterministic_and_matches_an_argmax_loop(model, tokenizer):
    first = generate_text(model, tokenizer, PROMPT, max_new_tokens=12, temperature=0, stop_at_eos=False)
    second = generate_text(model, tokenizer, PROMPT, max_new_tokens=12, temperature=0.0, stop_at_eos=False)
    assert first == second == greedy_by_hand(model, tokenizer, PROMPT, 12)
    assert first  # something was generated


def test_sampling_is_reproducible_with_a_seed_and_leaves_the_global_rng_alone(model, tokenizer):
    state = torch.get_rng_state()
    a = generate_text(model, tokenizer, PROMPT, max_new_tokens=16, temperature=1.0, seed=7, stop_at_eos=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_text(model, tokenizer, PROMPT, max_new_tokens=16, temperature=1.0, seed=7, stop_at_eos=False)
    c = generate_text(model, tokenizer, PROMPT, max_new_tokens=16, temperature=1.0, seed=8, stop_at_eos=False)
    assert a == b and a != c


def test_top_k_one_is_greedy_and_top_p_sampling_runs(model, tokenizer):
    greedy = generate_text(model, tokenizer, PROMPT, max_new_tokens=10, temperature=0, stop_at_eos=False)
    top1 = generate_text(model, tokenizer, PROMPT, max_new_tokens=10, temperature=1.3, top_k=1, seed=3, stop_at_eos=False)
    assert top1 == greedy
    tiny_p = generate_text(model, tokenizer, PROMPT, max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=4, stop_at_eos=False)
    assert tiny_p == greedy  # only the most likely token survives a tiny nucleus
    assert isinstance(generate_text(model, tokenizer, PROMPT, max_new_tokens=5, top_k=20, top_p=0.9, seed=5), str)


def test_streaming_callback_receives_the_returned_text(model, tokenizer):
    pieces: list[str] = []
    text = generate_text(
        model, tokenizer, PROMPT, max_new_tokens=24, temperature=1.0, seed=11, stream=pieces.append, stop_at_eos=False
    )
    assert len(pieces) > 1 and "".join(pieces) == text
    again = generate_text(model, tokenizer, PROMPT, max_new_tokens=24, temperature=1.0, seed=11, stop_at_eos=False)
    assert again == text  # streaming changes nothing


def test_generation_stops_at_eos(tokenizer):
    model = build_model("hawk")  # eos_token_id = 0 = the tokenizer's EOD
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit is 0: argmax takes the first id, 0 = EOS
    assert generate_ids(model, tokenizer, PROMPT, max_new_tokens=8, temperature=0) == []  # EOS ends it, not returned
    assert generate_text(model, tokenizer, PROMPT, max_new_tokens=8, temperature=0) == ""
    assert generate_ids(model, tokenizer, PROMPT, max_new_tokens=3, temperature=0, stop_at_eos=False) == [0, 0, 0]
    assert generate_text(model, tokenizer, PROMPT, max_new_tokens=3, temperature=0, stop_at_eos=False) == ""  # special


def test_generate_from_a_checkpoint_directory(model_dir):
    text = generate_from_checkpoint(model_dir, PROMPT, max_new_tokens=6, temperature=0, stop_at_eos=False)
    assert isinstance(text, str) and text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "expected temperature to be a finite number >= 0 \\(0 = greedy\\), got -0.5"),
        (dict(temperature=float("inf")), "expected temperature to be a finite number >= 0"),
        (dict(top_p=0.0), "expected top_p to be None or a number with 0 < top_p <= 1, got 0.0"),
        (dict(top_p=1.5), "expected top_p to be None or a number with 0 < top_p <= 1, got 1.5"),
        (dict(top_k=0), "expected top_k to be None or an integer >= 1, got 0"),
        (dict(top_k=2.0), "expected top_k to be None or an integer >= 1, got 2.0"),
        (dict(max_new_tokens=0), "expected max_new_tokens to be an integer >= 1, got 0"),
        (dict(seed="1"), "expected seed to be None or an integer, got '1'"),
        (dict(prompt=["a"]), "expected prompt to be a string, got list"),
    ],
)
def test_bad_arguments(model, tokenizer, kwargs, message):
    args = dict(prompt=PROMPT) | kwargs
    prompt = args.pop("prompt")
    with pytest.raises(ValueError, match=message):
        generate_text(model, tokenizer, prompt, **args)
