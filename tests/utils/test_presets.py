"""Packaged presets: every preset loads with its config class, commands take a preset name or a file path,
``--print-config`` prints the resolved config, ``train --help`` lists every config key, ``mesaopt list`` works."""

from __future__ import annotations

import os

import pytest
import yaml

from mesanet import cli
from mesanet.presets import PRESET_DIR, preset_names, preset_path, resolve_config
from mesanet.utils.config import ConfigError, describe_fields, from_dict, load, to_dict


def config_class(name: str):
    if name.startswith("synth"):
        from mesanet.synth.config import SynthConfig

        return SynthConfig
    if name == "compare":
        from mesanet.eval.compare import CompareConfig

        return CompareConfig
    from mesanet.train.config import TrainConfig

    return TrainConfig


def test_the_packaged_presets_are_the_documented_ones():
    assert {"tiny", "small", "compare", "synth", "synth-quick", "synth-paper"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_with_its_config_class(name):
    cfg = load(config_class(name), preset_path(name))
    assert to_dict(cfg)  # strict loading: an unknown key or a bad type would have raised


def test_a_name_and_a_path_resolve_to_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any directory
    assert resolve_config("small") == PRESET_DIR / "small.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("max_steps: 3\n")
    assert resolve_config(str(own)) == own
    assert resolve_config("mine.yaml") == own.relative_to(tmp_path)
    (tmp_path / "small").write_text("max_steps: 4\n")  # an existing file wins over a preset of the same name
    assert resolve_config("small").resolve() == (tmp_path / "small").resolve()


def test_an_unknown_preset_is_one_line_naming_the_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="expected a YAML file path or a preset name, one of .*'small'"):
        resolve_config("smal")
    assert cli.main(["train", "smal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'smal'" in err[0] and "'tiny'" in err[0]
    with pytest.raises(ConfigError):  # a path stays a path: reported as a missing file
        load(config_class("tiny"), resolve_config("nope.yaml"))


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mesanet.train.__main__.train", lambda *a, **k: pytest.fail("--print-config must not train"))
    assert cli.main(["train", "tiny", "max_steps=3", "--print-config", "optim.lr=1e-3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    TrainConfig = config_class("tiny")
    expected = load(TrainConfig, preset_path("tiny"), ["max_steps=3", "optim.lr=1e-3"])
    assert printed == to_dict(expected)
    assert to_dict(from_dict(TrainConfig, printed)) == printed  # the output is itself a valid config
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("command", ["train", "compare"])
def test_help_lists_every_config_key_with_its_type_and_default(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and " = " in line}
    rows = describe_fields(config_class(command))
    assert len(rows) > 10
    for key, kind, default in rows:
        assert key in lines, key
        assert f" {kind} = " in lines[key], (key, kind, lines[key])
    assert lines["max_steps" if command == "train" else "base.max_steps"].rstrip().endswith("= 200")


def test_mesaopt_list_names_the_analyses(capsys):
    assert cli.main(["mesaopt", "list"]) == 0
    out = capsys.readouterr().out
    assert "analyses:" in out and "gd-construction" in out
