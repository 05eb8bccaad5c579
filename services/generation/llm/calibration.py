"""Hybrid mode: how much the model's forecast is trusted against the local generator's,
learned on patients whose real values are known.

Why: a model that is worse than the local generator must not make the twins worse (a small
model on a laptop adds noise: on epilepsy, hybrid twins taking the model's values had 1.87x the
RMSE of local twins). Trust is earned, as a stacking weight is in cross-validation.

Protocol: before the twins, the model writes one twin of each of `n` patients of the TARGET arm
of the knowledge base that are not sources of the run (chosen by the run's seed), prompted
exactly as a source is: own baseline only, neighbours without itself, ranges without its own
values, and the local forecast of the fold models that exclude it (so the local side is
out-of-sample too). On standardised scale (local mean m, SD s of the local draws at each
patient, parameter and visit), with the model's value L and the real value y,

    d = (L - m) / s      (what the model would change)
    e = (y - m) / s      (what the local forecast missed)

the least-squares weight of the model's change is w = sum(d e) / sum(d^2), its standard error
the patient-clustered sandwich (the patient is the unit). The model earns w (clipped to
[0, 1]) only when w is significantly positive (one-sided t test at 5 % with n - 1 degrees of
freedom); otherwise w = 0. A twin's value is then its own local draw plus w (L - m): with
w = 0 the twins' values are the local generator's, with w = 1 the local draw moved to the
model's forecast.

`auto` size: min(10, twins // 5) patients (at most a fifth more calls), none under 3: a run of
fewer than 15 twins is too small to test the model and keeps the local values.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from services.data.trial import Trial

MIN_PATIENTS = 3
MAX_AUTO = 10
MIN_VALUES = 10
ALPHA = 0.05
KEY_PREFIX = "C"  # calibration patients' pseudonyms: C1, C2, ... (sources are P1, P2, ...)


def auto_size(twins: int) -> int:
    """Calibration patients of a run of `twins` twins under `calibration=None` (auto)."""
    n = min(MAX_AUTO, int(twins) // 5)
    return n if n >= MIN_PATIENTS else 0


def calibration_patients(kb: Trial, target_arm: str, exclude: set[str], n: int,
                         seed: int) -> list[str]:
    """Up to `n` target-arm patients of `kb` with a post-baseline value, not in `exclude`, in
    an order fixed by `seed` (a hash per patient, so adding a patient does not reshuffle)."""
    if n <= 0:
        return []
    vv = kb.visit_values
    have = set(vv.loc[vv["ARM"] == target_arm, "USUBJID"].astype(str))
    pool = [u for u in kb.subjects["USUBJID"].astype(str) if u in have and u not in exclude]

    def rank(u: str) -> bytes:
        return hashlib.blake2b(f"{int(seed)}|{u}".encode(), digest_size=8).digest()

    return sorted(pool, key=rank)[:n]


@dataclass
class Calibration:
    """The weight of the model's forecast and the evidence behind it."""

    weight: float
    patients: int = 0
    values: int = 0
    estimate: float | None = None   # least-squares weight before the test and the clip
    se: float | None = None
    t: float | None = None
    p_value: float | None = None
    reason: str = ""
    rmse_local: float | None = None  # standardised RMSE of the local forecast on them
    rmse_model: float | None = None  # ... of the model's
    per_patient: list[dict] = field(default_factory=list)

    def to_manifest(self) -> dict:
        def r(x):
            return None if x is None or not math.isfinite(x) else round(float(x), 4)

        return {"weight": round(self.weight, 4), "patients": self.patients,
                "values": self.values, "estimate": r(self.estimate), "se": r(self.se),
                "t": r(self.t), "p_value": r(self.p_value), "reason": self.reason,
                "standardised_rmse_local": r(self.rmse_local),
                "standardised_rmse_model": r(self.rmse_model),
                "rule": "twin value = its local draw + weight x (model value - local mean); "
                        "weight = least squares of the real values' deviation from the local "
                        "mean on the model's, kept when significantly > 0 (one-sided t, "
                        f"{ALPHA:g}, patient-clustered), clipped to [0, 1], else 0"}

    def note(self) -> str:
        if self.weight > 0:
            return (f"hybrid calibration: on {self.patients} knowledge-base patients "
                    f"({self.values} values) the model's forecasts improved on the local ones "
                    f"(standardised RMSE {self.rmse_model:.2f} vs {self.rmse_local:.2f}): its "
                    f"values have weight {self.weight:.2f} against the local forecast")
        return (f"hybrid calibration: {self.reason}; the twins' values are the local "
                "generator's draws (weight 0 for the model's values; its events are kept)")


def no_calibration(reason: str) -> Calibration:
    return Calibration(weight=0.0, reason=reason)


def estimate_weight(rows: list[tuple[str, float, float, float, float]]) -> Calibration:
    """The weight from `rows` = (patient, model value L, local mean m, local SD s, real y)."""
    by: dict[str, list[tuple[float, float]]] = {}
    for u, L, m, s, y in rows:
        if s > 0 and all(math.isfinite(v) for v in (L, m, s, y)):
            by.setdefault(u, []).append(((L - m) / s, (y - m) / s))
    n_pat = len(by)
    n_val = sum(len(v) for v in by.values())
    base = {"patients": n_pat, "values": n_val}
    if n_pat < MIN_PATIENTS or n_val < MIN_VALUES:
        return Calibration(weight=0.0, reason=f"{n_pat} calibration patients with {n_val} "
                           f"comparable values (at least {MIN_PATIENTS} and {MIN_VALUES} are "
                           "needed to test the model)", **base)
    d = {u: np.array([a for a, _ in v]) for u, v in by.items()}
    e = {u: np.array([b for _, b in v]) for u, v in by.items()}
    a = np.array([float(d[u] @ e[u]) for u in by])
    b = np.array([float(d[u] @ d[u]) for u in by])
    all_d, all_e = np.concatenate(list(d.values())), np.concatenate(list(e.values()))
    rmse_local = float(np.sqrt(np.mean(all_e ** 2)))
    rmse_model = float(np.sqrt(np.mean((all_e - all_d) ** 2)))
    per = [{"patient": u, "values": len(by[u]),
            "sq_err_local": round(float(e[u] @ e[u]), 4),
            "sq_err_model": round(float((e[u] - d[u]) @ (e[u] - d[u])), 4)} for u in by]
    if b.sum() <= 1e-12:
        return Calibration(weight=0.0, reason="the model's forecasts equal the local ones",
                           rmse_local=rmse_local, rmse_model=rmse_model, per_patient=per, **base)
    w = float(a.sum() / b.sum())
    var = float(np.sum((a - w * b) ** 2) / b.sum() ** 2) * n_pat / (n_pat - 1)
    se = math.sqrt(var) if var > 0 else 0.0
    t = w / se if se > 0 else (math.inf if w > 0 else -math.inf)
    p = float(stats.t.sf(t, df=n_pat - 1)) if math.isfinite(t) else (0.0 if t > 0 else 1.0)
    kept = p < ALPHA and w > 0
    reason = ("the model's forecasts improved on the local ones" if kept else
              f"on {n_pat} knowledge-base patients ({n_val} values) the model's forecasts did "
              f"not improve on the local ones (standardised RMSE {rmse_model:.2f} vs "
              f"{rmse_local:.2f}; weight estimate {w:.2f}, one-sided p = {p:.2f})")
    return Calibration(weight=min(1.0, w) if kept else 0.0, estimate=w, se=se, t=t,
                       p_value=p, reason=reason, rmse_local=rmse_local, rmse_model=rmse_model,
                       per_patient=per, **base)


def calibration_rows(kb: Trial, replies: dict[str, object],
                     draws: dict[tuple[str, str, float], np.ndarray]
                     ) -> list[tuple[str, float, float, float, float]]:
    """(patient, L, m, s, y) for every value a calibration patient's reply (`replies`:
    {patient: TwinReply}) wrote where the patient has a real value and local draws exist."""
    vv = kb.visit_values
    vv = vv[vv["USUBJID"].astype(str).isin(set(replies))].dropna(subset=["AVISITN", "AVAL"])
    real = vv.groupby([vv["USUBJID"].astype(str), "PARAMCD", "AVISITN"])["AVAL"].mean()
    rows = []
    for u, reply in replies.items():
        for v in reply.visits:
            key = (u, v.paramcd, float(v.avisitn))
            if key not in real.index or key not in draws:
                continue
            dr = draws[key]
            if len(dr) < 2:
                continue
            rows.append((u, float(v.aval), float(np.mean(dr)), float(np.std(dr, ddof=1)),
                         float(real[key])))
    return rows
