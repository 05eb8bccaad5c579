"""The sidebar: choose a bundled trial or upload ADaM files; the trial's summary."""

from __future__ import annotations

import streamlit as st

from components.state import (
    cached_demo,
    get_trial,
    set_trial,
    set_upload_errors,
    trial_source,
    upload_errors,
)
from services.data.demo import demo_names
from services.data.loading import load_trial_files
from services.data.readers import RawFile
from services.data.trial import TrialValidationError

CLEAR_DEMO_CHOICE = "sidebar_clear_demo_choice"


def _load_chosen_demo() -> None:
    name = st.session_state["demo_choice"]
    if name is not None:
        set_trial(cached_demo(name), f"demo: {name}")


def render_sidebar() -> None:
    get_trial()
    with st.sidebar:
        st.markdown("### Trial")
        names = demo_names()
        source = trial_source()
        current = source.removeprefix("demo: ") if source.startswith("demo: ") else None
        if st.session_state.pop(CLEAR_DEMO_CHOICE, False):
            # after an upload the box shows no demo; set through its state (before it is drawn) so
            # the browser drops its last value instead of sending it back on the next rerun
            st.session_state["demo_choice"] = None
        st.selectbox(
            "Bundled public trial", names, index=names.index(current) if current in names else None,
            key="demo_choice", on_change=_load_chosen_demo,
            placeholder=f"Uploaded: {get_trial().name}" if source == "upload" else "Choose a trial",
            help="Real public trials shipped with TwinArm (see their provenance notes).",
        )

        with st.expander("Upload ADaM files", expanded=False):
            files = st.file_uploader(
                "ADSL plus any BDS, ADTTE, ADAE files (csv, parquet, xpt, sas7bdat) and an optional trial.toml",
                accept_multiple_files=True, key="uploads",
            )
            if st.button("Load uploaded files", disabled=not files, key="load_uploads"):
                raws = [RawFile(f.name, f.getvalue()) for f in files]
                try:
                    loaded = load_trial_files(raws)          # named by its STUDYID (or file names)
                except TrialValidationError as exc:
                    set_upload_errors(exc.messages)
                else:
                    set_trial(loaded, "upload")
                    st.session_state[CLEAR_DEMO_CHOICE] = True  # the box shows "Uploaded: <name>"
                    st.rerun()
            errors = upload_errors()
            for msg in errors:
                st.error(msg)
            if errors:
                st.caption(f"The previously loaded trial is kept. Current trial: {get_trial().title}.")

        trial = get_trial()
        st.markdown(f"**{trial.title}**")
        counts = trial.arm_counts()
        st.caption(f"{len(trial.subjects)} subjects · {len(counts)} arms · "
                   f"{len(trial.parameters)} parameters · control: {trial.control_arm}")
        st.dataframe({"arm": list(counts), "subjects": list(counts.values())}, hide_index=True,
                     width="stretch")
        for warning in trial.warnings[:5]:
            st.caption(f"⚠ {warning}")
