"""``model_type: mesanet`` in the Hugging Face Auto classes, without importing ``transformers`` at ``import mesanet``.

``import mesanet`` calls :func:`register_when_transformers_loads`: the config is registered with ``AutoConfig``
once ``transformers.models.auto.configuration_auto`` is loaded, the model classes with ``AutoModel`` /
``AutoModelForCausalLM`` once ``transformers.models.auto.modeling_auto`` is: at once where a module is loaded
already, otherwise by a one-shot import hook right after it executed, i.e. before any Auto call can look for
MesaNet. (The two steps are separate because ``modeling_auto`` imports ``configuration_auto`` while it is itself
half-executed: registering the model classes at that moment fails.) The model classes are registered as light stand-ins that import
the modeling stack (``mesanet.models.modeling_mesanet``) on first use and then replace themselves by the real
classes, so neither ``import mesanet`` nor ``mesanet --help`` pays for the modeling stack (README, "Import time").
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings

#: After this module executed, the config is registered with ``AutoConfig``.
CONFIG_TRIGGER = "transformers.models.auto.configuration_auto"
#: After this module executed, the model classes are registered with the Auto model classes it defines.
MODEL_TRIGGER = "transformers.models.auto.modeling_auto"
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


def register_config() -> None:
    """Register ``mesanet`` with ``AutoConfig`` (the real config class)."""
    from transformers.models.auto.configuration_auto import AutoConfig

    from .configuration_mesanet import MesaNetConfig

    AutoConfig.register(MesaNetConfig.model_type, MesaNetConfig, exist_ok=True)


def register_models() -> None:
    """Register ``AutoModel`` / ``AutoModelForCausalLM`` for ``MesaNetConfig`` (stand-ins, or the real classes once
    the modeling stack is imported)."""
    from transformers.models.auto import modeling_auto

    from .configuration_mesanet import MesaNetConfig

    modeling = sys.modules.get(MODELING)
    for auto_name, class_name in AUTO_CLASSES.items():
        cls = getattr(modeling, class_name, None) or _stand_in(auto_name, class_name, MesaNetConfig)
        getattr(modeling_auto, auto_name).register(MesaNetConfig, cls, exist_ok=True)


def register() -> None:
    """Register ``mesanet`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` now."""
    register_config()
    register_models()


def _quietly(step) -> None:
    try:
        step()
    except Exception as e:  # noqa: BLE001 (never break the import of transformers itself)
        warnings.warn(f"mesanet: could not register model_type 'mesanet' with the transformers Auto classes: {e!r}", stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the normal finders locate ``trigger`` and runs ``step`` after that module executed."""

    def __init__(self, trigger: str, step):
        self.trigger, self.step = trigger, step

    def find_spec(self, name, path=None, target=None):
        if name != self.trigger:
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
            _quietly(self.step)

        loader.exec_module = exec_and_register
        return spec


def register_when_transformers_loads() -> None:
    """Register each part now if its Auto module is loaded, else as soon as it is (see the module docstring)."""
    for trigger, step in ((CONFIG_TRIGGER, register_config), (MODEL_TRIGGER, register_models)):
        if trigger in sys.modules:
            _quietly(step)
        elif not any(isinstance(f, _RegisterAfterImport) and f.trigger == trigger for f in sys.meta_path):
            sys.meta_path.insert(0, _RegisterAfterImport(trigger, step))


__all__ = ["AUTO_CLASSES", "register", "register_config", "register_models", "register_when_transformers_loads"]
