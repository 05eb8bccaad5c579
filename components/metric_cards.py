"""Metric summaries: a verdict table and the definitions from the metrics registry."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from components.data_table import data_table
from services.evaluation.metrics import metrics_table


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _interval(low, high) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "–"
    return f"{_fmt(float(low))} to {_fmt(float(high))}"


VERDICT_ICONS = {"met": "✅ met", "not met": "❌ not met", "inconclusive": "❔ inconclusive", "n/a": "– n/a"}


def headline_table(headline: pd.DataFrame) -> None:
    """One row per metric: value, its 95 % interval, the ideal, the threshold and the verdict that
    follows from threshold and interval, with what it means."""
    if headline.empty:
        st.info("No metric could be computed for this run.")
        return
    shown = pd.DataFrame({
        "verdict": headline["verdict"].map(VERDICT_ICONS), "group": headline["group"],
        "metric": headline["metric"], "value": headline["value"].map(_fmt),
        "95 % interval": [_interval(lo, hi) for lo, hi in zip(headline["ci_low"], headline["ci_high"])],
        "ideal": headline["ideal"], "threshold": headline["threshold"], "meaning": headline["meaning"],
        "detail": headline["detail"]})
    data_table(shown)
    st.caption("Verdict: met when the value (or its whole interval) meets the threshold, not met when it "
               "(or the whole interval) does not, inconclusive when the interval crosses the threshold.")


def metric_definitions() -> None:
    with st.expander("What the metrics mean"):
        table = metrics_table()
        cols = [c for c in ("group", "name", "definition", "ideal", "reference") if c in table.columns]
        data_table(table[cols], labels={"name": "metric"})
