"""The effects as Compare's Effect tab and the report show them: one table built in one place
(`effects_display`), each row's method (`effect_methods`), its doubly robust controls and
whether its interval carries the generator term, so that screen and report say the same."""

from __future__ import annotations

import pandas as pd

from services.evaluation.effects import MEASURE_LABELS, RATIO_MEASURES


def effect_methods(rows: list[dict]) -> dict[str, str]:
    """{measure label (and parameter, for an RMST with its own horizon): method} of a list of
    `effects_json` rows: what Compare's Effect tab and the report print under the table."""
    out: dict[str, str] = {}
    for e in rows:
        label = MEASURE_LABELS.get(e["measure"], e["measure"])
        out.setdefault(f"{label}, {e['paramcd']}" if e["measure"] == "rmst_difference" else label, e["method"])
    return out


def real_controls(e: dict) -> str:
    """The "real controls" cell of an `effects_json` row on Compare and in the report: the
    doubly robust estimate's weighted control patients and their effective number (how much
    the weighting cost), blank for the twins-only measures."""
    if e.get("effective_controls") is None:
        return ""
    return f"{e['n_control']} ({e['effective_controls']:.0f} effective)"


UNSTABLE_DF = 3.0     # a Satterthwaite df below this: the refits vary mostly by their own noise there


def generator_term_cell(e: dict) -> str:
    """Whether a row's interval carries the generator's own uncertainty, said on the row: at a
    sparse late visit few refits may hold the statistic (none: not included), or the refits'
    spread may be mostly their Monte-Carlo noise (a tiny Satterthwaite df and an interval many
    times its neighbours': pbc ALB at Year 8, df 0.87, +-2.1 beside +-0.3). The caption's "the
    intervals add the generator's uncertainty" held for neither, unsaid (a browser review)."""
    if e["measure"].endswith("_dr"):
        return "none needed (doubly robust)"
    if e.get("design") == "randomized":
        return "none needed (randomized)"
    if not e.get("B"):
        return "not included (no refits)"
    if e.get("var_generator") is None:
        return "NOT included (too few refits held it)"
    df = e.get("df")
    if df is not None and df < UNSTABLE_DF:
        return f"unstable (df {df:.1f}): interval very wide"
    return "included"


def effects_display(rows: list[dict], units: dict[str, str] | None = None) -> pd.DataFrame:
    """The effects table of Compare's Effect tab and of the report, one row per `effects_json`
    row, built in one place so that both say the same; `units` (PARAMCD -> unit) gives each row
    its unit ("ratio" for the ratios); the `_` columns hold the raw values that the forest plots
    read and the tables do not show."""
    return pd.DataFrame([{
        "endpoint": e["paramcd"] + (f" at {e['avisit']}" if e.get("avisit") else ""),
        "measure": MEASURE_LABELS.get(e["measure"], e["measure"]), "estimate": e["estimate"],
        "95 % CI": f"{e['ci_low']:.3g} to {e['ci_high']:.3g}", "p": e.get("p_value"),
        "patients": e["n_patients"], "real controls": real_controls(e), "generator term": generator_term_cell(e),
        **({} if units is None else {"unit": "ratio" if e["measure"] in RATIO_MEASURES
                                     else "days" if e["measure"] == "rmst_difference"
                                     else (units.get(e["paramcd"]) or "")}),
        "_measure": e["measure"], "_lo": e["ci_low"], "_hi": e["ci_high"], "_param": e["paramcd"],
        "_visit": e.get("avisitn")} for e in rows])
