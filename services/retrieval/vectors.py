"""Patient vectors: the versioned numeric representation used to find similar patients.

A patient is described by four kinds of information, each in its own block of columns:

| block          | group      | columns                                                          |
| -------------- | ---------- | ---------------------------------------------------------------- |
| `cov_num`      | covariates | continuous ADSL covariates, standardised ((x - mean) / SD)        |
| `cov_cat`      | covariates | one-hot categorical ADSL covariates (scaled by 1/sqrt(2))         |
| `cov_missing`  | covariates | one missingness indicator per covariate (continuous and category) |
| `base`         | baseline   | baseline value of every BDS parameter, standardised               |
| `base_missing` | baseline   | one missingness indicator per parameter                           |
| `fu`           | followup   | change from baseline at each scheduled visit, standardised per    |
|                |            | parameter x visit (only with `include_followup=True`)             |
| `fu_missing`   | followup   | one indicator per parameter x visit (visit not observed)          |

Rules (version `pv1`; bump `VECTOR_VERSION` whenever one of them changes):

- Everything is learned by `fit()` on the knowledge base (means, SDs, category levels) and
  applied unchanged by `transform()` to any trial, so query patients from another trial are
  placed on the knowledge base's scale. Features the query trial lacks are missing.
- Missing values are imputed with the fitted mean (0 after standardisation) AND flagged by an
  indicator equal to 1; nothing is silently zero without its indicator. A categorical level
  not seen in the knowledge base gets no one-hot column (it is equally far from every level).
- A categorical mismatch counts like a one-SD difference of a continuous covariate (one-hot
  columns scaled by 1/sqrt(2)); a present-vs-missing mismatch counts like one SD too.
- Block groups are weighted so that their number of columns does not decide their influence:
  every column of group g is multiplied by sqrt(w_g / m_g), where m_g is the number of
  variables of the group (covariates, parameters, parameter x visits) and w_g its weight
  (default 1 each). Each group then contributes about w_g to a patient's squared norm.
- Embeddings for a *space* (`"baseline"`: covariates + baseline; `"full"`: all groups) are the
  selected blocks plus one constant anchor column sqrt(sum of the space's weights), then
  L2-normalised, so that cosine similarity behaves like a distance: a patient close to the
  average gets a well-defined direction, and a deviation of 2 SD is not "identical" to one of
  1 SD in the same direction (pure cosine of centred data would say so).
- The follow-up group is separate: a patient with baseline data only has exactly the same
  baseline blocks as in the full trial, so baseline-only query patients are comparable with
  the knowledge base in the `"baseline"` space (the default for twin generation).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

VECTOR_VERSION = "pv1"

GROUPS = ("covariates", "baseline", "followup")
BLOCK_ORDER = ("cov_num", "cov_cat", "cov_missing", "base", "base_missing", "fu", "fu_missing")
BLOCK_GROUP = {"cov_num": "covariates", "cov_cat": "covariates", "cov_missing": "covariates",
               "base": "baseline", "base_missing": "baseline",
               "fu": "followup", "fu_missing": "followup"}
SPACES = {"baseline": ("covariates", "baseline"), "full": ("covariates", "baseline", "followup")}
DEFAULT_WEIGHTS = {"covariates": 1.0, "baseline": 1.0, "followup": 1.0}
ONEHOT_SCALE = 1.0 / math.sqrt(2.0)


class VectorizerError(ValueError):
    """The vectorizer cannot be used as asked (not fitted, unknown space, bad weights)."""


def check_space(space: str) -> str:
    if space not in SPACES:
        raise VectorizerError(f"unknown vector space '{space}': use one of {', '.join(SPACES)}")
    return space


@dataclass
class PatientVectors:
    """Vectors of a set of patients.

    `X` holds the weighted, *un-normalised* features of every block (one row per patient, in
    `ids` order); `embed(space)` gives the L2-normalised embeddings used for cosine search.
    """

    ids: list[str]
    arms: list[str]
    X: np.ndarray
    feature_names: list[str]
    blocks: dict[str, slice]
    anchors: dict[str, float] = field(default_factory=dict)
    version: str = VECTOR_VERSION

    def __len__(self) -> int:
        return len(self.ids)

    def columns(self, space: str = "baseline") -> np.ndarray:
        """Column indices of X that belong to a space (contiguous: blocks are ordered)."""
        groups = SPACES[check_space(space)]
        cols = [np.arange(s.start, s.stop) for b, s in self.blocks.items() if BLOCK_GROUP[b] in groups]
        return np.concatenate(cols) if cols else np.zeros(0, dtype=int)

    def block(self, name: str) -> np.ndarray:
        return self.X[:, self.blocks[name]]

    def embed(self, space: str = "baseline") -> np.ndarray:
        """L2-normalised embeddings (float32) of the space: its blocks plus the anchor column."""
        cols = self.columns(space)
        anchor = np.full((len(self.ids), 1), self.anchors.get(space, 1.0), dtype=np.float64)
        E = np.hstack([self.X[:, cols].astype(np.float64), anchor])
        E /= np.linalg.norm(E, axis=1, keepdims=True)
        return E.astype(np.float32)

    def dim(self, space: str = "baseline") -> int:
        return int(len(self.columns(space)) + 1)

    def index_of(self, usubjid: str) -> int:
        try:
            return self._positions[usubjid]
        except KeyError:
            raise KeyError(f"patient {usubjid} is not among these {len(self.ids)} patients") from None

    @property
    def _positions(self) -> dict[str, int]:
        pos = self.__dict__.get("_pos")
        if pos is None or len(pos) != len(self.ids):
            pos = {u: i for i, u in enumerate(self.ids)}
            self.__dict__["_pos"] = pos
        return pos

    def subset(self, usubjids) -> PatientVectors:
        rows = [self.index_of(u) for u in usubjids]
        return PatientVectors([self.ids[i] for i in rows], [self.arms[i] for i in rows],
                              self.X[rows], list(self.feature_names), dict(self.blocks),
                              dict(self.anchors), self.version)

    def frame(self, space: str = "full") -> pd.DataFrame:
        """X as a DataFrame (index USUBJID) for inspection and export."""
        cols = self.columns(space)
        return pd.DataFrame(self.X[:, cols], index=pd.Index(self.ids, name="USUBJID"),
                            columns=[self.feature_names[c] for c in cols])


class PatientVectorizer:
    """Fit the scaling on a knowledge base, then turn any trial's patients into vectors.

    >>> vec = PatientVectorizer().fit(trial)
    >>> pv = vec.transform(trial)            # PatientVectors
    >>> E = pv.embed("baseline")              # what retrieval searches
    """

    def __init__(self, include_followup: bool = True, weights: dict[str, float] | None = None):
        self.include_followup = bool(include_followup)
        w = dict(DEFAULT_WEIGHTS)
        for key, value in (weights or {}).items():
            if key not in DEFAULT_WEIGHTS:
                raise VectorizerError(f"unknown weight group '{key}': use {', '.join(DEFAULT_WEIGHTS)}")
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise VectorizerError(f"weight of '{key}' must be a number >= 0 (got {value})")
            w[key] = value
        self.weights = w
        self.fitted_ = False

    # ----- fitting ---------------------------------------------------------------------
    def fit(self, trial) -> PatientVectorizer:
        subjects = trial.subjects
        kinds = trial.covariates
        self.continuous_: dict[str, tuple[float, float]] = {}
        self.categorical_: dict[str, list[str]] = {}
        for col, kind in kinds.items():
            if kind == "continuous":
                values = pd.to_numeric(subjects[col], errors="coerce")
                if values.notna().sum() == 0:
                    continue
                self.continuous_[col] = _mean_sd(values)
            else:
                levels = sorted(set(_as_level(subjects[col]).dropna()))
                if levels:
                    self.categorical_[col] = levels

        base = trial.baseline
        self.baseline_: dict[str, tuple[float, float]] = {}
        for p in trial.parameters:
            if p in base.columns and base[p].notna().any():
                self.baseline_[p] = _mean_sd(base[p])

        self.followup_: dict[tuple[str, float], tuple[float, float]] = {}
        self.visit_labels_: dict[tuple[str, float], str] = {}
        if self.include_followup:
            chg = _changes(trial)
            for (p, v), grp in chg.groupby(["PARAMCD", "AVISITN"], sort=True):
                if p not in self.baseline_ or grp["CHG"].notna().sum() < 2:
                    continue
                self.followup_[(p, float(v))] = _mean_sd(grp["CHG"])
                labels = grp["AVISIT"].dropna()
                self.visit_labels_[(p, float(v))] = str(labels.iloc[0]) if len(labels) else f"Visit {v:g}"
            order = {p: i for i, p in enumerate(trial.parameters)}
            self.followup_ = dict(sorted(self.followup_.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])))

        self._layout()
        self.trial_hash_ = trial.content_hash
        self.fitted_ = True
        return self

    def _layout(self) -> None:
        names: dict[str, list[str]] = {b: [] for b in BLOCK_ORDER}
        names["cov_num"] = [f"cov:{c}" for c in self.continuous_]
        names["cov_cat"] = [f"cov:{c}={lvl}" for c, levels in self.categorical_.items() for lvl in levels]
        names["cov_missing"] = [f"cov:{c}:missing" for c in (*self.continuous_, *self.categorical_)]
        names["base"] = [f"base:{p}" for p in self.baseline_]
        names["base_missing"] = [f"base:{p}:missing" for p in self.baseline_]
        names["fu"] = [f"chg:{p}@{v:g}" for p, v in self.followup_]
        names["fu_missing"] = [f"chg:{p}@{v:g}:missing" for p, v in self.followup_]
        self.feature_names_: list[str] = []
        self.blocks_: dict[str, slice] = {}
        for b in BLOCK_ORDER:
            start = len(self.feature_names_)
            self.feature_names_ += names[b]
            self.blocks_[b] = slice(start, len(self.feature_names_))
        m = {"covariates": len(self.continuous_) + len(self.categorical_),
             "baseline": len(self.baseline_), "followup": len(self.followup_)}
        self.group_variables_ = m
        self.group_scale_ = {g: (math.sqrt(self.weights[g] / m[g]) if m[g] else 0.0) for g in GROUPS}
        self.anchors_ = {s: math.sqrt(sum(self.weights[g] for g in gs if m[g]) or 1.0)
                         for s, gs in SPACES.items()}

    def _check(self) -> None:
        if not self.fitted_:
            raise VectorizerError("PatientVectorizer is not fitted: call fit(knowledge_base) first")

    # ----- transforming ----------------------------------------------------------------
    def transform(self, trial) -> PatientVectors:
        """Vectors of every subject of `trial` (ADSL order) on the fitted scale."""
        self._check()
        subjects = trial.subjects
        ids = [str(u) for u in subjects["USUBJID"]]
        n = len(ids)
        X = np.zeros((n, len(self.feature_names_)), dtype=np.float64)

        def put(block: str, values: np.ndarray) -> None:
            sl = self.blocks_[block]
            if sl.stop > sl.start:
                X[:, sl] = values * self.group_scale_[BLOCK_GROUP[block]]

        # covariates
        num = np.zeros((n, len(self.continuous_)))
        miss = np.zeros((n, len(self.continuous_) + len(self.categorical_)))
        for j, (col, (mean, sd)) in enumerate(self.continuous_.items()):
            if col in subjects.columns:
                values = pd.to_numeric(subjects[col], errors="coerce").to_numpy(dtype=float)
            else:
                values = np.full(n, np.nan)
            z = (values - mean) / sd
            miss[:, j] = np.isnan(z)
            num[:, j] = np.where(np.isnan(z), 0.0, z)
        cat_cols = []
        for j, (col, levels) in enumerate(self.categorical_.items()):
            level = _as_level(subjects[col]) if col in subjects.columns else pd.Series([None] * n)
            onehot = np.zeros((n, len(levels)))
            for k, lvl in enumerate(levels):
                onehot[:, k] = (level == lvl).to_numpy()
            miss[:, len(self.continuous_) + j] = level.isna().to_numpy()
            cat_cols.append(onehot * ONEHOT_SCALE)
        put("cov_num", num)
        put("cov_cat", np.hstack(cat_cols) if cat_cols else np.zeros((n, 0)))
        put("cov_missing", miss)

        # baseline parameters
        base = trial.baseline.reindex(index=ids)
        bval = np.zeros((n, len(self.baseline_)))
        bmiss = np.zeros_like(bval)
        for j, (p, (mean, sd)) in enumerate(self.baseline_.items()):
            values = base[p].to_numpy(dtype=float) if p in base.columns else np.full(n, np.nan)
            z = (values - mean) / sd
            bmiss[:, j] = np.isnan(z)
            bval[:, j] = np.where(np.isnan(z), 0.0, z)
        put("base", bval)
        put("base_missing", bmiss)

        # follow-up: change from baseline at scheduled visits
        if self.followup_:
            fval = np.zeros((n, len(self.followup_)))
            fmiss = np.ones_like(fval)
            chg = _changes(trial).dropna(subset=["CHG"])
            if len(chg):
                col_of = {key: j for j, key in enumerate(self.followup_)}
                row_of = {u: i for i, u in enumerate(ids)}
                keys = list(zip(chg["PARAMCD"], chg["AVISITN"].astype(float)))
                for (u, key, value) in zip(chg["USUBJID"], keys, chg["CHG"].to_numpy(dtype=float)):
                    j = col_of.get(key)
                    i = row_of.get(u)
                    if j is None or i is None:
                        continue
                    mean, sd = self.followup_[key]
                    fval[i, j] = (value - mean) / sd
                    fmiss[i, j] = 0.0
            put("fu", fval)
            put("fu_missing", fmiss)

        return PatientVectors(ids=ids, arms=[str(a) for a in subjects["ARM"]], X=X.astype(np.float32),
                              feature_names=list(self.feature_names_), blocks=dict(self.blocks_),
                              anchors=dict(self.anchors_))

    def fit_transform(self, trial) -> PatientVectors:
        return self.fit(trial).transform(trial)

    # ----- identity and description ------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the version and everything fitted: equal fingerprints, equal vectors."""
        self._check()
        state = {
            "version": VECTOR_VERSION, "include_followup": self.include_followup,
            "weights": self.weights, "continuous": {k: list(v) for k, v in self.continuous_.items()},
            "categorical": self.categorical_, "baseline": {k: list(v) for k, v in self.baseline_.items()},
            "followup": [[p, v, *ms] for (p, v), ms in self.followup_.items()],
        }
        return hashlib.sha256(json.dumps(state, sort_keys=True, default=repr).encode()).hexdigest()

    def dim(self, space: str = "baseline") -> int:
        self._check()
        groups = SPACES[check_space(space)]
        return 1 + sum(s.stop - s.start for b, s in self.blocks_.items() if BLOCK_GROUP[b] in groups)

    def describe(self, space: str = "baseline") -> str:
        """Plain-language description of what 'similar' means (for the UI note)."""
        self._check()
        check_space(space)
        m = self.group_variables_
        cont = ", ".join(self.continuous_) or "none"
        cats = ", ".join(self.categorical_) or "none"
        params = ", ".join(self.baseline_) or "none"
        groups = SPACES[space]
        used = [g for g in groups if m[g]]
        lines = [
            (f"Patients are compared on a vector (representation {VECTOR_VERSION}, "
            f"{self.dim(space)} numbers) and ranked by cosine similarity (1 = identical)."),
            (f"- Baseline covariates: {m['covariates']} ({cont} standardised to mean 0 and SD 1 of the "
            f"knowledge base; categories {cats} one-hot, a different category counting like a 1-SD "
            "difference)."),
            f"- Baseline values of {m['baseline']} parameters ({params}), standardised.",
        ]
        if "followup" in groups:
            n_params = len({p for p, _ in self.followup_})
            lines.append(f"- Follow-up: change from baseline at {m['followup']} parameter x visit points "
                         f"({n_params} parameters), standardised per visit.")
        else:
            lines.append("- Follow-up is not used: query patients have baseline data only, so similarity "
                         "rests on what is known at randomisation.")
        weights = ", ".join(f"{g} {self.weights[g]:g}" for g in used) or "none"
        lines += [
            f"- Weights: each group counts as a whole ({weights}), however many columns it has.",
            ("- Missing values count as average and are flagged, so patients with the same missing data "
            "are a little closer than patients who differ in what was measured."),
        ]
        return "\n".join(lines)


# ======================================================================================
# helpers
# ======================================================================================

def _mean_sd(values: pd.Series) -> tuple[float, float]:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    mean = float(v.mean()) if len(v) else 0.0
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    if not math.isfinite(sd) or sd <= 1e-12:
        sd = 1.0
    return mean, sd


def _as_level(series: pd.Series) -> pd.Series:
    """Category levels as trimmed text; empty text and NaN are missing."""
    def conv(v):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        text = str(v).strip()
        return text or None
    return series.map(conv).astype(object)


def _changes(trial) -> pd.DataFrame:
    """Scheduled post-baseline values with CHG = AVAL - baseline of the parameter."""
    vv = trial.visit_values
    if vv.empty:
        return pd.DataFrame(columns=["USUBJID", "PARAMCD", "AVISITN", "AVISIT", "CHG"])
    base = trial.baseline_long[["USUBJID", "PARAMCD", "AVAL"]].rename(columns={"AVAL": "BASE"})
    out = vv.merge(base, on=["USUBJID", "PARAMCD"], how="left")
    out["CHG"] = out["AVAL"] - out["BASE"]
    return out[["USUBJID", "PARAMCD", "AVISITN", "AVISIT", "CHG"]]
