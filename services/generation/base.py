"""The twin generator contract (in the spirit of scikit-learn / SDV / synthcity's `Plugin`).

    gen = get_generator("local", neighbors=20)       # settings only, no data
    gen.fit(knowledge_base)                          # learn from a Trial; returns gen
    run = gen.generate(sources, target_arm="Placebo", twins_per_patient=5, seed=1)

`fit` and `generate` are template methods: they validate the input, seed, time and fill the
manifest the same way for every generator, around the generator's own `_fit` and `_generate`.
A generator is one subclass that sets `name`, `description` and `capabilities` and
implements those two methods; `services.generation.register` makes the CLI and the app offer
it (their choices and defaults come from `capabilities`).

Rules every generator follows (checked by the tests of each generator):

- `__init__` takes settings only (keyword arguments, JSON-able); `get_params()` returns them
  and they go into the run manifest.
- `fit(knowledge_base)` learns from real patients (all their data).
- `generate(sources, ...)`: `sources` is a cohort of the knowledge base (`kb.subset(ids)`) or
  another trial. Only the sources' baseline is read: `_generate` receives
  `sources.baseline_only()` (`prepare_sources`), so no post-baseline record can leak into a twin.
- A source subject is never its own neighbour nor a source of data for its own twin: when a
  source is in the knowledge base it is excluded from what its twin learns from.
- Deterministic for a given seed, whatever the order of processing or the concurrency
  (`services.generation.seeding`).
- `progress(done, total)` is called as work is done (in `capabilities.progress_unit`); `cancel`
  (a `threading.Event` or a callable returning True) stops early and keeps what is done
  (`manifest["cancelled"]`).
- Per-twin failures do not raise: they are listed in `manifest["failures"]` as
  `{source, twin_index, reason}`.

The retriever protocol a generator may use (`services.retrieval`):
`retriever_factory(knowledge_base) -> retriever` with
`retriever.neighbours_many(query_trial_or_ids, arm, k) -> {source_id: [Neighbour]}` where a
Neighbour has `usubjid`, `arm`, `similarity`, `distance`, and the source itself is never
returned.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import services
from services.data.trial import Trial
from services.generation.run import TwinRun
from services.generation.saved_runs import new_run_id, utc_now

ProgressFn = Callable[[int, int], Any]
CancelLike = threading.Event | Callable[[], bool] | None

# Twins per source patient when the caller does not say: one value for the CLI, the app and
# the API. Five twins give a patient-level band and a stable mean at a cost of milliseconds
# for `local`; a generator whose twins are expensive declares a smaller default.
DEFAULT_TWINS_PER_PATIENT = 5


class GeneratorError(ValueError):
    """The generator cannot run on this input; the message says why in plain language."""


class NotFittedError(GeneratorError):
    pass


@dataclass(frozen=True)
class Capabilities:
    """What a generator declares about itself; the CLI's and the app's options are built
    from it, so a new generator needs no edit there."""

    label: str                              # one line for the app's generator choice
    needs_network: bool = False             # writes through an endpoint (consent, endpoint test)
    supports_tte: bool = True               # writes ADTTE twins when the knowledge base has them
    seconds_per_twin: float = 0.001         # typical cost here, for the wait announced before a run
    cost_per_twin_usd: float = 0.0          # typical price on a paid endpoint (0: free / local)
    progress_unit: str = "source patients"  # what progress(done, total) counts: or "twins"
    twins_per_patient: int = DEFAULT_TWINS_PER_PATIENT  # default K
    neighbors: int = 20                     # default number of retrieved similar patients

    def to_dict(self) -> dict:
        return asdict(self)


class TwinGenerator(ABC):
    """Base class of twin generators: subclasses set `name`, `description`, `capabilities`
    and implement `_fit` and `_generate` (see the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities(label="")

    # -- settings ------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The settings given to `__init__` (what the manifest records); callables (e.g. a
        retriever factory) are not settings a manifest can hold and are left out."""
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters
                if p != "self" and sig.parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                  inspect.Parameter.VAR_POSITIONAL)
                and hasattr(self, p) and not callable(getattr(self, p))}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract (template methods) ----------------------------------------------------
    def fit(self, knowledge_base: Trial, retriever=None) -> TwinGenerator:
        """Learn from the knowledge base (real patients); returns self. `retriever`: an object
        with the retriever protocol; None builds the generator's default."""
        if not isinstance(knowledge_base, Trial):
            raise GeneratorError("the knowledge base must be a Trial")
        if knowledge_base.subjects.empty:
            raise GeneratorError(f"the knowledge base {knowledge_base.name} has no subjects")
        t0 = time.perf_counter()
        self._kb = knowledge_base
        try:
            self._fit(knowledge_base, retriever)
        except BaseException:
            self._kb = None
            raise
        self._fit_seconds = time.perf_counter() - t0
        return self

    def generate(self, sources: Trial, target_arm: str, twins_per_patient: int | None = None,
                 seed: int = 0, progress: ProgressFn | None = None,
                 cancel: CancelLike = None) -> TwinRun:
        """K twins per source subject under `target_arm` (see the module docstring); K defaults
        to `capabilities.twins_per_patient`."""
        t_start = time.perf_counter()
        kb = self.knowledge_base                # raises when not fitted
        src = prepare_sources(sources)          # baseline only: nothing after baseline is read
        k = check_k(self.capabilities.twins_per_patient if twins_per_patient is None
                    else twins_per_patient)
        seed = int(seed)
        self.check_target_arm(target_arm)
        self.check_ready()
        manifest = base_manifest(self, kb, sources, target_arm, k, seed)
        run = self._generate(src, target_arm, k, seed, manifest, progress, cancel)
        arms = set(sources.subjects["ARM"].dropna()) if "ARM" in sources.subjects else set()
        if arms == {target_arm}:       # a check of the generator, not the synthetic control a user may expect
            manifest.setdefault("notes", []).append(
                f"every source patient received {target_arm}, the target arm: these are twins of their own arm "
                "(a check of the generator), not a synthetic control")
        manifest["timings"] = {"fit_s": round(self._fit_seconds, 4), **manifest["timings"],
                               "total_s": round(time.perf_counter() - t_start, 4)}
        manifest["created"] = utc_now()
        manifest["run_id"] = new_run_id(self.name, kb.content_hash, manifest["sources"]["ids_hash"],
                                        target_arm, k, seed)
        return run

    @abstractmethod
    def _fit(self, knowledge_base: Trial, retriever) -> None:
        """The generator's own learning (the input is already checked)."""

    @abstractmethod
    def _generate(self, sources: Trial, target_arm: str, k: int, seed: int, manifest: dict,
                  progress: ProgressFn | None, cancel: CancelLike) -> TwinRun:
        """The twins of `sources` (baseline only) under a checked `target_arm`; fills
        `manifest` (counts, failures, notes, `timings` of its own phases) and returns the run."""

    def check_ready(self) -> None:
        """Raise a `GeneratorError` when the generator cannot run here (e.g. no endpoint is
        configured), before any work; `generate` calls it first. Default: always ready."""

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


def retriever_manifest(retriever, k: int) -> dict:
    """The manifest's description of the retriever a run used."""
    return {"name": type(retriever).__name__, "module": type(retriever).__module__,
            "space": getattr(retriever, "space", None), "k": int(k)}


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
