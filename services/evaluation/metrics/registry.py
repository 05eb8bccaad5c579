"""Catalogue of TwinArm's evaluation metrics, plus the conventions shared by the metric modules.

``METRICS`` maps a metric name to a :class:`MetricInfo` (group, one-sentence definition,
ideal value, preferred direction, reference, implementing function) so the UI and the report
can show what each number means without importing the computation code.

Shared conventions (used by fidelity, privacy and utility):

* Patient-level feature matrices are numpy float arrays, rows = patients, columns already
  standardised. Missing values (NaN) are replaced by column means by :func:`impute_means`;
  the means are taken from a *reference* matrix named in each function's docstring (for
  example the training records for privacy metrics) and columns that are entirely missing in
  the reference are filled with 0 (the mean of a standardised column).
* Every result object is a frozen dataclass with an ``as_dict()`` method returning the scalar
  fields as plain Python values (arrays for plots are left out), ready for a table or JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

GROUPS = ("fidelity", "privacy", "utility", "survival", "procova")
# "closer to 1" is needed for ratios whose ideal is 1 (hazard ratio twin vs real).
DIRECTIONS = ("lower", "higher", "closer to 0.5", "closer to 1")


@dataclass(frozen=True)
class MetricInfo:
    """Plain-language description of one metric, for display next to its value."""

    name: str
    group: str
    definition: str
    ideal: str
    direction: str
    reference: str
    function: str = ""

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"{self.name}: unknown group {self.group!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: unknown direction {self.direction!r}")


class ResultMixin:
    """``as_dict()`` for the metric result dataclasses."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ResultMixin):
                for key, inner in value.as_dict().items():
                    out[f"{f.name}.{key}"] = inner
            elif isinstance(value, (np.ndarray, list, tuple, pd.DataFrame, pd.Series)):
                continue
            elif isinstance(value, np.integer):
                out[f.name] = int(value)
            elif isinstance(value, np.floating):
                out[f.name] = float(value)
            else:
                out[f.name] = value
        return out


# --------------------------------------------------------------------------- helpers


def as_matrix(X: Any, name: str = "X") -> np.ndarray:
    """A 2-D float array from an array-like (a 1-D input becomes one column)."""
    arr = np.asarray(X, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {arr.shape}")
    return arr


def impute_means(reference: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Replace NaN in ``reference`` and each of ``arrays`` by the column means of ``reference``.

    Columns entirely missing in the reference are filled with 0 (the mean of a standardised
    column). Returns the imputed copies, reference first. All matrices must have the same
    number of columns.
    """
    reference = as_matrix(reference, "reference")
    mats = [as_matrix(a, f"matrix {i}") for i, a in enumerate(arrays)]
    for m in mats:
        if m.shape[1] != reference.shape[1]:
            raise ValueError(
                f"column counts differ: {reference.shape[1]} (reference) vs {m.shape[1]}"
            )
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(reference), axis=0)
        sums = np.nansum(reference, axis=0)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    out = []
    for m in (reference, *mats):
        m = m.copy()
        rows, cols = np.nonzero(np.isnan(m))
        m[rows, cols] = means[cols]
        out.append(m)
    return tuple(out)


# --------------------------------------------------------------------------- catalogue

_YALE = (
    "Yale A, Dash S, Dutta R, Guyon I, Pavao A, Bennett KP. Generation and evaluation of "
    "privacy preserving synthetic health data. Neurocomputing 2020;416:244-255."
)
_TWIN = (
    "Das T, Wang Z, Sun J. TWIN: Personalized clinical trial digital twin generation. "
    "KDD 2023 (PyTrial implementation)."
)
_SDM = "SDMetrics (DataCebo), single-table quality and detection metrics."
_SCHULER = (
    "Schuler A, Walsh D, Hall D, Walsh J, Fisher C. Increasing the efficiency of randomized "
    "trial estimates via linear adjustment for a prognostic score. Int J Biostat 2021 (PROCOVA)."
)
_EMA = (
    "EMA/CHMP Qualification opinion for Prognostic Covariate Adjustment (PROCOVA), 2022; "
    + _SCHULER
)
_AUSTIN = (
    "Austin PC. Balance diagnostics for comparing the distribution of baseline covariates "
    "between treatment groups in propensity-score matched samples. Stat Med 2009;28:3083-3107."
)
_ESTEBAN = (
    "Esteban C, Hyland SL, Rätsch G. Real-valued (medical) time series generation with "
    "recurrent conditional GANs. arXiv:1706.02633, 2017 (TSTR/TRTR)."
)
_YEOM = (
    "Yeom S, Giacomelli I, Fredrikson M, Jha S. Privacy risk in machine learning: analyzing "
    "the connection to overfitting. CSF 2018 (membership advantage); Choi E et al. Generating "
    "multi-label discrete patient records using GANs. MLHC 2017 (presence disclosure)."
)
_DCR = (
    "Park N et al. Data synthesis based on generative adversarial networks. VLDB 2018; "
    "Zhao Z et al. CTAB-GAN, 2021 (distance to closest record); synthcity privacy metrics."
)
_LIFELINES = "Davidson-Pilon C. lifelines: survival analysis in Python. JOSS 2019;4(40):1317."

_F = "services.evaluation.metrics.fidelity"
_P = "services.evaluation.metrics.privacy"
_U = "services.evaluation.metrics.utility"
_S = "services.evaluation.metrics.survival"
_C = "services.evaluation.metrics.procova"

_ENTRIES = [
    # ---------------------------------------------------------------- fidelity
    MetricInfo(
        "smd", "fidelity",
        "Difference between the twin and real means of a parameter at a visit, divided by "
        "the pooled standard deviation sqrt((sd_real^2 + sd_twin^2) / 2).",
        "0", "lower", _AUSTIN + " |SMD| < 0.1 is the usual threshold for negligible imbalance.",
        f"{_F}.marginal_fidelity",
    ),
    MetricInfo(
        "ks", "fidelity",
        "Two-sample Kolmogorov-Smirnov statistic: the largest vertical gap between the "
        "empirical distribution functions of real and twin values of a parameter at a visit.",
        "0", "lower", "Kolmogorov-Smirnov two-sample test; SDMetrics KSComplement = 1 - KS.",
        f"{_F}.marginal_fidelity",
    ),
    MetricInfo(
        "ks_pvalue", "fidelity",
        "P-value of the two-sample Kolmogorov-Smirnov test of equal distributions (small "
        "values flag a detectable difference; large samples make small gaps significant).",
        "> 0.05", "higher", "scipy.stats.ks_2samp.",
        f"{_F}.marginal_fidelity",
    ),
    MetricInfo(
        "correlation_mad", "fidelity",
        "Mean absolute difference between the real and twin Pearson correlations over all "
        "pairs of (parameter, visit) and event (time, status) columns.",
        "0", "lower", _SDM + " (CorrelationSimilarity); synthcity.",
        f"{_F}.correlation_distance",
    ),
    MetricInfo(
        "correlation_frobenius", "fidelity",
        "Frobenius norm of the difference between the real and twin Pearson correlation "
        "matrices of the (parameter, visit) and event (time, status) columns.",
        "0", "lower", "Standard matrix-distance summary of correlation structure.",
        f"{_F}.correlation_distance",
    ),
    MetricInfo(
        "dimension_wise_mean_correlation", "fidelity",
        "Pearson correlation between the vector of per-column means of the real data and "
        "the same vector for the twins (computed on unstandardised values).",
        "1", "higher", _TWIN,
        f"{_F}.dimension_wise_mean_correlation",
    ),
    MetricInfo(
        "detection_auroc", "fidelity",
        "Cross-validated area under the ROC curve of a gradient-boosting classifier trained "
        "to tell real patients from twins; 0.5 means it cannot tell them apart.",
        "0.5", "closer to 0.5",
        _SDM + " (LogisticDetection/SVCDetection); synthcity detection metrics.",
        f"{_F}.detection_auroc",
    ),
    # ---------------------------------------------------------------- privacy
    MetricInfo(
        "dcr_ratio", "privacy",
        "Median distance from each twin to its closest training record divided by the "
        "median distance from each held-out real patient to its closest training record.",
        ">= 1", "higher", _DCR,
        f"{_P}.distance_to_closest_record",
    ),
    MetricInfo(
        "dcr_twin_median", "privacy",
        "Median Euclidean distance (standardised features) from a twin to its closest "
        "training (knowledge-base) record.",
        ">= the holdout median", "higher", _DCR,
        f"{_P}.distance_to_closest_record",
    ),
    MetricInfo(
        "dcr_twin_p5", "privacy",
        "5th percentile of the distances from twins to their closest training record "
        "(the closest twins).",
        ">= the holdout 5th percentile", "higher", _DCR,
        f"{_P}.distance_to_closest_record",
    ),
    MetricInfo(
        "nnaa", "privacy",
        "Nearest-neighbour adversarial accuracy: how often a point's nearest neighbour in "
        "the other set is farther than its nearest neighbour in its own set, averaged over "
        "real and twin points; near 0 means copies, near 1 means twins unlike the real data.",
        "0.5", "closer to 0.5", _YALE,
        f"{_P}.nn_adversarial_accuracy",
    ),
    MetricInfo(
        "nnaa_privacy_loss", "privacy",
        "Adversarial accuracy of twins against held-out patients minus that against training "
        "patients; a positive value means twins sit closer to the patients they learned from.",
        "0", "lower", _YALE,
        f"{_P}.nn_adversarial_accuracy",
    ),
    MetricInfo(
        "mia_sensitivity", "privacy",
        "Share of training patients that a distance-threshold attacker correctly flags as "
        "members because some twin lies within the threshold of them.",
        "= false-positive rate", "lower", _YEOM,
        f"{_P}.membership_inference",
    ),
    MetricInfo(
        "mia_precision", "privacy",
        "Share of the attacker's 'member' claims that are right, against held-out "
        "non-members; equal to the share of members among the candidates when nothing leaks.",
        "= prevalence", "lower", _YEOM,
        f"{_P}.membership_inference",
    ),
    MetricInfo(
        "mia_accuracy", "privacy",
        "Share of training members and held-out non-members the attacker classifies correctly.",
        "= majority share", "lower", _YEOM,
        f"{_P}.membership_inference",
    ),
    MetricInfo(
        "mia_advantage", "privacy",
        "Membership advantage: attacker sensitivity minus its false-positive rate on "
        "held-out non-members.",
        "0", "lower", _YEOM,
        f"{_P}.membership_inference",
    ),
    MetricInfo(
        "exact_copies", "privacy",
        "Number of twins identical (every feature within a tolerance) to a training record.",
        "0", "lower", "SDMetrics NewRowSynthesis; synthcity.",
        f"{_P}.exact_copies",
    ),
    MetricInfo(
        "exact_copy_fraction", "privacy",
        "Fraction of twins identical (every feature within a tolerance) to a training record.",
        "0", "lower", "SDMetrics NewRowSynthesis; synthcity.",
        f"{_P}.exact_copies",
    ),
    # ---------------------------------------------------------------- utility
    MetricInfo(
        "tstr_auroc", "utility",
        "AUROC on real test patients of an outcome model trained on the twins only "
        "(train on synthetic, test on real).",
        "= trtr_auroc", "higher", _ESTEBAN,
        f"{_U}.tstr_auroc",
    ),
    MetricInfo(
        "trtr_auroc", "utility",
        "AUROC on real test patients of the same outcome model trained on real training "
        "patients (the benchmark for TSTR).",
        "1", "higher", _ESTEBAN,
        f"{_U}.tstr_auroc",
    ),
    MetricInfo(
        "tstr_ratio", "utility",
        "TSTR AUROC divided by TRTR AUROC.",
        "1", "higher", _ESTEBAN,
        f"{_U}.tstr_auroc",
    ),
    MetricInfo(
        "augmentation_gain", "utility",
        "AUROC on real test patients of a model trained on real plus twin patients minus "
        "that of a model trained on the real patients only.",
        ">= 0", "higher", "Data-augmentation utility, as in synthcity and TWIN (KDD 2023).",
        f"{_U}.augmentation_auroc",
    ),
    # ---------------------------------------------------------------- survival
    MetricInfo(
        "km_sup_distance", "survival",
        "Largest absolute gap between the Kaplan-Meier survival curves of real and twin "
        "patients over their common follow-up.",
        "0", "lower", "Kolmogorov-type distance between Kaplan-Meier estimates; " + _LIFELINES,
        f"{_S}.km_sup_distance",
    ),
    MetricInfo(
        "c_index", "survival",
        "Harrell's concordance index: share of comparable patient pairs in which the patient "
        "predicted to survive longer did survive longer.",
        "1", "higher", "Harrell FE et al. JAMA 1982;247:2543; lifelines.utils.concordance_index.",
        f"{_S}.concordance",
    ),
    MetricInfo(
        "logrank_p", "survival",
        "P-value of the log-rank test that real and twin patients share one survival curve "
        "(small values flag a detectable difference).",
        "> 0.05", "higher", "Mantel N. 1966; lifelines.statistics.logrank_test.",
        f"{_S}.logrank",
    ),
    MetricInfo(
        "cox_hazard_ratio", "survival",
        "Hazard ratio of one group versus the other from a Cox proportional-hazards model "
        "with the group as the only covariate.",
        "1", "closer to 1", "Cox DR. J R Stat Soc B 1972;34:187-220; lifelines.CoxPHFitter.",
        f"{_S}.cox_hazard_ratio",
    ),
    # ---------------------------------------------------------------- procova
    MetricInfo(
        "procova_rho", "procova",
        "Pearson correlation between the twin-based prognostic score and the observed "
        "outcome in the control patients.",
        "1", "higher", _SCHULER,
        f"{_C}.estimate_rho",
    ),
    MetricInfo(
        "n_unadjusted", "procova",
        "Total patients needed by the two-sample normal-approximation formula without "
        "covariate adjustment.",
        "as small as possible", "lower", "Chow S-C, Shao J, Wang H. Sample Size Calculations "
        "in Clinical Research, 2nd ed. 2008.",
        f"{_C}.sample_size",
    ),
    MetricInfo(
        "n_procova", "procova",
        "Total patients needed when the outcome variance is reduced by the factor "
        "(1 - rho^2) through adjustment for the prognostic score (PROCOVA).",
        "as small as possible", "lower", _EMA,
        f"{_C}.procova_plan",
    ),
    MetricInfo(
        "procova_saving_pct", "procova",
        "Percentage of the unadjusted total sample size saved by PROCOVA with the "
        "(conservatively deflated) correlation.",
        "as large as possible", "higher", _EMA,
        f"{_C}.procova_plan",
    ),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ENTRIES}


def metric_info(name: str) -> MetricInfo:
    """The catalogue entry of a metric; ``KeyError`` with the known names if absent."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}") from None


def metrics_in_group(group: str) -> list[MetricInfo]:
    """Entries of one group, in catalogue order."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
    return [m for m in _ENTRIES if m.group == group]


def metrics_table() -> pd.DataFrame:
    """The whole catalogue as a frame (one row per metric), for display."""
    return pd.DataFrame([dataclasses.asdict(m) for m in _ENTRIES])
