"""``torch.compile``: the model traces without graph breaks in training and evaluation (the Mesa layers read
no Python context state while compiling), and the compiled model computes what the eager one does. Traced with
the ``eager`` backend: graph capture is what is tested here; inductor's code generation takes minutes on CPU."""

from __future__ import annotations

import pytest
import torch

from mesanet.layers import collect_solver_stats
from mesanet.models import MesaNetForCausalLM, preset_config

from tolerances import COMPILED_GRAD_ATOL, COMPILED_GRAD_RTOL

#: The common hybrid of the paper (Hawk + Mesa): every recurrent code path of the Mesa layer plus a scan layer.
KINDS = ["hawk", "mesa"]


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = preset_config(
        "tiny", mixer=KINDS, chunk_size=8, vocab_size=64, solver_training=dict(max_iter=4), solver_inference=dict(max_iter=4)
    )
    return MesaNetForCausalLM(config)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_graph_breaks(model, mode, one_thread):
    import torch._dynamo as dynamo

    model.train(mode == "train")
    ids = torch.randint(0, 64, (2, 16))
    dynamo.reset()
    with collect_solver_stats(model):  # an open collector (as in training) must not break the graph either
        explained = dynamo.explain(lambda ids: model(input_ids=ids, labels=ids).loss)(ids)
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons


def test_the_compiled_model_computes_the_eager_loss_and_gradients(model, one_thread):
    import torch._dynamo as dynamo

    ids = torch.randint(0, 64, (2, 16))
    model.train()
    eager = model(input_ids=ids, labels=ids).loss
    eager.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    loss = compiled(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.equal(loss, eager)  # the same ops in the same order
    for name, grad in grads.items():
        torch.testing.assert_close(
            model.get_parameter(name).grad, grad, rtol=COMPILED_GRAD_RTOL, atol=COMPILED_GRAD_ATOL, msg=name
        )
