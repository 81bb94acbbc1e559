"""Strict typed configs: unknown keys and wrong types are errors; overrides; round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from mesanet.utils.config import ConfigError, from_dict, load, save, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class Outer:
    name: str = "run"
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    mixers: list[str] = field(default_factory=lambda: ["mesa"])
    limit: Optional[int] = None
    optim: Inner = field(default_factory=Inner)


def test_nested_build_and_coercion():
    cfg = from_dict(Outer, {"steps": 5, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "mixers": ["gla", "mesa"]})
    assert cfg.steps == 5 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9) and cfg.mixers == ["gla", "mesa"] and cfg.limit is None


@pytest.mark.parametrize("data, message", [
    ({"stepz": 3}, r"Outer: unknown keys \['stepz'\]; valid keys: \['limit', 'mixers', 'name', 'optim', 'precision', 'steps'\]"),
    ({"optim": {"lrr": 1}}, r"optim: unknown keys \['lrr'\]; valid keys: \['betas', 'lr'\]"),
    ({"steps": "ten"}, r"steps: expected an integer, got 'ten'"),
    ({"steps": True}, r"steps: expected an integer, got True"),
    ({"precision": "fp16"}, r"precision: expected one of \['fp32', 'bf16'\], got 'fp16'"),
    ({"mixers": "mesa"}, r"mixers: expected a list, got 'mesa'"),
])
def test_bad_configs_name_the_problem(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_overrides_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\noptim:\n  lr: 0.01\n")
    cfg = load(Outer, path, ["optim.lr=3e-4", "limit=100", "precision=bf16"])
    assert (cfg.steps, cfg.optim.lr, cfg.limit, cfg.precision) == (7, 3e-4, 100, "bf16")
    save(cfg, tmp_path / "resolved.yaml")
    assert load(Outer, tmp_path / "resolved.yaml") == cfg
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.98]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load(Outer, path, ["steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(Outer, tmp_path / "missing.yaml")
