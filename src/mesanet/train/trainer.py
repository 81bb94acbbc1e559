"""The training loop: ``train(cfg)`` / :class:`Trainer`.

One optimizer step = ``grad_accum`` micro-batches on each of ``world_size`` processes. The global batch of
a step is fixed by (``seed``, ``batch_size``, step) alone: micro-batch ``a`` of rank ``r`` reads the rows of
"virtual rank" ``r * grad_accum + a`` of ``world_size * grad_accum`` (:class:`mesanet.data.TokenBatches`
slices one global batch by rank). Every micro-batch loss is the mean over its tokens and all micro-batches
have the same size, so ``mean_a loss_a`` (accumulation) averaged over ranks (DDP) is the mean over the
global batch: any split gives the same loss trace up to floating-point reduction order.

Order inside a step: forward/backward of every micro-batch (bf16 autocast around the forward only, as
PyTorch recommends) -> global mean loss -> gradient norm (clipped to ``grad_clip``) -> non-finite guard
(:class:`NonFiniteError`, raised before ``optimizer.step()``) -> AdamW step -> scheduler step -> parameters and
optimizer state checked finite (nothing non-finite is ever saved). The Mesa layers' CG steps of every step go to
the metrics and the progress bar (:class:`~.solver_monitor.SolverMonitor`).

One process trains a run directory at a time (:mod:`.run_lock`); SIGINT / SIGTERM stop it at the next step
boundary with a checkpoint (:mod:`.interrupts`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mesanet.data import TokenBatches, prepare_data
from mesanet.models import MesaNetForCausalLM
from mesanet.utils.config import to_dict

from . import checkpoint as ckpt
from . import distributed, guards
from .config import TrainConfig, build_model_config, check_config
from .guards import NonFiniteError
from .interrupts import StopRequests, TrainingInterrupted
from .metrics import MetricsLogger
from .optim import build_optimizer, build_scheduler, clip_norm
from .run_lock import RunLock, remove_leftovers
from .run_setup import load_resume_state, restore_training_state, validation_windows, write_run_files
from .solver_monitor import SolverMonitor

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one ``train()`` call did. ``steps``: the step reached (= ``max_steps`` when finished);
    ``start_step``: where this call began (> 0 after a resume); ``losses``: train loss of every step this call
    ran (steps ``start_step + 1 .. steps``); ``tokens_per_s``: over this call's optimizer steps (0 if none)."""

    run_dir: Path
    steps: int
    start_step: int
    final_train_loss: Optional[float]
    final_val_loss: Optional[float]
    final_val_ppl: Optional[float]
    tokens_per_s: float
    losses: list[float] = field(default_factory=list)
    checkpoint: Optional[Path] = None


class Trainer:
    """Sets up a run (process group, data, model, optimizer, resume) in ``__init__`` and trains in :meth:`fit`.

    Everything that can be rejected (config, data, the checkpoint to resume from) is checked before anything is
    written. Only rank 0 writes (run directory, logs, checkpoints); every rank reads the checkpoint it resumes
    from, so with several nodes the run directory must be on a shared file system.
    """

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        self.dist = distributed.setup(getattr(cfg, "device", "auto"))
        self.lock = None
        try:
            self._setup(cfg, progress)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run lock and the process group (after :meth:`fit`, or to abandon a Trainer unfitted)."""
        if self.lock is not None:
            self.lock.release()
        distributed.teardown(self.dist)

    # ------------------------------------------------------------------------------------------ setup

    def _setup(self, cfg: TrainConfig, progress: bool) -> None:
        check_config(cfg, self.dist.world_size)
        self.cfg, self.progress = cfg, progress
        d, device = self.dist, self.dist.device
        self.run_dir = Path(cfg.out_dir) / cfg.name
        self.ckpt_root = self.run_dir / "checkpoints"
        if d.is_main:  # one process per run: a second one stops here, before reading or writing anything
            self.lock = RunLock(self.run_dir).acquire()
            for leftover in remove_leftovers(self.run_dir, "checkpoints"):  # of writers killed mid-write
                log.info("removed %s (left by an interrupted write)", leftover)
        existing = ckpt.list_checkpoints(self.ckpt_root)
        if not cfg.resume and (existing or (self.run_dir / "metrics.csv").exists() or (self.run_dir / "final").exists()):
            raise ValueError(
                f"run directory {self.run_dir} already holds results (checkpoints, metrics or final/) and resume is false: "
                "set resume: true to continue it, or choose another name / out_dir (nothing was overwritten)"
            )

        # Data: rank 0 prepares (and fills the cache) first, the others then read the cache.
        if d.is_main:
            self.prepared = prepare_data(cfg.data, progress=progress)
        distributed.barrier(d)
        if not d.is_main:
            self.prepared = prepare_data(cfg.data, progress=False)
        self.tokenizer = self.prepared.tokenizer
        self.model_config = build_model_config(cfg.model, len(self.tokenizer), self.prepared.eod_id, self.tokenizer.pad_token_id)

        # The checkpoint to resume from: fully validated before anything is built or written.
        self.resumed_from = last = existing[-1] if cfg.resume and existing else None
        state = load_resume_state(last, existing, cfg, self.model_config, self.prepared) if last else None

        # Model, optimizer, schedule (same seed on every rank: identical initial weights).
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = MesaNetForCausalLM(self.model_config).to(device)
        if cfg.gradient_checkpointing:  # recompute every block in the backward pass (same gradients, less memory)
            self.model.activation_checkpointing_enable()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.max_steps)
        self.micro_batch = cfg.batch_size // (d.world_size * cfg.grad_accum)
        streams = d.world_size * cfg.grad_accum
        self.batches = [
            TokenBatches(
                self.prepared.train,
                cfg.data.seq_len,
                self.micro_batch,
                seed=cfg.seed,
                rank=d.rank * cfg.grad_accum + a,
                world_size=streams,
            )
            for a in range(cfg.grad_accum)
        ]
        self.step, self.elapsed_before = 0, 0.0
        self.last_train_loss = self.last_val_loss = None
        self.last_checkpoint: Optional[Path] = None
        if state is not None:
            self._restore(state)
            bad = guards.nonfinite_part(self.model, self.optimizer)
            if bad is not None:
                hint = guards.older_checkpoint_hint(existing, self.model_config)
                raise ckpt.CheckpointError(
                    f"checkpoint {self.resumed_from} holds a non-finite {bad}{hint} (nothing was modified)"
                )

        self.ddp = None
        if d.distributed:
            self.ddp = DistributedDataParallel(  # buffers (RoPE tables) are constants: no per-step broadcast
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        step_model = self.ddp if self.ddp is not None else self.model
        self.compiled = torch.compile(step_model, backend=cfg.compile_backend) if cfg.compile else None  # training forward

        # Validation windows: this rank's share of the first eval_batches * batch_size windows.
        self.num_val_windows, self.val_windows = validation_windows(self.prepared.val, cfg, d.rank, d.world_size)
        if d.is_main:  # only now: write the run directory
            write_run_files(self.run_dir, cfg, self.prepared)
        self.solver_monitor = SolverMonitor(self.model, enabled=d.is_main)  # CG steps of the Mesa layers (rank 0's)
        self.logger = MetricsLogger(
            self.run_dir,
            start_step=self.step,
            enabled=d.is_main,
            extra_columns=self.solver_monitor.columns,
            config=to_dict(cfg),
            wandb=dict(project=cfg.logging.wandb_project, name=cfg.name) if cfg.logging.wandb else None,
        )

    def _restore(self, state: dict) -> None:
        d, path = self.dist, self.resumed_from
        restored = restore_training_state(
            path, state, self.model, self.optimizer, self.scheduler, self.batches, d.rank, d.world_size, self.cfg.grad_accum
        )
        self.step, self.elapsed_before = restored.step, restored.elapsed
        self.last_train_loss, self.last_val_loss = restored.train_loss, restored.val_loss
        self.last_checkpoint = path
        if d.is_main:
            log.info("resuming %s from %s (step %d)", self.cfg.name, path, self.step)

    # ------------------------------------------------------------------------------------------ steps

    def _autocast(self):
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def train_step(self, step: int) -> tuple[float, float, float]:
        """Optimizer step number ``step`` (1-based): ``(global mean loss, gradient norm before clipping, lr)``.
        A :class:`NonFiniteError` leaves no gradient behind (every ``.grad`` is ``None``)."""
        try:
            return self._step(step)
        except NonFiniteError:
            self.optimizer.zero_grad(set_to_none=True)
            raise

    def _nonfinite(self, step: int, quantity: str, value, after_update: bool = False) -> NonFiniteError:
        last_good = guards.last_good_checkpoint(self.ckpt_root, self.model_config)  # checked on disk, not assumed
        return NonFiniteError(step, quantity, value, last_good, after_update=after_update)

    def _require_finite(self, step: int) -> None:
        """:class:`NonFiniteError` unless the parameters and the optimizer state are finite (after an update, before a save)."""
        bad = guards.nonfinite_part(self.model, self.optimizer)
        if bad is not None:
            raise self._nonfinite(step, bad, "NaN/inf", after_update=True)

    def _step(self, step: int) -> tuple[float, float, float]:
        cfg, model = self.cfg, next(m for m in (self.compiled, self.ddp, self.model) if m is not None)
        self.model.train()
        lr = self.scheduler.get_last_lr()[0]
        total = torch.zeros((), device=self.dist.device)
        with self.solver_monitor.collect():
            for a, batches in enumerate(self.batches):
                ids = next(batches).to(self.dist.device, non_blocking=True)
                sync = self.ddp is None or a == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    with self._autocast():
                        loss = model(input_ids=ids, labels=ids).loss
                    (loss / cfg.grad_accum).backward()
                total += loss.detach()
        self.solver_monitor.check(step)
        loss_value = float(distributed.all_reduce_mean(total / cfg.grad_accum, self.dist))
        if not math.isfinite(loss_value):
            raise self._nonfinite(step, "loss", loss_value)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_norm(cfg.optim.grad_clip)))
        if not math.isfinite(grad_norm):
            raise self._nonfinite(step, "grad_norm", grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._require_finite(step)
        return loss_value, grad_norm, lr

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Mean next-token loss over the validation windows (all ranks), in ``eval()`` mode (Mesa layers then use
        ``solver_inference``); the previous train/eval mode is restored. ``None`` without validation windows."""
        if self.num_val_windows == 0:
            return None
        was_training = self.model.training
        self.model.eval()
        try:
            sums = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
            for chunk in self.val_windows.split(max(1, self.cfg.batch_size // self.dist.world_size)):
                chunk = chunk.to(self.dist.device)
                with self._autocast():
                    out = self.model(input_ids=chunk, labels=chunk, use_cache=False)
                n = chunk.shape[0] * (chunk.shape[1] - 1)
                sums += torch.stack([out.loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=sums.device)])
            sums = distributed.all_reduce_sum(sums, self.dist)
        finally:
            self.model.train(was_training)
        return float(sums[0] / sums[1])

    def save_checkpoint(self, elapsed: float) -> Path:
        """Checkpoint of the current step (rank 0 writes; every rank contributes its RNG and data positions); never
        of non-finite weights or optimizer state."""
        self._require_finite(self.step)
        rng = distributed.all_gather_objects(ckpt.capture_rng_state(), self.dist)
        data = distributed.all_gather_objects([b.state_dict() for b in self.batches], self.dist)
        path = ckpt.checkpoint_path(self.ckpt_root, self.step)
        if self.dist.is_main:
            metrics = {"train_loss": self.last_train_loss, "val_loss": self.last_val_loss, "elapsed": elapsed}
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "data": data,
                "config": to_dict(self.cfg),
                "metrics": metrics,
            }
            p = self.prepared
            summary = {
                "model_type": self.model_config.model_type,
                "next_lr": self.scheduler.get_last_lr()[0],
                **metrics,
                "tokens_seen": self.step * self.cfg.batch_size * self.cfg.data.seq_len,
                "world_size": self.dist.world_size,
                "grad_accum": self.cfg.grad_accum,
                "corpus_hash": p.corpus_hash,
                "tokenizer_hash": p.tokenizer_hash,
            }
            ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, self.tokenizer, state, summary, self.cfg.keep_last)
        self.last_checkpoint = path
        return path

    # ------------------------------------------------------------------------------------------- loop

    def fit(self) -> TrainResult:
        """Train from the current step to ``max_steps``; evaluate, checkpoint and write ``final/`` at the end."""
        try:
            with StopRequests(self.dist) as stop:
                result = self._fit(stop)
            distributed.barrier(self.dist)  # every rank leaves together, after rank 0 has written final/
            return result
        finally:
            self.logger.close()
            # The DDP reducer must be freed while its process group still exists: freeing it after
            # destroy_process_group (when the Trainer goes out of scope) intermittently hangs gloo at exit.
            self.ddp = self.compiled = None
            gc.collect()
            self.close()

    def _fit(self, stop: StopRequests) -> TrainResult:
        cfg, d = self.cfg, self.dist
        start_step, start = self.step, time.perf_counter()
        tokens_per_step = cfg.batch_size * cfg.data.seq_len
        losses: list[float] = []
        train_time = window_time = 0.0
        window_tokens = 0
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc=f"train {cfg.name}",
            unit="step",
            disable=not (self.progress and d.is_main),
            dynamic_ncols=True,
        )
        try:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                loss, grad_norm, lr = self.train_step(self.step + 1)
                dt = time.perf_counter() - t0
                self.step += 1
                losses.append(loss)
                self.last_train_loss = loss
                train_time += dt
                window_time += dt
                window_tokens += tokens_per_step
                last = self.step == cfg.max_steps
                val_loss = None
                if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                    val_loss = self.last_val_loss = self.evaluate()
                elapsed = self.elapsed_before + time.perf_counter() - start
                if last or self.step % cfg.log_every == 0 or val_loss is not None:
                    self.logger.log(
                        self.step,
                        lr=lr,
                        train_loss=loss,
                        grad_norm=grad_norm,
                        tokens_per_s=window_tokens / max(window_time, 1e-9),
                        elapsed=elapsed,
                        val_loss=val_loss,
                        tokens=self.step * tokens_per_step,
                        extra=self.solver_monitor.metrics(),
                    )
                    window_tokens, window_time = 0, 0.0
                postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_step / max(dt, 1e-9):,.0f}"}
                if self.last_val_loss is not None:
                    postfix["val"] = f"{self.last_val_loss:.4f}"
                if self.solver_monitor.enabled:
                    postfix["cg"] = self.solver_monitor.progress_text()
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                saved = last or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                if saved:
                    self.save_checkpoint(elapsed)
                signum = 0 if last else stop.requested()  # the last step finishes the run anyway
                if signum:
                    raise TrainingInterrupted(signum, self.step, self.last_checkpoint if saved else self.save_checkpoint(elapsed))
        finally:
            bar.close()
        if d.is_main:
            self._require_finite(self.step)
            ckpt.atomic_directory(
                self.run_dir / "final", lambda tmp: ckpt.save_pretrained(tmp, self.model, self.tokenizer, checksums=True)
            )
        val = self.last_val_loss
        return TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            start_step=start_step,
            final_train_loss=self.last_train_loss,
            final_val_loss=val,
            final_val_ppl=math.exp(min(val, 80.0)) if val is not None else None,
            tokens_per_s=(len(losses) * tokens_per_step / train_time) if train_time > 0 else 0.0,
            losses=losses,
            checkpoint=self.last_checkpoint,
        )


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes; see :class:`Trainer` and ``docs/training.md``."""
    return Trainer(cfg, progress=progress).fit()


__all__ = ["NonFiniteError", "TrainResult", "Trainer", "train"]
