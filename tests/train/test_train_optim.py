"""AdamW parameter groups (what gets weight decay) and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from mesanet.models import MesaNetForCausalLM, preset_config
from mesanet.train import OptimConfig, build_optimizer, build_scheduler, lr_multiplier, param_groups


@pytest.fixture(scope="module")
def model():
    # Hawk (Lambda, gate bias blocks), Mesa (lambda, gate biases), attention: every tagged kind of parameter.
    return MesaNetForCausalLM(preset_config("tiny", mixer=["hawk", "mesa", "attention"], num_hidden_layers=3))


def test_param_groups_split(model):
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    d, nd = set(decay["param_names"]), set(no_decay["param_names"])
    names = {n for n, _ in model.named_parameters()}
    assert d | nd == names and not d & nd  # every trainable parameter exactly once (tied head = embedding)
    assert len(decay["params"]) == len(d) and len(no_decay["params"]) == len(nd)

    for name in [
        "model.embed_tokens.weight",  # embedding (tied with the head): no regularisation
        "model.layers.1.mixer.lam_raw",  # Mesa lambda (2-D, tagged)
        "model.layers.1.mixer.a_proj.bias",
        "model.layers.1.mixer.b_proj.bias",  # gate biases
        "model.layers.0.mixer_norm.weight",
        "model.norm.weight",
        "model.layers.1.mixer.o_norm.weight",  # norms
    ]:
        assert name in nd, name
    hawk_tagged = {
        n for n, p in model.model.layers[0].named_parameters(prefix="model.layers.0") if getattr(p, "_no_weight_decay", False)
    }
    assert hawk_tagged and any(model.get_parameter(n).dim() >= 2 for n in hawk_tagged)  # the Hawk gate bias blocks are 2-D
    assert hawk_tagged <= nd
    for name in [
        "model.layers.1.mixer.q_proj.weight",
        "model.layers.1.mixer.o_proj.weight",
        "model.layers.0.mlp.up.weight",
        "model.layers.2.mixer.q_proj.weight",
        "model.layers.1.mixer.q_conv.weight",
    ]:
        assert name in d, name
    # the rule: decay exactly the >= 2-D, untagged, non-embedding tensors
    for name, p in model.named_parameters():
        expected = p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) and name != "model.embed_tokens.weight"
        assert (name in d) == expected, name


def test_optimizer_hyperparameters(model):
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-8 and group["lr"] == 1e-3
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_schedule_values():
    kw = dict(warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    m = [lr_multiplier(s, **kw) for s in range(25)]
    assert m[:5] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])  # linear from ~0 to the peak
    assert m[19] == pytest.approx(0.1) and m[24] == pytest.approx(0.1)  # 10% of the peak at the last step, then flat
    assert all(a > b for a, b in zip(m[4:19], m[5:20]))  # strictly decaying in between
    mid = 4 + (19 - 4) / 2  # half-way through the cosine: (1 + min) / 2
    assert lr_multiplier(int(mid), **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 4) / 15)))
    assert lr_multiplier(0, warmup_steps=0, max_steps=10, min_lr_ratio=0.1) == 1.0


def test_scheduler_drives_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(3, 3))
    model = torch.nn.Module()
    model.w = p
    cfg = OptimConfig(lr=2e-3, warmup_steps=2, min_lr_ratio=0.1)
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, max_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-3 / 3) and lrs[2] == pytest.approx(2e-3)
    assert lrs[-1] == pytest.approx(0.1 * 2e-3)
