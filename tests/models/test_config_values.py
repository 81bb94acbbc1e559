"""MesaNetConfig: every invalid value of every field is a ValueError naming the field, what was expected and what
arrived; ``logit_soft_cap`` says "no cap" with ``None`` (an old config's 0 loads as None with a DeprecationWarning)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from transformers import AutoConfig

import mesanet  # noqa: F401  (registers the Auto classes)
from mesanet.models import MesaNetConfig, MesaNetForCausalLM

#: A small valid config; each case below changes one field of it.
BASE = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_heads=2, head_dim=8, chunk_size=8)
ATTENTION = dict(mixer_types=["attention", "hawk"])
NAN, INF = math.nan, math.inf

#: ``(field, bad value, extra fields, message regex)``: the message names the field and the value that arrived.
BAD_VALUES = [
    ("vocab_size", 0, {}, r"vocab_size: expected an integer >= 1, got 0"),
    ("vocab_size", 1.5, {}, r"vocab_size: expected an integer >= 1, got 1\.5"),
    ("vocab_size", True, {}, r"vocab_size: expected an integer >= 1, got True"),
    ("vocab_size", "64", {}, r"vocab_size: expected an integer >= 1, got '64'"),
    ("hidden_size", -4, {}, r"hidden_size: expected an integer >= 1, got -4"),
    ("num_hidden_layers", 0, {}, r"num_hidden_layers: expected an integer >= 1, got 0"),
    ("num_heads", 0, {}, r"num_heads: expected an integer >= 1, got 0"),
    ("num_heads", -2, {}, r"num_heads: expected an integer >= 1, got -2"),
    ("head_dim", 0, {}, r"head_dim: expected an integer >= 1, got 0"),
    ("head_dim", 7, ATTENTION, r"head_dim: expected an even number \(RoPE .*\), got 7"),
    ("value_head_dim", 0, {}, r"value_head_dim: expected an integer >= 1, got 0"),
    ("mixer_types", "mesa", {}, r"mixer_types: expected a list of mixer kinds, one per layer, got 'mesa'"),
    ("mixer_types", ["mesa"], {}, r"expected 2 mixer_types \(num_hidden_layers\), got 1"),
    ("mixer_types", ["mesa", "mamba3"], {}, r"unknown mixer types \['mamba3'\]"),
    ("mlp_expansion", 0, {}, r"mlp_expansion: expected a finite number > 0, got 0"),
    ("mlp_expansion", -1, {}, r"mlp_expansion: expected a finite number > 0, got -1"),
    ("mlp_expansion", NAN, {}, r"mlp_expansion: expected a finite number > 0, got nan"),
    ("mlp_expansion", INF, {}, r"mlp_expansion: expected a finite number > 0, got inf"),
    ("mlp_expansion", 0.01, {}, r"mlp_expansion: expected at least one MLP unit .*, got 0\.01"),
    ("rms_norm_eps", -1, {}, r"rms_norm_eps: expected a finite number > 0, got -1"),
    ("rms_norm_eps", NAN, {}, r"rms_norm_eps: expected a finite number > 0, got nan"),
    ("rms_norm_eps", 0.0, {}, r"rms_norm_eps: expected a finite number > 0, got 0\.0"),
    ("logit_soft_cap", -1.0, {}, r"logit_soft_cap: expected None \(no cap\) or a finite number > 0, got -1\.0"),
    ("logit_soft_cap", NAN, {}, r"logit_soft_cap: expected None \(no cap\) or a finite number > 0, got nan"),
    ("logit_soft_cap", INF, {}, r"logit_soft_cap: expected None \(no cap\) or a finite number > 0, got inf"),
    ("logit_soft_cap", "30", {}, r"logit_soft_cap: expected None \(no cap\) or a finite number > 0, got '30'"),
    ("conv_size", 0, {}, r"conv_size: expected an integer >= 1, got 0"),
    ("gamma_cap", 0.0, {}, r"gamma_cap: expected a number in \(0, 1\], got 0\.0"),
    ("gamma_cap", 1.5, {}, r"gamma_cap: expected a number in \(0, 1\], got 1\.5"),
    ("gamma_cap", NAN, {}, r"gamma_cap: expected a number in \(0, 1\], got nan"),
    ("forget_init_range", [0.9], {}, r"forget_init_range: expected None or \[lo, hi\] with 0 < lo <= hi < 1, got \[0\.9\]"),
    ("forget_init_range", [0.99, 0.9], {}, r"forget_init_range: expected None or \[lo, hi\] .*, got \[0\.99, 0\.9\]"),
    ("forget_init_range", [0.5, 1.0], {}, r"forget_init_range: expected None or \[lo, hi\] .*, got \[0\.5, 1\.0\]"),
    ("beta_max", 0.0, {}, r"beta_max: expected None or a number in \(0, 2\], got 0\.0"),
    ("beta_max", 2.5, {}, r"beta_max: expected None or a number in \(0, 2\], got 2\.5"),
    ("beta_max", NAN, {}, r"beta_max: expected None or a number in \(0, 2\], got nan"),
    ("use_output_gate", "yes", {}, r"use_output_gate: expected None \(the mixer's default\), true or false, got 'yes'"),
    ("conv_on_v", 1, {}, r"conv_on_v: expected None \(the mixer's default\), true or false, got 1"),
    ("solver_training", {"max_iter": -1}, {}, r"solver_training: SolverSettings\.max_iter: expected an integer >= 0, got -1"),
    ("solver_inference", "cg", {}, r"solver_inference: expected a dict of solver settings or None, got str"),
    ("chunk_size", 0, {}, r"chunk_size: expected an integer >= 1, got 0"),
    ("rope_theta", 1.0, ATTENTION, r"rope_theta: expected a finite number > 1, got 1\.0"),
    ("rope_theta", NAN, ATTENTION, r"rope_theta: expected a finite number > 1, got nan"),
    ("attention_window", 0, {}, r"attention_window: expected an integer >= 1, got 0"),
    ("num_kv_heads", 0, ATTENTION, r"num_kv_heads: expected an integer >= 1, got 0"),
    ("num_kv_heads", 3, ATTENTION, r"num_kv_heads: expected a divisor of num_heads \(2\), got 3"),
    ("hawk_expansion", 0, ATTENTION, r"hawk_expansion: expected a finite number > 0, got 0"),
    ("hawk_expansion", -1.25, ATTENTION, r"hawk_expansion: expected a finite number > 0, got -1\.25"),
    ("hawk_expansion", 0.01, ATTENTION, r"hawk_expansion: expected at least one Hawk channel per head .*, got 0\.01"),
    ("use_cache", "yes", {}, r"use_cache: expected true or false, got 'yes'"),
    ("tie_word_embeddings", 1, {}, r"tie_word_embeddings: expected true or false, got 1"),
    ("bos_token_id", -1, {}, r"bos_token_id: expected None or a token id in \[0, vocab_size\) = \[0, 63\], got -1"),
    ("eos_token_id", [1, 64], {}, r"eos_token_id: expected None or a token id in \[0, vocab_size\) = \[0, 63\], got \[1, 64\]"),
    ("pad_token_id", 64, {}, r"pad_token_id: expected None or a token id in \[0, vocab_size\) = \[0, 63\], got 64"),
]


@pytest.mark.parametrize("field, value, extra, message", BAD_VALUES, ids=[f"{c[0]}={c[1]!r}" for c in BAD_VALUES])
def test_invalid_value_is_a_value_error_naming_the_field(field, value, extra, message):
    with pytest.raises(ValueError, match=message) as info:
        MesaNetConfig(**{**BASE, **extra, field: value})
    assert type(info.value) is ValueError and "\n" not in str(info.value)


def test_every_field_has_a_bad_value_case():
    own = set(MesaNetConfig.__annotations__)  # the fields MesaNetConfig declares (not Hugging Face's)
    assert len(own) > 20 and own - {c[0] for c in BAD_VALUES} == set()


@pytest.mark.parametrize(
    "field, value",
    [
        ("mlp_expansion", 3),
        ("rope_theta", 10000),
        ("gamma_cap", 1),
        ("logit_soft_cap", None),
        ("logit_soft_cap", 15),
        ("eos_token_id", [0, 63]),
        ("pad_token_id", 0),
        ("tie_word_embeddings", False),
        ("num_kv_heads", 1),
    ],
)
def test_valid_edge_values_are_accepted(field, value):
    extra = ATTENTION if field == "num_kv_heads" else {}
    assert getattr(MesaNetConfig(**{**BASE, **extra, field: value}), field) == value


def test_no_cap_is_none_and_changes_nothing_else():
    ids = torch.randint(0, BASE["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    capped = MesaNetForCausalLM(MesaNetConfig(**BASE, logit_soft_cap=1.0)).eval()
    torch.manual_seed(0)
    uncapped = MesaNetForCausalLM(MesaNetConfig(**BASE, logit_soft_cap=None)).eval()
    assert capped(ids).logits.abs().max() <= 1.0
    assert uncapped(ids).logits.abs().max() > 1.0  # same weights, no cap


def test_legacy_zero_soft_cap_loads_as_none_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"logit_soft_cap: 0 for 'no cap' is deprecated; mapped to None"):
        assert MesaNetConfig(**BASE, logit_soft_cap=0).logit_soft_cap is None
    MesaNetConfig(**BASE).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "logit_soft_cap": 0.0}))  # as an old run wrote it
    with pytest.warns(DeprecationWarning, match="logit_soft_cap"):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.logit_soft_cap is None
    loaded.save_pretrained(tmp_path / "again")  # the None round-trips without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert AutoConfig.from_pretrained(tmp_path / "again").logit_soft_cap is None
