"""Baseline design matrix of the local generator and the per-parameter log transforms.

This is the regression design (reference-level coding, missing indicators only where values
are missing, standardised on the fitting patients); similarity search uses its own encoding
(`services.retrieval.vectors`, block-weighted and L2-normalised for cosine search).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import skew

from services.data.trial import Trial


def choose_transform(values: np.ndarray) -> str:
    """'log' / 'log1p' for clearly right-skewed non-negative values, else 'identity'."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 20 or v.min() < 0 or np.ptp(v) == 0:
        return "identity"
    s = skew(v)
    if not np.isfinite(s) or s < 1.0:
        return "identity"
    name, t = ("log", np.log(v)) if v.min() > 0 else ("log1p", np.log1p(v))
    st = skew(t)
    return name if np.isfinite(st) and abs(st) < 0.5 * s else "identity"


def forward(values, how: str):
    if how == "log":
        return np.log(np.maximum(values, 1e-12))
    if how == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    return values


def inverse(values, how: str):
    if how == "log":
        return np.exp(np.minimum(values, 700))
    if how == "log1p":
        return np.expm1(np.minimum(values, 700))
    return values


class BaselineFeatures:
    """Design matrix of baseline facts: parameter baselines (transformed), continuous
    covariates, one-hot categorical covariates (levels seen >= `min_level` times, most
    frequent level as reference), missing indicators (baselines, continuous and categorical
    covariates, where the fitting patients have missing values); standardised on the fitting patients,
    missing values set to the fitting mean (0). With `raw_baselines`, a parameter modelled on a
    log scale also gets its untransformed baseline (column `RAW:p`), so that the raw-scale
    ANCOVA and carry-forward, the references a generator must not lose to, are linear in X."""

    def __init__(self, params: list[str], covariates: dict[str, str],
                 transforms: dict[str, str] | None = None, min_level: int = 3, raw_baselines: bool = False):
        self.params = list(params)
        self.covariates = dict(covariates)
        self.transforms = dict(transforms or {})
        self.min_level = min_level
        self.raw_baselines = raw_baselines

    def _raw(self, trial: Trial, ids: list[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
        base = trial.baseline.reindex(index=ids, columns=self.params)
        cols: dict[str, np.ndarray] = {}
        for p in self.params:
            cols[f"BL:{p}"] = forward(base[p].to_numpy(dtype=float), self.transforms.get(p, "identity"))
            cols[f"RAW:{p}"] = base[p].to_numpy(dtype=float)
        subj = trial.subjects.set_index("USUBJID").reindex(ids)
        return cols, subj

    def fit(self, trial: Trial, ids: list[str]) -> BaselineFeatures:
        cols, subj = self._raw(trial, ids)
        spec = []
        for p in self.params:
            v = cols[f"BL:{p}"]
            if np.isfinite(v).sum() >= 2 and np.nanstd(v) > 0:
                spec.append(("BL", p, None))
                if np.isnan(v).any():
                    spec.append(("MISS", p, None))
                if self.raw_baselines and self.transforms.get(p, "identity") != "identity":
                    spec.append(("RAW", p, None))
        self.levels: dict[str, list[str]] = {}
        for c, kind in self.covariates.items():
            if c not in subj.columns:
                continue
            if kind == "continuous":
                v = pd.to_numeric(subj[c], errors="coerce").to_numpy(dtype=float)
                if np.isfinite(v).sum() >= 2 and np.nanstd(v) > 0:
                    spec.append(("COV", c, None))
                    if np.isnan(v).any():
                        spec.append(("CMISS", c, None))
            else:
                counts = subj[c].dropna().astype(str).value_counts()
                keep = [lvl for lvl, n in counts.items() if n >= self.min_level]
                for lvl in keep[1:]:
                    spec.append(("CAT", c, lvl))
                if keep and subj[c].isna().any():
                    # the missing patients' level columns sit at the mean (`_matrix`); this tells them apart
                    spec.append(("CATMISS", c, None))
        self.spec = spec
        self.columns = [f"{a}:{b}" + (f"={c}" if c is not None else "") for a, b, c in spec]
        X = self._matrix(cols, subj)
        self.mean_ = np.nanmean(X, axis=0) if len(X) else np.zeros(X.shape[1])
        sd = np.nanstd(X, axis=0) if len(X) else np.ones(X.shape[1])
        self.sd_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.mean_ = np.where(np.isfinite(self.mean_), self.mean_, 0.0)
        return self

    def _matrix(self, cols, subj) -> np.ndarray:
        n = len(subj)
        X = np.empty((n, len(self.spec)))
        for j, (kind, name, lvl) in enumerate(self.spec):
            if kind in ("BL", "RAW"):
                X[:, j] = cols[f"{kind}:{name}"]
            elif kind == "MISS":
                X[:, j] = np.isnan(cols[f"BL:{name}"]).astype(float)
            elif kind == "COV":
                X[:, j] = pd.to_numeric(subj[name], errors="coerce").to_numpy(dtype=float) \
                    if name in subj else np.nan
            elif kind == "CMISS":
                X[:, j] = pd.to_numeric(subj[name], errors="coerce").isna().to_numpy(dtype=float) \
                    if name in subj else 1.0
            elif kind == "CATMISS":
                X[:, j] = subj[name].isna().to_numpy(dtype=float) if name in subj else 1.0
            elif name in subj:
                # a missing category is imputed at the mean (`transform`), as a continuous value is
                X[:, j] = np.where(subj[name].isna(), np.nan, (subj[name].astype(str) == lvl).to_numpy(dtype=float))
            else:
                X[:, j] = np.nan          # a covariate the trial lacks is missing for all its patients
        return X

    def transform(self, trial: Trial, ids: list[str]) -> np.ndarray:
        cols, subj = self._raw(trial, ids)
        Z = (self._matrix(cols, subj) - self.mean_) / self.sd_
        return np.where(np.isfinite(Z), Z, 0.0)

    def column(self, paramcd: str, raw: bool = False) -> int | None:
        """Index of the parameter's baseline column (`raw`: its untransformed one), or None."""
        name = f"{'RAW' if raw else 'BL'}:{paramcd}"
        return self.columns.index(name) if name in self.columns else None

    @property
    def modelled(self) -> np.ndarray:
        """(F,) bool: the columns every multivariable model uses (all but the raw baselines,
        which only the raw-scale ANCOVA and carry-forward read)."""
        return np.array([kind != "RAW" for kind, _, _ in self.spec], dtype=bool)
