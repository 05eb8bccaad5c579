"""`LocalGenerator`: settings, the contract's `_fit` / `_generate`, and the fitted arm models
(cached per target arm). The method is described in `services.generation.local`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pandas as pd
from threadpoolctl import threadpool_limits

from services.data.adverse import has_ae
from services.data.quality import outlying_values
from services.data.trial import Trial
from services.generation.assembly import assemble_run, run_counts, truncate_at_followup
from services.generation.base import (
    CancelLike,
    Capabilities,
    GeneratorError,
    ProgressFn,
    TwinGenerator,
    is_cancelled,
    retriever_manifest,
)
from services.generation.local.adverse_events import adverse_event_twins, choose_donor_pool
from services.generation.local.events import EventDrawing
from services.generation.local.mean_models import CANDIDATES
from services.generation.local.model import ArmFitting, _ArmModel
from services.generation.local.residuals import TrajectoryDrawing
from services.generation.run import TTE_COLUMNS, TwinRun
from services.retrieval.retriever import Retriever

TRANSFORMS = ("auto", "log", "features", "none")
SCALES = ("identity", "log", "log1p")      # outcome scales a parameter is modelled on
VISIT_MODES = ("all", "neighbour")
ROUNDINGS = ("nearest", "random", "matched")   # whole numbers: nearest; floor + Bernoulli(fraction); that, variance kept
TTE_SPACES = ("prognostic", "retrieval")
TTE_DRAWS = ("history", "km", "model")
FILLS = ("observed", "complete")


def default_retriever_factory(kb: Trial) -> Retriever:
    """The project's retriever of the knowledge base (Chroma, baseline space)."""
    return Retriever(kb, space="baseline")


class LocalGenerator(ArmFitting, TrajectoryDrawing, EventDrawing, TwinGenerator):
    """Offline generator: prognostic ridge mean + a neighbour's cross-fitted residual
    trajectory; neighbour-weighted Kaplan-Meier for time to event (see module docstring)."""

    name = "local"
    description = ("Offline statistical twins: prognostic regression on the baseline plus the "
                   "residual trajectory of a similar patient; event times from the similar "
                   "patients' Kaplan-Meier curve.")
    capabilities = Capabilities(label="local (offline, statistical)", seconds_per_twin=0.0002,
                                progress_unit="source patients", twins_per_patient=5, neighbors=20)

    def __init__(self, neighbors: int = 20, tte_neighbors: int = 20, cv_folds: int = 5,
                 visits: str = "all", min_visit_subjects: int = 10, smoothing: float = 0.0,
                 transform: str = "auto", clip_margin: float = 0.1, alpha: float | None = None,
                 center: str | float = "auto", pool_visits: bool = True,
                 tte_space: str = "prognostic", tte_draw: str = "model", cox_penalizer: float = 0.1,
                 fill: str = "complete", truncate_at_followup: bool = True,
                 mean_model: str = "auto", balance: bool = True, tte_rescale: bool = True,
                 ae_donors: str = "auto", chunk_size: int = 256, structure: dict | None = None,
                 rounding: str = "matched",
                 retriever_factory: Callable[[Trial], object] | None = None):
        if visits not in VISIT_MODES:
            raise GeneratorError(f"visits must be one of {', '.join(VISIT_MODES)}, got {visits!r}")
        if transform not in TRANSFORMS:
            raise GeneratorError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if int(neighbors) < 1 or int(tte_neighbors) < 1:
            raise GeneratorError("neighbors and tte_neighbors must be >= 1")
        if int(cv_folds) < 2:
            raise GeneratorError("cv_folds must be >= 2")
        if not 0.0 <= float(smoothing) < 1.0:
            raise GeneratorError("smoothing must be in [0, 1)")
        self.neighbors = int(neighbors)
        self.tte_neighbors = int(tte_neighbors)
        self.cv_folds = int(cv_folds)
        self.visits = visits
        self.min_visit_subjects = int(min_visit_subjects)
        self.smoothing = float(smoothing)
        self.transform = transform
        self.clip_margin = float(clip_margin)
        self.alpha = None if alpha is None else float(alpha)
        if not (center in ("auto", "none") or isinstance(center, (int, float))):
            raise GeneratorError(f"center must be 'auto', 'none' or a number in [0, 1], got {center!r}")
        self.center = center
        self.pool_visits = bool(pool_visits)
        if tte_space not in TTE_SPACES:
            raise GeneratorError(f"tte_space must be one of {', '.join(TTE_SPACES)}, got {tte_space!r}")
        self.tte_space = tte_space
        self.cox_penalizer = float(cox_penalizer)
        if tte_draw not in TTE_DRAWS:
            raise GeneratorError(f"tte_draw must be one of {', '.join(TTE_DRAWS)}, got {tte_draw!r}")
        if tte_draw == "model" and tte_space != "prognostic":
            raise GeneratorError('tte_draw="model" needs tte_space="prognostic" (the Cox model it draws from)')
        self.tte_draw = tte_draw
        if fill not in FILLS:
            raise GeneratorError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        self.fill = fill
        if mean_model not in ("auto", *CANDIDATES):
            raise GeneratorError(f"mean_model must be 'auto' or one of {', '.join(CANDIDATES)}, "
                                 f"got {mean_model!r}")
        self.mean_model = mean_model
        self.structure = _checked_structure(structure)
        if rounding not in ROUNDINGS:
            raise GeneratorError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.rounding = rounding
        self.balance = bool(balance)
        self.tte_rescale = bool(tte_rescale)
        self.truncate_at_followup = bool(truncate_at_followup)
        if ae_donors not in ("auto", "neighbours", "arm"):
            raise GeneratorError(f"ae_donors must be 'auto', 'neighbours' or 'arm', got {ae_donors!r}")
        self.ae_donors = ae_donors
        self.chunk_size = int(chunk_size)
        self._ae_pools: dict[str, dict] = {}
        self._retriever_factory = retriever_factory
        self._kb: Trial | None = None
        self._models: dict[str, _ArmModel] = {}
        self._neighbour_cache: dict = {}     # `residuals._neighbours`
        self._lock = threading.Lock()

    def get_params(self) -> dict:
        params = super().get_params()
        params.pop("retriever_factory", None)
        return params

    @property
    def retriever(self):
        _ = self.knowledge_base  # raises when not fitted
        return self._retriever

    def arm_model(self, arm: str) -> _ArmModel:
        """The model of one target arm (fitted on first use, then cached; thread-safe)."""
        with self._lock:
            if arm not in self._models:
                self.check_target_arm(arm)
                t0 = time.perf_counter()
                with threadpool_limits(1):   # tiny matrices: threads only add overhead
                    model = self._fit_arm(arm)
                    model.lam = self._fit_lambda(model)
                vv = self.knowledge_base.visit_values        # what the arm's twins learn from
                model.notes += outlying_values(vv[vv["ARM"] == arm])
                self._models[arm] = model
                self._fit_seconds += time.perf_counter() - t0
            return self._models[arm]

    def ae_pool(self, arm: str) -> dict:
        """Where the AE twins of `arm` take their donors (`adverse_events.choose_donor_pool`:
        cross-validated once per arm unless `ae_donors` fixes it)."""
        if self.ae_donors != "auto":
            return {"pool": self.ae_donors, "reason": "set by ae_donors"}
        with self._lock:
            if arm not in self._ae_pools:
                self._ae_pools[arm] = choose_donor_pool(self.knowledge_base, arm, self.retriever,
                                                        self.neighbors)
            return self._ae_pools[arm]

    def _fit(self, knowledge_base: Trial, retriever) -> None:
        """Only the retriever: the model of a target arm is fitted on first use (`arm_model`)."""
        self._models = {}
        self._ae_pools = {}
        self._neighbour_cache = {}
        factory = self._retriever_factory or default_retriever_factory
        self._retriever = retriever if retriever is not None else factory(knowledge_base)

    def _generate(self, src: Trial, target_arm: str, k: int, seed: int, manifest: dict,
                  progress: ProgressFn | None, cancel: CancelLike) -> TwinRun:
        kb = self.knowledge_base
        model = self.arm_model(target_arm)
        k_ret = max(self.neighbors, k, self.tte_neighbors if model.tte else 0)
        manifest["retriever"] = retriever_manifest(self.retriever, k_ret)
        manifest["notes"] = list(model.notes)
        arm_size = int((kb.subjects["ARM"] == target_arm).sum())
        asked = max(self.neighbors, self.tte_neighbors if model.tte else 0)
        if asked >= arm_size - 1:
            # the setting is recorded as given; what it could give is said (an outside review
            # read neighbors 100000 in a manifest whose arm had 28 patients)
            manifest["notes"].append(f"neighbours asked: {asked}; the target arm has {arm_size} patients, so a "
                                     "twin's neighbourhood is the whole arm (its own source left out)")
        manifest["model_details"] = {
            "outcomes": len(model.outcomes), "features": len(model.features.columns),
            "cv_folds": int(model.b0.shape[0] - 1),
            "transforms": {p: t for p, t in model.transforms.items() if t != "identity"},
            "center_lambda": {} if model.lam is None else {
                o.paramcd: round(float(v), 3) for o, v in zip(model.outcomes, model.lam)},
            "tte_primary": model.tte_primary or None,
            "mean_models": dict(model.mean_models),
            "structure": fitted_structure(model)}
        manifest["twins_balanced"] = self.balances(k)

        ids = list(src.subjects["USUBJID"])
        total = len(ids)
        missing_base = [p for p in dict.fromkeys(o.paramcd for o in model.outcomes)
                        if p not in src.baseline.columns or src.baseline[p].isna().any()]
        for p in missing_base:
            n_miss = int(src.baseline[p].isna().sum()) if p in src.baseline.columns else total
            manifest["notes"].append(f"{n_miss} source(s) have no baseline {p}: their twins use the "
                                     f"arm's typical baseline for it")
        if len(model.ids) == 0:
            raise GeneratorError(f"the target arm '{target_arm}' has no patients in the knowledge base")

        pieces = []
        done = 0
        cancelled = False
        t_gen = time.perf_counter()
        for start in range(0, total, self.chunk_size):
            if is_cancelled(cancel):
                cancelled = True
                break
            chunk = ids[start:start + self.chunk_size]
            with threadpool_limits(1):
                pieces.append(self._generate_chunk(src, chunk, model, k, seed, k_ret, manifest))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        gen_seconds = time.perf_counter() - t_gen
        done_ids = ids[:done]

        labels = manifest["trial"]["labels"]
        failed = {(f["source"], f["twin_index"]) for f in manifest["failures"]}
        generated: dict[str, list[pd.DataFrame]] = {}
        for piece in pieces:
            for name, frame in piece["bds"].items():
                generated.setdefault(name, []).append(frame)
        adsl, bds, ok_ids = assemble_run(src, kb, done_ids, k, target_arm, generated, failed, labels)
        tte = None
        if kb.tte is not None:
            tte_parts = [piece["tte"] for piece in pieces if piece["tte"] is not None]
            tte = pd.concat(tte_parts, ignore_index=True) if tte_parts else pd.DataFrame(columns=TTE_COLUMNS)
            tte["PARAM"] = tte["PARAMCD"].map(labels).fillna(tte["PARAMCD"])
            tte = tte[TTE_COLUMNS]
            if self.truncate_at_followup:
                bds, dropped = truncate_at_followup(bds, tte)
                manifest["notes"].append(
                    f"{dropped} generated records after their twin's end of follow-up (death, transplant "
                    "or censoring in the twin's event history) were left out, as real patients have none")

        pool = self.ae_pool(target_arm) if has_ae(kb) else None
        ae = adverse_event_twins(kb, adsl, bds, tte, manifest, seed, pool)   # None without ADAE

        manifest["cancelled"] = cancelled
        if cancelled:
            manifest["notes"].append(f"cancelled after {done} of {total} sources; their twins are kept")
        extra = {} if ae is None else {"ae_records": len(ae)}
        manifest["counts"] = run_counts(ok_ids, total, adsl, bds, tte, manifest["failures"], **extra)
        manifest["timings"] = {"generate_s": round(gen_seconds, 4),
                               "twins_per_s": round(len(adsl) / gen_seconds, 1) if gen_seconds > 0 else None}
        return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest, ae=ae)


def _checked_structure(structure: dict | None) -> dict | None:
    """`structure` = {PARAMCD: {"scale", "mean_model", "baseline_scale", "own_baseline"}} (any of
    them): per parameter the outcome scale and mean model (given together) and the scale of its
    baseline feature to refit instead of choosing them on the data; `own_baseline` "raw" when a
    raw-scale ANCOVA or carry-forward of a log-modelled parameter reads the raw baseline (absent,
    as in manifests before it, they read the modelled one). `held_structure` reads the ones a
    run's fit chose, for refits on bootstrap knowledge bases: duplicated patients make the
    cross-validated choice itself unstable in a way real knowledge bases are not (epilepsy: half
    knowledge bases chose `carry` 30 times of 30, their bootstrap copies 122 of 150). It holds
    for every arm fitted; a mean model that does not apply to a knowledge base (`borrow`
    without other arms) is replaced by ridge, with a note in the manifest."""
    if structure is None:
        return None
    if not isinstance(structure, dict):
        raise GeneratorError(f"structure must be a mapping PARAMCD -> {{scale, mean_model, baseline_scale}}, "
                             f"got {type(structure).__name__}")
    out = {}
    for p, s in structure.items():
        if not isinstance(s, dict):
            raise GeneratorError(f"structure of {p}: a mapping with scale, mean_model, baseline_scale, got {s!r}")
        bad = (set(s) - {"scale", "mean_model", "baseline_scale", "own_baseline"}
               or s.get("own_baseline", "raw") not in ("raw", "model")
               or ("mean_model" in s) != ("scale" in s)
               or any(s[k] not in SCALES for k in ("scale", "baseline_scale") if k in s)
               or ("mean_model" in s and s["mean_model"] not in CANDIDATES)
               or (s.get("mean_model") == "carry" and s.get("baseline_scale", s["scale"]) != s["scale"]
                   and not (s["scale"] == "identity" and s.get("own_baseline") == "raw")))
        if bad:
            raise GeneratorError(f"structure of {p}: scale and mean_model together (scale and "
                                 f"baseline_scale in {', '.join(SCALES)}, mean_model in "
                                 f"{', '.join(CANDIDATES)}; carry on its baseline's scale), got {s!r}")
        out[str(p)] = s
    return out


def fitted_structure(model: _ArmModel) -> dict:
    """The structure an arm model's fit chose (for `structure`): every parameter's baseline
    scale, and for the modelled parameters their outcome scale and mean model."""
    out = {p: {"baseline_scale": t} for p, t in model.features.transforms.items()}
    for p, m in model.mean_models.items():
        out.setdefault(p, {}).update(scale=model.transforms.get(p, "identity"), mean_model=m)
        if p in model.raw_own:
            out[p]["own_baseline"] = "raw"
    return out


def held_structure(manifest: dict) -> dict | None:
    """The `structure` setting that refits what a local run's fit chose (its manifest's
    `model_details.structure`); None for a run without one."""
    return ((manifest or {}).get("model_details") or {}).get("structure")
