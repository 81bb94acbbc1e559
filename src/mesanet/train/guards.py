"""Guards against non-finite training: the error, the finiteness checks, and checkpoints verified on disk.

A step is guarded twice: the loss and the gradient norm before ``optimizer.step()``, and every parameter and
optimizer-state tensor after it (a finite gradient can still produce NaN weights, e.g. with a huge learning
rate). Nothing non-finite is ever saved. When training stops, the error names the newest checkpoint that was
*checked on disk* (intact files and finite weights), never one that is merely assumed good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from mesanet.models import MesaNetConfig

from . import checkpoint as ckpt

#: Largest absolute value per tensor: NaN propagates, inf stays inf, and finite values never overflow.
_MAX_ABS = float("inf")


class NonFiniteError(RuntimeError):
    """The loss, the gradient norm or (after the update) the weights / optimizer state of a step are NaN / inf.

    ``after_update``: the optimizer step had already run (the weights in memory are unusable).
    ``last_good``: the newest checkpoint whose files and weights were verified on disk (``None``: there is none)."""

    def __init__(self, step: int, quantity: str, value: float | str, last_good: Optional[Path], *, after_update: bool = False):
        self.step, self.quantity, self.value, self.last_good = step, quantity, value, last_good
        where = (
            f"the last checkpoint with verified finite weights is {last_good}"
            if last_good
            else "no checkpoint with verified finite weights exists"
        )
        if after_update:
            what = (
                f"non-finite {quantity} ({value}) after the optimizer step of step {step}: the weights in memory are "
                f"unusable and were not saved; {where}"
            )
        else:
            what = (
                f"non-finite {quantity} ({value}) at step {step}: training stopped before the optimizer step of step "
                f"{step}, so the weights are those after step {step - 1}; {where}"
            )
        super().__init__(f"{what}. Try a lower optim.lr, a smaller optim.grad_clip, precision: fp32, or check the data")


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every element of every floating-point tensor is finite (one reduction per device and dtype)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t.detach())
    for group in groups.values():
        if not bool(torch.isfinite(torch.stack(torch._foreach_norm(group, _MAX_ABS))).all()):
            return False
    return True


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def nonfinite_part(model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> Optional[str]:
    """``None`` when the parameters (and ``optimizer``'s state) are finite, else what is not: a parameter name
    or ``"optimizer state"``. The cheap test runs first; names are looked up only on failure."""
    params = list(model.parameters())
    if not all_finite(params):
        return next(f"parameter {name}" for name, p in model.named_parameters() if not all_finite([p]))
    if optimizer is not None and not all_finite(_state_tensors(optimizer)):
        return "optimizer state"
    return None


def checkpoint_problem(path: Path, expected: MesaNetConfig) -> Optional[str]:
    """Why checkpoint ``path`` cannot be resumed from (its files vs their recorded SHA-256, its model config,
    finite weights), or ``None`` when it passed every check."""
    try:
        ckpt.check_model_config(path, expected, type_only=True)
        ckpt.verify_checkpoint(path)
        ckpt.check_model_config(path, expected)
        tensors = [t for file in sorted(Path(path).glob("*.safetensors")) for t in load_file(file).values()]
    except ckpt.CheckpointError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - an unreadable weights file is a damaged checkpoint, whatever raised
        return f"checkpoint {path}: its weights cannot be read ({type(e).__name__}: {e})"
    if not tensors:
        return f"checkpoint {path} has no *.safetensors weights"
    if not all_finite(tensors):
        return f"checkpoint {path} holds non-finite weights"
    return None


def last_good_checkpoint(root: Path, expected: MesaNetConfig) -> Optional[Path]:
    """The newest checkpoint under ``root`` that passes :func:`checkpoint_problem` (checked now, on disk)."""
    for path in reversed(ckpt.list_checkpoints(root)):
        if checkpoint_problem(path, expected) is None:
            return path
    return None


def older_checkpoint_hint(existing: list[Path], expected: MesaNetConfig) -> str:
    """What to do when the newest of ``existing`` (oldest first) is unusable: the newest older checkpoint that
    passes every check, or the problems of all of them. Every checkpoint named here was checked."""
    newest, root = existing[-1], existing[-1].parent
    problems = []
    for i in range(len(existing) - 2, -1, -1):
        problem = checkpoint_problem(existing[i], expected)
        if problem is None:
            move = ", ".join(p.name for p in reversed(existing[i + 1 :]))
            return (
                f"; {existing[i].name} was checked and is intact: to resume from the previous checkpoint "
                f"({existing[i].name}) instead, move {move} out of {root}"
            )
        problems.append(problem)
    if not problems:
        return f"; {newest.name} is the only checkpoint: start a new run (another name) or repair it"
    return f"; no older checkpoint is usable either ({'; '.join(problems)}): start a new run (another name)"


__all__ = [
    "NonFiniteError",
    "all_finite",
    "checkpoint_problem",
    "last_good_checkpoint",
    "nonfinite_part",
    "older_checkpoint_hint",
]
