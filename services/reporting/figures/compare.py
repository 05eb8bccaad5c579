"""Plotly figure builders for comparing twins with real patients (no Streamlit, no domain logic:
they draw frames that services computed). Used by the Compare page and the HTML report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from services.evaluation.effects import RATIO_MEASURES

GROUP_COLOURS = {
    "twin arm": "#d95f02",
    "real target arm": "#1b9e77",
    "real source cohort": "#7570b3",
}
_FALLBACK = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def colour(group: str, i: int = 0) -> str:
    return GROUP_COLOURS.get(group, _FALLBACK[i % len(_FALLBACK)])


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 420) -> go.Figure:
    # the legend sits on the plot's top edge (y 1, not 1.02: in a tall figure, such as the SMD plot of
    # many visits, 2 % of the plot's height lifted it into the title)
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0}, margin={"t": 80, "b": 40})
    return fig


def _log_axis(fig: go.Figure, log: bool) -> go.Figure:
    if log:
        fig.update_yaxes(type="log")
    return fig


def mean_trajectories(summary: pd.DataFrame, title: str, unit: str = "", log: bool = False) -> go.Figure:
    """Mean with 95 % CI per visit; `summary` has GROUP, AVISITN, AVISIT, ADY, n, mean, lo, hi
    (`log`: a geometric-mean summary, drawn on a log axis)."""
    fig = go.Figure()
    what = "geometric mean" if log else "mean"
    for i, (group, grp) in enumerate(summary.groupby("GROUP", sort=False)):
        grp = grp.sort_values("ADY")
        c = colour(group, i)
        fig.add_trace(go.Scatter(x=list(grp["ADY"]) + list(grp["ADY"][::-1]),
                                 y=list(grp["hi"]) + list(grp["lo"][::-1]), fill="toself",
                                 fillcolor=_rgba(c, 0.15), line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, legendgroup=group))
        fig.add_trace(go.Scatter(x=grp["ADY"], y=grp["mean"], mode="lines+markers", name=group,
                                 line={"color": c, "width": 2}, legendgroup=group,
                                 customdata=np.c_[grp["AVISIT"].astype(str), grp["n"]],
                                 hovertemplate="%{customdata[0]}: " + what + " %{y:.3g} (n=%{customdata[1]})<extra>"
                                               + group + "</extra>"))
    fig = _layout(fig, title, "study day", f"{what} ({unit})" if unit else what)
    return _log_axis(fig, log)


def spaghetti(values: pd.DataFrame, title: str, unit: str = "", log: bool = False) -> go.Figure:
    """One line per patient; `values` has GROUP, USUBJID, ADY, AVAL (already sampled)."""
    fig = go.Figure()
    for i, (group, grp) in enumerate(values.groupby("GROUP", sort=False)):
        c = colour(group, i)
        first = True
        for _, pat in grp.sort_values("ADY").groupby("USUBJID", sort=False):
            fig.add_trace(go.Scatter(x=pat["ADY"], y=pat["AVAL"], mode="lines+markers", name=group,
                                     line={"color": _rgba(c, 0.75), "width": 1.6},
                                     marker={"size": 4, "color": _rgba(c, 0.75)}, legendgroup=group,
                                     showlegend=first, hovertemplate=f"{pat['USUBJID'].iloc[0]}<extra>{group}</extra>"))
            first = False
    return _log_axis(_layout(fig, title, "study day", unit or "value"), log)


MIN_BAND_TWINS = 10   # a 10-90 % band from fewer twins is one or two twins at each edge


def patient_band(real: pd.DataFrame, twins: pd.DataFrame, title: str, unit: str = "",
                 log: bool = False) -> go.Figure:
    """One patient's real trajectory (ADY, AVAL) against its twins (`twins` has USUBJID, ADY,
    AVAL, one row per twin and visit): the 10-90 % band and median at visits with at least
    `MIN_BAND_TWINS` twins; with fewer, each twin's own line and their median."""
    fig = go.Figure()
    if len(twins):
        c = colour("twin arm")
        per_visit = twins.groupby("ADY")["AVAL"]
        n = per_visit.count()
        if n.min() >= MIN_BAND_TWINS:
            band = per_visit.quantile([0.1, 0.5, 0.9]).unstack().sort_index()
            fig.add_trace(go.Scatter(x=list(band.index) + list(band.index[::-1]),
                                     y=list(band[0.9]) + list(band[0.1][::-1]), fill="toself",
                                     fillcolor=_rgba(c, 0.2), line={"width": 0},
                                     name=f"twins 10-90 % ({int(n.min())} twins)"))
        else:
            first = True
            for _, twin in twins.sort_values("ADY").groupby("USUBJID", sort=False):
                fig.add_trace(go.Scatter(x=twin["ADY"], y=twin["AVAL"], mode="lines+markers",
                                         line={"color": _rgba(c, 0.6), "width": 1.2}, marker={"size": 4},
                                         name=f"twins ({twins['USUBJID'].nunique()}: too few for a band)",
                                         legendgroup="twins", showlegend=first))
                first = False
        median = per_visit.median().sort_index()
        fig.add_trace(go.Scatter(x=median.index, y=median.values, mode="lines", name="twins median",
                                 line={"color": c, "dash": "dash", "width": 2}))
    if len(real):
        real = real.sort_values("ADY")
        fig.add_trace(go.Scatter(x=real["ADY"], y=real["AVAL"], mode="lines+markers", name="real patient",
                                 line={"color": "#222222", "width": 2.5}))
    return _log_axis(_layout(fig, title, "study day", unit or "value"), log)


def kaplan_meier(curves: pd.DataFrame, at_risk: pd.DataFrame | None, title: str) -> go.Figure:
    """KM curves with 95 % bands; `curves` has GROUP, time, survival, lo, hi (step data);
    `at_risk` has GROUP, time, n (number at risk shown under the plot)."""
    rows = 2 if at_risk is not None and len(at_risk) else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, row_heights=[0.78, 0.22][:rows],
                        vertical_spacing=0.06)
    groups = list(dict.fromkeys(curves["GROUP"]))
    for i, group in enumerate(groups):
        grp = curves[curves["GROUP"] == group].sort_values("time")
        c = colour(group, i)
        fig.add_trace(go.Scatter(x=list(grp["time"]) + list(grp["time"][::-1]),
                                 y=list(grp["hi"]) + list(grp["lo"][::-1]), fill="toself",
                                 fillcolor=_rgba(c, 0.12), line={"width": 0, "shape": "hv"}, hoverinfo="skip",
                                 showlegend=False, legendgroup=group), row=1, col=1)
        fig.add_trace(go.Scatter(x=grp["time"], y=grp["survival"], mode="lines", name=group,
                                 line={"color": c, "shape": "hv", "width": 2}, legendgroup=group), row=1, col=1)
    if rows == 2:
        for i, group in enumerate(groups):
            grp = at_risk[at_risk["GROUP"] == group]
            fig.add_trace(go.Scatter(x=grp["time"], y=[group] * len(grp), mode="text",
                                     text=grp["n"].round().astype(int).astype(str), showlegend=False,
                                     textfont={"color": colour(group, i), "size": 11}, hoverinfo="skip"),
                          row=2, col=1)
        # the legend's order from the top, each row a full category clear of the axes' edges
        fig.update_yaxes(title_text="at risk", row=2, col=1, showgrid=False, type="category",
                         categoryorder="array", categoryarray=groups[::-1], range=[-0.7, len(groups) - 0.3])
    fig.update_yaxes(title_text="survival probability", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="days", row=rows, col=1)
    fig.update_layout(title=title, template="plotly_white", height=480 if rows == 2 else 400,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0}, margin={"t": 70, "b": 40})
    return fig


def embedding_scatter(points: pd.DataFrame, title: str, arm_groups: dict[str, str] | None = None) -> go.Figure:
    """2-D embedding; `points` has x, y, SOURCE ("real"/"twin"), ARM, USUBJID. `arm_groups`
    (`Comparison.arm_groups`): a real arm's group, whose colour it takes as on every other
    chart (the fallback palette drew the real source cohort in the real target arm's green)."""
    fig = go.Figure()
    symbols = {"real": "circle", "twin": "x"}
    arm_groups = arm_groups or {}
    for i, ((source, arm), grp) in enumerate(points.groupby(["SOURCE", "ARM"], sort=False)):
        name = f"{source}: {arm}"
        c = colour("twin arm") if source != "real" else colour(arm_groups.get(str(arm), ""), i)
        fig.add_trace(go.Scattergl(x=grp["x"], y=grp["y"], mode="markers", name=name, text=grp["USUBJID"],
                                   marker={"symbol": symbols.get(source, "circle"), "size": 6, "opacity": 0.7,
                                           "color": c},
                                   hovertemplate="%{text}<extra>" + name + "</extra>"))
    fig = _layout(fig, title, "dimension 1", "dimension 2", height=480)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


# each distribution in the colour of the group it describes, as on every other chart (the
# fallback palette had drawn "within twins" in the real target arm's green), and named in full
SIMILARITY_COLOURS = {"within real": GROUP_COLOURS["real target arm"], "within twins": GROUP_COLOURS["twin arm"],
                      "real to twin": "#666666", "twin to own source": GROUP_COLOURS["real source cohort"]}
SIMILARITY_NAMES = {"within real": "within the real target arm", "within twins": "within the twin arm",
                    "real to twin": "real target arm to twins", "twin to own source": "twin to its own source"}


def similarity_histogram(distributions: dict[str, np.ndarray], title: str) -> go.Figure:
    """Cosine similarities as density outlines on common bins: overlaid filled histograms had
    blended into one brown mass (a browser review)."""
    fig = go.Figure()
    finite = [x for x in (np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for v in distributions.values())
              if len(x)]
    if not finite:
        return _layout(fig, title, "cosine similarity", "density")
    lo, hi = min(v.min() for v in finite), max(v.max() for v in finite)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, 61)
    for i, (name, values) in enumerate(distributions.items()):
        values = np.asarray(values, float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        density, _ = np.histogram(values, bins=edges, density=True)
        fig.add_trace(go.Scatter(x=np.repeat(edges, 2)[1:-1], y=np.repeat(density, 2), mode="lines",
                                 name=SIMILARITY_NAMES.get(name, name), line={
                                     "color": SIMILARITY_COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)]), "width": 2}))
    return _layout(fig, title, "cosine similarity", "density")


def smd_dot_plot(marginal: pd.DataFrame, title: str) -> go.Figure:
    """Standardized mean difference of twins vs real per parameter and visit, with the usual
    |SMD| < 0.1 band; `marginal` has PARAMCD, AVISITN, smd and, when known, smd_net (net of
    the sources' baseline imbalance: filled dots) beside the raw SMD (open circles)."""
    fig = go.Figure()
    fig.add_vrect(x0=-0.1, x1=0.1, fillcolor="rgba(27,158,119,0.12)", line_width=0)
    visits = marginal["AVISIT"] if "AVISIT" in marginal else marginal["AVISITN"].map(lambda v: f"visit {v:g}")
    labels = marginal["PARAMCD"].astype(str) + " at " + visits.astype(str)
    c = colour("twin arm")
    net = bool("smd_net" in marginal and marginal["smd_net"].notna().any())
    fig.add_trace(go.Scatter(x=marginal["smd"], y=labels, mode="markers",
                             marker={"color": c, "symbol": "circle-open" if net else "circle", "size": 8},
                             name="SMD, raw"))
    if net:
        fig.add_trace(go.Scatter(x=marginal["smd_net"], y=labels, mode="markers", marker={"color": c, "size": 8},
                                 name="SMD net of the sources' baseline imbalance"))
    fig = _layout(fig, title, "standardized mean difference (twins - real)", "",
                  height=max(300, 18 * len(marginal) + 120))
    fig.update_layout(showlegend=net)
    return fig


def sample_size_bars(plan: dict, title: str) -> go.Figure:
    """Unadjusted, baseline-ANCOVA and PROCOVA-adjusted total sample sizes (`plan` has
    n_unadjusted, n_adjusted and optionally n_baseline_ancova and n_conservative): the
    baseline ANCOVA's bar is the comparator that counts, so the saving is not read off the
    unadjusted one."""
    names, values = ["unadjusted"], [plan["n_unadjusted"]]
    colours = ["#999999"]
    if plan.get("n_baseline_ancova") is not None:
        names.append("baseline ANCOVA")
        values.append(plan["n_baseline_ancova"])
        colours.append("#666666")
    if plan.get("n_conservative") is not None:
        names.append("PROCOVA (conservative)")
        values.append(plan["n_conservative"])
    names.append("PROCOVA")
    values.append(plan["n_adjusted"])
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", text=values, textposition="auto",
                           marker_color=colours + [colour("twin arm")] * (len(values) - len(colours))))
    fig = _layout(fig, title, "patients (total)", "", height=260)
    fig.update_layout(showlegend=False)
    return fig


def effect_forest(effects: pd.DataFrame, title: str) -> go.Figure:
    """One row per effect: estimate and 95 % interval, a reference line at no effect (0 for
    differences, 1 for ratios, drawn on a log axis)."""
    ratio = bool(len(effects)) and effects["measure"].isin(RATIO_MEASURES).all()
    fig = go.Figure(go.Scatter(
        x=effects["estimate"], y=effects["label"], mode="markers",
        marker={"size": 9, "color": colour("real source cohort")},
        error_x={"type": "data", "symmetric": False,
                 "array": effects["ci_high"] - effects["estimate"],
                 "arrayminus": effects["estimate"] - effects["ci_low"], "thickness": 2},
        hovertemplate="%{y}: %{x:.3g}<extra></extra>"))
    fig.add_vline(x=1.0 if ratio else 0.0, line_dash="dash", line_color="#888")
    axis = "difference (real - twins)"
    if ratio:
        axis = ("hazard ratio" if effects["measure"].eq("hazard_ratio").all() else
                "ratio (real / counterfactual)" if effects["measure"].eq("geometric_mean_ratio_dr").all() else
                "ratio (real / twins)") + " (log scale)"
    fig = _layout(fig, title, axis, "",
                  height=max(260, 40 * len(effects) + 120))
    if ratio:
        fig.update_xaxes(type="log")
    fig.update_yaxes(autorange="reversed")
    return fig
