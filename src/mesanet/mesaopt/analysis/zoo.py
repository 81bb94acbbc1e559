"""Named, CPU-small training recipes of the mesa-optimization models, trained once and cached on disk.

``ZOO[name] = (SeqModelConfig, SeqTrainConfig)``. :func:`load_or_train` trains a recipe the first time and
writes ``<root>/<name>/``: ``model.safetensors``, the resolved ``model_config.yaml`` / ``train_config.yaml``,
``losses.csv`` (training loss and gradient norm per step) and ``train_info.yaml`` (wall time, final loss);
later calls reload it. A saved model whose configs differ from the recipe is never reused silently: it is
a ``ValueError`` unless ``overwrite=True`` (retrain in place).

Paper settings scaled to CPU budgets, all on the fully observed LDS (n_s = 10, T = 50,
noise 0.01, U(-1, 1) initial state):

* constructed-token models (``linear-k``, ``mesa-1``, ``mesa-forget-1``, ``sm-mesa-1``): tokens
  ``[0, s_t, s_{t-1}]`` (30 dims; the paper's code uses a 4-slot 40-dim variant), no embeddings, no LN/MLP,
  init std 0.0002 (linear) or 0.05 (mesa: tiny q/k make the ridge solve start in its regulariser-dominated
  regime), activation clip 4, weight decay 0.1; 1 layer: 2 heads x key 20; k layers: 4 heads x key 20.
  The paper's fixed lr 1e-4 is replaced by warm-up + cosine to a higher peak (CPU budget).
* unconstructed-token models (``softmax-2``, ``hybrid-softmax-mesa``, ``hybrid-softmax-linear``,
  ``full-mesa-2``): embedding 40, 4 heads x key 20, sinusoidal PE added to the embedding, GPT-2 blocks (LN +
  4x GELU MLP), init std 0.05, warm-up to 2e-3 then cosine (paper: 7e-4 over 30k steps), weight decay 0.05.
* batch 64 instead of 256; step counts chosen for about 3 CPU-minutes or less on one thread. Measured CPU cost
  per step (1 thread, shared machine): linear-1 15 ms, linear-2 39, linear-4 62, mesa-1 54, mesa-forget-1 57,
  sm-mesa-1 76, softmax-2 58, hybrid-softmax-linear 54, hybrid-softmax-mesa 271, full-mesa-2 403 ms; the two
  4-head mesa models (``ops.mesa`` CG over 4 heads) are exceptions at ~4.5 and ~3.4 CPU-minutes, and so is
  ``mesa-1`` (6000 steps, no weight decay, ~5.5 CPU-minutes: the single-layer ridge target needs it).
  ``train_info.yaml`` records wall and CPU seconds of every run.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from mesanet.utils.config import ConfigError, from_dict, to_dict

from ..data.dynamics import LDSConfig
from ..models import SeqModelConfig, SequenceModel
from .seq_training import SeqTrainConfig, train_sequence_model

__all__ = ["ZOO", "DEFAULT_ROOT", "load_for_analysis", "load_or_train", "load_saved", "recipe"]

DEFAULT_ROOT = Path("runs/mesaopt/models")
_TASK = LDSConfig(state_dim=10, seq_len=50)
_N = _TASK.state_dim


def _constructed(layers: list[str], *, heads: int, init_std: float) -> SeqModelConfig:
    return SeqModelConfig(
        layers=layers,
        input_dim=3 * _N,
        output_dim=_N,
        embed_dim=None,
        num_heads=heads,
        key_size=20,
        activation_clip=4.0,
        init_std=init_std,
    )


def _unconstructed(layers: list[str]) -> SeqModelConfig:
    return SeqModelConfig(
        layers=layers,
        input_dim=_N,
        output_dim=_N,
        embed_dim=40,
        num_heads=4,
        key_size=20,
        mlp=True,
        layer_norm=True,
        positional="sinusoidal",
        max_len=_TASK.seq_len,
        init_std=0.05,
    )


def _train_constructed(steps: int, lr: float) -> SeqTrainConfig:
    return SeqTrainConfig(
        steps=steps, batch_size=64, lr=lr, weight_decay=0.1, warmup_steps=100, min_lr_ratio=0.01, tokens="constructed", task=_TASK
    )


def _train_unconstructed(steps: int, lr: float = 2e-3) -> SeqTrainConfig:
    return SeqTrainConfig(
        steps=steps,
        batch_size=64,
        lr=lr,
        weight_decay=0.05,
        warmup_steps=100,
        min_lr_ratio=0.01,
        tokens="unconstructed",
        task=_TASK,
    )


ZOO: dict[str, tuple[SeqModelConfig, SeqTrainConfig]] = {
    "linear-1": (_constructed(["linear"], heads=2, init_std=2e-4), _train_constructed(4000, 3e-3)),
    "linear-2": (_constructed(["linear"] * 2, heads=4, init_std=2e-4), _train_constructed(3000, 3e-3)),
    "linear-4": (_constructed(["linear"] * 4, heads=4, init_std=2e-4), _train_constructed(2000, 3e-3)),
    # The single-mesa-layer target model (issue: within 2 % of optimal ridge at t = 50) gets a longer budget and
    # no weight decay: decay on W_k / W_q acts as an extra regulariser on top of I / lam and the t = 50 loss kept
    # falling with steps (measured at t = 50, ratio to tuned ridge: 2000 steps wd 0.1 -> 1.56, 2000 wd 0 -> 1.38,
    # 6000 wd 0 -> 1.10; the mean over t is at or below ridge's in every case).
    "mesa-1": (_constructed(["mesa"], heads=1, init_std=0.05), replace(_train_constructed(6000, 1e-2), weight_decay=0.0)),
    "mesa-forget-1": (_constructed(["mesa_forget"], heads=1, init_std=0.05), _train_constructed(1500, 1e-2)),
    "sm-mesa-1": (_constructed(["sherman_morrison"], heads=1, init_std=0.05), _train_constructed(1500, 1e-2)),
    "softmax-2": (_unconstructed(["softmax", "softmax"]), _train_unconstructed(1500)),
    "hybrid-softmax-linear": (_unconstructed(["softmax", "linear"]), _train_unconstructed(1500)),
    "hybrid-softmax-mesa": (_unconstructed(["softmax", "mesa"]), _train_unconstructed(1000)),
    "full-mesa-2": (_unconstructed(["mesa", "mesa"]), _train_unconstructed(500)),
}


def recipe(name: str) -> tuple[SeqModelConfig, SeqTrainConfig]:
    """Copies of the configs of ``ZOO[name]`` (``ValueError`` for an unknown name)."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; expected one of {sorted(ZOO)}")
    model_cfg, train_cfg = ZOO[name]
    return replace(model_cfg, layers=list(model_cfg.layers)), replace(train_cfg)


# ----------------------------------------------------------------------------------------- storage

_FILES = ("model.safetensors", "model_config.yaml", "train_config.yaml", "losses.csv", "train_info.yaml")


def _dump(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _same_config(cls, saved_path: Path, config) -> tuple[bool, str]:
    try:
        saved = to_dict(from_dict(cls, yaml.safe_load(saved_path.read_text())))
    except (ConfigError, ValueError, TypeError, yaml.YAMLError) as e:
        return False, f"{saved_path.name} is unreadable as {cls.__name__} ({e})"
    wanted = to_dict(config)
    if saved != wanted:
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        return False, f"{saved_path.name} differs in {diff}"
    return True, ""


def load_saved(run_dir: Path) -> SequenceModel:
    """The model stored in ``run_dir`` (built from its ``model_config.yaml``), in ``eval()`` mode."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    missing = [f for f in _FILES if not (run_dir / f).is_file()]
    if missing:
        raise ValueError(f"{run_dir}: expected a complete saved model, missing {missing}")
    model_cfg = from_dict(SeqModelConfig, yaml.safe_load((run_dir / "model_config.yaml").read_text()))
    model = SequenceModel(model_cfg)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval()


def _save(run_dir: Path, model: SequenceModel, model_cfg, train_cfg, result, times: tuple[float, float]) -> Path:
    """Write everything into a private ``<name>.partial-*`` directory first; returns it (not yet renamed)."""
    from safetensors.torch import save_file

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=run_dir.name + ".partial-", dir=run_dir.parent))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    _dump(tmp / "model_config.yaml", to_dict(model_cfg))
    _dump(tmp / "train_config.yaml", to_dict(train_cfg))
    with open(tmp / "losses.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "grad_norm"])
        writer.writerows(zip(range(len(result.losses)), result.losses, result.grad_norms))
    # cpu_seconds (process time) is the budget figure on a shared machine; with one thread it equals the wall
    # time of an idle machine, while train_seconds (wall) also counts waiting for the CPU.
    _dump(
        tmp / "train_info.yaml",
        {
            "train_seconds": round(times[0], 2),
            "cpu_seconds": round(times[1], 2),
            "final_loss": float(result.final_loss),
            "torch_threads": torch.get_num_threads(),
        },
    )
    return tmp


def _check_saved(run_dir: Path, model_cfg: SeqModelConfig, train_cfg: SeqTrainConfig) -> None:
    for cls, fname, cfg in ((SeqModelConfig, "model_config.yaml", model_cfg), (SeqTrainConfig, "train_config.yaml", train_cfg)):
        if not (run_dir / fname).is_file():
            raise ValueError(f"{run_dir}: exists but holds no {fname}; remove it or pass overwrite=True")
        same, why = _same_config(cls, run_dir / fname, cfg)
        if not same:
            raise ValueError(f"{run_dir}: stale saved model ({why}); remove it or pass overwrite=True to retrain")


def load_or_train(
    name: str,
    root: Path = DEFAULT_ROOT,
    *,
    progress: bool = True,
    overwrite: bool = False,
    configs: tuple[SeqModelConfig, SeqTrainConfig] | None = None,
) -> SequenceModel:
    """The trained model ``name`` from ``root/name`` (trained and saved first if absent), in ``eval()`` mode.

    ``configs`` overrides the recipe (for models outside :data:`ZOO`; ``name`` is then just the directory).
    A saved model with different configs raises ``ValueError`` unless ``overwrite=True``, which retrains.
    """
    model_cfg, train_cfg = recipe(name) if configs is None else configs
    if not isinstance(model_cfg, SeqModelConfig) or not isinstance(train_cfg, SeqTrainConfig):
        raise ValueError("configs: expected (SeqModelConfig, SeqTrainConfig)")
    run_dir = Path(root) / name
    if run_dir.exists() and not overwrite:
        _check_saved(run_dir, model_cfg, train_cfg)
        return load_saved(run_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    model, result = train_sequence_model(model_cfg, train_cfg, progress=progress, desc=name)
    times = (time.perf_counter() - start, time.process_time() - cpu_start)
    tmp = _save(run_dir, model, model_cfg, train_cfg, result, times)
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    try:
        tmp.rename(run_dir)
    except OSError:  # another process saved the same name meanwhile: keep its copy if it is the same recipe
        shutil.rmtree(tmp)
        _check_saved(run_dir, model_cfg, train_cfg)
    return model


def load_for_analysis(
    name: str, zoo_root: str | None, train_steps: int | None, out_dir: Path, *, progress: bool = True
) -> SequenceModel:
    """The model an analysis runs on: the zoo's ``name`` (under ``zoo_root`` or :data:`DEFAULT_ROOT`), or, with
    ``train_steps`` set (quick runs), the same recipe cut to that many steps, cached as ``<name>-steps<N>``
    under ``zoo_root`` or ``out_dir/models``."""
    if train_steps is None:
        return load_or_train(name, Path(zoo_root) if zoo_root is not None else DEFAULT_ROOT, progress=progress)
    model_cfg, train_cfg = recipe(name)
    root = Path(zoo_root) if zoo_root is not None else Path(out_dir) / "models"
    return load_or_train(
        f"{name}-steps{train_steps}", root, progress=progress, configs=(model_cfg, replace(train_cfg, steps=train_steps))
    )
