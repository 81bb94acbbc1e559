"""Linearisation of softmax attention layers ("Uncovering mesa-optimization algorithms in Transformers", SI F.2; analysis 4 of the toolkit, README "Mesa-optimization toolkit").

For a trained :class:`~mesanet.mesaopt.models.SequenceModel`, every softmax self-attention layer's input ``x_l``
(the normalised residual stream the mixer sees) and output ``delta_l`` (the mixer's update) are recorded
on fresh LDS sequences. Each layer is then distilled into a causal linear self-attention layer
(:class:`~mesanet.mesaopt.layers.LinearSelfAttention`, same heads and key size) by minimising
``mean ||delta_l - LSA(x_l)||^2`` with Adam, and swapped into the model: one layer at a time, all layers
but the first at once, and all at once. Reported: the held-out distillation error (MSE / mean square of
``delta_l``) and the test loss ratio ``loss(linearised) / loss(original)`` (next-token loss, eq. 1,
averaged over positions) on held-out sequences.

The paper finds every layer except the first (token copying) behaves linearly. Check used here (the issue
sets no number): the first layer's ratio is the largest of the single-layer swaps, and swapping all layers
but the first at once costs at most ``max_ratio`` (default 1.25) times the original loss.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from mesanet.utils.config import to_dict
from mesanet.utils.validation import check_int

from ..data.dynamics import generate_lds
from ..layers.linear_self_attention import LinearSelfAttention
from ..layers.softmax_self_attention import SoftmaxSelfAttention
from ..models import SequenceModel
from .linearize_report import LinearizeResult, SwapVariant, write_linearize
from .seq_training import per_position_loss, tokens_of
from .zoo import DEFAULT_ROOT, load_or_train, recipe

__all__ = [
    "LinearizeConfig",
    "ZeroMixer",
    "record_mixer_io",
    "distil_linear",
    "distillation_error",
    "swap_mixers",
    "test_loss",
    "LinearizeResult",
    "SwapVariant",
    "run_linearize",
    "main",
]

DEFAULT_OUT = Path("runs/mesaopt/linearize")


@dataclass
class LinearizeConfig:
    """Linearisation settings (CPU-small defaults)."""

    model: str = "softmax-2"
    zoo_root: str = str(DEFAULT_ROOT)
    record_sequences: int = 2048
    heldout_sequences: int = 512
    test_sequences: int = 2048
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    init_std: float = 0.05
    max_ratio: float = 1.25
    record_seed: int = 21
    heldout_seed: int = 22
    test_seed: int = 23
    distil_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"LinearizeConfig.model: expected a zoo name, got {self.model!r}")
        for name in ("record_sequences", "heldout_sequences", "test_sequences", "steps", "batch_size"):
            v = getattr(self, name)
            check_int(f"LinearizeConfig.{name}", v, minimum=1)
        for name in ("record_seed", "heldout_seed", "test_seed", "distil_seed"):
            v = getattr(self, name)
            check_int(f"LinearizeConfig.{name}", v, minimum=0)
        if len({self.record_seed, self.heldout_seed, self.test_seed}) != 3:
            raise ValueError("LinearizeConfig: record_seed, heldout_seed and test_seed must all differ")
        for name in ("lr", "init_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"LinearizeConfig.{name}: expected a finite float > 0, got {v!r}")
        if not (isinstance(self.max_ratio, (int, float)) and math.isfinite(self.max_ratio) and self.max_ratio >= 1):
            raise ValueError(f"LinearizeConfig.max_ratio: expected a finite float >= 1, got {self.max_ratio!r}")


# ----------------------------------------------------------------------------------------- core


class ZeroMixer(nn.Module):
    """A mixer whose update is zero, ``[B, T, E] -> zeros [B, T, E]`` (layer-ablation control)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def _check_model(model) -> None:
    if not isinstance(model, SequenceModel):
        raise ValueError(f"expected a SequenceModel, got {type(model).__name__}")


@torch.no_grad()
def record_mixer_io(
    model: SequenceModel, tokens: Tensor, layers: Sequence[int], chunk: int = 512
) -> dict[int, tuple[Tensor, Tensor]]:
    """``{l: (x [N, T, E], delta [N, T, E])}``: the input and output of block ``l``'s mixer (0-based ``l``)
    on ``tokens [N, T, input_dim]``, recorded with forward hooks, ``chunk`` sequences at a time."""
    _check_model(model)
    bad = [l for l in layers if not (isinstance(l, int) and 0 <= l < model.num_layers)]
    if bad:
        raise ValueError(f"record_mixer_io: expected layer indices in [0, {model.num_layers}), got {bad}")
    store: dict[int, tuple[list, list]] = {l: ([], []) for l in layers}
    handles = []
    for l in layers:

        def hook(module, args, output, l=l):
            store[l][0].append(args[0].detach())
            store[l][1].append(output.detach())

        handles.append(model.blocks[l].mixer.register_forward_hook(hook))
    try:
        for start in range(0, tokens.shape[0], chunk):
            model(tokens[start : start + chunk])
    finally:
        for h in handles:
            h.remove()
    return {l: (torch.cat(xs), torch.cat(ys)) for l, (xs, ys) in store.items()}


@torch.no_grad()
def distillation_error(layer: nn.Module, x: Tensor, y: Tensor, chunk: int = 512) -> float:
    """``sum ||y - layer(x)||^2 / sum ||y||^2`` over ``x, y [N, T, E]`` (0 = exact)."""
    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(
            f"distillation_error: expected x and y [N, T, E] of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    num = den = 0.0
    for start in range(0, x.shape[0], chunk):
        yy = y[start : start + chunk].double()
        num += float((layer(x[start : start + chunk]).double() - yy).square().sum())
        den += float(yy.square().sum())
    return num / max(den, 1e-300)


def distil_linear(
    x: Tensor,
    y: Tensor,
    num_heads: int,
    key_size: int,
    *,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 3e-3,
    init_std: float = 0.05,
    seed: int = 0,
    progress: bool = False,
    desc: str = "distil",
) -> tuple[LinearSelfAttention, list[float]]:
    """Fit a fresh :class:`LinearSelfAttention` (``num_heads`` x ``key_size``) to ``y ~ LSA(x)`` on recorded
    ``x, y [N, T, E]`` with Adam (minibatches of ``batch_size`` sequences, cosine-decayed ``lr``, no weight
    decay); returns the layer (``eval()``, no grad) and the per-step minibatch relative errors."""
    from tqdm.auto import tqdm

    if x.shape != y.shape or x.dim() != 3:
        raise ValueError(f"distil_linear: expected x and y [N, T, E] of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = LinearSelfAttention(x.shape[-1], num_heads, key_size, init_std=init_std)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = []
    n = x.shape[0]
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb, yb = x[idx], y[idx]
        loss = (layer(xb) - yb).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach() / yb.square().mean().clamp_min(1e-30)))
    layer.eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer, history


def swap_mixers(model: SequenceModel, replacements: dict[int, nn.Module]) -> SequenceModel:
    """A deep copy of ``model`` whose block ``l`` mixer is ``replacements[l]`` (0-based); ``model`` is untouched."""
    _check_model(model)
    bad = [l for l in replacements if not (isinstance(l, int) and 0 <= l < model.num_layers)]
    if bad:
        raise ValueError(f"swap_mixers: expected layer indices in [0, {model.num_layers}), got {bad}")
    out = copy.deepcopy(model)
    for l, mixer in replacements.items():
        out.blocks[l].mixer = mixer
    return out.eval()


@torch.no_grad()
def test_loss(model: SequenceModel, task, tokens: str, num_sequences: int, seed: int) -> Tensor:
    """Per-position next-token test loss ``[T - 1]`` (eq. 1) on ``num_sequences`` fresh sequences."""
    return per_position_loss(model, task, num_sequences=num_sequences, seed=seed, tokens=tokens)


# ----------------------------------------------------------------------------------------- analysis


def _softmax_layers(model: SequenceModel) -> list[int]:
    return [l for l, b in enumerate(model.blocks) if isinstance(b.mixer, SoftmaxSelfAttention)]


def run_linearize(
    config: LinearizeConfig, out_dir: Path | str = DEFAULT_OUT, *, progress: bool = True, recipes: dict | None = None
) -> LinearizeResult:
    """Distil and swap every softmax layer of ``config.model``; writes ``linearize.csv``,
    ``linearize_curves.csv``, ``linearize_summary.md``, ``linearize_ratios.png``, ``linearize_curves.png``, ``config.yaml``.

    ``recipes`` maps names outside the zoo to ``(SeqModelConfig, SeqTrainConfig)``. Returns the typed
    :class:`~.linearize_report.LinearizeResult` (``ratios``, ``passed``; 1-based layer numbers in the variant names).
    """
    if not isinstance(config, LinearizeConfig):
        raise ValueError(f"run_linearize: expected a LinearizeConfig, got {type(config).__name__}")
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    start = time.perf_counter()
    recipes = dict(recipes or {})
    model_cfg, train_cfg = recipes[config.model] if config.model in recipes else recipe(config.model)
    model = load_or_train(config.model, Path(config.zoo_root), progress=progress, configs=(model_cfg, train_cfg))
    layers = _softmax_layers(model)
    if not layers:
        raise ValueError(f"run_linearize: model {config.model!r} has no softmax layers ({model.config.layers})")
    task, tok = train_cfg.task, train_cfg.tokens

    def tokens(num: int, seed: int) -> Tensor:
        return tokens_of(generate_lds(task, num, seed=seed).states, tok)

    rec = record_mixer_io(model, tokens(config.record_sequences, config.record_seed), layers)
    held = record_mixer_io(model, tokens(config.heldout_sequences, config.heldout_seed), layers)
    students, train_err, held_err = {}, {}, {}
    for l in layers:
        student, _ = distil_linear(
            *rec[l],
            model_cfg.num_heads,
            model_cfg.key_size,
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            init_std=config.init_std,
            seed=config.distil_seed + l,
            progress=progress,
            desc=f"distil layer {l + 1}",
        )
        students[l] = student
        train_err[l] = distillation_error(student, *rec[l])
        held_err[l] = distillation_error(student, *held[l])
        del rec[l]

    variants: dict[str, list[int]] = {f"layer {l + 1}": [l] for l in layers}
    if len(layers) > 1:
        variants["all but first"] = layers[1:]
        variants["all"] = list(layers)
    base_curve = test_loss(model, task, tok, config.test_sequences, config.test_seed)
    result = LinearizeResult(
        config=config,
        model_layers=list(model.config.layers),
        tokens=tok,
        num_heads=model_cfg.num_heads,
        key_size=model_cfg.key_size,
        layers=layers,
        original_curve=base_curve,
        distil_error_train=train_err,
        distil_error_heldout=held_err,
    )
    for name, swap in variants.items():
        curve = test_loss(swap_mixers(model, {l: students[l] for l in swap}), task, tok, config.test_sequences, config.test_seed)
        ablated = test_loss(
            swap_mixers(model, {l: ZeroMixer() for l in swap}), task, tok, config.test_sequences, config.test_seed
        )
        result.variants.append(SwapVariant(name, swap, curve, float(ablated.mean()) / result.original_loss))
    write_linearize(out, result, start)
    return result


# ----------------------------------------------------------------------------------------- CLI

_QUICK_NAME = "quick-softmax-2"


def quick_recipe():
    """A tiny 2-layer softmax model (n_s = 4, T = 12, width 16) trained for 40 steps: smoke runs only."""
    from dataclasses import replace

    from ..data.dynamics import LDSConfig

    model_cfg, train_cfg = recipe("softmax-2")
    task = LDSConfig(state_dim=4, seq_len=12)
    model_cfg = replace(model_cfg, input_dim=4, output_dim=4, embed_dim=16, num_heads=2, key_size=4, max_len=12)
    train_cfg = replace(train_cfg, steps=40, batch_size=16, warmup_steps=5, task=task)
    return model_cfg, train_cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mesanet.mesaopt linearize [--out DIR] [--quick] [--model NAME] [--steps N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesanet.mesaopt linearize",
        description="Distil softmax layers into linear self-attention and swap them in.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run on a tiny model")
    parser.add_argument("--model", default=None, help="zoo name (default softmax-2)")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per distilled layer")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--record-sequences", type=int, default=None)
    parser.add_argument("--test-sequences", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(args.threads)
    cfg, recipes = LinearizeConfig(), None
    if args.quick:
        cfg = LinearizeConfig(
            model=_QUICK_NAME,
            zoo_root=str(args.out / "zoo"),
            record_sequences=64,
            heldout_sequences=32,
            test_sequences=64,
            steps=20,
            batch_size=16,
        )
        recipes = {_QUICK_NAME: quick_recipe()}
    overrides = {
        "model": args.model,
        "zoo_root": args.zoo_root,
        "steps": args.steps,
        "lr": args.lr,
        "record_sequences": args.record_sequences,
        "test_sequences": args.test_sequences,
    }
    cfg = LinearizeConfig(**{**to_dict(cfg), **{k: v for k, v in overrides.items() if v is not None}})
    res = run_linearize(cfg, args.out, progress=not args.no_progress, recipes=recipes)
    for name, ratio in res.ratios.items():
        print(f"{cfg.model} {name}: loss ratio {ratio:.4f}")
    print("distillation error (held-out): " + ", ".join(f"layer {l + 1}: {e:.4g}" for l, e in res.distil_error_heldout.items()))
    print(f"check (all layers but the first behave linearly): {'PASS' if res.passed else 'MISS'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
