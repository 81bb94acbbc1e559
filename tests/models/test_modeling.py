"""MesaNetForCausalLM: every mixer kind through the whole model, caches and generate, Hugging Face round trips."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import mesanet  # noqa: F401  (registers the Auto classes)
from mesanet.layers.gates import forget_gate_bias
from mesanet.models import MIXER_KINDS, PRESETS, MesaNetCache, MesaNetConfig, MesaNetForCausalLM, preset_config

from helpers import rel_err
from tolerances import F64_EXACT_RTOL, LAYER_CG_F64_RTOL

VOCAB = 97
#: one model per mixer kind plus the paper's hybrid; CG runs far past convergence so every path is exact
EXACT_SOLVER = dict(max_iter=48, tol=0.0)
MODELS = {kind: [kind, kind] for kind in MIXER_KINDS} | {
    "hawk_mesa": ["hawk", "mesa"],
    "attention_mesa": ["sliding_attention", "mesa"],
}


def make_model(mixers: list[str], *, seed: int = 0, **overrides) -> MesaNetForCausalLM:
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=len(mixers),
        num_heads=2,
        head_dim=16,
        mixer_types=mixers,
        chunk_size=8,
        attention_window=6,
        solver_training=EXACT_SOLVER,
        solver_inference=EXACT_SOLVER,
    )
    config = MesaNetConfig(**{**fields, **overrides})
    return MesaNetForCausalLM(config).double().eval()


def rtol(mixers) -> float:
    return LAYER_CG_F64_RTOL if "mesa" in mixers else F64_EXACT_RTOL


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prefill_then_decode_equals_full_forward(name):
    model, ids = make_model(MODELS[name]), tokens(2, 19)
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :7], use_cache=True)
    logits, cache = [out.logits], out.past_key_values
    assert isinstance(cache, MesaNetCache) and cache.get_seq_length() == 7
    for t in range(7, 15):  # token by token
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    out = model(ids[:, 15:], past_key_values=cache, use_cache=True)  # a multi-token step on the cache
    logits.append(out.logits)
    assert cache.get_seq_length() == 19
    assert rel_err(torch.cat(logits, dim=1), full) <= rtol(MODELS[name])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_left_padded_batch_equals_one_by_one(name):
    model = make_model(MODELS[name])
    a, b = tokens(1, 12, seed=2), tokens(1, 7, seed=3)
    pad = 5
    ids = torch.cat([a, torch.cat([torch.full((1, pad), 0), b], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    batched = model(ids, attention_mask=mask).logits
    assert rel_err(batched[0], model(a).logits[0]) <= rtol(MODELS[name])
    assert rel_err(batched[1, pad:], model(b).logits[0]) <= rtol(MODELS[name])
    gen = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(gen[0, 12:], model.generate(a, max_new_tokens=5, do_sample=False)[0, 12:])
    assert torch.equal(gen[1, 12:], model.generate(b, max_new_tokens=5, do_sample=False)[0, 7:])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_sequences_equal_separate_runs(name):
    model = make_model(MODELS[name])
    seqs = [tokens(1, n, seed=10 + n) for n in (5, 11, 3)]
    cu = torch.tensor([0, 5, 16, 19], dtype=torch.int32)
    packed = model(torch.cat(seqs, dim=1), cu_seqlens=cu).logits
    separate = torch.cat([model(s).logits for s in seqs], dim=1)
    assert rel_err(packed, separate) <= rtol(MODELS[name])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_mode_equals_eval_mode_and_gradients_reach_every_parameter(name):
    model, ids = make_model(MODELS[name]), tokens(2, 13)
    eval_loss = model(ids, labels=ids).loss
    model.train()
    train_loss = model(ids, labels=ids).loss
    assert rel_err(train_loss, eval_loss) <= rtol(MODELS[name])
    train_loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing}"
    zero = [n for n, p in model.named_parameters() if float(p.grad.abs().max()) == 0.0]
    assert not zero, f"all-zero gradient for {zero}"


def test_eval_mode_uses_the_inference_solver_settings():
    model = make_model(["mesa"], solver_inference=dict(max_iter=1, tol=0.0, preconditioner="none"))
    ids = tokens(1, 16)
    eval_logits = model(ids).logits
    model.train()
    assert rel_err(model(ids).logits, eval_logits) > 1e-6  # one CG step is not a converged solve


@pytest.mark.parametrize("mixers", [["hawk", "mesa"], ["gated_deltanet", "attention"]])
def test_save_pretrained_round_trip_and_auto_classes(tmp_path, mixers):
    """Loading keeps every saved weight: the token mixers' own init (which the model forces, see the test
    below) must not run over loaded parameters."""
    model = make_model(mixers)
    ids = tokens(2, 11)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MesaNetConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert isinstance(loaded, MesaNetForCausalLM)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_generate_streams_with_the_cache_and_matches_a_no_cache_greedy_loop():
    model = make_model(["mesa", "attention"])
    prompt = tokens(1, 6)
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
    ids = prompt
    for _ in range(6):  # greedy decoding by full forwards, no cache at all
        next_id = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


def test_output_attentions():
    ids = tokens(1, 9)
    attention = make_model(["attention", "sliding_attention"])
    weights = attention(ids, output_attentions=True).attentions
    assert len(weights) == 2 and weights[0].shape == (1, 2, 9, 9)
    assert torch.allclose(weights[0].sum(-1), torch.ones(1, 2, 9, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"output_attentions needs softmax-attention layers only; layers \['1: mesa'\] are recurrent"
    ):
        make_model(["attention", "mesa"])(ids, output_attentions=True)


def test_bad_requests_raise_clear_errors():
    model, ids = make_model(["mesa"]), tokens(1, 8)
    cache = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="cu_seqlens \\(packed sequences\\) cannot continue from a cache"):
        model(ids, past_key_values=cache, cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="pass exactly one of input_ids"):
        model()
    with pytest.raises(ValueError, match=r"expected labels of shape \[B, T\] = \[1, 8\], got \[1, 7\]"):
        model(ids, labels=ids[:, :7])
    with pytest.raises(ValueError, match="expected past_key_values to be a MesaNetCache"):
        model(ids, past_key_values=(torch.zeros(1),))


def test_config_validation():
    with pytest.raises(ValueError, match=r"unknown keys \['hiden_size'\]; valid keys: \[.*'hidden_size'"):
        MesaNetConfig(hiden_size=64)
    with pytest.raises(ValueError, match=r"unknown mixer types \['mamba3'\]"):
        MesaNetConfig(num_hidden_layers=1, mixer_types=["mamba3"])
    with pytest.raises(Exception, match=r"expected 2 mixer_types \(num_hidden_layers\), got 1"):
        MesaNetConfig(num_hidden_layers=2, mixer_types=["mesa"])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")


def expected_parameters(preset: str, mixer: str) -> int:
    """Parameter count by formula, written independently of the model code."""
    p = PRESETS[preset]
    d, n, h, hd, vocab = p["hidden_size"], p["num_hidden_layers"], p["num_heads"], p["head_dim"], p["vocab_size"]
    inner = h * hd
    block = 2 * d + 3 * d * round(3.0 * d)  # two RMSNorm gains + gated SiLU MLP (gate, up, down)
    if mixer == "mesa":
        # q, k, v, o projections; width-4 convs on q and k; beta/gamma gates with bias; lambda; shared head RMSNorm
        block += 4 * d * inner + 2 * 4 * inner + 2 * (d * h + h) + h * hd + hd
    elif mixer == "attention":
        block += 4 * d * inner  # q, k, v, o (no bias, as many KV heads as heads)
    return vocab * d + n * block + d  # tied embedding + blocks + final norm


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("mixer", ["mesa", "attention"])
def test_preset_parameter_counts_match_the_formula(preset, mixer):
    with torch.device("meta"):
        model = MesaNetForCausalLM(preset_config(preset, mixer=mixer))
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(preset, mixer)


def test_paper_sizes_have_the_paper_parameter_counts():
    """MesaNet App. G.4: 'Small' ~145M, 'Medium' ~400-440M, 'Large' ~940M parameters."""
    counts = {name: expected_parameters(name, "mesa") / 1e6 for name in ("145m", "400m", "1b")}
    assert 140 <= counts["145m"] <= 150 and 400 <= counts["400m"] <= 445 and 900 <= counts["1b"] <= 1000, counts


def test_residual_output_projections_are_depth_scaled():
    config = preset_config("cpu-small", mixer="mesa")
    torch.manual_seed(0)
    model = MesaNetForCausalLM(config)
    block = model.model.layers[0]
    fan_in = block.mlp.down.in_features
    measured = float(block.mlp.down.weight.detach().std())
    assert math.isclose(measured, math.sqrt(2 / config.num_hidden_layers) / math.sqrt(fan_in), rel_tol=0.05)
    gate_bias = block.mixer.a_proj.bias.detach()  # forget-gate spread from the mixer's own init survives the model init
    assert float(gate_bias.max() - gate_bias.min()) > 1.0


@pytest.mark.parametrize("kind", sorted(MIXER_KINDS))
def test_every_mixer_keeps_its_own_init_inside_the_model(kind):
    """Hugging Face's custom-code init skips a module without parameters of its own (GDN, GLA, attention keep
    theirs in child Linears): the model must still run each mixer's ``reset_parameters`` and depth-scale its
    ``o_proj``; the forget-gate biases are the mixer's spread, not the generic zero bias (gamma = 0.5)."""
    layers = 8
    config = MesaNetConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_heads=2, head_dim=32, mixer_types=[kind] * layers
    )
    torch.manual_seed(0)
    mixer = MesaNetForCausalLM(config).model.layers[0].mixer
    weight = mixer.o_proj.weight.detach()  # 64 x 64 samples: the std is known to ~2 %
    assert math.isclose(float(weight.std()), math.sqrt(2 / layers) / math.sqrt(weight.shape[1]), rel_tol=0.1)
    if getattr(mixer, "a_proj", None) is not None:
        expected = forget_gate_bias(config.num_heads, mixer.forget_init_range).to(mixer.a_proj.bias.dtype)
        assert torch.allclose(mixer.a_proj.bias.detach(), expected)
