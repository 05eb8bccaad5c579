"""Session state shared across pages: the loaded trial, the chosen cohort, the current run.

Pages read and write state only through these helpers, so the keys live in one place.
"""

from __future__ import annotations

import streamlit as st

from services.data.demo import DEFAULT_DEMO, load_demo

TRIAL = "trial"
TRIAL_SOURCE = "trial_source"
COHORT_SPEC = "cohort_spec"
COHORT_IDS = "cohort_ids"
RUN = "twin_run"
RUN_DIR = "twin_run_dir"
UPLOAD_ERRORS = "upload_errors"
LAST_RUN_NOTE = "whatif_last_note"     # the outcome of the latest generation (run_widgets)


@st.cache_resource(show_spinner="Loading the bundled trial...")
def cached_demo(name: str):
    """Bundled trials are immutable: one loaded copy per process, shared by sessions."""
    return load_demo(name)


def get_trial():
    """The current trial; the default demo until the user picks or uploads another."""
    if TRIAL not in st.session_state:
        set_trial(cached_demo(DEFAULT_DEMO), f"demo: {DEFAULT_DEMO}")
    return st.session_state[TRIAL]


def set_trial(trial, source: str) -> None:
    """Switch trial; the cohort and run of the previous trial no longer apply, nor do the
    errors of an earlier upload."""
    previous = st.session_state.get(TRIAL)
    st.session_state[TRIAL] = trial
    st.session_state[TRIAL_SOURCE] = source
    st.session_state.pop(UPLOAD_ERRORS, None)
    if previous is not None and previous.content_hash != trial.content_hash:
        for key in (COHORT_SPEC, COHORT_IDS, RUN, RUN_DIR, LAST_RUN_NOTE):
            st.session_state.pop(key, None)


def trial_source() -> str:
    return st.session_state.get(TRIAL_SOURCE, "")


def set_upload_errors(messages: list[str]) -> None:
    st.session_state[UPLOAD_ERRORS] = list(messages)


def upload_errors() -> list[str]:
    """Errors of the last upload attempt (the previously loaded trial is kept); cleared by a switch."""
    return list(st.session_state.get(UPLOAD_ERRORS, []))


def set_cohort(spec, usubjids: list[str]) -> None:
    st.session_state[COHORT_SPEC] = spec
    st.session_state[COHORT_IDS] = list(usubjids)


def get_cohort():
    """(spec, usubjids) of the chosen cohort, or (None, None) when none was chosen."""
    return st.session_state.get(COHORT_SPEC), st.session_state.get(COHORT_IDS)


def cohort_ids_or_all() -> list[str]:
    _, ids = get_cohort()
    return list(ids) if ids else list(get_trial().subjects["USUBJID"])


def set_run(run, run_dir=None) -> None:
    st.session_state[RUN] = run
    st.session_state[RUN_DIR] = None if run_dir is None else str(run_dir)


def get_run():
    """The current twin run (generated or reopened) or None."""
    return st.session_state.get(RUN)


def get_run_dir():
    return st.session_state.get(RUN_DIR)


_KEPT = "kept:"           # a widget's last value, beside its own key
_MISSING = object()


def kept(widget, *args, key: str, default_arg: str = "index", default=0, valid=None, **kwargs):
    """`widget(*args, key=key, **kwargs)` (st.selectbox, st.radio, st.number_input, ...) with the
    value it had when the user last left its page: Streamlit drops the state of a widget its page
    did not draw, so a chosen parameter or patient was back at its default on return (a browser
    review). `default` is passed as `default_arg` ("index" or "value") only when nothing is
    restored (Streamlit warns when both are set); `valid` rejects a kept value that no longer
    applies (an option of another trial)."""
    saved = st.session_state.get(_KEPT + key, _MISSING)
    if key in st.session_state and valid is not None and not valid(st.session_state[key]):
        del st.session_state[key]       # its options changed under it: the default, not Streamlit's first
        saved = _MISSING
    if key not in st.session_state and saved is not _MISSING and (valid is None or valid(saved)):
        st.session_state[key] = saved
    elif key not in st.session_state:
        kwargs[default_arg] = default
    value = widget(*args, key=key, **kwargs)
    st.session_state[_KEPT + key] = value
    return value


def kept_choice(widget, label: str, options, key: str, index: int = 0, **kwargs):
    """`kept` for a widget of options (selectbox, radio): a kept value must still be an option."""
    options = list(options)
    return kept(widget, label, options, key=key, default=index, valid=lambda v: v in options, **kwargs)
