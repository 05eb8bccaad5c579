"""Tables as a reader sees them, on the screen and in the report alike: every column of the
frame is kept (none hidden or dropped), under a readable label instead of its raw name, with
codes (PARAMCD, covariate names) spelled out when their labels are given. Plain pandas: the
app's table widget (`components.data_table`) and the HTML report both build on it."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Raw column names of service frames -> what a reader sees. Unknown names fall back to the
# name with underscores as spaces (never hidden).
COLUMN_LABELS: dict[str, str] = {
    "PARAMCD": "parameter", "PARAM": "parameter name", "AVISITN": "visit number", "AVISIT": "visit",
    "ADY": "study day (median)", "USUBJID": "subject", "ARM": "arm",
    "n": "patients", "events": "events", "visits": "visits",
    # time-to-event backtest
    "km_sup_twins": "KM distance, twins vs held-out",
    "km_sup_reference": "KM distance, knowledge-base arm vs held-out",
    "km_ratio": "KM distance ratio (twins / knowledge base; ≤ 1 met)",
    "cindex_twins": "C-index, twins", "cindex_cox": "C-index, Cox model",
    "km_met": "KM ratio ≤ 1 met", "cindex_met": "C-index ≥ Cox − 0.01 met",
    # per-visit backtest
    "rmse_twins": "RMSE, twins' mean", "rmse_reference": "RMSE, baseline ANCOVA",
    "rmse_ratio": "RMSE ratio (twins / ANCOVA)", "coverage": "share inside the 10-90 % range (ties inside)",
    "coverage_pit": "10-90 % coverage (rank PIT)",
    "sd_real": "SD, real", "sd_twins": "SD, twins", "sd_ratio": "SD ratio (twins / real)",
    "corr": "correlation, twins' mean vs observed",
    # metric summaries
    "ci_low": "95 % CI, low", "ci_high": "95 % CI, high",
}


def label_of(name: str, labels: dict[str, str] | None = None) -> str:
    """The label of a column: the page's own labels first, then COLUMN_LABELS, then the name
    with underscores as spaces."""
    name = str(name)
    return (labels or {}).get(name) or COLUMN_LABELS.get(name) or name.replace("_", " ")


def _round(series: pd.Series, digits: int) -> pd.Series:
    if pd.api.types.is_float_dtype(series):
        return series.map(lambda v: None if pd.isna(v) else float(f"{v:.{digits}g}"))
    return series


def table_for_display(frame: pd.DataFrame, *, labels: dict[str, str] | None = None,
                      codes: dict[str, dict] | None = None, digits: int = 3) -> pd.DataFrame:
    """Every column of `frame`, renamed by `label_of`, floats to `digits` significant digits,
    and the values of each column named in `codes` replaced by their label (e.g. PARAMCD ->
    "Bilirubin (mg/dl) [BILI]"); values without a label are kept as they are."""
    out = frame.copy()
    for column, mapping in (codes or {}).items():
        if column in out.columns:
            out[column] = out[column].map(lambda v, m=mapping: m.get(v, v))
    for column in out.columns:
        out[column] = _round(out[column], digits)
    renamed = [label_of(c, labels) for c in out.columns]
    seen: dict[str, int] = {}
    unique = []
    for raw, label in zip(out.columns, renamed):        # two raw names with one label: keep both
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} [{raw}]")
    out.columns = unique
    assert len(out.columns) == len(frame.columns)
    return out


def code_labels(labels: dict[str, str]) -> dict[str, str]:
    """Code -> "label [code]" (the code kept so that it can be searched for)."""
    return {code: (f"{label} [{code}]" if label and label != code else code) for code, label in labels.items()}


IN_SAMPLE_PRIVACY_NOTE = ("The privacy figures here measure the twins against the real patients the generator learnt "
                          "from, where closeness is expected and a verdict of copies can be misleading; the hold-out "
                          "privacy audit (Validate) judges them against patients the generator never saw.")
SAFETY_BY_CONSTRUCTION_NOTE = ("The twins' adverse events come from this real target arm itself (its patients' records, "
                               "or, for an LLM run, what the model wrote after reading them), so agreement with it is "
                               "largely by construction, not evidence of skill: the safety backtest (Validate) scores "
                               "them on held-out patients.")

# the Safety tab's and the report's captions of the risk differences and the time to a first AE
def safety_rd_note(comp, terms: int = 15) -> str:
    """The risk differences' caption for this run and the `terms` shown (`safety.twin_target_meaning`
    says what twin arm - real target arm can show, given how the run's twins got their AEs)."""
    from services.evaluation.safety import twin_target_meaning

    return ("Real source cohort - twin arm (paired within patient, plus the sampling error of the target-arm "
            "patients whose records the twins carry) is the risk difference of the source treatment against its "
            f"synthetic control. Twin arm - real target arm: {twin_target_meaning(comp)} Each interval is a "
            f"separate 95 % interval, not adjusted for the many terms shown: among {terms} terms without any true "
            f"difference, one or more lie off 0 by chance {1 - 0.95 ** terms:.0%} of the time (if independent).")


SAFETY_KM_NOTE = ("Kaplan-Meier of the first onset, censored at each patient's end of follow-up; a twin's AEs are "
                  "its donor's, known only while the donor was followed, so a twin is censored at the earlier of its "
                  "own end and its donor's. Twins weigh 1/K so that numbers at risk are patients.")

INFORMATION_NOTE = ("Information beyond the own baseline: the smallest error a linear model of every parameter's "
                    "baseline and the ADSL covariates could reach, over the smallest error of a model of the "
                    "parameter's own baseline alone, both as if learnt from unlimited data (leverage-corrected "
                    "residual mean squares on the held-out patients). Below 1: information the twins can use beyond "
                    "the baseline regression; near 1: on this trial no generator can do much better than it, "
                    "whatever its method (interactions or other relations aside).")


def _with_interval(v: float, lo: float, hi: float, spec: str) -> str:
    """'v [lo, hi]'; 'n/a' without an estimate, the estimate alone without an interval (< 5 patients)."""
    if not np.isfinite(v):
        return "n/a"
    return f"{v:{spec}}" + (f" [{lo:{spec}}, {hi:{spec}}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def validation_card_table(card: pd.DataFrame, parameter_labels: dict[str, str] | None = None) -> pd.DataFrame:
    """The validation card per parameter as the Validate page and the report show it: RMSE
    ratio, the information beyond the own baseline (when the card has it) and 10-90 % coverage
    (rank PIT) with their 95 % bootstrap intervals, and the verdicts
    (`services.evaluation.validation.bootstrap_card`)."""
    labels = parameter_labels or {}
    out = pd.DataFrame({
        "parameter": card["PARAMCD"].map(lambda p: labels.get(p, p)), "patients": card["patients"],
        "RMSE ratio [95 % CI]": [_with_interval(r, lo, hi, ".2f") for r, lo, hi in
                                 zip(card["rmse_ratio"], card["rmse_ratio_lo"], card["rmse_ratio_hi"])],
    })
    if "gain" in card:          # beside the twins' ratio: what the trial's baseline data allow
        out["information beyond the own baseline [95 % CI]"] = [
            _with_interval(g, lo, hi, ".2f") for g, lo, hi in zip(card["gain"], card["gain_lo"], card["gain_hi"])]
    out["coverage [95 % CI]"] = [_with_interval(c, lo, hi, ".0%") for c, lo, hi in
                                 zip(card["coverage"], card["coverage_lo"], card["coverage_hi"])]
    out["accuracy"] = card["accuracy"]
    if "information" in card:
        out["baseline data"] = card["information"]
    out["calibration"] = card["calibration"]
    return out
