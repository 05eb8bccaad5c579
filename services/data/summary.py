"""Small display tables built from a Trial (formatting only)."""

from __future__ import annotations

import pandas as pd


def parameter_table(trial) -> pd.DataFrame:
    rows = [{"PARAMCD": p.paramcd, "label": p.label, "unit": p.unit, "dataset": p.dataset,
             "subjects": p.n_subjects, "records": p.n_records, "follow-up": "yes" if p.has_followup else "baseline only"}
            for p in trial.parameters.values()]
    return pd.DataFrame(rows)


def visit_table(trial) -> pd.DataFrame:
    rows = []
    for paramcd in trial.longitudinal_parameters:
        for v in trial.schedule(paramcd):
            rows.append({"PARAMCD": paramcd, "visit": v.avisit, "AVISITN": v.avisitn,
                         "study day": None if pd.isna(v.ady) else round(v.ady), "subjects": v.n_subjects})
    return pd.DataFrame(rows)
