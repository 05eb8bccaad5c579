"""Utility: can the twins stand in for real patients when fitting an outcome model?

* :func:`tstr_auroc`: train on twins, test on real (TSTR) versus train on real, test on real
  (TRTR), both scored on the same real test patients.
* :func:`augmentation_auroc`: real + twin training versus real-only training.

Outcomes are binary (any two labels: 0/1, booleans, strings); the larger label in sort order
is the positive class. Models are scikit-learn pipelines: mean imputation fitted on the
training set of each model (so the test set never informs it), then the classifier. Default
classifier: L2-regularised logistic regression (stable with the small samples of trials);
``model="gbm"`` uses histogram gradient boosting. When an AUROC cannot be computed (a training
set with a single outcome class, a test set with a single class) it is NaN and ``reason``
says why, instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline

from .registry import ResultMixin, as_matrix

NAN = float("nan")


def _model(model: str, seed: int):
    if model == "logistic":
        clf = LogisticRegression(max_iter=2000, C=1.0)
    elif model == "gbm":
        clf = HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15,
                                             min_samples_leaf=10, early_stopping=False,
                                             random_state=seed)
    else:
        raise ValueError(f"unknown model {model!r}; use 'logistic' or 'gbm'")
    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), clf)


def _labels(*ys) -> tuple[list[np.ndarray], object]:
    """Labels as 0/1 arrays; the positive class is the larger of the (at most two) labels."""
    arrays = [np.asarray(y).ravel() for y in ys]
    classes = sorted(set().union(*[set(a.tolist()) for a in arrays]))
    if len(classes) > 2:
        raise ValueError(f"binary outcome expected, found {len(classes)} labels: {classes[:5]}")
    positive = classes[-1] if classes else None
    return [(a == positive).astype(int) for a in arrays], positive


def _xy(X, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    X = as_matrix(X, name)
    if X.shape[0] != len(y):
        raise ValueError(f"{name}: {X.shape[0]} rows but {len(y)} labels")
    return X, y


def _fit_auc(X_train, y_train, X_test, y_test, model: str, seed: int,
             what: str) -> tuple[float, str]:
    if X_train.shape[0] == 0:
        return NAN, f"{what}: empty training set"
    if np.unique(y_train).size < 2:
        return NAN, f"{what}: training outcomes have a single class"
    if np.unique(y_test).size < 2:
        return NAN, f"{what}: test outcomes have a single class (AUROC undefined)"
    est = _model(model, seed)
    est.fit(X_train, y_train)
    return float(roc_auc_score(y_test, est.predict_proba(X_test)[:, 1])), ""


@dataclass(frozen=True)
class TSTRResult(ResultMixin):
    """TSTR vs TRTR AUROC on the same real test set; ``ratio`` = tstr / trtr (1 = twins as
    useful as real data); ``reason`` is empty unless a value is NaN."""

    tstr: float
    trtr: float
    ratio: float
    model: str
    n_twin: int
    n_train: int
    n_test: int
    reason: str = ""


def tstr_auroc(twin_X, twin_y, real_train_X, real_train_y, real_test_X, real_test_y,
               seed: int = 0, model: str = "logistic") -> TSTRResult:
    """Train-on-twins-test-on-real AUROC versus train-on-real-test-on-real AUROC.

    The same model specification (see module docstring) is fitted once on the twins and once
    on the real training patients, and both are scored on the real test patients. NaN in the
    features are mean-imputed inside each model with its own training means.
    """
    (ty, ry, sy), _ = _labels(twin_y, real_train_y, real_test_y)
    tX, ty = _xy(twin_X, ty, "twin_X")
    rX, ry = _xy(real_train_X, ry, "real_train_X")
    sX, sy = _xy(real_test_X, sy, "real_test_X")
    tstr, why_t = _fit_auc(tX, ty, sX, sy, model, seed, "TSTR")
    trtr, why_r = _fit_auc(rX, ry, sX, sy, model, seed, "TRTR")
    ratio = tstr / trtr if trtr and not np.isnan(trtr) and not np.isnan(tstr) else NAN
    reason = "; ".join(dict.fromkeys(w for w in (why_t, why_r) if w))
    return TSTRResult(tstr=tstr, trtr=trtr, ratio=float(ratio), model=model,
                      n_twin=int(tX.shape[0]), n_train=int(rX.shape[0]),
                      n_test=int(sX.shape[0]), reason=reason)


@dataclass(frozen=True)
class AugmentationResult(ResultMixin):
    """AUROC on the real test set of real+twin training (``augmented``) versus real-only
    training (``real_only``); ``gain`` = augmented - real_only."""

    augmented: float
    real_only: float
    gain: float
    model: str
    n_twin: int
    n_train: int
    n_test: int
    reason: str = ""


def augmentation_auroc(twin_X, twin_y, real_train_X, real_train_y, real_test_X, real_test_y,
                       seed: int = 0, model: str = "logistic") -> AugmentationResult:
    """AUROC gain on real test patients from adding the twins to the real training patients.

    Same model specification as :func:`tstr_auroc`; the augmented model is fitted on the
    stacked real training and twin rows (equal weights per row), with mean imputation
    fitted on that stacked set. If the real training set alone has a single outcome class,
    ``real_only`` is NaN (with a reason) while ``augmented`` can still be computed.
    """
    (ty, ry, sy), _ = _labels(twin_y, real_train_y, real_test_y)
    tX, ty = _xy(twin_X, ty, "twin_X")
    rX, ry = _xy(real_train_X, ry, "real_train_X")
    sX, sy = _xy(real_test_X, sy, "real_test_X")
    if tX.shape[1] != rX.shape[1]:
        raise ValueError(f"column counts differ: {tX.shape[1]} (twin) vs {rX.shape[1]} (real)")
    aX, ay = np.vstack([rX, tX]), np.r_[ry, ty]
    aug, why_a = _fit_auc(aX, ay, sX, sy, model, seed, "real+twin")
    real, why_r = _fit_auc(rX, ry, sX, sy, model, seed, "real only")
    gain = aug - real if not (np.isnan(aug) or np.isnan(real)) else NAN
    reason = "; ".join(dict.fromkeys(w for w in (why_a, why_r) if w))
    return AugmentationResult(augmented=aug, real_only=real, gain=float(gain), model=model,
                              n_twin=int(tX.shape[0]), n_train=int(rX.shape[0]),
                              n_test=int(sX.shape[0]), reason=reason)
