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


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"stepz": 3},
            r"Outer: unknown keys \['stepz'\]; valid keys: \['limit', 'mixers', 'name', 'optim', 'precision', 'steps'\]",
        ),
        ({"optim": {"lrr": 1}}, r"optim: unknown keys \['lrr'\]; valid keys: \['betas', 'lr'\]"),
        ({"steps": "ten"}, r"steps: expected an integer, got 'ten'"),
        ({"steps": True}, r"steps: expected an integer, got True"),
        ({"precision": "fp16"}, r"precision: expected one of \['fp32', 'bf16'\], got 'fp16'"),
        ({"mixers": "mesa"}, r"mixers: expected a list, got 'mesa'"),
    ],
)
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


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "steps: 7\noptim:\n  lr: 0.01\n lr2: 1\n",
            r"config file '.*c\.yaml': invalid YAML at line 4, column 2: while parsing a block mapping",
        ),
        (
            "steps: [1, 2\n",
            r"config file '.*c\.yaml': invalid YAML at line 2, column 1: while parsing a flow sequence, expected ',' or '\]'",
        ),
    ],
)
def test_yaml_syntax_error_in_the_file_is_one_config_error_line(tmp_path, text, where):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=where) as info:
        load(Outer, path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=[1", r"override 'optim.lr=\[1': value '\[1': invalid YAML at line 1, column 3: while parsing a flow sequence"),
        ("name={a", r"override 'name=\{a': value '\{a': invalid YAML .*flow mapping"),
        ("=3", r"override '=3': expected KEY=VALUE with a dotted key such as optim.lr, got key ''"),
        ("optim..lr=3", r"got key 'optim..lr'"),
    ],
)
def test_bad_override_is_one_config_error_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load(Outer, None, [override])
    assert "\n" not in str(info.value)


def test_unreadable_config_files_are_config_errors_naming_the_file(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"config file '.*' does not exist"):
        load(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"config file '.*': expected a file, got a directory"):
        load(Outer, tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"binary\.yaml': expected UTF-8 text, got an undecodable byte at offset 6"):
        load(Outer, binary)
    locked = tmp_path / "locked.yaml"
    locked.write_text("steps: 1\n")

    def denied(self, *args, **kwargs):  # chmod 000 does not stop root, so refuse the read itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_text", denied)
    with pytest.raises(ConfigError, match=r"locked\.yaml' cannot be read: Permission denied"):
        load(Outer, locked)
