"""Training: AdamW + warm-up/cosine, gradient accumulation, bf16 autocast, atomic checkpoints with exact resume,
CSV / TensorBoard logs (Mesa CG steps per layer included) and DDP under ``torchrun``. Entry points: :func:`train` (``python -m mesanet.train``)."""

from .checkpoint import CheckpointError, list_checkpoints
from .config import ModelSection, OptimConfig, TrainConfig, build_model_config, check_config
from .interrupts import TrainingInterrupted
from .loop import LoopResult, NonFiniteLossError, fit_steps
from .metrics import read_metrics
from .optim import build_optimizer, build_scheduler, lr_multiplier, param_groups
from .run_lock import RunInUseError
from .solver_monitor import SolverConvergenceWarning, SolverMonitor
from .trainer import NonFiniteError, Trainer, TrainResult, train

__all__ = [
    "CheckpointError",
    "LoopResult",
    "ModelSection",
    "NonFiniteLossError",
    "NonFiniteError",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model_config",
    "build_optimizer",
    "build_scheduler",
    "check_config",
    "fit_steps",
    "list_checkpoints",
    "lr_multiplier",
    "param_groups",
    "read_metrics",
    "train",
    "SolverConvergenceWarning",
    "SolverMonitor",
    "RunInUseError",
    "TrainingInterrupted",
]
