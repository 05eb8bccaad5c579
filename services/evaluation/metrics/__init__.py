"""Evaluation metrics for digital twins: pure functions over numpy arrays and pandas frames.

Groups: fidelity (do twins look like real patients), privacy (do they give patients away),
utility (can they stand in for real patients in a model), survival (time-to-event
agreement) and procova (sample sizes with a twin-based prognostic covariate). Each metric is
described in :data:`METRICS` (``registry.py``) for display. Independent of the app's data
model and of streamlit.
"""

from .fidelity import (
    CorrelationDistance,
    DetectionResult,
    DimensionWiseResult,
    correlation_distance,
    detection_auroc,
    dimension_wise_mean_correlation,
    long_to_wide,
    marginal_fidelity,
    standardized_mean_difference,
)
from .privacy import (
    CopiesResult,
    DCRResult,
    MembershipResult,
    NNAAResult,
    distance_to_closest_record,
    exact_copies,
    median_ratio_interval,
    membership_inference,
    nn_adversarial_accuracy,
    record_copies,
)
from .procova import (
    ProcovaPlan,
    RhoEstimate,
    SampleSize,
    estimate_rho,
    fisher_lower_bound,
    procova_plan,
    sample_size,
)
from .registry import (
    DIRECTIONS,
    GROUPS,
    METRICS,
    MetricInfo,
    impute_means,
    metric_info,
    metrics_in_group,
    metrics_table,
)
from .survival import (
    HazardRatio,
    KMDistance,
    LogrankResult,
    clustered_km,
    concordance,
    cox_hazard_ratio,
    km_sup_distance,
    logrank,
    robust_logrank,
)
from .utility import AugmentationResult, TSTRResult, augmentation_auroc, tstr_auroc

__all__ = [
    "DIRECTIONS",
    "GROUPS",
    "METRICS",
    "AugmentationResult",
    "CopiesResult",
    "CorrelationDistance",
    "DCRResult",
    "DetectionResult",
    "DimensionWiseResult",
    "HazardRatio",
    "KMDistance",
    "LogrankResult",
    "MembershipResult",
    "MetricInfo",
    "NNAAResult",
    "ProcovaPlan",
    "RhoEstimate",
    "SampleSize",
    "TSTRResult",
    "augmentation_auroc",
    "clustered_km",
    "concordance",
    "correlation_distance",
    "cox_hazard_ratio",
    "detection_auroc",
    "dimension_wise_mean_correlation",
    "distance_to_closest_record",
    "estimate_rho",
    "exact_copies",
    "fisher_lower_bound",
    "impute_means",
    "km_sup_distance",
    "logrank",
    "long_to_wide",
    "marginal_fidelity",
    "median_ratio_interval",
    "membership_inference",
    "metric_info",
    "metrics_in_group",
    "metrics_table",
    "nn_adversarial_accuracy",
    "procova_plan",
    "record_copies",
    "robust_logrank",
    "sample_size",
    "standardized_mean_difference",
    "tstr_auroc",
]
