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
  `local` generator for this patient (the model adds individual variability around it).

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
import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.assembly import assemble_bds, baseline_records, twin_adsl
from services.generation.base import (
    CancelLike,
    Capabilities,
    GeneratorError,
    ProgressFn,
    TwinGenerator,
    is_cancelled,
    retriever_manifest,
)
from services.generation.llm import (
    PROMPT_VERSION,
    LLMConfigError,
    LLMSettings,
    PrivacyError,
    TwinRequest,
)
from services.generation.llm.prompt import check_no_dates
from services.generation.run import BDS_COLUMNS, TTE_COLUMNS, TwinRun, twin_id
from services.retrieval.retriever import retriever_for

UNAVAILABLE_MESSAGE = (
    "LLM generator unavailable: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any "
    "OpenAI-compatible server: vLLM, Ollama, llama.cpp, Azure) and optionally TWINARM_LLM_MODEL, "
    "or use the local generator"
)


EMBEDDED_MESSAGE = (
    "no endpoint configured: the embedded model (Gemma 3 270M on this CPU, for demos and "
    "pipelines, not quality; about a minute per twin) is used")


class LLMUnavailableError(GeneratorError):
    """No LLM endpoint is configured."""


class LLMEndpointError(GeneratorError):
    """The endpoint could not be used at all (unreachable, authentication, no answer)."""


class ConsentRequiredError(GeneratorError):
    """Patient data would go to a non-local endpoint and the user has not agreed."""


def consent_message(settings: LLMSettings) -> str:
    from services.generation.llm.settings import redact_url

    return (f"the LLM endpoint {redact_url(settings.effective_base_url)} is not on this machine: "
            "pseudonymised baselines and neighbour trajectories would be sent to it. Give consent "
            "first (--allow-remote on the command line, the consent box in the app, "
            "allow_remote=True in code) or use a local endpoint")


def llm_status(secrets: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Whether the `llm` generator can run with the environment (and `secrets`): a dict with
    `available`, `local` (endpoint on this machine), `model`, `base_url` (redacted),
    `message`; never the key. Bad settings give `available=False` with the reason."""
    try:
        s = LLMSettings.from_env(secrets, **overrides)
    except LLMConfigError as exc:
        return {"available": False, "local": False, "model": None, "base_url": None,
                "message": f"LLM settings are invalid: {exc}"}
    pub = s.public_dict()
    if not s.available:
        from services.generation.llm.embedded import MODEL_ALIAS, embedded_available

        if embedded_available():
            return {"available": True, "local": True, "model": MODEL_ALIAS, "base_url": None,
                    "embedded": True, "message": EMBEDDED_MESSAGE}
    return {"available": s.available, "local": s.is_local, "model": s.model,
            "base_url": pub["base_url"] or (None if not s.available else s.effective_base_url),
            "embedded": False, "message": "ok" if s.available else UNAVAILABLE_MESSAGE}


# ------------------------------------------------------------------------------------------
# small helpers


def _number(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _is_date_like(value: Any) -> bool:
    try:
        check_no_dates(value)
    except PrivacyError:
        return True
    return False


def _twin_seed(seed: int, key: str, index: int) -> int:
    """Seed of one twin's call: a function of (run seed, pseudonym, twin index) only."""
    digest = hashlib.blake2b(f"{int(seed)}|{key}|{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2_147_483_647


class _Extremes:
    """Smallest and largest value of a quantity with the subjects they come from, so that the
    range *without* one subject is available in O(1) (the two lowest / highest distinct
    subjects are kept)."""

    def __init__(self, values: np.ndarray, owners: np.ndarray):
        ok = np.isfinite(values)
        values, owners = values[ok], owners[ok]
        self.low: list[tuple[float, str]] = []
        self.high: list[tuple[float, str]] = []
        if len(values):
            order = np.argsort(values, kind="stable")
            self.low = self._two(values[order], owners[order])
            self.high = self._two(values[order[::-1]], owners[order[::-1]])

    @staticmethod
    def _two(values, owners) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for v, o in zip(values, owners):
            if not out or o != out[0][1]:
                out.append((float(v), str(o)))
            if len(out) == 2:
                break
        return out

    def range(self, without: str | None = None) -> tuple[float | None, float | None]:
        def pick(side):
            for v, o in side:
                if o != without:
                    return v
            return None
        return pick(self.low), pick(self.high)


def _widen(lo: float | None, hi: float | None) -> tuple[float | None, float | None]:
    """The plausible range told to the model: observed range widened by half its span on each
    side, not below 0 for a quantity never observed below 0."""
    if lo is None or hi is None:
        return lo, hi
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    wlo, whi = lo - span / 2, hi + span / 2
    if lo >= 0:
        wlo = max(0.0, wlo)
    return wlo, whi


def _round(x: float) -> float:
    return float(f"{x:.6g}")


# ------------------------------------------------------------------------------------------


class LLMGenerator(TwinGenerator):
    """TWIN-GPT style generator on an OpenAI-compatible chat endpoint (see module docstring).

    Settings: `neighbors` similar target-arm patients in each prompt; `hybrid` adds the local
    generator's forecast as a reference; `temperature`, `concurrency`, `timeout` (s),
    `max_retries`, `model`: None = from the environment / secrets (`LLMSettings.from_env`);
    `allow_remote`: the user agreed that pseudonymised data may leave this machine;
    `use_cache`: reuse validated replies (TWINARM_HOME/llm_cache); `min_visit_subjects`: a
    visit is generated when at least that many target-arm patients have a value there (as the
    local generator); `reference_draws`: local twins averaged for the reference forecast.

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
        self._lock = threading.Lock()
        self._visits: dict[str, dict[str, list]] = {}

    # -- settings ------------------------------------------------------------------------
    def get_params(self) -> dict:
        """The JSON-able settings (no endpoint secrets: see `llm_settings.public_dict()`)."""
        return {"neighbors": self.neighbors, "hybrid": self.hybrid,
                "temperature": self.temperature, "concurrency": self.concurrency,
                "timeout": self.timeout, "max_retries": self.max_retries, "model": self.model,
                "allow_remote": self.allow_remote, "use_cache": self.use_cache,
                "min_visit_subjects": self.min_visit_subjects,
                "reference_draws": self.reference_draws}

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

            self._local = LocalGenerator().fit(kb, retriever=retriever)
        self._visits = {}

        # observed values per parameter (baseline + scheduled visits), with their owners
        base = kb.baseline_long
        vv = kb.visit_values
        self._extremes: dict[str, _Extremes] = {}
        self._integer: dict[str, bool] = {}
        for p in kb.parameters:
            vals = np.concatenate([base.loc[base["PARAMCD"] == p, "AVAL"].to_numpy(float),
                                   vv.loc[vv["PARAMCD"] == p, "AVAL"].to_numpy(float)])
            owners = np.concatenate([base.loc[base["PARAMCD"] == p, "USUBJID"].to_numpy(object),
                                     vv.loc[vv["PARAMCD"] == p, "USUBJID"].to_numpy(object)])
            self._extremes[p] = _Extremes(vals, owners)
            fin = vals[np.isfinite(vals)]
            self._integer[p] = bool(len(fin)) and bool(np.all(np.abs(fin - np.round(fin)) < 1e-9))
        self._tte_extremes: dict[str, _Extremes] = {}
        self._tte_labels = {q: kb.tte_label(q) for q in kb.tte_parameters}
        self._tte_integer = True
        if kb.tte is not None:
            for q in kb.tte_parameters:
                g = kb.tte[kb.tte["PARAMCD"] == q]
                self._tte_extremes[q] = _Extremes(g["AVAL"].to_numpy(float),
                                                  g["USUBJID"].to_numpy(object))
            t = kb.tte["AVAL"].to_numpy(float)
            t = t[np.isfinite(t)]
            self._tte_integer = bool(np.all(np.abs(t - np.round(t)) < 1e-9))

        # covariates that may be shown to the model (no identifiers, no dates)
        subj = kb.subjects
        ids = set(subj["USUBJID"].astype(str))
        self._covariates: list[str] = []
        self._skipped_covariates: dict[str, str] = {}
        for c, kind in kb.covariates.items():
            if c not in subj.columns:
                continue
            col = subj[c].dropna()
            text = col.astype(str)
            if kind == "categorical" and len(col) >= 20 and text.nunique() > 0.9 * len(col):
                self._skipped_covariates[c] = "almost one value per patient (an identifier?)"
            elif text.isin(ids).any():
                self._skipped_covariates[c] = "contains subject identifiers"
            elif kind == "categorical" and any(_is_date_like(v) for v in text.unique()[:500]):
                self._skipped_covariates[c] = "contains calendar dates"
            else:
                self._covariates.append(c)

    @property
    def retriever(self):
        _ = self.knowledge_base  # raises when not fitted
        return self._retriever

    @property
    def local_generator(self):
        """The fitted local generator used for the reference forecast (None unless hybrid)."""
        _ = self.knowledge_base  # raises when not fitted
        return self._local

    def visits(self, target_arm: str) -> dict[str, list]:
        """Scheduled post-baseline visits generated under `target_arm`: {PARAMCD: [Visit]},
        the visits where at least `min_visit_subjects` target-arm patients have a value."""
        kb = self.knowledge_base
        with self._lock:
            if target_arm not in self._visits:
                vv = kb.visit_values[kb.visit_values["ARM"] == target_arm]
                out = {}
                for p in kb.longitudinal_parameters:
                    counts = vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique()
                    keep = [v for v in kb.schedule(p)
                            if int(counts.get(v.avisitn, 0)) >= self.min_visit_subjects]
                    if keep:
                        out[p] = keep
                self._visits[target_arm] = out
            return self._visits[target_arm]

    def data_dictionary(self, target_arm: str, without: str | None = None) -> list[dict]:
        """The data dictionary of the prompt: `[{paramcd, label, unit, min, max, visits}]`
        (observed range over the knowledge base, without the subject `without`)."""
        kb = self.knowledge_base
        out = []
        for p, visits in self.visits(target_arm).items():
            info = kb.parameters[p]
            lo, hi = self._extremes[p].range(without)
            entry = {"paramcd": p, "label": info.label, "unit": info.unit or None,
                     "min": None if lo is None else _round(lo),
                     "max": None if hi is None else _round(hi),
                     "visits": [{"avisitn": v.avisitn, "avisit": v.avisit,
                                 "ady": None if not math.isfinite(v.ady) else round(v.ady)}
                                for v in visits]}
            out.append(entry)
        return out

    def plausible_ranges(self, target_arm: str, without: str | None = None) -> dict[str, tuple]:
        """{PARAMCD: (lo, hi)} a reply must respect: the observed range (without `without`)
        widened by half its span each side, never below 0 for non-negative quantities."""
        out = {}
        for p in self.visits(target_arm):
            lo, hi = _widen(*self._extremes[p].range(without))
            if lo is not None and hi is not None:
                out[p] = (_round(lo), _round(hi))
        return out

    def tte_spec(self, without: str | None = None) -> list[dict]:
        """Time-to-event outcomes of the prompt: `[{paramcd, label, max_days}]`."""
        _ = self.knowledge_base  # raises when not fitted
        out = []
        for q, ext in self._tte_extremes.items():
            _, hi = ext.range(without)
            out.append({"paramcd": q, "label": self._tte_labels.get(q, q),
                        "max_days": None if hi is None else _round(hi)})
        return out

    # -- generate ------------------------------------------------------------------------
    def _generate(self, src: Trial, target_arm: str, k: int, seed: int, manifest: dict,
                  progress: ProgressFn | None, cancel: CancelLike) -> TwinRun:
        kb = self.knowledge_base
        settings, embedded = self._endpoint_settings()
        manifest["model"] = settings.model
        manifest["prompt_version"] = PROMPT_VERSION
        retr = self.retriever
        manifest["retriever"] = retriever_manifest(retr, self.neighbors)
        manifest["llm"] = {"settings": settings.public_dict(), "usage": None}
        if embedded is not None:
            manifest["llm"]["embedded"] = embedded
        notes = manifest["notes"]
        for c, why in self._skipped_covariates.items():
            notes.append(f"covariate {c} is not sent to the model: {why}")

        visits = self.visits(target_arm)
        if not visits and not self._tte_extremes:
            raise GeneratorError(f"nothing to generate under '{target_arm}': no parameter has a "
                                 f"scheduled visit with at least {self.min_visit_subjects} patients "
                                 "of that arm and there is no time-to-event outcome")
        ids = [str(u) for u in src.subjects["USUBJID"]]
        keys = {s: f"P{i + 1}" for i, s in enumerate(ids)}

        # neighbours of the target arm (never the source itself)
        t_ret = time.perf_counter()
        hits = retr.neighbours_many(src, arm=target_arm, k=self.neighbors + 1)
        neigh: dict[str, list] = {}
        for s in ids:
            neigh[s] = [h for h in hits.get(s, []) if str(h.usubjid) != s][: self.neighbors]
        blocks = self._neighbour_blocks({str(h.usubjid) for hs in neigh.values() for h in hs},
                                        visits)
        retrieval_s = time.perf_counter() - t_ret

        # reference forecast of the local generator (hybrid)
        reference: dict[str, dict[str, list]] = {}
        reference_s = 0.0
        if self._local is not None and visits and not is_cancelled(cancel):
            t_ref = time.perf_counter()
            reference = self._reference(src, target_arm, seed, cancel)
            reference_s = time.perf_counter() - t_ref
            manifest["reference"] = {"generator": "local", "draws": self.reference_draws,
                                     "settings": self._local.get_params()}

        # one request per twin
        trial_info = self._trial_info(target_arm)
        baseline = src.baseline
        subj = src.subjects.set_index("USUBJID")
        in_kb = set(kb.subjects["USUBJID"].astype(str))
        requests: list[TwinRequest] = []
        owners: list[tuple[str, int]] = []
        for s in ids:
            without = s if s in in_kb else None
            dd = self.data_dictionary(target_arm, without)
            ranges = self.plausible_ranges(target_arm, without)
            tte = self.tte_spec(without)
            covs = {}
            for c in self._covariates:
                v = subj.at[s, c] if c in subj.columns else None
                if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
                    continue
                if isinstance(v, str) and _is_date_like(v):
                    continue
                covs[c] = v
            values = {p: _round(float(baseline.at[s, p])) for p in kb.parameters
                      if p in baseline.columns and pd.notna(baseline.at[s, p])}
            nbs = []
            for j, h in enumerate(neigh[s]):
                block = dict(blocks[str(h.usubjid)])
                nbs.append({"key": f"N{j + 1}", "similarity": round(float(h.similarity), 3),
                            **block})
            for t in range(1, k + 1):
                requests.append(TwinRequest(
                    source_key=keys[s], twin_index=t, target_arm=target_arm, trial=trial_info,
                    data_dictionary=dd, plausible_ranges=ranges,
                    baseline={"covariates": covs, "values": values}, neighbours=nbs, tte=tte,
                    reference_forecast=reference.get(s), seed=_twin_seed(seed, keys[s], t)))
                owners.append((s, t))
                manifest["neighbours"][twin_id(s, t)] = [str(h.usubjid) for h in neigh[s]]
        manifest["neighbour_similarity"] = {
            s: [round(float(h.similarity), 4) for h in neigh[s]] for s in ids}

        # the model writes the twins
        from services.generation.llm.writer import LLMTwinWriter, RemoteEndpointError
        from services.generation.llm.writer import LLMUnavailableError as _Unavailable

        try:
            writer = LLMTwinWriter(settings, cache_dir=self._cache_dir,
                                   allow_remote=self.allow_remote, use_cache=self.use_cache)
        except _Unavailable:
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
        if stopped and not any(r.ok for r in results):
            # the endpoint is down or refuses us: one message, not one per twin
            raise LLMEndpointError(stopped)
        if stopped:
            notes.append(f"the run stopped early: {stopped}")

        run = self._assemble(src, kb, ids, k, target_arm, results, owners, visits, manifest)
        manifest["llm"]["usage"] = usage.to_dict() if usage is not None else None
        manifest["llm"]["structured"] = structured
        manifest["estimated_cost_usd"] = usage.to_dict()["estimated_cost_usd"] if usage else 0.0
        if usage is not None and usage.ok:
            manifest["llm"]["seconds_per_twin"] = round(llm_s / usage.ok, 2)
        manifest["timings"] = {
            "retrieval_s": round(retrieval_s, 4), "reference_s": round(reference_s, 4),
            "llm_s": round(llm_s, 4),
            "twins_per_s": round(run.n_twins / llm_s, 2) if llm_s > 0 else None}
        return run

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

    # -- pieces of generate -----------------------------------------------------------------
    def _trial_info(self, target_arm: str) -> dict:
        kb = self.knowledge_base
        info = {"title": kb.title, "indication": kb.meta.indication,
                "target_arm_description": kb.meta.arm_descriptions.get(target_arm, "")}
        return {k: v for k, v in info.items() if v and not _is_date_like(str(v))}

    def _neighbour_blocks(self, nids: set[str], visits: dict[str, list]) -> dict[str, dict]:
        """Prompt block of each neighbour (without its key): covariates, baseline values,
        trajectory at the generated visits, time-to-event outcomes."""
        kb = self.knowledge_base
        if not nids:
            return {}
        order = [u for u in kb.subjects["USUBJID"].astype(str) if u in nids]
        sub = kb.subjects.set_index("USUBJID").loc[order]
        base = kb.baseline.reindex(index=order)
        vv = kb.visit_values
        vv = vv[vv["USUBJID"].isin(nids)]
        wanted = {(p, float(v.avisitn)) for p, vs in visits.items() for v in vs}
        traj: dict[str, dict[str, list]] = {u: {} for u in order}
        for u, p, a, val in zip(vv["USUBJID"], vv["PARAMCD"], vv["AVISITN"], vv["AVAL"]):
            if (p, float(a)) in wanted and pd.notna(val):
                traj[u].setdefault(p, []).append([float(a), _round(float(val))])
        events: dict[str, dict] = {u: {} for u in order}
        if kb.tte is not None:
            tt = kb.tte[kb.tte["USUBJID"].isin(nids)]
            for u, q, a, c in zip(tt["USUBJID"], tt["PARAMCD"], tt["AVAL"], tt["CNSR"]):
                if pd.notna(a):
                    events[u][q] = [_round(float(a)), int(c)]
        out = {}
        for u in order:
            covs = {}
            for c in self._covariates:
                v = sub.at[u, c] if c in sub.columns else None
                if v is None or pd.isna(v) or (isinstance(v, str) and _is_date_like(v)):
                    continue
                covs[c] = v
            bl = {p: _round(float(base.at[u, p])) for p in base.columns if pd.notna(base.at[u, p])}
            tr = {p: sorted(v) for p, v in traj[u].items()}
            out[u] = {"covariates": covs, "baseline": bl, "trajectory": tr, "events": events[u]}
        return out

    def _reference(self, src: Trial, target_arm: str, seed: int, cancel) -> dict:
        """{source: {PARAMCD: [[avisitn, mean], ...]}}: the mean of `reference_draws` local
        twins per source at each generated visit."""
        ref_run = self._local.generate(src, target_arm, twins_per_patient=self.reference_draws,
                                       seed=seed, cancel=cancel)
        vals = ref_run.values()
        if vals.empty:
            return {}
        means = vals.groupby(["SRCSUBJID", "PARAMCD", "AVISITN"], sort=False)["AVAL"].mean()
        out: dict[str, dict[str, list]] = {}
        for (s, p, a), m in means.items():
            if pd.notna(m) and pd.notna(a):
                out.setdefault(str(s), {}).setdefault(p, []).append([float(a), _round(float(m))])
        for per in out.values():
            for p in per:
                per[p].sort()
        return out

    def _assemble(self, src: Trial, kb: Trial, ids: list[str], k: int, target_arm: str,
                  results: list, owners: list[tuple[str, int]], visits: dict[str, list],
                  manifest: dict) -> TwinRun:
        """The contract's frames from the validated replies; failed or cancelled twins are
        left out (failures listed with their reasons)."""
        labels = manifest["trial"]["labels"]
        ok: dict[tuple[str, int], Any] = {}
        cancelled = 0
        for (s, t), res in zip(owners, results):
            if res.ok and res.reply is not None:
                ok[(s, t)] = res.reply
            elif res.reason == "cancelled":
                cancelled += 1
            else:
                manifest["failures"].append({
                    "source": s, "twin_index": t, "reason": res.reason or "error",
                    "errors": [str(e)[:500] for e in res.errors][:5],
                    "attempts": res.attempts})
        done_ids = [s for s in ids if any((s, t) in ok for t in range(1, k + 1))]
        order = {s: i for i, s in enumerate(done_ids)}

        covs = [c for c in src.subjects.columns if c in kb.covariates or c in src.covariates]
        adsl = twin_adsl(src, done_ids, k, target_arm, covs)
        keep = [(s, int(i)) in ok for s, i in zip(adsl["SRCSUBJID"], adsl["TWINIDX"])]
        adsl = adsl[keep].reset_index(drop=True)

        datasets: dict[str, list[str]] = {}
        for p, info in kb.parameters.items():
            datasets.setdefault(info.dataset, []).append(p)
        base = baseline_records(src, done_ids, k, datasets, labels)
        for name, frame in base.items():
            if len(frame):
                base[name] = frame[[(s, int(i)) in ok for s, i in
                                    zip(frame["SRCSUBJID"], frame["_TW"])]]

        visit_info = {(p, float(v.avisitn)): v for p, vs in visits.items() for v in vs}
        rows: dict[str, list[tuple]] = {}
        tte_rows: list[tuple] = []
        for (s, t), reply in ok.items():
            tid = twin_id(s, t)
            for vv in reply.visits:
                v = visit_info.get((vv.paramcd, float(vv.avisitn)))
                if v is None:
                    continue
                aval = float(vv.aval)
                if self._integer.get(vv.paramcd):
                    aval = float(round(aval))
                ds = kb.parameters[vv.paramcd].dataset
                rows.setdefault(ds, []).append(
                    (tid, s, vv.paramcd, aval, float(v.ady), float(v.avisitn), v.avisit,
                     order[s], t))
            for ev in reply.events:
                aval = float(ev.aval)
                if self._tte_integer:
                    aval = float(max(1.0, math.ceil(aval - 1e-9)))
                tte_rows.append((tid, s, ev.paramcd, aval, int(ev.cnsr), order[s], t))
        gen = {}
        cols = ["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "ADY", "AVISITN", "AVISIT", "_SRC", "_TW"]
        for name, rs in rows.items():
            g = pd.DataFrame(rs, columns=cols)
            g["PARAM"] = g["PARAMCD"].map(labels).fillna(g["PARAMCD"])
            g["ABLFL"] = ""
            gen[name] = g
        bds = assemble_bds(base, gen, done_ids)
        bds = {name: bds.get(name, pd.DataFrame(columns=BDS_COLUMNS)) for name in kb.bds}

        tte = None
        if kb.tte is not None:
            tte = pd.DataFrame(tte_rows, columns=["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "CNSR",
                                                  "_SRC", "_TW"])
            qorder = {q: i for i, q in enumerate(kb.tte_parameters)}
            tte["_Q"] = tte["PARAMCD"].map(qorder)
            tte = tte.sort_values(["_SRC", "_TW", "_Q"], kind="stable")
            tte["PARAM"] = tte["PARAMCD"].map(labels).fillna(tte["PARAMCD"])
            tte = tte[TTE_COLUMNS].reset_index(drop=True)
            tte["CNSR"] = tte["CNSR"].astype(int)

        manifest["cancelled"] = cancelled > 0
        if cancelled:
            manifest["notes"].append(f"cancelled: {cancelled} of {len(owners)} twins were not "
                                     "written; the finished twins are kept")
        manifest["counts"] = {
            "sources": len(done_ids), "sources_requested": len(ids), "twins": len(adsl),
            "twins_requested": len(owners), "cancelled_twins": cancelled,
            "records": {name: len(f) for name, f in bds.items()},
            "generated_records": {name: int((f["ABLFL"] != "Y").sum()) for name, f in bds.items()},
            "tte_records": 0 if tte is None else len(tte),
            "failures": len(manifest["failures"]),
        }
        return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest)


def check_endpoint(settings: LLMSettings) -> dict[str, Any]:
    """`{"ok", "models", "message"}` from the endpoint's model list (GET /models: no patient
    data is sent, so no consent is needed); never raises."""
    from services.generation.llm.writer import LLMTwinWriter

    try:
        with LLMTwinWriter(settings, allow_remote=True, use_cache=False) as writer:
            return writer.check_endpoint()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, shown to the user
        return {"ok": False, "models": [], "message": f"{type(exc).__name__}: {exc}"}


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
