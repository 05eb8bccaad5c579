"""A run's heavy evaluation computed once, in the background, right after it is generated:
the Compare metrics (`comparison.cached_run_evaluation`), the t-SNE embedding of Compare and
the report (`patient_space.cached_embedding_points`), the report's backtest of the run's
generator (`validation.cached_validate_run`) and the effect estimates
(`effects.cached_run_effects`), kept in the run's folder for the app, the report and
`twinarm evaluate` / `export`.

One job per run folder and process: a page that needs a result while the job computes it
waits for the job (`wait_for`) instead of computing it a second time beside it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from services.data.trial import Trial
from services.evaluation.comparison import cached_run_evaluation, compare
from services.evaluation.effects import cached_run_effects
from services.evaluation.patient_space import cached_embedding_points
from services.evaluation.validation import backtestable, cached_validate_run
from services.generation.run import TwinRun

STEPS = ("evaluation", "embedding", "validation", "effects")
LABELS = {"evaluation": "fidelity, privacy and utility metrics",
          "embedding": "t-SNE embedding", "validation": "backtest of its generator",
          "effects": "effect estimates (generator refits)"}


@dataclass
class Precompute:
    """The background job of one run folder; read by the pages."""

    run_dir: str
    started: float = field(default_factory=time.time)
    done: list[str] = field(default_factory=list)
    current: str | None = None
    effects_done: int = 0
    effects_total: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    finished: float | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)
    _events: dict[str, threading.Event] = field(
        default_factory=lambda: {s: threading.Event() for s in STEPS}, repr=False)

    @property
    def running(self) -> bool:
        return self.finished is None

    def fraction(self) -> float:
        """Share of the work done (the effects step counted by its refits)."""
        eff = self.effects_done / self.effects_total if self.effects_total else 0.0
        done = sum(s in self.done for s in STEPS if s != "effects")
        return min(1.0, (done + (1.0 if "effects" in self.done else eff)) / len(STEPS))

    def text(self) -> str:
        if not self.running:
            return "evaluation ready"
        what = LABELS.get(self.current or "", "starting")
        extra = (f" {self.effects_done}/{self.effects_total}" if self.current == "effects"
                 and self.effects_total else "")
        return f"Computing the run's {what}{extra} in the background ({time.time() - self.started:.0f} s)"

    def wait_for(self, step: str, timeout: float | None = None) -> bool:
        """Block until `step` is done (or failed); True when it is no longer being computed."""
        return self._events[step].wait(timeout)

    def _progress(self, done: int, total: int) -> None:
        self.effects_done, self.effects_total = int(done), int(total)

    def _work(self, kb: Trial, run: TwinRun) -> None:
        try:
            for step in STEPS:
                self.current = step
                try:
                    if step == "evaluation":
                        cached_run_evaluation(kb, run, self.run_dir)
                    elif step == "embedding":
                        cached_embedding_points(compare(kb, run.as_trial(), run.manifest),
                                                self.run_dir, method="tsne")
                    elif step == "validation":
                        # a generator that calls a model per twin is backtested when asked
                        # (Validate, the report): in the background it would spend the user's
                        # endpoint (or minutes of the embedded model) unasked
                        if backtestable(kb) and not _calls_a_model(run):
                            cached_validate_run(kb, run, self.run_dir)
                    else:
                        cached_run_effects(kb, run, self.run_dir, progress=self._progress)
                    self.done.append(step)
                except Exception as exc:  # noqa: BLE001 - the page computes it and shows the error
                    self.errors[step] = f"{type(exc).__name__}: {exc}"
                finally:
                    self._events[step].set()
        finally:
            self.current = None
            self.finished = time.time()


def _calls_a_model(run: TwinRun) -> bool:
    from services.generation import capabilities

    try:
        return capabilities((run.manifest or {}).get("generator") or "local").needs_network
    except Exception:  # noqa: BLE001 - an unknown generator: do not call it in the background
        return True


_JOBS: dict[str, Precompute] = {}
_LOCK = threading.Lock()


def start_precompute(kb: Trial, run: TwinRun, run_dir) -> Precompute:
    """Start (once per run folder) the background evaluation of `run`."""
    key = str(run_dir)
    with _LOCK:
        job = _JOBS.get(key)
        if job is not None:
            return job
        job = Precompute(run_dir=key)
        job._thread = threading.Thread(target=job._work, args=(kb, run), daemon=True,
                                       name="twinarm-precompute")
        _JOBS[key] = job
        job._thread.start()
        return job


def precompute_for(run_dir) -> Precompute | None:
    """The background job of `run_dir` in this process, if one was started."""
    if not run_dir:
        return None
    return _JOBS.get(str(run_dir))
