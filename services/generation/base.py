"""The twin generator contract (in the spirit of scikit-learn / SDV).

    gen = get_generator("local", neighbors=20)       # settings only, no data
    gen.fit(knowledge_base)                          # learn from a Trial; returns gen
    run = gen.generate(sources, target_arm="Placebo", twins_per_patient=5, seed=1)

Rules every generator follows (checked by the tests of each generator):

- `__init__` takes settings only (keyword arguments, JSON-able); `get_params()` returns them
  and they go into the run manifest.
- `fit(knowledge_base)` learns from real patients (all their data).
- `generate(sources, ...)`: `sources` is a cohort of the knowledge base (`kb.subset(ids)`) or
  another trial. Only the sources' baseline is read: `sources.baseline_only()` is the first
  thing `generate` does (`prepare_sources`), so no post-baseline record can leak into a twin.
- A source subject is never its own neighbour nor a source of data for its own twin: when a
  source is in the knowledge base it is excluded from what its twin learns from.
- Deterministic for a given seed, whatever the order of processing or the concurrency.
- `progress(done, total)` is called as sources are processed; `cancel` (a `threading.Event`
  or a callable returning True) stops early and keeps what is done (`manifest["cancelled"]`).
- Per-twin failures do not raise: they are listed in `manifest["failures"]` as
  `{source, twin_index, reason}`.

The retriever protocol a generator may use (`services.retrieval.retriever`):
`retriever_factory(knowledge_base) -> retriever` with
`retriever.neighbours_many(query_trial_or_ids, arm, k) -> {source_id: [Neighbour]}` where a
Neighbour has `usubjid`, `arm`, `similarity`, `distance`, and the source itself is never
returned.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

import services
from services.data.trial import Trial
from services.generation.run import TwinRun

ProgressFn = Callable[[int, int], Any]
CancelLike = threading.Event | Callable[[], bool] | None


class GeneratorError(ValueError):
    """The generator cannot run on this input; the message says why in plain language."""


class NotFittedError(GeneratorError):
    pass


class TwinGenerator(ABC):
    """Base class of twin generators. Subclasses set `name` and implement `fit`, `generate`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    # -- settings ------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The settings given to `__init__` (what the manifest records)."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters
                if p != "self" and sig.parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                  inspect.Parameter.VAR_POSITIONAL)
                and hasattr(self, p)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- contract ------------------------------------------------------------------------
    @abstractmethod
    def fit(self, knowledge_base: Trial) -> TwinGenerator:
        """Learn from the knowledge base (real patients); returns self."""

    @abstractmethod
    def generate(self, sources: Trial, target_arm: str, twins_per_patient: int = 1, seed: int = 0,
                 progress: ProgressFn | None = None, cancel: CancelLike = None) -> TwinRun:
        """K twins per source subject under `target_arm` (see the module docstring)."""

    # -- helpers for subclasses -----------------------------------------------------------
    @property
    def knowledge_base(self) -> Trial:
        kb = getattr(self, "_kb", None)
        if kb is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(knowledge_base) first")
        return kb

    def check_target_arm(self, target_arm: str) -> None:
        arms = self.knowledge_base.arm_counts()
        if target_arm not in arms:
            raise GeneratorError(f"target arm '{target_arm}' is not an arm of the knowledge base "
                                 f"{self.knowledge_base.name} (arms: {', '.join(arms)})")


def prepare_sources(sources: Trial) -> Trial:
    """What a generator may read of the sources: their ADSL and baseline records only."""
    if not isinstance(sources, Trial):
        raise GeneratorError("sources must be a Trial (e.g. kb.subset(ids) or a loaded trial)")
    if sources.subjects.empty:
        raise GeneratorError("no source subjects to twin")
    return sources.baseline_only()


def is_cancelled(cancel: CancelLike) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def check_k(twins_per_patient: int) -> int:
    try:
        k = int(twins_per_patient)
    except (TypeError, ValueError):
        raise GeneratorError(f"twins_per_patient must be a whole number, got {twins_per_patient!r}") from None
    if k < 1 or k != twins_per_patient:
        raise GeneratorError(f"twins_per_patient must be a whole number >= 1, got {twins_per_patient!r}")
    return k


def base_manifest(generator: TwinGenerator, kb: Trial, sources: Trial, target_arm: str, k: int,
                  seed: int) -> dict:
    """The manifest fields every generator fills the same way."""
    meta = kb.meta
    return {
        "run_id": "", "created": "", "tool_version": services.__version__,
        "generator": generator.name, "settings": generator.get_params(),
        "model": None, "prompt_version": None, "seed": int(seed), "target_arm": target_arm,
        "twins_per_patient": int(k),
        "knowledge_base": {"name": kb.name, "content_hash": kb.content_hash,
                           "subjects": len(kb.subjects),
                           "target_arm_subjects": int((kb.subjects["ARM"] == target_arm).sum())},
        "sources": {"name": sources.name, "content_hash": sources.content_hash,
                    "subjects": len(sources.subjects),
                    "ids_hash": hashlib.sha256("|".join(sources.subjects["USUBJID"]).encode()).hexdigest()},
        "retriever": None, "neighbours": {}, "donors": {}, "tte_donors": {}, "counts": {}, "failures": [],
        "timings": {}, "cancelled": False, "notes": [],
        "datasets": list(kb.bds),
        "trial": {"title": kb.title, "indication": meta.indication,
                  "units": {p: i.unit for p, i in kb.parameters.items() if i.unit},
                  "labels": {p: i.label for p, i in kb.parameters.items()}
                  | {p: kb.tte_label(p) for p in kb.tte_parameters},
                  "endpoint": dict(meta.endpoint)},
    }


# ------------------------------------------------------------------------------------------
# counter-based random numbers: the draw for (seed, source, twin, stream, slot) does not depend
# on which other sources are processed, in which order, or in which batch.

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def stable_key(text: str) -> int:
    """A 64-bit key of a string that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(str(text).encode(), digest_size=8).digest(), "little")


def uniforms(seed: int, source_keys: np.ndarray, k: int, stream: int, slots: int) -> np.ndarray:
    """Uniform(0, 1) draws of shape (sources, k, slots), a pure function of
    (seed, source key, twin index, stream, slot)."""
    src = np.asarray(source_keys, dtype=np.uint64)[:, None, None]
    twin = np.arange(1, k + 1, dtype=np.uint64)[None, :, None]
    slot = np.arange(slots, dtype=np.uint64)[None, None, :]
    with np.errstate(over="ignore"):
        x = _splitmix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix(src))
        x = _splitmix(x ^ (twin * _M1))
        x = _splitmix(x ^ (np.uint64(stream) << np.uint64(40)) ^ slot)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
