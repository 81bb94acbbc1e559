"""Activation (gradient) checkpointing, the Hugging Face way: ``activation_checkpointing_enable()`` (and the
deprecated ``gradient_checkpointing_enable()``) recompute every block in the backward pass with gradients equal to
the plain path, for every mixer kind; the Mesa CG statistics count each forward once."""

from __future__ import annotations

import pytest
import torch

from mesanet.layers import collect_solver_stats
from mesanet.models import MIXER_KINDS, MesaNetForCausalLM, preset_config

from tolerances import CHECKPOINT_GRAD_RTOL

KINDS = sorted(MIXER_KINDS)


def model_and_ids(seed: int = 0):
    torch.manual_seed(seed)
    config = preset_config("tiny", mixer=KINDS, num_hidden_layers=len(KINDS), chunk_size=8, vocab_size=64)
    model = MesaNetForCausalLM(config).double().train()
    ids = torch.randint(0, 64, (2, 20))
    return model, ids


def gradients(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("enable", ["activation_checkpointing_enable", "gradient_checkpointing_enable"])
def test_checkpointed_gradients_equal_the_plain_path_for_every_mixer_kind(enable, one_thread):
    model, ids = model_and_ids()
    plain = gradients(model, ids)
    assert model.supports_gradient_checkpointing
    if enable == "gradient_checkpointing_enable":
        with pytest.warns(FutureWarning, match="activation_checkpointing_enable"):
            getattr(model, enable)()
    else:
        getattr(model, enable)()
    blocks = list(model.model.layers)
    assert all(b.gradient_checkpointing for b in blocks)
    calls = []
    hooks = [b.register_forward_pre_hook(lambda m, a: calls.append(m)) for b in blocks]  # recompute may stop early
    checkpointed = gradients(model, ids)
    for h in hooks:
        h.remove()
    assert len(calls) == 2 * len(blocks)  # each block ran again in the backward pass: the checkpointing is real
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=CHECKPOINT_GRAD_RTOL, atol=0, msg=name)

    model.activation_checkpointing_disable() if hasattr(
        model, "activation_checkpointing_disable"
    ) else model.gradient_checkpointing_disable()
    assert not any(b.gradient_checkpointing for b in blocks)


def test_the_solver_statistics_count_each_forward_once(one_thread):
    model, ids = model_and_ids(1)
    with collect_solver_stats(model) as plain:
        model(input_ids=ids, labels=ids).loss.backward()
    model.activation_checkpointing_enable()
    with collect_solver_stats(model) as checkpointed:
        model(input_ids=ids, labels=ids).loss.backward()
    a, b = plain.summary(), checkpointed.summary()
    assert a and [s.calls for s in b] == [1] * len(b)
    assert [(s.systems, s.mean_iterations) for s in a] == [(s.systems, s.mean_iterations) for s in b]


def test_no_checkpointing_in_eval_or_with_a_cache(one_thread):
    model, ids = model_and_ids(2)
    model.activation_checkpointing_enable()
    model.eval()
    calls = []
    hook = model.model.layers[0].register_forward_hook(lambda m, a, o: calls.append(1))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    hook.remove()
    assert calls == [1] and out.past_key_values is not None
