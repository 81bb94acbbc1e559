"""Settings of the synthetic suite: what data a grid cell trains and tests on.

A :class:`Setting` is one (task, difficulty) point: the generator call for its train and test sets
(drawn from one ``numpy`` stream seeded by ``data_seed``, train first, so the test set is held out), its
vocabulary / input size, the model head it needs and the training budget after per-task overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .config import SynthConfig
from .tasks import (
    MAD_NUM_TEST,
    MAD_TASKS,
    VOCAB_SIZE,
    InContextRegressionConfig,
    MQARConfig,
    RegBenchConfig,
    TokenBatch,
    automaton_keys,
    compression,
    fuzzy_recall,
    in_context_recall,
    in_context_regression,
    mad_settings,
    memorization,
    mqar,
    noisy_recall,
    regbench,
    selective_copying,
)

#: Training-set sizes when nothing overrides them (MAD's own come from ``mad_settings``).
DEFAULT_NUM_TRAIN = {"mqar": 20000, "regression": 20000}

#: MAD generator per task and whether it takes ``is_training`` (recall tasks train on every next token).
_MAD_GEN: dict[str, tuple[Callable, bool]] = {
    "in_context_recall": (in_context_recall, True),
    "noisy_recall": (noisy_recall, True),
    "fuzzy_recall": (fuzzy_recall, True),
    "selective_copying": (selective_copying, False),
    "compression": (compression, False),
    "memorization": (memorization, False),
}


@dataclass(frozen=True)
class Setting:
    """One task setting. ``kind``: ``"token"`` (classification, accuracy) or ``"regression"`` (MSE);
    ``head``: ``"lm"`` (per-position logits), ``"autoencoder"`` (MAD compression: decode the whole sequence
    from the last hidden state) or ``"regression"``. ``vocab_size`` (token tasks) / ``in_dim`` (regression).
    ``info`` carries task facts for the report (MQAR ``seq_len`` / ``num_pairs``, regression ``num_pairs``)."""

    task: str
    name: str
    kind: str
    head: str
    config: Any
    num_train: int
    num_test: int
    steps: int
    batch_size: int
    vocab_size: int = 0
    in_dim: int = 0
    info: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.task}/{self.name}"


def _budget(cfg: SynthConfig, task: str, num_train: int) -> tuple[int, int]:
    size = cfg.size(task)
    batch = size.batch_size or cfg.batch_size
    if size.steps:
        return size.steps, batch
    if cfg.epochs > 0:
        return max(1, math.ceil(cfg.epochs * num_train / batch)), batch
    return cfg.steps, batch


def _num_train(cfg: SynthConfig, task: str, default: int) -> int:
    cap = cfg.size(task).num_train or cfg.num_train
    return min(default, cap) if cap else default


def _replace(config: Any, params: dict, keep: str | None, where: str) -> Any:
    params = {k: v for k, v in params.items() if k != keep}
    fields = {f.name for f in dataclasses.fields(config)}
    bad = sorted(set(params) - fields)
    if bad:
        raise ValueError(f"task_sizes.{where}.params: unknown field(s) {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(config, **params)


def _mad(cfg: SynthConfig, task: str) -> list[Setting]:
    size = cfg.size(task)
    chosen = mad_settings(task) if cfg.mad_grid else mad_settings(task)[:1]
    out = []
    for s in chosen:
        varied = s.name.split("=")[0] if "=" in s.name else None
        config = _replace(s.config, size.params, varied, task)
        n_train = _num_train(cfg, task, s.num_train)  # a num_train variant keeps its value unless the cap is lower
        steps, batch = _budget(cfg, task, n_train)
        head = "autoencoder" if task == "compression" else "lm"
        out.append(
            Setting(
                task,
                s.name,
                "token",
                head,
                config,
                n_train,
                size.num_test or min(cfg.num_test, MAD_NUM_TEST),
                steps,
                batch,
                vocab_size=config.vocab_size,
            )
        )
    return out


def _mqar(cfg: SynthConfig) -> list[Setting]:
    size = cfg.size("mqar")
    out = []
    n_train = _num_train(cfg, "mqar", DEFAULT_NUM_TRAIN["mqar"])
    steps, batch = _budget(cfg, "mqar", n_train)
    for seq_len in cfg.mqar_seq_lens:
        for pairs in cfg.mqar_num_pairs:
            if 4 * pairs > seq_len:
                continue
            config = _replace(
                MQARConfig(seq_len=seq_len, num_kv_pairs=pairs, vocab_size=cfg.mqar_vocab_size), size.params, None, "mqar"
            )
            out.append(
                Setting(
                    "mqar",
                    f"L={seq_len},N={pairs}",
                    "token",
                    "lm",
                    config,
                    n_train,
                    size.num_test or cfg.num_test,
                    steps,
                    batch,
                    vocab_size=config.vocab_size,
                    info=(("seq_len", seq_len), ("num_pairs", pairs)),
                )
            )
    if not out:
        raise ValueError(
            f"mqar: no (seq_len, num_pairs) with 4 * num_pairs <= seq_len in {cfg.mqar_seq_lens} x {cfg.mqar_num_pairs}"
        )
    return out


def _regression(cfg: SynthConfig) -> list[Setting]:
    size = cfg.size("regression")
    config = _replace(InContextRegressionConfig(), size.params, None, "regression")
    n_train = _num_train(cfg, "regression", DEFAULT_NUM_TRAIN["regression"])
    steps, batch = _budget(cfg, "regression", n_train)
    name = f"d={config.dim},n={config.num_pairs},noise={config.noise_std:g}"
    return [
        Setting(
            "regression",
            name,
            "regression",
            "regression",
            config,
            n_train,
            size.num_test or cfg.num_test,
            steps,
            batch,
            in_dim=config.dim + 1,
            info=(("num_pairs", config.num_pairs),),
        )
    ]


def _regbench(cfg: SynthConfig) -> list[Setting]:
    """One setting per training-set size; ``cfg.num_train`` does not cap these (they are the grid axis)."""
    size = cfg.size("regbench")
    config = _replace(RegBenchConfig(), size.params, None, "regbench")
    out = []
    for n_train in cfg.regbench_num_train:
        steps, batch = _budget(cfg, "regbench", n_train)
        out.append(
            Setting(
                "regbench",
                f"n_train={n_train}",
                "token",
                "lm",
                config,
                n_train,
                size.num_test or cfg.num_test,
                steps,
                batch,
                vocab_size=VOCAB_SIZE,
            )
        )
    return out


def build_settings(cfg: SynthConfig) -> list[Setting]:
    """Every setting of ``cfg.tasks``, in task order."""
    out: list[Setting] = []
    for task in cfg.tasks:
        if task in MAD_TASKS:
            out += _mad(cfg, task)
        elif task == "mqar":
            out += _mqar(cfg)
        elif task == "regression":
            out += _regression(cfg)
        elif task == "regbench":
            out += _regbench(cfg)
        else:
            raise ValueError(f"tasks: unknown task {task!r}")
    return out


def _token_sets(setting: Setting, data_seed: int) -> tuple[TokenBatch, TokenBatch]:
    rng = np.random.default_rng(data_seed)
    if setting.task == "regbench":  # test automata are disjoint from the training ones
        train = regbench(setting.num_train, rng, setting.config)
        return train, regbench(setting.num_test, rng, setting.config, exclude=automaton_keys(train))
    if setting.task == "mqar":
        return mqar(setting.num_train, rng, setting.config), mqar(setting.num_test, rng, setting.config)
    gen, has_mode = _MAD_GEN[setting.task]
    if has_mode:
        return (
            gen(setting.num_train, rng, setting.config, is_training=True),
            gen(setting.num_test, rng, setting.config, is_training=False),
        )
    return gen(setting.num_train, rng, setting.config), gen(setting.num_test, rng, setting.config)


@functools.lru_cache(maxsize=4)
def load_data(setting: Setting, data_seed: int):
    """``(train, test)`` of ``setting``: ``TokenBatch``, ``RegBenchBatch`` or ``RegressionBatch`` pairs (cached per process)."""
    if setting.kind == "regression":
        rng = np.random.default_rng(data_seed)
        return (
            in_context_regression(setting.num_train, rng, setting.config),
            in_context_regression(setting.num_test, rng, setting.config),
        )
    return _token_sets(setting, data_seed)


__all__ = ["DEFAULT_NUM_TRAIN", "Setting", "build_settings", "load_data"]
