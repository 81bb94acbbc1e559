"""Ctrl-C / SIGTERM during training: finish the step, save a checkpoint, stop with 130 / 143.

While :class:`StopRequests` is active, SIGINT and SIGTERM only record the signal (a second one gets the
previous behaviour back: Ctrl-C twice stops at once, which atomic checkpoints make safe). The training loop
asks :meth:`StopRequests.requested` at every step boundary; under DDP the ranks agree on it (one max-reduce
per step), since they may receive the signal at different moments but must stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from .distributed import DistInfo

#: Signals that stop training at the next step boundary.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after step ``step``; ``checkpoint`` holds that step (resume continues there).
    ``exit_code``: the shell convention, 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[Path]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        self.signal_name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint saved"
        super().__init__(f"training interrupted by {self.signal_name} after step {step}: {saved}")


class StopRequests:
    """Context manager recording SIGINT / SIGTERM instead of acting on them (main thread only; elsewhere a no-op)."""

    def __init__(self, info: DistInfo):
        self.info = info
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.signum = self.signum or signum
        previous = self._previous.get(signum)
        if previous is not None:
            signal.signal(signum, previous)  # the next one acts at once

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def requested(self) -> int:
        """The signal number asking to stop (0: none); the same on every rank."""
        if not self.info.distributed:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=self.info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def resume_command(args: list[str], resume: bool, program: str = "mesanet train") -> str:
    """The command that resumes a run started with ``args`` (its ``resume=...`` overrides dropped, and
    ``resume=true`` added when the run was started with ``resume: false``)."""
    import shlex

    kept = [a for a in args if not a.replace(" ", "").startswith("resume=")]
    return " ".join([program, *map(shlex.quote, kept), *([] if resume else ["resume=true"])])


__all__ = ["STOP_SIGNALS", "StopRequests", "TrainingInterrupted", "resume_command"]
