"""Shared plumbing of the Compare, Validate and Export pages: the current run and cached
computations on it (keyed by the trial's content hash and the run id)."""

from __future__ import annotations

import streamlit as st

from components.state import get_run, get_run_dir, get_trial
from services.evaluation import comparison as ev
from services.evaluation.effects import cached_run_effects
from services.evaluation.precompute import precompute_for


def require_run():
    """(knowledge base, run) or stop the page with a pointer to the What-if page."""
    trial = get_trial()
    run = get_run()
    if run is None:
        st.info("No twin arm yet: generate one on the What-if page (or reopen an earlier run there).")
        st.page_link("pages/whatif.py", label="Go to What-if: twin arm", icon="🧬")
        st.stop()
    kb_hash = (run.manifest.get("knowledge_base") or {}).get("content_hash")
    if kb_hash and kb_hash != trial.content_hash:
        st.warning(f"Run {run.run_id} was generated from another trial "
                   f"({(run.manifest.get('knowledge_base') or {}).get('name')}). Load that trial in the sidebar "
                   "or generate a new twin arm for this one.")
        st.stop()
    return trial, run


@st.cache_resource(show_spinner=False, max_entries=8)
def _comparison(kb_hash: str, run_id: str, _kb, _run):
    return ev.compare(_kb, _run.as_trial(), _run.manifest)


def cached_comparison(kb, run) -> ev.Comparison:
    return _comparison(kb.content_hash, run.run_id, kb, run)


def wait_for_background(step: str) -> None:
    """When the run's background evaluation (`precompute`) is computing `step`, show its
    progress and wait for it rather than computing the same thing beside it."""
    job = precompute_for(get_run_dir())
    if job is None or job.wait_for(step, 0):
        return
    bar = st.progress(job.fraction(), text=job.text())
    while not job.wait_for(step, 0.5):
        bar.progress(job.fraction(), text=job.text())
    bar.empty()


def _dir_key() -> str | None:
    run_dir = get_run_dir()
    return None if run_dir is None else str(run_dir)


@st.cache_data(show_spinner="Computing fidelity, privacy and utility metrics...", max_entries=8)
def _evaluation(kb_hash: str, run_id: str, run_dir: str | None, _kb, _run) -> dict:
    # run_dir is part of the key: the same run id saved elsewhere has its own stored result
    return ev.cached_run_evaluation(_kb, _run, run_dir)


def cached_evaluation(kb, run) -> dict:
    """The run's Compare metrics: computed once per run (in the background after generation),
    kept in its folder (evaluation.json) for the report and later sessions."""
    wait_for_background("evaluation")
    return _evaluation(kb.content_hash, run.run_id, _dir_key(), kb, run)


@st.cache_data(show_spinner=False, max_entries=8)
def _effects(kb_hash: str, run_id: str, run_dir: str | None, _kb, _run) -> dict:
    return cached_run_effects(_kb, _run, run_dir)


def cached_effects(kb, run) -> dict:
    """The run's effects (patient as unit, generator refits): computed once per run, kept in its
    folder (effects.json) for the report and later sessions."""
    wait_for_background("effects")
    return _effects(kb.content_hash, run.run_id, _dir_key(), kb, run)
