"""Self-contained checkpoints: the modeling code written next to the weights, generated from the package.

``save_pretrained`` calls :func:`write_remote_code`, which writes the modules the model needs as one flat folder of
``.py`` files beside ``config.json`` and adds ``auto_map`` to ``config.json``, so that a Python with ``torch``,
``transformers`` and ``einops`` but without ``mesanet`` loads the checkpoint with
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` (and ``lm_eval --model hf`` with
``trust_remote_code=True``).

The files are generated at save time, never kept by hand: starting from :data:`ENTRY_MODULES`, every ``mesanet``
import (relative or absolute, at any depth) is followed with :mod:`ast`, and rewritten into a relative import of
the flat module (``from ..ops.mesa import mesa`` -> ``from .mesa import mesa``; a name re-exported by a package's
``__init__`` is imported from the module that defines it). Line numbers are kept, so a traceback points at the
same line as in the package. Hugging Face's loader copies the files it finds through ``from .X import`` lines;
``from . import X`` (a module object) therefore also gets a ``from .X import __name__`` on the same line.
Saving a model that was itself loaded from such a folder copies that folder's modules as they are.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

#: The modules named in ``auto_map``; everything they import from ``mesanet`` follows.
ENTRY_MODULES = ("mesanet.models.configuration_mesanet", "mesanet.models.modeling_mesanet", "mesanet.models.remote_code")

#: ``config.json``'s ``auto_map``: Auto class -> ``flat_module.Class``.
AUTO_MAP = {
    "AutoConfig": "configuration_mesanet.MesaNetConfig",
    "AutoModel": "modeling_mesanet.MesaNetModel",
    "AutoModelForCausalLM": "modeling_mesanet.MesaNetForCausalLM",
}

PACKAGE = "mesanet"


def _spec_file(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def _is_package(module: str) -> bool:
    file = _spec_file(module)
    return file is not None and file.name == "__init__.py"


def _reexports(package: str) -> dict[str, str]:
    """``{name: defining submodule}`` of the ``from .sub import name`` lines of ``package``'s ``__init__``."""
    tree = ast.parse(_spec_file(package).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{package}.{node.module}"
    return out


def _absolute(node: ast.ImportFrom, module: str) -> str | None:
    """The absolute module an ``ImportFrom`` in ``module`` reads from, if it is part of ``mesanet``."""
    if node.level:
        package = module if _is_package(module) else module.rpartition(".")[0]
        return importlib.util.resolve_name("." * node.level + (node.module or ""), package)
    if node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        return node.module
    return None


def _rewrite(node: ast.ImportFrom, target: str, deps: list[str]) -> str:
    """One line of relative imports of the flat modules replacing ``node`` (which reads from ``target``)."""
    names = lambda aliases: ", ".join(f"{a.name} as {a.asname}" if a.asname else a.name for a in aliases)
    if not _is_package(target):
        deps.append(target)
        return f"from .{flat_name(target)} import {names(node.names)}"
    statements, exports = [], None
    for alias in node.names:
        if alias.name == "*":
            raise ValueError(f"remote code: 'from {target} import *' cannot be followed")
        submodule = f"{target}.{alias.name}"
        if _spec_file(submodule) is not None:  # a module object: 'from . import checks'
            deps.append(submodule)
            flat = flat_name(submodule)
            statements.append(f"from .{flat} import __name__ as _{flat}_module_name")
            statements.append(f"from . import {flat} as {alias.asname or alias.name}")
            continue
        exports = _reexports(target) if exports is None else exports
        if alias.name not in exports:
            raise ValueError(f"remote code: cannot tell which module of {target} defines {alias.name!r}")
        deps.append(exports[alias.name])
        statements.append(f"from .{flat_name(exports[alias.name])} import {names([alias])}")
    return "; ".join(statements)


def flat_name(module: str) -> str:
    """The file name (without ``.py``) of ``module`` in the flat folder: its last component."""
    return module.rpartition(".")[2]


def generated_sources(entry_modules=ENTRY_MODULES) -> dict[str, str]:
    """``{file name: source}`` of every module the entry modules need, imports rewritten (see the module doc)."""
    sources: dict[str, str] = {}
    origin: dict[str, str] = {}
    queue = list(entry_modules)
    while queue:
        module = queue.pop()
        file = f"{flat_name(module)}.py"
        if file in sources:
            if origin[file] != module:
                raise ValueError(f"remote code: {module} and {origin[file]} would both be {file}")
            continue
        text = _spec_file(module).read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        deps: list[str] = []
        edits = []
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import) and any(a.name == PACKAGE or a.name.startswith(PACKAGE + ".") for a in node.names):
                raise ValueError(
                    f"remote code: {module} line {node.lineno}: 'import {PACKAGE}...' cannot be rewritten; use 'from ... import'"
                )
            if isinstance(node, ast.ImportFrom):
                target = _absolute(node, module)
                if target is not None:
                    edits.append((node, _rewrite(node, target, deps)))
        for node, statement in sorted(edits, key=lambda e: -e[0].lineno):
            first, last = node.lineno - 1, node.end_lineno - 1
            indent = lines[first][: node.col_offset]
            lines[first : last + 1] = [f"{indent}{statement}\n"] + ["\n"] * (last - first)  # line numbers kept
        source = "".join(lines)  # the note goes last, so that line numbers stay those of the package
        note = f"# Generated by mesanet {_version()} from {module} when this checkpoint was saved; do not edit.\n"
        sources[file] = source + ("" if source.endswith("\n") else "\n") + note
        origin[file] = module
        queue.extend(deps)
    return sources


def _version() -> str:
    try:
        from importlib.metadata import version

        return version(PACKAGE)
    except Exception:  # noqa: BLE001 (a source checkout without metadata)
        return "(source)"


def _own_folder_sources() -> dict[str, str]:
    """The flat modules beside this file, as they are (this module was loaded from a saved checkpoint's code)."""
    here = Path(__file__).resolve().parent
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(here.glob("*.py")) if p.name != "__init__.py"}


def write_remote_code(folder: str | os.PathLike) -> list[str]:
    """Write the modeling code into ``folder`` (a ``save_pretrained`` directory) and ``auto_map`` into its
    ``config.json``; returns the file names written."""
    folder = Path(folder)
    sources = generated_sources() if __name__.startswith(PACKAGE + ".") else _own_folder_sources()
    for name, text in sources.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = dict(AUTO_MAP)
    tmp = folder / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_file)
    return sorted(sources)


__all__ = ["AUTO_MAP", "ENTRY_MODULES", "flat_name", "generated_sources", "write_remote_code"]
