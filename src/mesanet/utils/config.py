"""Typed dataclass configs from YAML / dicts: unknown keys are errors, values are type-checked.

``from_dict(Cls, data)`` builds a (nested) dataclass, rejecting unknown keys with the list of valid ones;
``load(Cls, path, overrides)`` reads YAML and applies ``a.b=value`` overrides (values parsed as YAML); a missing or
unreadable file and a YAML syntax error are one-line ``ConfigError`` messages too;
``to_dict`` / ``save`` write the resolved config back (saved with every run).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar, Union

import yaml

from .validation import is_int, is_real

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not match its dataclass (unknown key, wrong type, bad override)."""


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """``cls(**data)`` recursively, strict about keys and types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, f"{where}.{name}" if where else name) for name, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if not is_real(value, finite=False):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if not is_int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``["optim.lr=1e-3", "model.mixer=gla"]`` applied to a nested mapping (values parsed as YAML)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        node, parts = data, key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node[part] = dict(child)
            node = node[part]
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key such as optim.lr, got key {key!r}")
        node[parts[-1]] = parse_yaml(raw, f"override {item!r}: value {raw!r}")
    return data


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; a syntax error becomes a one-line :class:`ConfigError` saying where (line and
    column, counted from 1) and what the parser expected."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = ", ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ConfigError(f"{where}: invalid YAML{at}: {' '.join(problem.split())}") from e


def read_text(path: Path, what: str = "config file") -> str:
    """The text of ``path``; a missing, unreadable or non-UTF-8 file is a :class:`ConfigError` naming it."""
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r}: expected a file, got a directory or special file")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r}: expected UTF-8 text, got an undecodable byte at offset {e.start}") from e


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Config ``cls`` from a YAML file (or the defaults when ``path`` is None) plus ``overrides``."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = parse_yaml(read_text(path), f"config file {str(path)!r}") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return from_dict(cls, apply_overrides(data, overrides))


def to_dict(config: Any) -> dict:
    """Plain nested dict of a dataclass config (tuples as lists), for YAML / JSON."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def type_name(hint: Any) -> str:
    """A readable name of a field's type: ``int``, ``float | None``, ``str | list[str]``, ``'fp32' | 'bf16'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``(dotted key, type, default)`` of every field of the dataclass ``cls``, nested sections expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_fields(hint, f"{key}."))
        else:
            rows.append((key, type_name(hint), default))
    return rows


def fields_help(cls: type) -> str:
    """The config keys of ``cls`` as help text: one line per dotted key with its type and default."""
    rows = describe_fields(cls)
    width = max(len(key) for key, _, _ in rows)

    def shown(value: Any) -> str:
        if value is dataclasses.MISSING:
            return "(required)"
        return yaml.safe_dump(to_dict_value(value), default_flow_style=True, width=10**6).strip().removesuffix("...").strip()

    lines = [f"  {key:<{width}}  {kind} = {shown(default)}" for key, kind, default in rows]
    return "config keys (in the YAML file or as KEY=VALUE overrides; values are YAML):\n" + "\n".join(lines)


def to_dict_value(value: Any) -> Any:
    """``value`` as plain YAML data (tuples as lists, dataclasses as mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [to_dict_value(x) for x in value]
    if isinstance(value, dict):
        return {k: to_dict_value(x) for k, x in value.items()}
    return value


def save(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
