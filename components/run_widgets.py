"""Widgets of the What-if page: generation settings, the LLM endpoint and consent, the job
panel (progress, time left, cancel), the first look at a run, saved runs.

Generation runs in a background thread (`GenerationJob`) so that the page stays responsive:
the job lives in session state; its panel is a fragment that polls it (`run_every`) and, on
the run that started it, waits for it inline for a while (small runs finish there and then).
Cancelling sets a `threading.Event`; the generator stops and returns the twins already made,
which are saved like any run. The worker thread saves the run under TWINARM_HOME/runs itself,
so a finished run survives reruns, page switches and closed tabs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from components.state import LAST_RUN_NOTE, kept_choice
from services.evaluation.trajectories import SCALES, can_use_log, suggested_scale
from services.generation.llm import LLMSettings
from services.reporting.figures.compare import mean_trajectories

JOB = "whatif_job"
POLL_S = 0.5
INLINE_WAIT_S = 90.0     # how long the page that started a run waits for it in line (fast runs)


# ==========================================================================================
# generation job (background thread)


class GenerationJob:
    """One generation running in a background thread; its state is read by the page."""

    def __init__(self, generator, sources, target_arm: str, k: int, seed: int, label: str,
                 note: dict | None = None):
        self.generator = generator
        self.sources = sources
        self.target_arm = target_arm
        self.k = int(k)
        self.seed = int(seed)
        self.label = label
        self.note = dict(note or {})
        self.unit = generator.capabilities.progress_unit
        self.total = len(sources.subjects) * (self.k if self.unit == "twins" else 1)
        self.done = 0
        self.cancel_event = threading.Event()
        self.started = time.time()
        self.first_progress: float | None = None
        self.last_progress: float | None = None
        self.finished: float | None = None
        self.run = None
        self.run_dir: str | None = None
        self.error: str | None = None
        self.collected = False
        self._thread = threading.Thread(target=self._work, name="twinarm-generate", daemon=True)

    def start(self) -> GenerationJob:
        self._thread.start()
        return self

    def _progress(self, done: int, total: int) -> None:
        now = time.time()
        if self.first_progress is None:
            self.first_progress = now
        if int(done) > self.done:
            self.last_progress = now
        self.done, self.total = int(done), int(total)

    def _work(self) -> None:
        from services.evaluation.precompute import start_precompute
        from services.generation import GeneratorError
        from services.generation.saved_runs import save_run

        try:
            run = self.generator.generate(self.sources, target_arm=self.target_arm,
                                          twins_per_patient=self.k, seed=self.seed,
                                          progress=self._progress, cancel=self.cancel_event)
            run.manifest["cohort"] = {"label": self.label, **self.note}
            if run.n_twins:
                self.run_dir = str(save_run(run))
                # Compare's metrics and the effects, computed while the user looks at the run
                start_precompute(self.generator.knowledge_base, run, self.run_dir)
            self.run = run
        except GeneratorError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown to the user, never lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished = time.time()

    @property
    def running(self) -> bool:
        return self.finished is None

    def cancel(self) -> None:
        self.cancel_event.set()

    def wait(self, seconds: float) -> bool:
        self._thread.join(max(0.0, seconds))
        return not self.running

    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def seconds_left(self) -> float | None:
        """Time left at the rate observed so far (measured up to the latest completion, so
        the estimate does not drift upwards between bursts of completions)."""
        if not self.done or self.first_progress is None or self.done >= self.total:
            return None
        span = max((self.last_progress or time.time()) - self.first_progress, 1e-6)
        left = (self.total - self.done) * span / self.done
        return max(left - (time.time() - (self.last_progress or time.time())), 1.0)


def current_job() -> GenerationJob | None:
    return st.session_state.get(JOB)


def start_job(job: GenerationJob) -> None:
    st.session_state[JOB] = job.start()
    st.session_state.pop(LAST_RUN_NOTE, None)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _progress_text(job: GenerationJob) -> str:
    if job.cancel_event.is_set() and job.running:
        return f"Cancelling… keeping the {job.done} {job.unit} already done"
    if not job.done:
        return (f"Preparing ({job.elapsed():.0f} s): neighbours, the target arm's model"
                + (" and the prompts" if job.unit == "twins" else "") + "…")
    return (f"{job.done} / {job.total} {job.unit} · {job.elapsed():.0f} s elapsed · "
            f"about {_fmt_s(job.seconds_left())} left")


def _finish(job: GenerationJob, on_finished) -> None:
    job.collected = True
    st.session_state[JOB] = None
    if job.error:
        st.session_state[LAST_RUN_NOTE] = ("error", job.error)
    elif job.run is None or job.run.n_twins == 0:
        why = ""
        if job.run is not None and job.run.failures:
            f = job.run.failures[0]
            why = f": {f.get('reason')} ({'; '.join(f.get('errors', []))[:200]})"
        st.session_state[LAST_RUN_NOTE] = ("warning", "No twin was generated" + why
                                           + (" (cancelled)" if job.cancel_event.is_set() else ""))
    else:
        on_finished(job.run, job.run_dir)
        st.session_state[LAST_RUN_NOTE] = ("done", job.run.run_id)


def job_panel(on_finished, first_run: bool = False) -> None:
    """Progress of the running job with a Cancel button; when it ends, `on_finished(run,
    run_dir)` and a full rerun. Polls every POLL_S while a job runs."""
    job = current_job()
    if job is None:
        return

    def body() -> None:
        j = current_job()
        if j is None:
            return
        if not j.running:
            if not j.collected:
                _finish(j, on_finished)
            st.rerun(scope="app")
        st.markdown(f"**Generating** {j.k} twin(s) per patient of *{j.label}* under "
                    f"**{j.target_arm}** with `{j.generator.name}`")
        bar = st.progress(0.0, text=_progress_text(j))
        st.button("Cancel (keep the twins done)", key="whatif_cancel", on_click=j.cancel,
                  disabled=j.cancel_event.is_set(),
                  help="Stops the generation; the twins finished so far are saved as a run.")
        caps = j.generator.capabilities
        budget = (5.0 if caps.needs_network else INLINE_WAIT_S) if first_run else 0.0
        deadline = time.time() + budget
        while j.running and time.time() < deadline:
            j.wait(0.25)
            bar.progress(min(j.done / j.total, 1.0) if j.total else 0.0, text=_progress_text(j))
        if not j.running:
            if not j.collected:
                _finish(j, on_finished)
            st.rerun(scope="app")
        bar.progress(min(j.done / j.total, 1.0) if j.total else 0.0, text=_progress_text(j))

    st.fragment(body, run_every=POLL_S)()


# ==========================================================================================
# settings widgets


@dataclass
class SourceChoice:
    label: str
    ids: list[str]
    kind: str  # "cohort" | "arm" | "arms"
    detail: dict = field(default_factory=dict)


def source_picker(trial, cohort_spec, cohort_ids) -> SourceChoice:
    """Who gets twins: the cohort from the Cohort page (default when there is one), one arm, or
    every non-control arm (default otherwise)."""
    subj = trial.subjects
    options: list[SourceChoice] = []
    if cohort_ids:
        name = getattr(cohort_spec, "name", "") or "cohort from the Cohort page"
        options.append(SourceChoice(f"{name} ({len(cohort_ids)} patients)", list(cohort_ids),
                                    "cohort", {"spec": cohort_spec.to_dict()
                                               if hasattr(cohort_spec, "to_dict") else None}))
    treated = [a for a in trial.arms if a != trial.control_arm]
    if len(treated) > 1:
        ids = list(subj.loc[subj["ARM"].isin(treated), "USUBJID"])
        options.append(SourceChoice(f"all non-control arms ({len(ids)} patients)", ids, "arms",
                                    {"arms": treated}))
    for arm in trial.arms:
        ids = list(subj.loc[subj["ARM"] == arm, "USUBJID"])
        options.append(SourceChoice(f"arm {arm} ({len(ids)} patients)", ids, "arm", {"arms": [arm]}))
    default = 0
    if not cohort_ids:
        default = next((i for i, o in enumerate(options) if o.kind in ("arms", "arm")
                        and trial.control_arm not in o.detail.get("arms", [])), 0)
    i = st.selectbox("Source patients", range(len(options)), index=default,
                     format_func=lambda j: options[j].label, key=f"whatif_source_{trial.content_hash[:12]}",
                     help="The real patients who get twins. Choose a cohort on the Cohort page to "
                          "twin a filtered group.")
    return options[i]


def target_arm_picker(trial) -> str:
    arms = trial.arms
    default = arms.index(trial.control_arm) if trial.control_arm in arms else 0
    return st.selectbox("Target arm", arms, index=default, key=f"whatif_target_{trial.content_hash[:12]}",
                        help="The arm the twins are generated under: for a synthetic control arm, "
                             "the control arm.")


def generator_picker(generators: dict) -> str:
    """One of the registered generators (`services.generation.GENERATORS`, in its order),
    labelled and described by the class itself."""
    names = list(generators)
    return st.radio("Generator", names, key="whatif_generator", horizontal=True,
                    format_func=lambda n: generators[n].capabilities.label,
                    help=" ".join(f"{n}: {generators[n].description}" for n in names))


def run_settings(generator: str, caps) -> dict:
    """Twins per patient, neighbours, seed (defaults: the generator's `capabilities`)."""
    c1, c2, c3 = st.columns(3)
    k = c1.number_input("Twins per patient", 1, 100, int(caps.twins_per_patient), step=1,
                        key=f"whatif_k_{generator}",
                        help="K synthetic patients per source patient (independent draws).")
    n = c2.number_input("Neighbours", 1, 200, int(caps.neighbors), step=1,
                        key=f"whatif_neighbours_{generator}",
                        help="Similar patients of the target arm used for each source patient "
                             "(the patient itself is never one).")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, step=1, key="whatif_seed",
                           help="Same seed, same settings, same data: same twins.")
    return {"twins_per_patient": int(k), "neighbors": int(n), "seed": int(seed)}


# ==========================================================================================
# first look at a run


def run_header(run, run_dir, note) -> None:
    """The outcome of the latest generation (success / warning / error) and the run's counts."""
    if note and note[0] == "error":
        st.error(f"The generation failed: {note[1]}")
        return
    if note and note[0] == "warning":
        st.warning(note[1])
        return
    if run is None:
        return
    m = run.manifest
    counts = m.get("counts") or {}
    fresh = note and note[0] == "done" and note[1] == run.run_id
    text = (f"Twin arm ready: {run.n_twins} twins of {counts.get('sources', '?')} source patients "
            f"under **{run.target_arm}** (run `{run.run_id}`"
            + (f", saved in `{run_dir}`" if run_dir else "") + ").")
    if m.get("cancelled"):
        st.warning("Cancelled: " + text.replace("Twin arm ready: ", "kept "))
    elif fresh:
        st.success(text)
    else:
        st.info("Current run: " + text.replace("Twin arm ready: ", ""))
    cols = st.columns(5)
    cols[0].metric("Twins", run.n_twins)
    cols[1].metric("Source patients", counts.get("sources", "?"))
    cols[2].metric("Twins per patient", m.get("twins_per_patient"))
    cols[3].metric("Failures", len(m.get("failures") or []))
    total = (m.get("timings") or {}).get("total_s")
    cols[4].metric("Time", f"{total:.1f} s" if isinstance(total, (int, float)) else "n/a")
    usage = (m.get("llm") or {}).get("usage")
    if usage:
        st.caption(f"LLM `{m.get('model')}`, prompt {m.get('prompt_version')}: {usage['calls']} "
                   f"calls, {usage['cache_hits']} from cache, {usage['input_tokens']:,} input + "
                   f"{usage['output_tokens']:,} output tokens, estimated cost "
                   f"${usage['estimated_cost_usd']:.4f}.")




def scale_choice(comp, paramcd: str, key: str) -> str:
    """"raw" or "log" for a parameter's charts: log by default for a positive, right-skewed
    one (`trajectories.suggested_scale`); no choice where the log is undefined."""
    if not can_use_log(comp, paramcd):
        return "raw"
    default = suggested_scale(comp, paramcd)
    return kept_choice(st.radio, "Scale", list(SCALES), index=SCALES.index(default), horizontal=True,
                       key=f"{key}_{paramcd}",
                       help="Log: geometric means and a log axis, which a few extreme patients do not "
                            "dominate (the default for positive, right-skewed parameters such as bilirubin).")


def trajectory_chart(comp, summary_fn, key: str) -> None:
    """Mean trajectory of one chosen parameter: twin arm vs the real arms."""
    params = comp.parameters
    if not params:
        st.info("This run has no longitudinal parameter to draw.")
        return
    kb = comp.kb
    endpoint = kb.meta.endpoint.get("paramcd")
    default = params.index(endpoint) if endpoint in params else 0
    p = kept_choice(st.selectbox, "Parameter", params, index=default, key=key,
                    format_func=lambda x: f"{x} — {kb.parameters[x].label}")
    info = kb.parameters[p]
    scale = scale_choice(comp, p, f"{key}_scale")
    summary = summary_fn(comp, p, scale)
    what = "Geometric mean" if scale == "log" else "Mean"
    st.plotly_chart(mean_trajectories(summary, f"{info.label}: {what.lower()} by visit", info.unit,
                                      log=scale == "log"),
                    width="stretch", key=f"{key}_chart")
    st.caption(f"{what} {info.label} at each visit with its 95 % confidence band: the twins (under "
               f"{comp.target_arm}) should follow the real {comp.target_arm} patients, while the "
               "real source cohort shows what the sources did under their own arm.")


def failures_table(run) -> None:
    failures = run.failures
    if not failures:
        return
    st.markdown(f"**Failures ({len(failures)})**")
    frame = pd.DataFrame([{"source": f.get("source"), "twin": f.get("twin_index"),
                           "reason": f.get("reason"),
                           "details": "; ".join(f.get("errors") or [])[:300]} for f in failures])
    st.dataframe(frame, hide_index=True, width="stretch")
    st.caption("Twins the generator could not write (after its retries); they are left out of "
               "the twin arm, the other twins of the same patient are kept.")


def saved_runs_table(runs: list[dict], current_id: str | None) -> str | None:
    """The saved runs, newest first; returns the run id chosen to open (or None)."""
    if not runs:
        st.caption("No saved run yet.")
        return None
    frame = pd.DataFrame([{"run": r["run_id"], "created": r.get("created"),
                           "knowledge base": r.get("knowledge_base"),
                           "generator": r.get("generator"), "target arm": r.get("target_arm"),
                           "twins": r.get("twins"), "K": r.get("twins_per_patient"),
                           "seed": r.get("seed"), "failures": r.get("failures"),
                           "cancelled": r.get("cancelled"),
                           "current": "●" if r["run_id"] == current_id else ""} for r in runs])
    st.dataframe(frame, hide_index=True, width="stretch", height=min(36 * (len(frame) + 1) + 3, 320))
    ids = [r["run_id"] for r in runs]
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Saved run", ids, key="whatif_saved_choice", label_visibility="collapsed")
    if c2.button("Open run", key="whatif_open"):
        return chosen
    return None


def settings_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


@st.cache_resource(show_spinner=False, max_entries=6)
def fitted_generator(trial_hash: str, name: str, settings_json: str, _trial):
    """A fitted generator per (trial content, generator, settings), shared by sessions. The
    `llm` generator is fitted without endpoint secrets: callers attach theirs with
    `with_endpoint` (a copy), so no session's key sits in the shared object."""
    from services.generation import capabilities, get_generator

    settings = json.loads(settings_json)
    if capabilities(name).needs_network:
        settings["settings"] = LLMSettings()
    return get_generator(name, **settings).fit(_trial)


def manifest_expander(run) -> None:
    with st.expander("Manifest (settings, seed, hashes, timings)"):
        m = dict(run.manifest)
        for big in ("neighbours", "donors", "neighbour_similarity"):
            if big in m:
                m[big] = f"{len(m[big])} entries (see manifest.json)"
        st.json(m, expanded=False)

