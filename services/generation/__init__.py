"""Twin generators and their registry.

    from services.generation import get_generator, GENERATORS
    gen = get_generator("local", neighbors=20).fit(kb)
    run = gen.generate(kb.subset(ids), target_arm="Placebo", twins_per_patient=5, seed=0)

`GENERATORS` maps a name to a generator class (see `base.TwinGenerator` for the contract).
Adding a generator: one module with a `TwinGenerator` subclass, and one `register(...)` line
below (or a call from a plug-in). The CLI's `--generator` choices and the app's generator
options are read from this registry and each class's `capabilities`.
"""

from __future__ import annotations

from services.generation.base import (
    DEFAULT_TWINS_PER_PATIENT,
    Capabilities,
    GeneratorError,
    NotFittedError,
    TwinGenerator,
)
from services.generation.llm.generator import LLMGenerator
from services.generation.local import LocalGenerator

GENERATORS: dict[str, type[TwinGenerator]] = {}


def register(cls: type[TwinGenerator], name: str | None = None) -> type[TwinGenerator]:
    """Add (or replace) a generator class under `name` (default: `cls.name`); returns cls so
    it can decorate the class."""
    if not (isinstance(cls, type) and issubclass(cls, TwinGenerator)):
        raise TypeError(f"{cls!r} is not a TwinGenerator subclass")
    key = name or cls.name
    if not key:
        raise TypeError(f"{cls.__name__} has no name")
    if not cls.capabilities.label:
        raise TypeError(f"{cls.__name__} declares no capabilities (label)")
    GENERATORS[key] = cls
    return cls


def unregister(name: str) -> None:
    GENERATORS.pop(name, None)


register(LocalGenerator)
register(LLMGenerator)


def available_generators() -> list[str]:
    return list(GENERATORS)


def capabilities(name: str) -> Capabilities:
    """What generator `name` declares (see `base.Capabilities`)."""
    return _class(name).capabilities


def get_generator(name: str = "local", **settings) -> TwinGenerator:
    """A new, unfitted generator `name` with `settings`."""
    return _class(name)(**settings)


def _class(name: str) -> type[TwinGenerator]:
    if name not in GENERATORS:
        raise GeneratorError(f"unknown generator '{name}'; available: {', '.join(GENERATORS)}")
    return GENERATORS[name]


__all__ = ["DEFAULT_TWINS_PER_PATIENT", "GENERATORS", "Capabilities", "GeneratorError",
           "LLMGenerator", "LocalGenerator", "NotFittedError", "TwinGenerator",
           "available_generators", "capabilities", "get_generator", "register", "unregister"]
