"""Few-shot repurposing analysis: x_i-position read-out, prompt tuning, LSQ references, smoke run."""

import csv
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mesanet.mesaopt.analysis.fewshot import (
    FewShotRepurposeConfig,
    evaluate_variant,
    fewshot_config_for,
    lsq_references,
    main,
)
from mesanet.mesaopt.analysis.fewshot_prompt import PromptTokens, tune_prompt
from mesanet.mesaopt.data.fewshot import FewShotConfig, fewshot_lsq_loss, generate_fewshot
from mesanet.mesaopt.models import SeqModelConfig, SequenceModel

N = 4


class Shift(nn.Module):
    """Stub 'model': output at position t = A @ token at t + shift (zeros past the end); A = I, a real parameter."""

    def __init__(self, shift: int, dim: int = N) -> None:
        super().__init__()
        self.shift = shift
        self.config = SimpleNamespace(input_dim=dim)
        self.mix = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(dim))

    def forward(self, tokens):
        out = torch.zeros_like(tokens)
        t = tokens.shape[1]
        if self.shift >= 0:
            out[:, : t - self.shift] = tokens[:, self.shift :]
        else:
            out[:, -self.shift :] = tokens[:, : t + self.shift]
        return self.mix(out)


LAYOUTS = {"plain": (False, 0), "eos": (True, 0), "prefix": (True, 3)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_predictions_read_at_x_positions(layout):
    eos, p = LAYOUTS[layout]
    cfg = FewShotConfig(dim=N, num_pairs=7, eos=eos, prefix_len=p)
    batch = generate_fewshot(cfg, batch_size=10, seed=3)
    prompt = PromptTokens(N, p, seed=1) if eos else None
    # look-ahead oracle (the token after x_i is y_i): exactly zero loss, also across evaluation chunks
    oracle = evaluate_variant(Shift(1), batch, prompt, chunk=3)
    assert oracle.shape == (10, 7) and torch.count_nonzero(oracle) == 0
    # identity: the prediction at x_i is x_i itself, so L_i = 1/2 ||y_i - x_i||^2 (not 0, as read at y_i)
    ident = evaluate_variant(Shift(0), batch, prompt, chunk=4)
    want = 0.5 * (batch.flat_y - batch.flat_x).double().pow(2).sum(-1)
    torch.testing.assert_close(ident, want, rtol=1e-6, atol=1e-6)
    assert float(want.min()) > 0
    # two ahead: x_{i+1} (plain) or the EOS token (eos layouts), the last pair reads past the prompt (zero)
    two = evaluate_variant(Shift(2), batch, prompt, chunk=10)
    if eos:
        nxt = prompt.eos.detach().double().expand(10, 7, N)
    else:
        nxt = torch.cat([batch.flat_x[:, 1:], torch.zeros(10, 1, N)], dim=1).double()
    torch.testing.assert_close(two, 0.5 * (batch.flat_y.double() - nxt).pow(2).sum(-1), rtol=1e-6, atol=1e-6)
    # one behind: y_{i-1} for plain, the EOS / last prefix token / zero for the others
    back = evaluate_variant(Shift(-1), batch, prompt)
    if not eos:
        prev = torch.cat([torch.zeros(10, 1, N), batch.flat_y[:, :-1]], dim=1).double()
        torch.testing.assert_close(back, 0.5 * (batch.flat_y.double() - prev).pow(2).sum(-1), rtol=1e-6, atol=1e-6)
    else:
        first = prompt.prefix[-1].detach() if p else torch.zeros(N)
        prev = torch.cat([first.expand(10, 1, N), prompt.eos.detach().expand(10, 6, N)], dim=1).double()
        torch.testing.assert_close(back, 0.5 * (batch.flat_y.double() - prev).pow(2).sum(-1), rtol=1e-6, atol=1e-6)


def test_prompt_fills_only_its_slots():
    cfg = FewShotConfig(dim=N, num_pairs=5, eos=True, prefix_len=2)
    batch = generate_fewshot(cfg, batch_size=3, seed=0)
    prompt = PromptTokens(N, 2, seed=5)
    tokens = prompt(batch)
    assert torch.equal(tokens[:, :2], prompt.prefix.detach().expand(3, 2, N))
    assert torch.equal(tokens[batch.eos_mask], prompt.eos.detach().expand(int(batch.eos_mask.sum()), N))
    rest = ~(batch.eos_mask | batch.prefix_mask)
    assert torch.equal(tokens[rest], batch.tokens[rest])
    with pytest.raises(ValueError, match="prefix"):
        PromptTokens(N, 0)(batch)


def test_layouts_fit_the_training_length():
    plain, eos, prefix = (fewshot_config_for(v, 10, 50, 5) for v in ("plain", "eos", "prefix"))
    assert (plain.num_pairs, eos.num_pairs, prefix.num_pairs) == (25, 16, 15)
    assert plain.seq_len == 50 and eos.seq_len == 48 and prefix.seq_len == 50 and prefix.prefix_len == 5
    assert not plain.eos and eos.eos and eos.prefix_len == 0
    with pytest.raises(ValueError, match="room"):
        fewshot_config_for("prefix", 10, 6, 5)
    with pytest.raises(ValueError, match="unconstructed"):
        FewShotRepurposeConfig(models=["linear-1"])
    with pytest.raises(ValueError, match="variants"):
        FewShotRepurposeConfig(variants=["bos"])


def test_eos_tuning_moves_only_the_eos_vector():
    # the prediction at x_i is the EOS token (two ahead): the optimum EOS is E[y] = 0, the model is frozen
    model = Shift(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = PromptTokens(N, 0, seed=0)
    eos0 = prompt.eos.detach().clone()
    cfg = fewshot_config_for("eos", N, 30, 0)
    losses = tune_prompt(model, cfg, prompt, steps=60, batch_size=16, lr=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.mix.weight.requires_grad and model.mix.weight.grad is None
    assert float(prompt.eos.detach().norm()) < 0.5 * float(eos0.norm())
    assert sum(losses[-5:]) < sum(losses[:5])


def test_prefix_tuning_leaves_a_real_model_bit_identical():
    mcfg = SeqModelConfig(
        layers=["softmax", "mesa"],
        input_dim=N,
        output_dim=N,
        embed_dim=8,
        num_heads=2,
        key_size=4,
        mlp=True,
        layer_norm=True,
        positional="sinusoidal",
        max_len=24,
    )
    torch.manual_seed(0)
    model = SequenceModel(mcfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = PromptTokens(N, 3, seed=0)
    eos0, prefix0 = prompt.eos.detach().clone(), prompt.prefix.detach().clone()
    cfg = fewshot_config_for("prefix", N, 24, 3)
    tune_prompt(model, cfg, prompt, steps=3, batch_size=4, lr=0.05)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not torch.equal(prompt.eos.detach(), eos0) and not torch.equal(prompt.prefix.detach(), prefix0)
    assert not model.training


def test_lsq_references_match_the_data_module():
    batch = generate_fewshot(FewShotConfig(dim=3, num_pairs=9), batch_size=6, seed=2, dtype=torch.float64)
    refs = lsq_references(batch.flat_x, batch.flat_y, ridge=0.1)
    for name, mode in (("lsq_plain", "plain"), ("lsq_autoregressive", "autoregressive")):
        assert refs[name].shape == (6, 9)
        torch.testing.assert_close(refs[name].mean(0), fewshot_lsq_loss(batch.flat_x, batch.flat_y, mode, 0.1))
    # noiseless plain LSQ with >= n pairs nearly recovers W* (ridge 0.1 leaves a small bias), the control does not
    assert float(refs["lsq_plain"][:, 6:].mean()) < 0.05 < float(refs["lsq_autoregressive"][:, 6:].mean())


def test_quick_main_writes_outputs(tmp_path):
    assert main(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("fewshot.csv", "fewshot_summary.md", "fewshot_loss.png", "fewshot_tuning.png", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "fewshot.csv") as f:
        rows = list(csv.DictReader(f))
    seen = {(r["model"], r["variant"]): int(r["i"]) for r in rows}
    # quick models have T = 16: 8 plain pairs, 5 with EOS, 3 with a 5-token prefix; LSQ on the 8 plain pairs
    for model in ("softmax-2", "hybrid-softmax-mesa"):
        assert (seen[(model, "plain")], seen[(model, "eos")], seen[(model, "prefix")]) == (8, 5, 3)
    assert seen[("lsq", "lsq_plain")] == 8 and seen[("lsq", "lsq_autoregressive")] == 8
    assert all(float(r["loss_mean"]) >= 0 for r in rows)
    text = (tmp_path / "fewshot_summary.md").read_text()
    assert "ICL emerges" in text and "EOS tuning helps" in text and ("PASS" in text or "MISS" in text)
