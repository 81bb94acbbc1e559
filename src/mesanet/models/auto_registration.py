"""``model_type: mesanet`` in the Hugging Face Auto classes, without importing ``transformers`` at ``import mesanet``.

``import mesanet`` calls :func:`register_when_transformers_loads`: if ``transformers``' Auto machinery
(``transformers.models.auto.configuration_auto``) is loaded already, MesaNet is registered at once; otherwise a
one-shot import hook registers it right after that module is executed, i.e. before any ``AutoConfig`` /
``AutoModelForCausalLM`` call can look for it. The model classes are registered as light stand-ins that import
the modeling stack (``mesanet.models.modeling_mesanet``) on first use and then replace themselves by the real
classes, so neither ``import mesanet`` nor ``mesanet --help`` pays for the modeling stack (README, "Import time").
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

#: The module after whose execution MesaNet is registered (every Auto class is reached through it).
TRIGGER = "transformers.models.auto.configuration_auto"
MODELING = "mesanet.models.modeling_mesanet"

#: Auto class name -> MesaNet class name (in :data:`MODELING`).
AUTO_CLASSES = {"AutoModel": "MesaNetModel", "AutoModelForCausalLM": "MesaNetForCausalLM"}


class _DeferredClass(type):
    """Metaclass of a stand-in: attribute access and calls go to the real class, imported on first use."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(cls._real(), name)

    def __call__(cls, *args, **kwargs):
        return cls._real()(*args, **kwargs)


def _stand_in(auto_name: str, class_name: str, config_class: type) -> type:
    def real():
        cls = getattr(importlib.import_module(MODELING), class_name)
        getattr(importlib.import_module("transformers"), auto_name).register(config_class, cls, exist_ok=True)
        return cls

    return _DeferredClass(
        class_name,
        (),
        {
            "__module__": MODELING,
            "config_class": config_class,
            "_real": staticmethod(real),
            "__doc__": f"Stand-in for {MODELING}.{class_name}, imported on first use.",
        },
    )


def register() -> None:
    """Register ``mesanet`` with ``AutoConfig`` (the real config class) and ``AutoModel`` /
    ``AutoModelForCausalLM`` (stand-ins, or the real classes once the modeling stack is imported)."""
    import transformers

    from .configuration_mesanet import MesaNetConfig

    transformers.AutoConfig.register(MesaNetConfig.model_type, MesaNetConfig, exist_ok=True)
    modeling = sys.modules.get(MODELING)
    for auto_name, class_name in AUTO_CLASSES.items():
        cls = getattr(modeling, class_name, None) or _stand_in(auto_name, class_name, MesaNetConfig)
        getattr(transformers, auto_name).register(MesaNetConfig, cls, exist_ok=True)


def _register_quietly() -> None:
    try:
        register()
    except Exception as e:  # noqa: BLE001 (never break the import of transformers itself)
        warnings.warn(f"mesanet: could not register model_type 'mesanet' with the transformers Auto classes: {e!r}", stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the normal finders locate :data:`TRIGGER` and runs :func:`register` after it executed."""

    def find_spec(self, name, path=None, target=None):
        if name != TRIGGER:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            loader.exec_module = exec_module  # the loader instance is this module's alone: restore it
            _register_quietly()

        loader.exec_module = exec_and_register
        return spec


def register_when_transformers_loads() -> None:
    """Register now if the Auto machinery is loaded, else as soon as it is (see the module docstring)."""
    if TRIGGER in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


__all__ = ["AUTO_CLASSES", "register", "register_when_transformers_loads"]
