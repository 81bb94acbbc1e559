"""The YAML presets that ship with the package (``tiny``, ``small``, ``compare``, ``synth-quick``, ...).

Every command that reads a config (``mesanet train``, ``compare``, ``synth``) takes either a path to a YAML file or
the name of one of these presets, so ``mesanet train small`` works from any directory after ``pip install .``.
In a source checkout ``configs/`` points at this folder, so ``configs/small.yaml`` is the same file.
"""

from __future__ import annotations

from pathlib import Path

from mesanet.utils.config import ConfigError

#: The folder of the packaged ``*.yaml`` presets (package data, see pyproject.toml).
PRESET_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """The names of the packaged presets (file names without ``.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of preset ``name`` (``ConfigError`` listing the presets for an unknown name)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; expected a YAML file path or one of the presets {preset_names()}")
    return path


def resolve_config(arg: str | Path) -> Path:
    """A config argument as a file: an existing file, else a packaged preset of that name. Anything that looks
    like a path (a ``.yaml``/``.yml`` suffix or a folder separator) stays a path, so a mistyped file name is
    reported as a missing file, not as an unknown preset."""
    path = Path(arg)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    try:
        return preset_path(str(arg))
    except ConfigError:
        raise ConfigError(
            f"config {str(arg)!r}: expected a YAML file path or a preset name, one of {preset_names()} (no such file or preset)"
        ) from None


__all__ = ["PRESET_DIR", "preset_names", "preset_path", "resolve_config"]
