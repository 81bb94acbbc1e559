"""Few-shot in-context regression prompts for models trained on LDS data, and their least-squares controls.

Digest part B.4 ("Uncovering mesa-optimization algorithms in Transformers", p. 9-10, SI F.1.4). Per sequence
and task: ``W*`` Haar-orthogonal ``[n, n]`` (the training distribution of the ``"linear"`` LDS), ``x_i ~ N(0, I)``
(``x_dist="uniform"``: ``U(-x_range, x_range)`` as the official code), ``y_i = W* x_i + noise_std * N(0, I)``.

Token layout ``tokens [B, T, n]`` (x and y share the width n, as s_t does):

* plain:      ``[x_1, y_1, x_2, y_2, ..., x_N, y_N]``                 T = 2N
* ``eos=True``: ``[x_1, y_1, EOS, x_2, y_2, EOS, ..., x_N, y_N, EOS]``  T = 3N; EOS slots hold zeros and are
  flagged by ``eos_mask`` (the model writes its learned EOS vector there)
* ``prefix_len = P``: P leading slots (zeros, ``prefix_mask``) for learned prefix tokens (prefix-tuning)
* ``num_tasks = 2``: continual ICL, the pairs of task 1 then those of task 2 (each with its own ``W*``)

``targets`` holds ``y_i`` at the position of ``x_i`` (zeros elsewhere) and ``loss_mask`` is True exactly
there. The metric is the paper's ``L_i = 1/2 E ||y_i - f(x_i; pairs < i)||^2`` (``FewShotBatch.loss_curve``).

Least-squares controls (pure functions of ``x, y [B, M, n]``; pair i is predicted from the pairs before it):

* ``mode="plain"``:          LSQ on ``{(x_j, y_j)}_{j<i}``; noiseless with i-1 >= n pairs it recovers ``W*``.
* ``mode="autoregressive"``: the paper's control, LSQ on ``{(x_j, y_j)}_{j<i} U {(y_j, x_{j+1})}_{j<i}`` (every
  pair of consecutive tokens of ``[x_1, y_1, ..., x_i]``; half of them spurious). It reproduces the models'
  early-ascent phase.

``ridge = 0`` is min-norm least squares (pseudo-inverse); ``ridge > 0`` minimises
``sum ||target - Phi input||^2 + ridge ||Phi||_F^2``. With no pairs yet the prediction is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mesanet.utils.validation import is_int, is_real

from .dynamics import random_orthogonal

__all__ = [
    "FewShotConfig",
    "FewShotBatch",
    "generate_fewshot",
    "LSQ_MODES",
    "fewshot_lsq_predictions",
    "fewshot_lsq_loss",
]

_X_DISTS = ("normal", "uniform")
#: Least-squares controls of ``fewshot_lsq_predictions``.
LSQ_MODES = ("plain", "autoregressive")


@dataclass(frozen=True)
class FewShotConfig:
    """``dim`` n, ``num_pairs`` N per task, ``num_tasks`` (2 = continual), x distribution, label noise,
    EOS slots and prefix slots. Default N = 25 gives T = 50, the LDS training length."""

    dim: int = 10
    num_pairs: int = 25
    num_tasks: int = 1
    x_dist: str = "normal"
    x_range: float = 1.0
    noise_std: float = 0.0
    eos: bool = False
    prefix_len: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("dim", 1), ("num_pairs", 1), ("num_tasks", 1), ("prefix_len", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
        if self.x_dist not in _X_DISTS:
            raise ValueError(f"x_dist: expected one of {_X_DISTS}, got {self.x_dist!r}")
        if not is_real(self.x_range) or self.x_range <= 0:
            raise ValueError(f"x_range: expected > 0, got {self.x_range!r}")
        if not is_real(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std: expected >= 0, got {self.noise_std!r}")
        if not isinstance(self.eos, bool):
            raise ValueError(f"eos: expected a bool, got {self.eos!r}")

    @property
    def slots_per_pair(self) -> int:
        return 3 if self.eos else 2

    @property
    def seq_len(self) -> int:
        """T = prefix_len + num_tasks * num_pairs * (2 or 3)."""
        return self.prefix_len + self.num_tasks * self.num_pairs * self.slots_per_pair


@dataclass(frozen=True)
class FewShotBatch:
    """``x, y [B, K, N, n]``, ``w_star [B, K, n, n]`` (K tasks); model view ``tokens [B, T, n]``,
    ``targets [B, T, n]``, bool ``loss_mask``, ``eos_mask``, ``prefix_mask [B, T]``; ``x_positions`` and
    ``y_positions [K N]`` index the x_i / y_i tokens of the flattened pairs."""

    x: torch.Tensor
    y: torch.Tensor
    w_star: torch.Tensor
    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    eos_mask: torch.Tensor
    prefix_mask: torch.Tensor
    x_positions: torch.Tensor
    y_positions: torch.Tensor

    @property
    def flat_x(self) -> torch.Tensor:
        """``[B, K N, n]`` inputs of all tasks in prompt order."""
        return self.x.flatten(1, 2)

    @property
    def flat_y(self) -> torch.Tensor:
        """``[B, K N, n]`` labels of all tasks in prompt order."""
        return self.y.flatten(1, 2)

    def pair_losses(self, predictions: torch.Tensor) -> torch.Tensor:
        """``predictions [B, T, n]`` (the model output at every position) -> ``[B, K N]``
        ``1/2 ||y_i - prediction at x_i||^2``."""
        if predictions.shape != self.tokens.shape:
            raise ValueError(f"predictions: expected shape {tuple(self.tokens.shape)}, got {tuple(predictions.shape)}")
        err = predictions[:, self.x_positions] - self.flat_y.to(predictions.dtype)
        return 0.5 * err.pow(2).sum(-1)

    def loss_curve(self, predictions: torch.Tensor) -> torch.Tensor:
        """``[K N]`` per-pair loss ``L_i = 1/2 E ||y_i - f(x_i)||^2`` (mean over the batch)."""
        return self.pair_losses(predictions).mean(0)


def generate_fewshot(config: FewShotConfig, batch_size: int, seed: int, dtype: torch.dtype = torch.float32) -> FewShotBatch:
    """Seeded batch of few-shot prompts; identical ``(config, batch_size, seed)`` give identical data.
    Computed in float64 (``y = W* x`` exactly there), cast to ``dtype``."""
    if not isinstance(config, FewShotConfig):
        raise ValueError(f"config: expected a FewShotConfig, got {type(config).__name__}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected a floating dtype, got {dtype}")
    gen = torch.Generator().manual_seed(seed)
    b, k, n_pairs, n = batch_size, config.num_tasks, config.num_pairs, config.dim
    w = random_orthogonal(b * k, n, gen, dtype=torch.float64).reshape(b, k, n, n)
    if config.x_dist == "normal":
        x = torch.randn(b, k, n_pairs, n, generator=gen, dtype=torch.float64)
    else:
        x = (torch.rand(b, k, n_pairs, n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * config.x_range
    y = torch.einsum("bkij,bknj->bkni", w, x)
    if config.noise_std > 0:
        y = y + torch.randn(y.shape, generator=gen, dtype=torch.float64) * config.noise_std

    t_len, stride, p = config.seq_len, config.slots_per_pair, config.prefix_len
    m = k * n_pairs
    x_pos = p + stride * torch.arange(m)
    y_pos = x_pos + 1
    tokens = torch.zeros(b, t_len, n, dtype=torch.float64)
    tokens[:, x_pos] = x.reshape(b, m, n)
    tokens[:, y_pos] = y.reshape(b, m, n)
    targets = torch.zeros_like(tokens)
    targets[:, x_pos] = y.reshape(b, m, n)
    loss_mask = torch.zeros(b, t_len, dtype=torch.bool)
    loss_mask[:, x_pos] = True
    eos_mask = torch.zeros(b, t_len, dtype=torch.bool)
    if config.eos:
        eos_mask[:, x_pos + 2] = True
    prefix_mask = torch.zeros(b, t_len, dtype=torch.bool)
    prefix_mask[:, :p] = True
    return FewShotBatch(
        x=x.to(dtype),
        y=y.to(dtype),
        w_star=w.to(dtype),
        tokens=tokens.to(dtype),
        targets=targets.to(dtype),
        loss_mask=loss_mask,
        eos_mask=eos_mask,
        prefix_mask=prefix_mask,
        x_positions=x_pos,
        y_positions=y_pos,
    )


def _check_pairs(x: torch.Tensor, y: torch.Tensor, mode: str, ridge: float) -> None:
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.dim() != 3 or x.shape != y.shape:
        shapes = tuple(getattr(x, "shape", ())), tuple(getattr(y, "shape", ()))
        raise ValueError(f"x, y: expected two tensors of the same shape [B, M, n], got {shapes[0]} and {shapes[1]}")
    if mode not in LSQ_MODES:
        raise ValueError(f"mode: expected one of {LSQ_MODES}, got {mode!r}")
    if not is_real(ridge) or ridge < 0:
        raise ValueError(f"ridge: expected a float >= 0, got {ridge!r}")


def _lsq_fit(inputs: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """``Phi^T [B, n, n]`` minimising ``||targets - inputs Phi^T||^2 (+ ridge ||Phi||^2)``; inputs ``[B, m, n]``."""
    if ridge > 0:
        gram = inputs.transpose(1, 2) @ inputs + ridge * torch.eye(inputs.shape[-1], dtype=inputs.dtype)
        return torch.linalg.solve(gram, inputs.transpose(1, 2) @ targets)
    return torch.linalg.pinv(inputs) @ targets


def fewshot_lsq_predictions(x: torch.Tensor, y: torch.Tensor, mode: str = "autoregressive", ridge: float = 0.0) -> torch.Tensor:
    """``x, y [B, M, n]`` -> ``[B, M, n]`` float64 least-squares predictions of ``y_i`` from the pairs before it
    (``mode`` in ``LSQ_MODES``, see the module docstring); entry 0 is 0."""
    _check_pairs(x, y, mode, ridge)
    x, y = x.double(), y.double()
    preds = torch.zeros_like(y)
    for i in range(1, x.shape[1]):
        inputs, targets = x[:, :i], y[:, :i]
        if mode == "autoregressive":
            inputs = torch.cat([inputs, y[:, :i]], dim=1)
            targets = torch.cat([targets, x[:, 1 : i + 1]], dim=1)
        phi_t = _lsq_fit(inputs, targets, float(ridge))
        preds[:, i] = (x[:, i : i + 1] @ phi_t)[:, 0]
    return preds


def fewshot_lsq_loss(x: torch.Tensor, y: torch.Tensor, mode: str = "autoregressive", ridge: float = 0.0) -> torch.Tensor:
    """``[M]`` per-pair loss ``1/2 E_batch ||y_i - LSQ prediction||^2`` of ``fewshot_lsq_predictions``."""
    preds = fewshot_lsq_predictions(x, y, mode, ridge)
    return 0.5 * (y.double() - preds).pow(2).sum(-1).mean(0)
