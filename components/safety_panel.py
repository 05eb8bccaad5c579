"""The Safety tab of Compare: AE incidence of twins vs real patients (table a safety
physician reads, incidence and risk-difference plots) and the time to a chosen first AE."""

from __future__ import annotations

import streamlit as st

from components.state import kept_choice
from services.evaluation import safety
from services.reporting.figures import safety as fig
from services.reporting.tables import SAFETY_BY_CONSTRUCTION_NOTE, SAFETY_KM_NOTE, safety_rd_note


@st.cache_data(show_spinner="Counting adverse events...", max_entries=8)
def _tables(kb_hash: str, run_id: str, _comp):
    return safety.incidence(_comp, "PT"), safety.safety_table(_comp)


def safety_tab(comp) -> None:
    """Render the safety comparison of a `Comparison` (or a note when it does not apply)."""
    if not safety.has_ae(comp.kb):
        st.info("This trial has no adverse-event data (ADAE).")
        return
    if not safety.has_safety(comp):
        st.info("This run has no adverse-event twins (its generator makes none, or it was generated before "
                "AE twins existed): generate a new twin arm with the local generator.")
        return
    pt, table = _tables(comp.kb.content_hash, str(comp.manifest.get("run_id", "")), comp)
    st.markdown("**Treatment-emergent adverse events, patients with at least one event, n (%)**")
    st.dataframe(table, hide_index=True, width="stretch", height=420)
    st.caption("A source patient's K twins count as one patient: its share of twins with the term is a "
               "probability, the twin arm's n is the sum of those probabilities and its % their mean. "
               "RD: risk difference in percentage points with its 95 % CI, patients as the unit (source - twins: the "
               "signal; twins - real target: what it can show is said below).")
    top = st.slider("Terms shown", 5, 30, 15, key="cmp_ae_top")
    st.plotly_chart(fig.incidence_dots(pt, "Incidence of the most frequent preferred terms (95 % CI)", top),
                    width="stretch")
    st.caption("Twins should sit on the real target arm (Wilson 95 % intervals for real patients; "
               "patient-level intervals for twins); the gap to the real source cohort is the safety profile "
               "of the source patients' own treatment. " + SAFETY_BY_CONSTRUCTION_NOTE)
    st.plotly_chart(fig.risk_difference_forest(pt, "Risk differences (95 % CI)", top), width="stretch")
    st.caption(safety_rd_note(comp, min(top, len(pt) - 1)))
    terms = [t for t in pt["PT"] if t != safety.ANY]
    term = kept_choice(st.selectbox, "Time to first", terms, key="cmp_ae_term")
    curves, at_risk = safety.km_first_ae(comp, term)
    if len(curves):
        st.plotly_chart(fig.time_to_first_ae(curves, at_risk, f"Time to first {term}"), width="stretch")
        st.caption(SAFETY_KM_NOTE)
