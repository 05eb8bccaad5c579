"""The patient feature space of the fidelity, privacy and utility metrics: one column per
parameter at baseline and at each scheduled visit (`PARAMCD@AVISITN`) and, per event type,
log(1 + time) and the event indicator (`PARAMCD@time`, `PARAMCD@event`), standardised by a
reference group (the real target arm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation import metrics as M


def with_baseline(trial: Trial, paramcd: str) -> pd.DataFrame:
    base = trial.baseline_long[trial.baseline_long["PARAMCD"] == paramcd]
    base = base.assign(AVISITN=0.0, AVISIT="Baseline", ADY=1.0)
    post = trial.visit_values[trial.visit_values["PARAMCD"] == paramcd]
    cols = ["USUBJID", "AVISITN", "AVISIT", "ADY", "AVAL"]
    return pd.concat([base[cols], post[cols]], ignore_index=True)


def _wide(trial: Trial, params: list[str], events: list[str]) -> pd.DataFrame:
    """Patients x feature columns: each parameter at baseline and at each visit
    (`PARAMCD@AVISITN`), then per event type log(1 + time) and the event indicator
    (`PARAMCD@time`, `PARAMCD@event`: an event is CNSR 0, as everywhere). A patient with some
    value has NaN where another is missing; a patient with none is not a row."""
    parts = []
    if params:
        long = pd.concat([with_baseline(trial, p).assign(PARAMCD=p) for p in params], ignore_index=True)
        parts.append(M.long_to_wide(long[["USUBJID", "PARAMCD", "AVISITN", "AVAL"]]))
    if events and trial.tte is not None:
        tte = trial.tte[trial.tte["PARAMCD"].isin(events)].drop_duplicates(["USUBJID", "PARAMCD"])
        by = tte.set_index(["USUBJID", "PARAMCD"])
        time_ = np.log1p(pd.to_numeric(by["AVAL"], errors="coerce").clip(lower=0)).unstack("PARAMCD")
        cnsr = pd.to_numeric(by["CNSR"], errors="coerce")
        event = cnsr.eq(0).astype(float).where(cnsr.notna()).unstack("PARAMCD")
        parts += [pd.DataFrame({f"{q}@time": time_[q], f"{q}@event": event[q]}) for q in events if q in time_]
    if not parts:
        return pd.DataFrame(index=pd.Index([], name="USUBJID", dtype=object))
    return pd.concat(parts, axis=1, join="outer")


_EVENT_SUFFIXES = ("@time", "@event")


def is_event_column(column: str) -> bool:
    return str(column).endswith(_EVENT_SUFFIXES)


@dataclass
class FeatureSpace:
    """Columns PARAMCD@AVISITN (AVISITN 0 = baseline) and, per event type, PARAMCD@time /
    PARAMCD@event, standardised by the real target arm."""

    columns: list[str]
    generated: list[str]
    mean: pd.Series
    sd: pd.Series

    @property
    def parameters(self) -> list[str]:
        return sorted({c.split("@")[0] for c in self.columns if not is_event_column(c)})

    @property
    def events(self) -> list[str]:
        return sorted({c.split("@")[0] for c in self.columns if is_event_column(c)})

    def matrix(self, trial: Trial, columns: list[str] | None = None,
               standardise: bool = True) -> tuple[list[str], np.ndarray]:
        cols = columns or self.columns
        wide = _wide(trial, self.parameters, self.events).reindex(columns=cols)
        X = ((wide - self.mean[cols]) / self.sd[cols] if standardise else wide).to_numpy(float)
        return list(wide.index.astype(str)), X


def build_feature_space(reference: Trial, twins: Trial, params: list[str], events: list[str],
                        min_fraction: float = 0.3) -> FeatureSpace:
    """Baseline, visit and event columns observed in at least `min_fraction` of `reference`
    and present in `twins`."""
    wide = _wide(reference, params, events)
    twin_cols = set(_wide(twins, params, events).columns)
    keep = [c for c in wide.columns if wide[c].notna().mean() >= min_fraction and c in twin_cols]
    sd = wide[keep].std(ddof=1).replace(0, 1.0).fillna(1.0)
    generated = [c for c in keep if not c.endswith("@0")]
    return FeatureSpace(columns=keep, generated=generated, mean=wide[keep].mean(), sd=sd)
