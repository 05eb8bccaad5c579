"""Export & report: the twin arm as ADaM-lite files and a self-contained HTML report."""

import streamlit as st

from components.compare_state import cached_effects, cached_evaluation, require_run
from components.state import get_run_dir
from services.reporting.export import export_zip
from services.reporting.report import build_report

kb, run = require_run()
st.title("Export & report")
st.caption(f"Run {run.run_id}: {run.n_twins} twins under {run.target_arm}.")


@st.cache_data(show_spinner="Packing the twin arm...", max_entries=8)
def _zip(run_id: str, kb_hash: str, fmt: str, _run, _labels, _kb) -> bytes:
    return export_zip(_run, fmt, _labels, knowledge_base=_kb)


@st.cache_data(show_spinner="Writing the report (metrics, backtest, figures)...", max_entries=4)
def _report(kb_hash: str, run_id: str, inputs_key: str, _kb, _run, _inputs, _safety=None) -> str:
    # the effects are the Compare tab's (kept with the run) and the PROCOVA inputs the Validate
    # page's: the report says what the screen says
    # the cohort is the run's own (its manifest), not the one chosen on the Cohort page since
    return build_report(_kb, _run, effects=cached_effects(_kb, _run),
                        evaluation=cached_evaluation(_kb, _run), run_dir=get_run_dir(), procova_inputs=_inputs,
                        safety_backtest=_safety)


st.header("Twin arm files")
fmt = st.radio("Format", ["csv", "xpt", "parquet"], horizontal=True, key="export_format",
               format_func={"csv": "CSV", "xpt": "SAS XPORT v5 (with labels)", "parquet": "Parquet"}.get)
st.download_button("Download twin arm (zip)", _zip(run.run_id, kb.content_hash, fmt, run, kb.labels, kb),
                   file_name=f"twinarm-{run.run_id}-{fmt}.zip", mime="application/zip", key="download_zip")
st.caption("ADaM-lite: adsl (one row per twin, with SRCSUBJID and TWINIDX), one file per BDS dataset, adtte when "
           "the trial has time-to-event data, trial.toml and manifest.json. XPORT v5 limits names to 8 characters: "
           "SRCSUBJID becomes SRCSUBJ, as the manifest records. Every dataset starts with STUDYID (the knowledge "
           "base's); generated values are rounded to the decimals the knowledge base records for each parameter.")

st.header("Report")
# Built when the button is clicked (a callable `data`): metrics, a backtest and figures take a
# while, and a visit to this page should not pay for a report nobody downloads.
planned_for, inputs = st.session_state.get("validate_procova_inputs") or (None, None)
inputs = inputs if planned_for == run.run_id else None
# the latest safety backtest of this run on the Validate page, as it showed it
safety_runs = [(k, v) for k, v in (st.session_state.get("validate_safety_backtests") or {}).items()
               if k[0] == kb.content_hash and k[1] == run.run_id]
safety_key, safety_result = safety_runs[-1] if safety_runs else (None, None)
st.download_button("Download report (HTML)",
                   lambda: _report(kb.content_hash, run.run_id, repr(sorted((inputs or {}).items())) + repr(safety_key),
                                   kb, run, inputs, safety_result).encode(),
                   file_name=f"twinarm-report-{run.run_id}.html", mime="text/html", key="download_report")
st.caption("One self-contained HTML file that opens offline (Plotly inlined, no network request): trial and "
           "cohort, method, the validation card of this run's generator, the treatment effect against the "
           "twins, figures, metric tables, the safety backtest when one was run on Validate, PROCOVA sample "
           "size and limitations. It is written when you click: about a minute the first time for a local run "
           "(the effect refits the generator 20 times, unless Compare's Effect tab already did), seconds after "
           "that.")

with st.expander("Manifest"):
    st.json(run.manifest, expanded=False)
