"""`llm`: TWIN-GPT style twins written by a chat model behind any OpenAI-compatible endpoint.

Method (after TWIN-GPT, arXiv 2404.01273): for each source patient and twin index, the model
receives one JSON request (`services.generation.llm.TwinRequest`) with

- the trial (title, indication, the target arm and its description) and a data dictionary
  (parameters with labels, units, the range observed in the knowledge base, the scheduled
  post-baseline visits with their nominal study day, time-to-event outcomes with the longest
  follow-up);
- the patient's baseline (ADSL covariates and baseline values) and nothing after it;
- its `neighbors` most similar patients of the TARGET arm (retriever, baseline space; the
  source itself is never among them) with their baselines, post-baseline trajectories and
  time-to-event outcomes;
- with `hybrid=True`, a reference forecast: the mean of `reference_draws` twins of the offline
  `local` generator for this patient (the model adds individual variability around it); a
  reply value more than `fallback_sd` SD of those draws from their mean is implausible and
  replaced by the twin's local draw (`replies`); and the weight of the model's values against
  the local forecast is learned first on knowledge-base patients of the target arm whose real
  values are known (`calibration`), so hybrid twins are not worse than local.

It answers with a value at every scheduled visit of every longitudinal parameter and one
(time, censoring) per time-to-event outcome. Replies are validated (complete, in range) and
invalid ones sent back with the errors (`max_retries`); a twin that still fails is left out
and listed in `manifest["failures"]` with the reason.

Privacy: the model only sees pseudonymous keys ("P1".. for sources in cohort order, "N1"..
for neighbours in order of similarity), study days and values; never a USUBJID, a date or
another identifier column. Text covariates that look like dates or identifiers are not sent.
The map from keys back to subjects stays in this process (the manifest lists the real
neighbours of each twin). Patient data go to a non-local endpoint only with
`allow_remote=True`, which callers set after the user has agreed.

Leakage: a source that is itself in the knowledge base never sees its own data: it is not its
own neighbour, the local reference excludes it, and the observed ranges / longest follow-up
shown to the model are computed without its values.

Determinism: the requests are a pure function of (knowledge base, sources, settings, seed); the
seed of each twin's call is derived from (seed, pseudonym, twin index). With the reply cache
(default on) or temperature 0 on a deterministic endpoint, a run repeats exactly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

from services.data.trial import Trial
from services.generation.base import (
    CancelLike,
    Capabilities,
    GeneratorError,
    ProgressFn,
    TwinGenerator,
    is_cancelled,
    retriever_manifest,
)
from services.generation.llm.availability import (
    EMBEDDED_MESSAGE,
    UNAVAILABLE_MESSAGE,
    check_endpoint,
    consent_message,
    llm_status,
)
from services.generation.llm.calibration import (
    KEY_PREFIX,
    Calibration,
    auto_size,
    calibration_patients,
    calibration_rows,
    estimate_weight,
    no_calibration,
)
from services.generation.llm.errors import (
    ConsentRequiredError,
    LLMEndpointError,
    LLMUnavailableError,
    RemoteEndpointError,
)
from services.generation.llm.prompt import PROMPT_VERSION
from services.generation.llm.prompting import (
    TrialFacts,
    build_requests,
    local_reference,
    local_twins,
)
from services.generation.llm.replies import assemble_replies
from services.generation.llm.settings import LLMConfigError, LLMSettings
from services.generation.run import TwinRun
from services.retrieval.retriever import retriever_for


class LLMGenerator(TwinGenerator):
    """TWIN-GPT style generator on an OpenAI-compatible chat endpoint (see module docstring).

    Settings: `neighbors` similar target-arm patients in each prompt; `hybrid` adds the local
    generator's forecast as a reference; `temperature`, `concurrency`, `timeout` (s),
    `max_retries`, `model`: None = from the environment / secrets (`LLMSettings.from_env`);
    `allow_remote`: the user agreed that pseudonymised data may leave this machine;
    `use_cache`: reuse validated replies (TWINARM_HOME/llm_cache); `min_visit_subjects`: a
    visit is generated when at least that many target-arm patients have a value there (as the
    local generator); `reference_draws`: local twins averaged for the reference forecast;
    `fallback_sd` (hybrid): replies farther than that many SD of the local draws from their
    mean fall back to the local draw (None: keep every validated value); `calibration`
    (hybrid): knowledge-base patients the model forecasts first to earn its weight against the
    local forecast (`calibration` module; None = auto, 0 = none: the model's values as written);
    `adverse_events` (trials with ADAE): "model" = the model lists each twin's AEs from the
    trial's terms (`adverse`), "local" = each twin copies the AE history of its local twin's
    donor (hybrid only), None = auto: "local" in hybrid mode (the model's AEs, unlike its
    values, have not been tested on knowledge-base patients), else "model".

    `settings` (an `LLMSettings`) or `secrets` (e.g. `dict(st.secrets)`) may be given; the API
    key stays in them and is never part of `get_params()` or the manifest.
    """

    name = "llm"
    description = ("TWIN-GPT style twins written by a chat model (OpenAI-compatible endpoint) "
                   "from the patient's baseline and the trajectories of similar patients of "
                   "the target arm, optionally anchored on the local generator's forecast.")
    capabilities = Capabilities(label="llm (TWIN-GPT style, chat model)", needs_network=True,
                                seconds_per_twin=2.0, progress_unit="twins", twins_per_patient=1,
                                neighbors=5)

    def __init__(self, neighbors: int = 5, hybrid: bool = True, temperature: float | None = None,
                 concurrency: int | None = None, timeout: float | None = None,
                 max_retries: int | None = None, model: str | None = None,
                 allow_remote: bool = False, use_cache: bool = True,
                 min_visit_subjects: int = 10, reference_draws: int = 10,
                 fallback_sd: float | None = 3.0, calibration: int | None = None,
                 adverse_events: str | None = None,
                 settings: LLMSettings | None = None, secrets: Mapping[str, Any] | None = None,
                 cache_dir: str | None = None,
                 retriever_factory: Callable[[Trial], object] | None = None):
        if int(neighbors) < 1:
            raise GeneratorError("neighbors must be >= 1")
        if int(reference_draws) < 1:
            raise GeneratorError("reference_draws must be >= 1")
        self.neighbors = int(neighbors)
        self.hybrid = bool(hybrid)
        self.temperature = None if temperature is None else float(temperature)
        self.concurrency = None if concurrency is None else int(concurrency)
        self.timeout = None if timeout is None else float(timeout)
        self.max_retries = None if max_retries is None else int(max_retries)
        self.model = model or None
        self.allow_remote = bool(allow_remote)
        self.use_cache = bool(use_cache)
        self.min_visit_subjects = int(min_visit_subjects)
        self.reference_draws = int(reference_draws)
        if fallback_sd is not None and not float(fallback_sd) > 0:
            raise GeneratorError("fallback_sd must be > 0 (or None)")
        self.fallback_sd = None if fallback_sd is None else float(fallback_sd)
        if calibration is not None and int(calibration) < 0:
            raise GeneratorError("calibration must be >= 0 (or None: auto)")
        self.calibration = None if calibration is None else int(calibration)
        if adverse_events not in (None, "auto", "model", "local"):
            raise GeneratorError("adverse_events must be 'model', 'local' or None (auto)")
        self.adverse_events = None if adverse_events == "auto" else adverse_events
        if self.adverse_events == "local" and not self.hybrid:
            raise GeneratorError("adverse_events='local' needs hybrid=True (the local twins' donors)")
        overrides = {"model": self.model, "temperature": self.temperature,
                     "concurrency": self.concurrency, "timeout_s": self.timeout,
                     "max_retries": self.max_retries}
        try:
            if settings is None:
                self.llm_settings = LLMSettings.from_env(secrets, **overrides)
            else:
                self.llm_settings = settings.with_(
                    **{k: v for k, v in overrides.items() if v is not None})
        except LLMConfigError as exc:
            raise GeneratorError(f"LLM settings: {exc}") from None
        self._cache_dir = cache_dir
        self._retriever_factory = retriever_factory
        self._kb: Trial | None = None
        self._local = None
        self._facts: TrialFacts | None = None

    # -- settings ------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The JSON-able settings (no endpoint secrets: see `llm_settings.public_dict()`)."""
        return {"neighbors": self.neighbors, "hybrid": self.hybrid,
                "temperature": self.temperature, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_retries": self.max_retries, "model": self.model,
                "allow_remote": self.allow_remote, "use_cache": self.use_cache,
                "min_visit_subjects": self.min_visit_subjects,
                "reference_draws": self.reference_draws, "fallback_sd": self.fallback_sd,
                "calibration": self.calibration, "adverse_events": self.adverse_events}

    def available(self) -> bool:
        """An endpoint is configured (an API key or a base URL), or the embedded model is
        installed (extra `local-llm`)."""
        return self.llm_settings.available or self.uses_embedded_model()

    def uses_embedded_model(self) -> bool:
        """No endpoint is configured and the embedded model is installed: `generate` starts
        it (`services.generation.llm.embedded`)."""
        if self.llm_settings.available:
            return False
        from services.generation.llm.embedded import embedded_available

        return embedded_available()

    def check_available(self) -> None:
        """Raise `LLMUnavailableError` without an endpoint (and without the embedded model),
        `ConsentRequiredError` for a non-local endpoint without consent. No network call."""
        if not self.llm_settings.available:
            if self.uses_embedded_model():
                return
            raise LLMUnavailableError(UNAVAILABLE_MESSAGE)
        if not self.llm_settings.is_local and not self.allow_remote:
            raise ConsentRequiredError(consent_message(self.llm_settings))

    def check_ready(self) -> None:
        self.check_available()

    def with_endpoint(self, settings: LLMSettings | None = None,
                      allow_remote: bool | None = None) -> LLMGenerator:
        """A copy sharing this generator's fitted state with other endpoint settings or consent
        (so that one fitted generator serves several sessions with their own keys)."""
        other = copy.copy(self)
        if settings is not None:
            other.llm_settings = settings
            other.model = settings.model
        if allow_remote is not None:
            other.allow_remote = bool(allow_remote)
        return other

    # -- fit -----------------------------------------------------------------------------
    def _fit(self, knowledge_base: Trial, retriever) -> None:
        """Retriever on the knowledge base, the local generator (hybrid), the data dictionary
        and the observed ranges. No endpoint is needed to fit."""
        kb = knowledge_base
        if retriever is None:
            retriever = (self._retriever_factory or _default_retriever)(kb)
        self._retriever = retriever
        self._local = None
        if self.hybrid:
            from services.generation.local import LocalGenerator

            # the model writes every scheduled visit: the reference (and the fallback) covers
            # them all, not only those before a local twin's simulated end of follow-up
            self._local = LocalGenerator(truncate_at_followup=False).fit(kb, retriever=retriever)
        self._facts = TrialFacts(kb, self.min_visit_subjects)

    @property
    def retriever(self):
        _ = self.knowledge_base  # raises when not fitted
        return self._retriever

    @property
    def local_generator(self):
        """The fitted local generator used for the reference forecast (None unless hybrid)."""
        _ = self.knowledge_base  # raises when not fitted
        return self._local

    @property
    def facts(self) -> TrialFacts:
        """What the prompts say about the knowledge base (`prompting.TrialFacts`)."""
        _ = self.knowledge_base  # raises when not fitted
        return self._facts

    def visits(self, target_arm: str) -> dict[str, list]:
        """Scheduled post-baseline visits generated under `target_arm`: {PARAMCD: [Visit]},
        the visits where at least `min_visit_subjects` target-arm patients have a value."""
        return self.facts.visits(target_arm)

    def data_dictionary(self, target_arm: str, without: str | None = None) -> list[dict]:
        """The data dictionary of the prompt: `[{paramcd, label, unit, min, max, visits}]`
        (observed range over the knowledge base, without the subject `without`)."""
        return self.facts.data_dictionary(target_arm, without)

    def plausible_ranges(self, target_arm: str, without: str | None = None) -> dict[str, tuple]:
        """{PARAMCD: (lo, hi)} a reply must respect: the observed range (without `without`)
        widened by half its span each side, never below 0 for non-negative quantities."""
        return self.facts.plausible_ranges(target_arm, without)

    def tte_spec(self, without: str | None = None) -> list[dict]:
        """Time-to-event outcomes of the prompt: `[{paramcd, label, max_days}]`."""
        return self.facts.tte_spec(without)

    # -- generate ------------------------------------------------------------------------
    def _generate(self, src: Trial, target_arm: str, k: int, seed: int, manifest: dict,
                  progress: ProgressFn | None, cancel: CancelLike) -> TwinRun:
        facts = self.facts
        settings, embedded = self._endpoint_settings()
        manifest["model"] = settings.model
        manifest["prompt_version"] = PROMPT_VERSION
        manifest["retriever"] = retriever_manifest(self.retriever, self.neighbors)
        manifest["llm"] = {"settings": settings.public_dict(), "usage": None}
        if embedded is not None:
            manifest["llm"]["embedded"] = embedded
        notes = manifest["notes"]
        for c, why in facts.skipped_covariates.items():
            notes.append(f"covariate {c} is not sent to the model: {why}")

        visits = self.visits(target_arm)
        if not visits and not facts.tte_extremes:
            raise GeneratorError(f"nothing to generate under '{target_arm}': no parameter has a "
                                 f"scheduled visit with at least {self.min_visit_subjects} patients "
                                 "of that arm and there is no time-to-event outcome")
        ids = [str(u) for u in src.subjects["USUBJID"]]
        keys = {s: f"P{i + 1}" for i, s in enumerate(ids)}
        ae_source = self._ae_source()
        if ae_source == "local" and not visits:
            ae_source = "model"   # no local twins to take donors from (nothing longitudinal)
        requests, owners, local_draws, timing = self._requests(
            src, ids, keys, k, target_arm, seed, visits, manifest, cancel,
            ask_ae=ae_source == "model")
        own = own_manifest = None
        if local_draws is not None:
            manifest["reference"] = {"generator": "local", "draws": self.reference_draws,
                                     "settings": self._local.get_params()}
            own, own_manifest = local_twins(self._local, src, target_arm, k, seed, cancel)

        # hybrid: knowledge-base patients whose real values are known, written first
        n_cal = 0
        if local_draws is not None and self.calibration != 0:
            n_cal = (auto_size(len(requests)) if self.calibration is None
                     else self.calibration)
        cal_ids = calibration_patients(self.knowledge_base, target_arm, set(ids), n_cal, seed)
        cal_draws: dict = {}
        if cal_ids:
            cal_keys = {s: f"{KEY_PREFIX}{i + 1}" for i, s in enumerate(cal_ids)}
            scratch = {"neighbours": {}}
            cal_requests, _, cal_draws, _ = self._requests(
                self.knowledge_base.subset(cal_ids), cal_ids, cal_keys, 1, target_arm, seed,
                visits, scratch, cancel)
            requests = cal_requests + requests
        # the model writes the twins
        from services.generation.llm.writer import LLMTwinWriter

        try:
            writer = LLMTwinWriter(settings, cache_dir=self._cache_dir,
                                   allow_remote=self.allow_remote, use_cache=self.use_cache)
        except LLMUnavailableError:
            raise LLMUnavailableError(UNAVAILABLE_MESSAGE) from None
        except RemoteEndpointError:
            raise ConsentRequiredError(consent_message(settings)) from None
        t_llm = time.perf_counter()
        try:
            results = writer.write_many(requests, progress=progress, cancel=cancel)
            usage = writer.last_usage
            structured = writer.structured_mode
            stopped = writer.stopped_reason
        finally:
            writer.close()
        llm_s = time.perf_counter() - t_llm
        cal_results, results = results[:len(cal_ids)], results[len(cal_ids):]
        if stopped and embedded is not None:
            from services.generation.llm.embedded import shared_server_crash

            crash = shared_server_crash()
            stopped = f"the embedded model's server died: {crash}" if crash else stopped
        if stopped and not any(r.ok for r in results):
            # the endpoint is down or refuses us: one message, not one per twin
            raise LLMEndpointError(stopped)
        if stopped:
            notes.append(f"the run stopped early: {stopped}")

        weight = None
        if local_draws is not None and self.calibration != 0:
            cal = self._calibrate(cal_ids, cal_results, cal_draws, n_cal)
            weight = cal.weight
            manifest["llm"]["calibration"] = {**cal.to_manifest(), "knowledge_base_patients":
                                              cal_ids}
            notes.append(cal.note())
        # where the model earned no weight, hybrid twins are the local generator's own (balanced) twins;
        # with any weight the model's independent values enter and they are read as exchangeable
        manifest["twins_balanced"] = bool(weight == 0 and own is not None and self._local is not None
                                          and self._local.balances(k))
        run = assemble_replies(src, facts, ids, k, target_arm, results, owners, visits, manifest,
                               fallback=local_draws, fallback_sd=self.fallback_sd,
                               weight=weight, own=own, ae_from_replies=ae_source == "model")
        if ae_source == "local" and own_manifest is not None:
            self._local_adverse_events(run, own_manifest, seed)
        manifest["llm"]["usage"] = usage.to_dict() if usage is not None else None
        manifest["llm"]["structured"] = structured
        manifest["estimated_cost_usd"] = usage.to_dict()["estimated_cost_usd"] if usage else 0.0
        if usage is not None and usage.ok:
            manifest["llm"]["seconds_per_twin"] = round(llm_s / usage.ok, 2)
        manifest["timings"] = {
            "retrieval_s": round(timing[0], 4), "reference_s": round(timing[1], 4),
            "llm_s": round(llm_s, 4),
            "twins_per_s": round(run.n_twins / llm_s, 2) if llm_s > 0 else None}
        return run

    def _ae_source(self) -> str | None:
        """Who writes the twins' adverse events: "model", "local" or None (no ADAE)."""
        if self.facts.ae is None:
            return None
        return self.adverse_events or ("local" if self.hybrid else "model")

    def _local_adverse_events(self, run: TwinRun, own_manifest: dict, seed: int) -> None:
        """Hybrid twins' AEs: each copies the AE history of its local twin's donor (the local
        generator's rule), cut at this twin's own end of follow-up."""
        from services.generation.local.adverse_events import adverse_event_twins

        donors = {k: own_manifest.get(k) for k in ("donors", "tte_donors", "neighbours")}
        donors["notes"] = run.manifest["notes"]
        donors["target_arm"] = run.target_arm
        run.ae = adverse_event_twins(self.knowledge_base, run.adsl, run.bds, run.tte, donors, seed,
                                     (own_manifest.get("ae") or {}).get("pool"))
        run.manifest["ae"] = {"source": "local", **donors.get("ae", {})}

    def _requests(self, src: Trial, ids: list[str], keys: dict[str, str], k: int,
                  target_arm: str, seed: int, visits: dict, manifest: dict, cancel: CancelLike,
                  ask_ae: bool = False):
        """The requests of `ids` (of `src`) with their owners, the local draws (hybrid; None
        otherwise) and the (retrieval, reference) seconds; with `ask_ae` the model lists the
        twins' adverse events."""
        facts, retr = self.facts, self.retriever
        # neighbours of the target arm (never the source itself)
        t_ret = time.perf_counter()
        hits = retr.neighbours_many(src, arm=target_arm, k=self.neighbors + 1)
        neigh: dict[str, list] = {}
        for s in ids:
            neigh[s] = [h for h in hits.get(s, []) if str(h.usubjid) != s][: self.neighbors]
        blocks = facts.neighbour_blocks({str(h.usubjid) for hs in neigh.values() for h in hs},
                                        visits)
        retrieval_s = time.perf_counter() - t_ret
        # reference forecast of the local generator (hybrid)
        reference: dict[str, dict[str, list]] = {}
        local_draws = None
        t_ref = time.perf_counter()
        if self._local is not None and visits and not is_cancelled(cancel):
            reference, local_draws = local_reference(self._local, src, target_arm,
                                                     self.reference_draws, seed, cancel)
        reference_s = time.perf_counter() - t_ref
        requests, owners = build_requests(facts, src, ids, keys, k, target_arm, seed, neigh,
                                          blocks, reference, manifest, ask_ae=ask_ae)
        return requests, owners, local_draws, (retrieval_s, reference_s)

    def _calibrate(self, cal_ids: list[str], results: list, draws: dict,
                   wanted: int) -> Calibration:
        """The model's weight from the calibration patients' replies (`calibration`)."""
        if not wanted:
            return no_calibration("the run has fewer than 15 twins, too few to test the model "
                                  "on knowledge-base patients first (set calibration=N to do "
                                  "it anyway)")
        if not cal_ids:
            return no_calibration("the knowledge base has no other target-arm patient to test "
                                  "the model on")
        replies = {u: r.reply for u, r in zip(cal_ids, results) if r.ok and r.reply is not None}
        return estimate_weight(calibration_rows(self.knowledge_base, replies, draws))

    def _endpoint_settings(self) -> tuple[LLMSettings, dict | None]:
        """The settings of this run's endpoint: the configured one, else the embedded model's
        server (started on first use; a model reply is bounded by its schema grammar)."""
        settings = self.llm_settings
        if settings.available:
            return settings, None
        from services.generation.llm.embedded import EmbeddedModelError, shared_server

        try:
            server = shared_server()
        except EmbeddedModelError as exc:
            raise LLMUnavailableError(f"embedded model: {exc}") from None
        settings = settings.with_(base_url=server.base_url, api_key=None, model=server.alias,
                                  structured="json_mode")
        return settings, {"model": server.alias, "file": server.model.name,
                          "server": "llama_cpp.server"}


def _default_retriever(kb: Trial):
    """The process-wide retriever of the knowledge base (Chroma, baseline space)."""
    return retriever_for(kb, space="baseline")


__all__ = [
    "EMBEDDED_MESSAGE",
    "UNAVAILABLE_MESSAGE",
    "ConsentRequiredError",
    "LLMEndpointError",
    "LLMGenerator",
    "LLMUnavailableError",
    "check_endpoint",
    "consent_message",
    "llm_status",
]
