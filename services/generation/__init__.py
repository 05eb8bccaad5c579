"""Twin generators and their registry.

    from services.generation import get_generator, GENERATORS
    gen = get_generator("local", neighbors=20).fit(kb)
    run = gen.generate(kb.subset(ids), target_arm="Placebo", twins_per_patient=5, seed=0)

`GENERATORS` maps a name to a generator class (see `base.TwinGenerator` for the contract).
`local` is always available (offline). The `llm` slot is filled by `services.generation.llm.generator`
(module attribute `LLMGenerator`) when that module exists; `register()` adds others.
"""

from __future__ import annotations

import importlib

from services.generation.base import GeneratorError, NotFittedError, TwinGenerator
from services.generation.local import LocalGenerator

GENERATORS: dict[str, type[TwinGenerator]] = {"local": LocalGenerator}

# Optional generators: name -> (module, class). Loaded when importable; a missing module
# leaves the slot empty (`available_generators()` does not list it).
_OPTIONAL = {"llm": ("services.generation.llm.generator", "LLMGenerator")}
_OPTIONAL_ERRORS: dict[str, str] = {}

for _name, (_module, _cls) in _OPTIONAL.items():
    try:
        GENERATORS[_name] = getattr(importlib.import_module(_module), _cls)
    except ModuleNotFoundError as exc:
        if exc.name != _module:  # the module exists but one of its imports is missing
            _OPTIONAL_ERRORS[_name] = f"{_module}: {exc}"
        else:
            _OPTIONAL_ERRORS[_name] = f"{_module} is not installed in this build"
    except (ImportError, AttributeError) as exc:
        _OPTIONAL_ERRORS[_name] = f"{_module}: {exc}"


def register(name: str, cls: type[TwinGenerator]) -> None:
    """Add (or replace) a generator class under `name`."""
    if not (isinstance(cls, type) and issubclass(cls, TwinGenerator)):
        raise TypeError(f"{cls!r} is not a TwinGenerator subclass")
    GENERATORS[name] = cls
    _OPTIONAL_ERRORS.pop(name, None)


def available_generators() -> list[str]:
    return list(GENERATORS)


def get_generator(name: str = "local", **settings) -> TwinGenerator:
    """A new, unfitted generator `name` with `settings`."""
    if name not in GENERATORS:
        why = f" ({_OPTIONAL_ERRORS[name]})" if name in _OPTIONAL_ERRORS else ""
        raise GeneratorError(f"unknown generator '{name}'{why}; available: {', '.join(GENERATORS)}")
    return GENERATORS[name](**settings)


__all__ = ["GENERATORS", "GeneratorError", "LocalGenerator", "NotFittedError", "TwinGenerator",
           "available_generators", "get_generator", "register"]
