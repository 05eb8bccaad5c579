"""Metric summaries: a verdict table and the definitions from the metrics registry."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from services.evaluation.metrics import metrics_table


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def headline_table(headline: pd.DataFrame) -> None:
    """One row per metric: value, ideal and a plain-language verdict with a tick or a cross."""
    if headline.empty:
        st.info("No metric could be computed for this run.")
        return
    shown = headline.assign(
        value=headline["value"].map(_fmt),
        status=headline["ok"].map({True: "✅", False: "⚠️"}).fillna("–"),
    )[["status", "group", "metric", "value", "ideal", "verdict"]]
    st.dataframe(shown, hide_index=True, width="stretch")


def metric_definitions() -> None:
    with st.expander("What the metrics mean"):
        table = metrics_table()
        cols = [c for c in ("group", "name", "definition", "ideal", "reference") if c in table.columns]
        st.dataframe(table[cols], hide_index=True, width="stretch")
