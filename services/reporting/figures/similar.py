"""Tables and Plotly figures of the Similar patients page.

Builders only: they take frames (`services.retrieval.retriever.NeighbourData`, neighbours) and return a
DataFrame or a `go.Figure`; the page decides where they go.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

QUERY_COLOR = "#c0392b"
NEIGHBOUR_COLOR = "#1f6f8b"
MEAN_COLOR = "#0b3d4f"


def _empty(message: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=height)
    return fig


def neighbour_table(query_id: str, neighbours, data, covariates: list[str], parameters: list[str],
                    labels: dict[str, str] | None = None) -> pd.DataFrame:
    """One row for the query patient, one per neighbour (closest first) and, when there are
    neighbours, a row with their mean (numbers) or most frequent value (categories).

    `data`: `NeighbourData` of `[query_id] + neighbour ids`. Columns: Patient, Role, Arm,
    Similarity, then the covariates and the baseline parameters (named by `labels`)."""
    labels = labels or {}
    subj = data.subjects.set_index("USUBJID")
    base = data.baseline
    sims = {n.usubjid: n.similarity for n in neighbours}
    order = [query_id] + [n.usubjid for n in neighbours]
    rows = []
    for i, u in enumerate(order):
        row = {"Patient": u, "Role": "query patient" if i == 0 else f"neighbour {i}",
               "Arm": subj.at[u, "ARM"], "Similarity": np.nan if i == 0 else round(float(sims[u]), 3)}
        for c in covariates:
            row[labels.get(c, c)] = subj.at[u, c] if c in subj.columns else np.nan
        for p in parameters:
            row[labels.get(p, p)] = base.at[u, p] if p in base.columns else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if neighbours:
        nb = table.iloc[1:]
        summary = {"Patient": f"{len(neighbours)} neighbours", "Role": "neighbours' mean / mode",
                   "Arm": "", "Similarity": round(float(nb["Similarity"].mean()), 3)}
        for col in table.columns[4:]:
            values = nb[col].dropna()
            if values.empty:
                summary[col] = np.nan
            elif pd.api.types.is_numeric_dtype(values):
                summary[col] = float(values.mean())
            else:
                summary[col] = values.astype(str).mode().iloc[0]
        table = pd.concat([table, pd.DataFrame([summary])], ignore_index=True)
    for col in table.columns[4:]:
        if pd.api.types.is_numeric_dtype(table[col]):
            table[col] = table[col].astype(float).round(2)
        else:
            table[col] = table[col].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                        else str(v))
    return table


def trajectory_overlay(query_id: str, neighbours, trajectories: pd.DataFrame, paramcd: str,
                       label: str = "", unit: str = "", x: str = "ADY", y: str = "AVAL") -> go.Figure:
    """The query patient's trajectory of one parameter (bold) over its neighbours' (thin, more
    opaque when more similar) and the neighbours' mean at each visit (dashed).

    `trajectories`: `NeighbourData.trajectories` of the query patient and the neighbours.
    `x`: "ADY" (study day) or "AVISITN" (visit); `y`: "AVAL" (value) or "CHG" (change from
    baseline)."""
    tr = trajectories[trajectories["PARAMCD"] == paramcd].copy()
    if tr.empty:
        return _empty(f"No records of {paramcd} for these patients")
    if x == "ADY":
        tr = tr[tr["ADY"].notna()]
    if y == "CHG":
        tr.loc[tr["ABLFL"] == "Y", "CHG"] = 0.0
    tr = tr[tr[y].notna()]
    if tr.empty:
        return _empty(f"No {'study days' if x == 'ADY' else 'visits'} recorded for {paramcd}")
    tr = tr.sort_values(["USUBJID", x])
    sims = {n.usubjid: n.similarity for n in neighbours}
    fig = go.Figure()
    smin = min(sims.values()) if sims else 0.0
    smax = max(sims.values()) if sims else 1.0
    shown = False
    for n in neighbours:
        g = tr[tr["USUBJID"] == n.usubjid]
        if g.empty:
            continue
        alpha = 0.25 + 0.55 * ((n.similarity - smin) / (smax - smin) if smax > smin else 1.0)
        fig.add_trace(go.Scatter(
            x=g[x], y=g[y], mode="lines+markers", name=f"neighbours ({len(neighbours)})",
            line={"color": NEIGHBOUR_COLOR, "width": 1.2}, marker={"size": 4}, opacity=alpha,
            legendgroup="neighbours", showlegend=not shown,
            customdata=np.column_stack([g["AVISIT"].astype(str), np.full(len(g), n.similarity)]),
            hovertemplate=(f"{n.usubjid}<br>%{{customdata[0]}}<br>{x}=%{{x}}<br>{y}=%{{y:.2f}}"
                           "<br>similarity %{customdata[1]:.3f}<extra></extra>")))
        shown = True
    nb = tr[tr["USUBJID"].isin(sims)]
    if len(nb) and x == "AVISITN":
        mean = nb.groupby(x, as_index=False)[y].mean()
    elif len(nb):
        mean = nb.groupby("AVISITN", as_index=False).agg(**{x: (x, "median"), y: (y, "mean")})
    else:
        mean = None
    if mean is not None and len(mean):
        fig.add_trace(go.Scatter(x=mean[x], y=mean[y], mode="lines", name="neighbours' mean",
                                 line={"color": MEAN_COLOR, "width": 2.5, "dash": "dash"},
                                 hovertemplate=f"neighbours' mean<br>{x}=%{{x}}<br>{y}=%{{y:.2f}}<extra></extra>"))
    q = tr[tr["USUBJID"] == query_id]
    if len(q):
        fig.add_trace(go.Scatter(
            x=q[x], y=q[y], mode="lines+markers", name=f"query {query_id}",
            line={"color": QUERY_COLOR, "width": 3.5}, marker={"size": 8},
            customdata=q["AVISIT"].astype(str),
            hovertemplate=f"{query_id}<br>%{{customdata}}<br>{x}=%{{x}}<br>{y}=%{{y:.2f}}<extra></extra>"))
    what = label or paramcd
    ylab = ("Change from baseline in " if y == "CHG" else "") + what
    if unit and unit not in what:
        ylab += f" ({unit})"
    xlab = "Study day" if x == "ADY" else "Visit (AVISITN; baseline = 0)"
    fig.update_layout(height=440, xaxis_title=xlab, yaxis_title=ylab, hovermode="closest",
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                      margin={"t": 40})
    if x == "AVISITN":
        visits = tr.drop_duplicates("AVISITN").sort_values("AVISITN")
        fig.update_xaxes(tickvals=visits["AVISITN"], ticktext=visits["AVISIT"].astype(str))
    return fig


def similarity_bars(neighbours) -> go.Figure:
    """Similarity of each neighbour (closest first)."""
    if not neighbours:
        return _empty("No neighbours", height=220)
    fig = go.Figure(go.Bar(x=[n.usubjid for n in neighbours], y=[n.similarity for n in neighbours],
                           marker_color=NEIGHBOUR_COLOR,
                           hovertemplate="%{x}<br>similarity %{y:.3f}<extra></extra>"))
    low = min(n.similarity for n in neighbours)
    fig.update_layout(height=240, yaxis_title="cosine similarity", margin={"t": 20},
                      yaxis_range=[max(-1.0, low - 0.1), 1.0], xaxis_type="category")
    return fig
