"""Fidelity: do the twins look like the real patients?

* :func:`marginal_fidelity` compares each parameter at each visit (SMD, Kolmogorov-Smirnov).
* :func:`correlation_distance` compares the correlation structure across (parameter, visit).
* :func:`dimension_wise_mean_correlation` is TWIN/PyTrial's dimension-wise statistic.
* :func:`detection_auroc` asks whether a classifier can tell twins from real patients.

Longitudinal inputs are "long" frames with columns USUBJID, PARAMCD, AVISITN, AVAL (one row
per subject x parameter x scheduled post-baseline visit); :func:`long_to_wide` turns them into
subjects x (parameter, visit) frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

from .registry import ResultMixin, as_matrix, impute_means

SUBJECT, PARAM, VISIT, VALUE = "USUBJID", "PARAMCD", "AVISITN", "AVAL"

MARGINAL_COLUMNS = [
    PARAM, VISIT, "n_real", "n_twin", "mean_real", "mean_twin", "sd_real", "sd_twin",
    "smd", "ks", "ks_pvalue",
]


def _check_long(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = [c for c in (SUBJECT, PARAM, VISIT, VALUE) if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    out = frame[[SUBJECT, PARAM, VISIT, VALUE]].copy()
    out[VALUE] = pd.to_numeric(out[VALUE], errors="coerce")
    return out


def standardized_mean_difference(real: np.ndarray, twin: np.ndarray) -> float:
    """(mean_twin - mean_real) / sqrt((sd_real^2 + sd_twin^2) / 2), NaN values dropped.

    The pooled SD is the root of the average of the two sample variances (ddof=1), as in
    Austin (2009) balance diagnostics, so a large twin set does not dominate the scale. When
    both SDs are 0 the SMD is 0 if the means agree and NaN (undefined) otherwise; with fewer
    than 2 values on either side it is NaN.
    """
    real = np.asarray(real, dtype=float)
    twin = np.asarray(twin, dtype=float)
    real, twin = real[~np.isnan(real)], twin[~np.isnan(twin)]
    if real.size < 2 or twin.size < 2:
        return float("nan")
    diff = twin.mean() - real.mean()
    pooled = np.sqrt((real.var(ddof=1) + twin.var(ddof=1)) / 2.0)
    if pooled <= 1e-12 * max(1.0, abs(real.mean()), abs(twin.mean())):
        return 0.0 if abs(diff) <= 1e-12 * max(1.0, abs(real.mean())) else float("nan")
    return float(diff / pooled)


def marginal_fidelity(real_long: pd.DataFrame, twin_long: pd.DataFrame) -> pd.DataFrame:
    """Per PARAMCD x AVISITN comparison of real and twin values of AVAL.

    Returns one row per (PARAMCD, AVISITN) present in either frame, sorted, with columns
    ``PARAMCD, AVISITN, n_real, n_twin, mean_real, mean_twin, sd_real, sd_twin, smd, ks,
    ks_pvalue``. Missing AVAL values are dropped (not imputed). SDs use ddof=1. ``smd`` is
    :func:`standardized_mean_difference` (twin minus real over the pooled SD); ``ks`` and
    ``ks_pvalue`` come from ``scipy.stats.ks_2samp`` (two-sided, default method). Statistics
    that need more data than available (an empty side, or fewer than 2 values for SD/SMD) are
    NaN.
    """
    real = _check_long(real_long, "real_long")
    twin = _check_long(twin_long, "twin_long")
    real_groups = {k: g[VALUE].dropna().to_numpy(float) for k, g in real.groupby([PARAM, VISIT])}
    twin_groups = {k: g[VALUE].dropna().to_numpy(float) for k, g in twin.groupby([PARAM, VISIT])}
    keys = sorted(set(real_groups) | set(twin_groups), key=lambda k: (str(k[0]), float(k[1])))
    rows = []
    empty = np.array([], dtype=float)
    for key in keys:
        r = real_groups.get(key, empty)
        t = twin_groups.get(key, empty)
        if r.size and t.size:
            ks = stats.ks_2samp(r, t)
            ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        else:
            ks_stat = ks_p = float("nan")
        rows.append({
            PARAM: key[0],
            VISIT: key[1],
            "n_real": int(r.size),
            "n_twin": int(t.size),
            "mean_real": float(r.mean()) if r.size else float("nan"),
            "mean_twin": float(t.mean()) if t.size else float("nan"),
            "sd_real": float(r.std(ddof=1)) if r.size > 1 else float("nan"),
            "sd_twin": float(t.std(ddof=1)) if t.size > 1 else float("nan"),
            "smd": standardized_mean_difference(r, t),
            "ks": ks_stat,
            "ks_pvalue": ks_p,
        })
    return pd.DataFrame(rows, columns=MARGINAL_COLUMNS)


def long_to_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Subjects x (parameter, visit) frame from a long frame.

    Index = USUBJID; one column per (PARAMCD, AVISITN) named ``"PARAMCD@AVISITN"`` (visit
    formatted without a trailing ``.0``), columns sorted by parameter then visit; only
    (parameter, visit) pairs present in the data become columns. Duplicate rows for the same
    subject/parameter/visit are averaged; absent subject values are NaN.
    """
    frame = _check_long(long, "long")
    wide = frame.groupby([SUBJECT, PARAM, VISIT])[VALUE].mean().unstack([PARAM, VISIT])
    wide = wide.reindex(sorted(wide.columns, key=lambda k: (str(k[0]), float(k[1]))), axis=1)
    wide.columns = [f"{p}@{float(v):g}" for p, v in wide.columns]
    return wide


def _aligned_frames(real_wide, twin_wide) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two frames over the same columns: shared column names for frames, positions for arrays."""
    if isinstance(real_wide, pd.DataFrame) and isinstance(twin_wide, pd.DataFrame):
        cols = [c for c in real_wide.columns if c in set(twin_wide.columns)]
        if not cols:
            raise ValueError("real and twin frames share no columns")
        r = real_wide[cols].apply(pd.to_numeric, errors="coerce")
        t = twin_wide[cols].apply(pd.to_numeric, errors="coerce")
        return r.astype(float), t.astype(float)
    r = as_matrix(real_wide, "real_wide")
    t = as_matrix(twin_wide, "twin_wide")
    if r.shape[1] != t.shape[1]:
        raise ValueError(f"column counts differ: {r.shape[1]} (real) vs {t.shape[1]} (twin)")
    return pd.DataFrame(r), pd.DataFrame(t)


@dataclass(frozen=True)
class CorrelationDistance(ResultMixin):
    """Distance between the real and twin correlation matrices.

    ``mean_abs_diff`` averages |r_real - r_twin| over the column pairs (upper triangle) where
    both correlations are defined; ``frobenius`` is the Frobenius norm of the full difference
    matrix (both triangles, undefined entries counted as 0); ``max_abs_diff`` the largest
    pairwise gap; ``n_pairs`` the pairs used out of ``n_columns * (n_columns - 1) / 2``.
    """

    mean_abs_diff: float
    frobenius: float
    max_abs_diff: float
    n_pairs: int
    n_columns: int
    difference: pd.DataFrame = field(repr=False, compare=False, default=None)


def correlation_distance(real_wide, twin_wide) -> CorrelationDistance:
    """Compare Pearson correlation matrices of real and twin wide data.

    ``real_wide`` / ``twin_wide``: subjects x (parameter, visit) frames (for instance from
    :func:`long_to_wide`; only shared column names are used) or arrays with the same number
    of columns. Correlations use pairwise-complete observations (pandas ``DataFrame.corr``)
    rather than mean imputation, which would shrink them towards 0; pairs undefined on
    either side (a constant column, fewer than 2 shared observations) are left out of the
    mean and count as 0 in the Frobenius norm. The signed difference matrix (twin - real) is
    kept in ``difference`` for heat maps.
    """
    r, t = _aligned_frames(real_wide, twin_wide)
    cr = r.corr(method="pearson", min_periods=2)
    ct = t.corr(method="pearson", min_periods=2)
    diff = ct - cr
    k = diff.shape[0]
    iu = np.triu_indices(k, k=1)
    upper = np.abs(diff.to_numpy())[iu]
    defined = upper[~np.isnan(upper)]
    full = np.nan_to_num(diff.to_numpy(), nan=0.0)
    np.fill_diagonal(full, 0.0)
    return CorrelationDistance(
        mean_abs_diff=float(defined.mean()) if defined.size else float("nan"),
        frobenius=float(np.sqrt(np.sum(full**2))) if defined.size else float("nan"),
        max_abs_diff=float(defined.max()) if defined.size else float("nan"),
        n_pairs=int(defined.size),
        n_columns=int(k),
        difference=diff,
    )


@dataclass(frozen=True)
class DimensionWiseResult(ResultMixin):
    """Dimension-wise mean statistic: ``correlation`` between per-column means; also the
    mean absolute gap between them and the number of columns used."""

    correlation: float
    mean_abs_diff: float
    n_dimensions: int
    real_means: np.ndarray = field(repr=False, compare=False, default=None)
    twin_means: np.ndarray = field(repr=False, compare=False, default=None)


def dimension_wise_mean_correlation(real_wide, twin_wide) -> DimensionWiseResult:
    """Pearson correlation between the per-column means of real and twin data (TWIN/PyTrial).

    Each column's mean is taken over its non-missing values (no imputation needed); columns
    with no value on either side are dropped. Needs at least 2 columns whose means vary,
    otherwise the correlation is NaN. Use unstandardised values (for example raw AVAL from
    :func:`long_to_wide`): on per-column standardised data every mean is about 0 and the
    correlation is noise. For binary columns the means are the dimension-wise probabilities
    of the original statistic.
    """
    r, t = _aligned_frames(real_wide, twin_wide)
    mr = r.mean(axis=0, skipna=True).to_numpy(float)
    mt = t.mean(axis=0, skipna=True).to_numpy(float)
    ok = ~(np.isnan(mr) | np.isnan(mt))
    mr, mt = mr[ok], mt[ok]
    corr = float("nan")
    if mr.size >= 2 and np.ptp(mr) > 0 and np.ptp(mt) > 0:
        corr = float(np.corrcoef(mr, mt)[0, 1])
    return DimensionWiseResult(
        correlation=corr,
        mean_abs_diff=float(np.mean(np.abs(mr - mt))) if mr.size else float("nan"),
        n_dimensions=int(mr.size),
        real_means=mr,
        twin_means=mt,
    )


@dataclass(frozen=True)
class DetectionResult(ResultMixin):
    """Real-vs-twin detection.

    ``auroc``: mean of the per-fold AUROCs; ``ci_low``/``ci_high``: 95% t-interval of that
    mean across folds, clipped to [0, 1]; ``score`` = 1 - |2 * auroc - 1| (1 = undetectable,
    0 = perfectly separable; below-0.5 AUROCs are penalised too, since they arise when twins
    copy real patients); ``fold_aurocs`` per fold.
    """

    auroc: float
    ci_low: float
    ci_high: float
    score: float
    model: str
    folds: int
    n_real: int
    n_twin: int
    fold_aurocs: tuple[float, ...] = field(repr=False, default=())


def _detector(model: str, seed: int):
    if model == "gbm":
        return HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=10,
            l2_regularization=1.0, early_stopping=False, class_weight="balanced",
            random_state=seed,
        )
    if model == "logistic":
        return LogisticRegression(max_iter=1000, class_weight="balanced")
    raise ValueError(f"unknown model {model!r}; use 'gbm' or 'logistic'")


def prebin(train: np.ndarray, test: np.ndarray, max_bins: int = 255
           ) -> tuple[np.ndarray, np.ndarray]:
    """Columns with more than `max_bins` distinct training values replaced by their bin index
    at the training data's (unweighted) quantiles, as the gradient boosting's own binning does.
    Why: with class weights, scikit-learn >= 1.6 bins by weighted percentiles, one sort per
    threshold (25 s of a 30 s Compare on a 790-twin pbc run); trees split between bins either
    way, so the fit is that of boosting with unweighted bins."""
    train, test = train.copy(), test.copy()
    for j in range(train.shape[1]):
        col = train[:, j]
        if np.unique(col).size <= max_bins:
            continue
        edges = np.unique(np.percentile(col, np.linspace(0, 100, max_bins + 1)[1:-1],
                                        method="midpoint"))
        train[:, j] = np.searchsorted(edges, col, side="right")
        test[:, j] = np.searchsorted(edges, test[:, j], side="right")
    return train, test


def detection_auroc(real_X, twin_X, seed: int = 0, folds: int = 5,
                    model: str = "gbm") -> DetectionResult:
    """Cross-validated AUROC of a classifier separating real patients (0) from twins (1).

    Default classifier: histogram gradient boosting (sklearn ``HistGradientBoostingClassifier``,
    100 trees of at most 15 leaves, >= 10 patients per leaf, L2 1.0, fixed ``seed``). Unlike a
    logistic regression, which only sees differences in means along a direction, boosting also
    detects twins with the wrong spread (e.g. variance shrunk towards the mean), wrong tails or
    wrong interactions, the usual failures of generators. ``model="logistic"`` gives the
    SDMetrics-style logistic detector.

    Class balance: classes are weighted inversely to their size (``class_weight="balanced"``)
    so unequal numbers of real and twin patients do not bias the fit. Folds are stratified by
    class and grouped by feature vector (``StratifiedGroupKFold``, shuffled with ``seed``):
    identical rows always fall in the same fold. Without the grouping, a twin that copies a
    real patient would sit in a test fold while its copy, with the opposite label, sits in the
    training fold, and a flexible classifier would score it "backwards", driving the AUROC
    far below 0.5 for a perfect copy; with it, identical sets give exactly 0.5 (copying is the
    privacy metrics' business). ``folds`` is reduced to the number of distinct rows in the
    smaller class if needed (minimum 2). NaN are mean-imputed with the real patients' column
    means. The interval is mean +/- t(0.975, folds-1) * sd / sqrt(folds) over the fold AUROCs;
    fold estimates share training data, so it is somewhat optimistic (Bengio & Grandvalet
    2004). Ideal 0.5; near 1 means twins are easy to tell apart. Fitting is single-threaded
    (faster for trial-sized data than OpenMP threads).
    """
    real, twin = impute_means(real_X, twin_X)
    n_real, n_twin = real.shape[0], twin.shape[0]
    X = np.vstack([real, twin])
    y = np.r_[np.zeros(n_real, dtype=int), np.ones(n_twin, dtype=int)]
    _, groups = np.unique(X, axis=0, return_inverse=True)
    groups = groups.ravel()
    distinct = min(np.unique(groups[y == 0]).size, np.unique(groups[y == 1]).size)
    k = int(min(folds, distinct))
    if k < 2:
        raise ValueError("detection needs at least 2 distinct real and 2 distinct twin patients")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    aucs = []
    with threadpool_limits(1, user_api="openmp"):
        for train_idx, test_idx in splitter.split(X, y, groups):
            if np.unique(y[test_idx]).size < 2 or np.unique(y[train_idx]).size < 2:
                continue  # a fold without both classes cannot be scored
            clf = _detector(model, seed)
            X_train, X_test = X[train_idx], X[test_idx]
            if model == "gbm":
                X_train, X_test = prebin(X_train, X_test)
            clf.fit(X_train, y[train_idx])
            scores = clf.predict_proba(X_test)[:, 1]
            aucs.append(float(roc_auc_score(y[test_idx], scores)))
    if not aucs:
        raise ValueError("no fold contained both real and twin patients")
    k = len(aucs)
    aucs_arr = np.asarray(aucs)
    mean = float(aucs_arr.mean())
    half = float(stats.t.ppf(0.975, k - 1) * aucs_arr.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0
    return DetectionResult(
        auroc=mean,
        ci_low=max(0.0, mean - half),
        ci_high=min(1.0, mean + half),
        score=float(1.0 - abs(2.0 * mean - 1.0)),
        model=model,
        folds=k,
        n_real=int(n_real),
        n_twin=int(n_twin),
        fold_aurocs=tuple(aucs),
    )
