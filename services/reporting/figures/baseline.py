"""Plotly figures of baseline characteristics: a variable by arm, and the cohort vs the excluded.

Builders only: they take frames and return `go.Figure`s; the page decides where they go.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

PALETTE = px.colors.qualitative.Safe
COHORT_COLORS = {"In cohort": "#1f6f8b", "Excluded": "#b0b0b0"}


def group_colors(groups: list) -> dict:
    return {str(g): PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


def _empty(message: str, title: str = "") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=320)
    return fig


def _level_text(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _percent_bars(frame: pd.DataFrame, variable: str, group_col: str, groups: list, colors: dict,
                  label: str, levels: list | None, title: str) -> go.Figure:
    data = frame[[group_col, variable]].copy()
    data[variable] = data[variable].map(lambda v: "(missing)" if pd.isna(v) else _level_text(v))
    order = [_level_text(v) for v in (levels or sorted(frame[variable].dropna().unique(), key=str))]
    if (data[variable] == "(missing)").any():
        order.append("(missing)")
    fig = go.Figure()
    for g in groups:
        sub = data.loc[data[group_col] == g, variable]
        counts = sub.value_counts().reindex(order, fill_value=0)
        pct = 100 * counts / len(sub) if len(sub) else counts * 0.0
        fig.add_bar(x=order, y=pct.values, name=f"{g} (n={len(sub)})", marker_color=colors.get(str(g)),
                    customdata=counts.values, text=[f"{p:.0f}%" for p in pct.values], textposition="outside",
                    hovertemplate="%{x}: %{customdata} subjects (%{y:.1f}%)<extra>" + str(g) + "</extra>")
    fig.update_layout(barmode="group", title=title, xaxis_title=label, yaxis_title="% of group",
                      legend_title_text="", height=380, margin={"t": 50, "b": 40})
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    return fig


def _continuous(frame: pd.DataFrame, variable: str, group_col: str, groups: list, colors: dict,
                label: str, style: str, title: str) -> go.Figure:
    data = frame[[group_col, variable]].copy()
    data[variable] = pd.to_numeric(data[variable], errors="coerce")
    data = data.dropna(subset=[variable])
    data = data[data[group_col].isin(groups)]
    if data.empty:
        return _empty(f"No value of {label} in these subjects", title)
    names = {g: f"{g} (n={int((data[group_col] == g).sum())})" for g in groups}
    fig = go.Figure()
    if style == "histogram":
        bins = np.histogram_bin_edges(data[variable], bins="auto")
        if len(bins) > 41:
            bins = np.linspace(bins[0], bins[-1], 41)
        size = float(bins[1] - bins[0]) if len(bins) > 1 else 1.0
        for g in groups:
            values = data.loc[data[group_col] == g, variable]
            fig.add_histogram(x=values, name=names[g], histnorm="percent", opacity=0.6,
                              marker_color=colors.get(str(g)),
                              xbins={"start": float(bins[0]), "end": float(bins[-1]) + size, "size": size})
        fig.update_layout(barmode="overlay", xaxis_title=label, yaxis_title="% of group")
    else:
        for g in groups:
            values = data.loc[data[group_col] == g, variable]
            fig.add_box(y=values, name=names[g], marker_color=colors.get(str(g)), boxpoints="all",
                        jitter=0.4, pointpos=0, boxmean=True, marker_size=4, marker_opacity=0.5)
        fig.update_layout(yaxis_title=label, showlegend=False)
    fig.update_layout(title=title, legend_title_text="", height=380, margin={"t": 50, "b": 40})
    return fig


def baseline_distribution(frame: pd.DataFrame, variable: str, kind: str, by: str = "ARM",
                          groups: list | None = None, label: str | None = None, style: str = "box",
                          levels: list | None = None) -> go.Figure:
    """Distribution of a baseline variable by arm: box (with points and mean) or overlaid
    histogram (% of each arm) for a continuous variable; bars of % per level for a categorical one."""
    label = label or variable
    groups = list(groups) if groups is not None else sorted(frame[by].dropna().unique(), key=str)
    colors = group_colors(groups)
    title = f"{label} by {by.lower() if by == 'ARM' else by}"
    if frame.empty or variable not in frame.columns:
        return _empty("No subjects to show", title)
    if kind == "continuous":
        return _continuous(frame, variable, by, groups, colors, label, style, title)
    return _percent_bars(frame, variable, by, groups, colors, label, levels, title)


def cohort_vs_excluded(full: pd.DataFrame, in_cohort, variable: str, kind: str,
                       label: str | None = None, style: str = "histogram",
                       levels: list | None = None) -> go.Figure:
    """The variable in the cohort against the trial's subjects the filters excluded.
    `in_cohort`: boolean mask aligned with the rows of `full`."""
    label = label or variable
    mask = np.asarray(in_cohort, dtype=bool)
    data = full[[variable]].copy()
    data["group"] = np.where(mask, "In cohort", "Excluded")
    title = f"{label}: cohort vs excluded"
    if mask.all():
        return _empty("No subject is excluded: the cohort is the whole trial", title)
    if not mask.any():
        return _empty("The cohort is empty", title)
    groups = ["In cohort", "Excluded"]
    if kind == "continuous":
        return _continuous(data, variable, "group", groups, COHORT_COLORS, label, style, title)
    return _percent_bars(data, variable, "group", groups, COHORT_COLORS, label, levels, title)


def attrition_chart(steps: pd.DataFrame) -> go.Figure:
    """Horizontal bars: subjects left after each criterion (the eligibility funnel)."""
    fig = go.Figure(go.Bar(x=steps["remaining"], y=steps["criterion"], orientation="h",
                           marker_color=COHORT_COLORS["In cohort"], text=steps["remaining"],
                           textposition="auto",
                           customdata=steps["excluded"],
                           hovertemplate="%{y}<br>%{x} left, %{customdata} excluded<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=max(160, 48 * len(steps) + 60), margin={"t": 10, "b": 30, "l": 10, "r": 10},
                      xaxis_title="subjects left")
    return fig
