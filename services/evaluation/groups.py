"""The three groups a twin arm is compared in (`comparison.compare`), named once for the
comparison, its survival part and the safety tables."""

from __future__ import annotations

import pandas as pd

from services.data.trial import Trial

TWIN, TARGET, SOURCE = "twin arm", "real target arm", "real source cohort"
GROUPS = (SOURCE, TARGET, TWIN)


def tte_records(trial: Trial, paramcd: str) -> pd.DataFrame:
    """The trial's ADTTE rows of one event type (none when it has no ADTTE)."""
    if trial.tte is None:
        return pd.DataFrame(columns=["USUBJID", "AVAL", "CNSR"])
    return trial.tte[trial.tte["PARAMCD"] == paramcd]
