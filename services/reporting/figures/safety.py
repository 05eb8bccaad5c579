"""Plotly figures of the safety comparison (frames from `services.evaluation.safety`):
incidence of the most frequent terms per group with 95 % intervals, risk differences, and
the time to the first AE of a term. Used by the Compare page and the HTML report."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from services.reporting.figures.compare import colour, kaplan_meier

_GROUP_ORDER = ("twin arm", "real target arm", "real source cohort")
_OFFSET = {"twin arm": -0.22, "real target arm": 0.0, "real source cohort": 0.22}


def _top(table: pd.DataFrame, top: int) -> pd.DataFrame:
    body = table[table["PT"].ne("ANY ADVERSE EVENT")]
    return body.head(top).iloc[::-1]          # most frequent at the top of the plot


def incidence_dots(table: pd.DataFrame, title: str, top: int = 15) -> go.Figure:
    """Incidence (%) of the `top` most frequent terms of `table` (`safety.incidence`) per
    group with 95 % intervals; one row per term."""
    body = _top(table, top)
    label_col = "PT" if body["PT"].ne("").any() else "SOC"
    y = list(range(len(body)))
    fig = go.Figure()
    for g in _GROUP_ORDER:
        if f"{g}_pct" not in body:
            continue
        pct = 100 * body[f"{g}_pct"]
        fig.add_trace(go.Scatter(
            x=pct, y=[v + _OFFSET[g] for v in y], mode="markers", name=g, marker={"color": colour(g), "size": 8},
            error_x={"type": "data", "symmetric": False, "array": 100 * body[f"{g}_hi"] - pct,
                     "arrayminus": pct - 100 * body[f"{g}_lo"], "thickness": 1.2},
            text=body[label_col], hovertemplate="%{text}: %{x:.1f} %<extra>" + g + "</extra>"))
    fig.update_yaxes(tickvals=y, ticktext=list(body[label_col]), automargin=True)
    fig.update_xaxes(title_text="patients with the event (%)", rangemode="tozero")
    fig.update_layout(title=title, template="plotly_white", height=max(360, 34 * len(body) + 140),
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}, margin={"t": 80})
    return fig


def risk_difference_forest(table: pd.DataFrame, title: str, top: int = 15) -> go.Figure:
    """Risk differences (percentage points) with 95 % CIs: twin arm - real target arm
    (fidelity, ideally 0) and real source cohort - twin arm (the signal against twins)."""
    body = _top(table, top)
    label_col = "PT" if body["PT"].ne("").any() else "SOC"
    y = list(range(len(body)))
    fig = go.Figure()
    for key, name, g, off in (("rd_twin_target", "twin arm - real target arm", "twin arm", -0.15),
                              ("rd_source_twin", "real source cohort - twin arm", "real source cohort", 0.15)):
        if key not in body:
            continue
        d = 100 * body[key]
        fig.add_trace(go.Scatter(
            x=d, y=[v + off for v in y], mode="markers", name=name, marker={"color": colour(g), "size": 8,
                                                                            "symbol": "diamond"},
            error_x={"type": "data", "symmetric": False, "array": 100 * body[f"{key}_hi"] - d,
                     "arrayminus": d - 100 * body[f"{key}_lo"], "thickness": 1.2},
            text=body[label_col], hovertemplate="%{text}: %{x:+.1f} points<extra>" + name + "</extra>"))
    fig.add_vline(x=0, line={"color": "#888", "dash": "dot"})
    fig.update_yaxes(tickvals=y, ticktext=list(body[label_col]), automargin=True)
    fig.update_xaxes(title_text="risk difference (percentage points, 95 % CI)")
    fig.update_layout(title=title, template="plotly_white", height=max(360, 34 * len(body) + 140),
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}, margin={"t": 80})
    return fig


def time_to_first_ae(curves: pd.DataFrame, at_risk: pd.DataFrame, title: str) -> go.Figure:
    """Kaplan-Meier of the time to the first AE of a term (proportion still free of it)."""
    fig = kaplan_meier(curves, at_risk, title)
    fig.update_yaxes(title_text="free of the event", row=1, col=1)
    return fig
