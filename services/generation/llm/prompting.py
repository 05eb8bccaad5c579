"""The prompt of each twin, assembled from the knowledge base and the sources.

:class:`TrialFacts` holds what the model is told about the knowledge base (fitted once): the
visits generated under an arm, the data dictionary with observed ranges, the plausible ranges
a reply must respect, the time-to-event outcomes, the covariates that may be shown, and each
neighbour's block (baseline, trajectory, events). Ranges can leave one subject out in O(1)
(:class:`Extremes`), so a source in the knowledge base never sees its own values.
:func:`local_reference` is the hybrid mode's forecast; :func:`build_requests` makes one
:class:`TwinRequest` per (source, twin index).
"""

from __future__ import annotations

import hashlib
import math
import threading
from typing import Any

import numpy as np
import pandas as pd

from services.data.adverse import has_ae
from services.data.trial import Trial
from services.generation.llm.adverse import AEFacts
from services.generation.llm.prompt import PrivacyError, TwinRequest, check_no_dates, widen_range
from services.generation.run import twin_id


def is_date_like(value: Any) -> bool:
    try:
        check_no_dates(value)
    except PrivacyError:
        return True
    return False


def twin_seed(seed: int, key: str, index: int) -> int:
    """Seed of one twin's call: a function of (run seed, pseudonym, twin index) only."""
    digest = hashlib.blake2b(f"{int(seed)}|{key}|{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2_147_483_647


class Extremes:
    """Smallest and largest value of a quantity with the subjects they come from, so that the
    range *without* one subject is available in O(1) (the two lowest / highest distinct
    subjects are kept)."""

    def __init__(self, values: np.ndarray, owners: np.ndarray):
        ok = np.isfinite(values)
        values, owners = values[ok], owners[ok]
        self.low: list[tuple[float, str]] = []
        self.high: list[tuple[float, str]] = []
        if len(values):
            order = np.argsort(values, kind="stable")
            self.low = self._two(values[order], owners[order])
            self.high = self._two(values[order[::-1]], owners[order[::-1]])

    @staticmethod
    def _two(values, owners) -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        for v, o in zip(values, owners):
            if not out or o != out[0][1]:
                out.append((float(v), str(o)))
            if len(out) == 2:
                break
        return out

    def range(self, without: str | None = None) -> tuple[float | None, float | None]:
        def pick(side):
            for v, o in side:
                if o != without:
                    return v
            return None
        return pick(self.low), pick(self.high)


def round6(x: float) -> float:
    return float(f"{x:.6g}")


class TrialFacts:
    """What the prompts say about the knowledge base `kb` (see the module docstring); a visit
    is generated under an arm when at least `min_visit_subjects` patients of that arm have a
    value there (as the local generator)."""

    def __init__(self, kb: Trial, min_visit_subjects: int):
        self.kb = kb
        self.min_visit_subjects = int(min_visit_subjects)
        self._lock = threading.Lock()
        self._visits: dict[str, dict[str, list]] = {}

        # observed values per parameter (baseline + scheduled visits), with their owners
        base = kb.baseline_long
        vv = kb.visit_values
        self.extremes: dict[str, Extremes] = {}
        self.integer: dict[str, bool] = {}
        for p in kb.parameters:
            vals = np.concatenate([base.loc[base["PARAMCD"] == p, "AVAL"].to_numpy(float),
                                   vv.loc[vv["PARAMCD"] == p, "AVAL"].to_numpy(float)])
            owners = np.concatenate([base.loc[base["PARAMCD"] == p, "USUBJID"].to_numpy(object),
                                     vv.loc[vv["PARAMCD"] == p, "USUBJID"].to_numpy(object)])
            self.extremes[p] = Extremes(vals, owners)
            fin = vals[np.isfinite(vals)]
            self.integer[p] = bool(len(fin)) and bool(np.all(np.abs(fin - np.round(fin)) < 1e-9))
        self.tte_extremes: dict[str, Extremes] = {}
        self.tte_labels = {q: kb.tte_label(q) for q in kb.tte_parameters}
        self.tte_integer = True
        if kb.tte is not None:
            for q in kb.tte_parameters:
                g = kb.tte[kb.tte["PARAMCD"] == q]
                self.tte_extremes[q] = Extremes(g["AVAL"].to_numpy(float),
                                                g["USUBJID"].to_numpy(object))
            t = kb.tte["AVAL"].to_numpy(float)
            t = t[np.isfinite(t)]
            self.tte_integer = bool(np.all(np.abs(t - np.round(t)) < 1e-9))

        # adverse events: the terms and histories the prompts may show (None without ADAE)
        self.ae = AEFacts(kb) if has_ae(kb) else None

        # covariates that may be shown to the model (no identifiers, no dates)
        subj = kb.subjects
        ids = set(subj["USUBJID"].astype(str))
        self.covariates: list[str] = []
        self.skipped_covariates: dict[str, str] = {}
        for c, kind in kb.covariates.items():
            if c not in subj.columns:
                continue
            col = subj[c].dropna()
            text = col.astype(str)
            if kind == "categorical" and len(col) >= 20 and text.nunique() > 0.9 * len(col):
                self.skipped_covariates[c] = "almost one value per patient (an identifier?)"
            elif text.isin(ids).any():
                self.skipped_covariates[c] = "contains subject identifiers"
            elif kind == "categorical" and any(is_date_like(v) for v in text.unique()[:500]):
                self.skipped_covariates[c] = "contains calendar dates"
            else:
                self.covariates.append(c)

    def visits(self, target_arm: str) -> dict[str, list]:
        """Scheduled post-baseline visits generated under `target_arm`: {PARAMCD: [Visit]},
        the visits where at least `min_visit_subjects` target-arm patients have a value."""
        kb = self.kb
        with self._lock:
            if target_arm not in self._visits:
                vv = kb.visit_values[kb.visit_values["ARM"] == target_arm]
                out = {}
                for p in kb.longitudinal_parameters:
                    counts = vv[vv["PARAMCD"] == p].groupby("AVISITN")["USUBJID"].nunique()
                    keep = [v for v in kb.schedule(p)
                            if int(counts.get(v.avisitn, 0)) >= self.min_visit_subjects]
                    if keep:
                        out[p] = keep
                self._visits[target_arm] = out
            return self._visits[target_arm]

    def data_dictionary(self, target_arm: str, without: str | None = None) -> list[dict]:
        """The data dictionary of the prompt: `[{paramcd, label, unit, min, max, visits}]`
        (observed range over the knowledge base, without the subject `without`)."""
        kb = self.kb
        out = []
        for p, visits in self.visits(target_arm).items():
            info = kb.parameters[p]
            lo, hi = self.extremes[p].range(without)
            entry = {"paramcd": p, "label": info.label, "unit": info.unit or None,
                     "min": None if lo is None else round6(lo),
                     "max": None if hi is None else round6(hi),
                     "visits": [{"avisitn": v.avisitn, "avisit": v.avisit,
                                 "ady": None if not math.isfinite(v.ady) else round(v.ady)}
                                for v in visits]}
            out.append(entry)
        return out

    def plausible_ranges(self, target_arm: str, without: str | None = None) -> dict[str, tuple]:
        """{PARAMCD: (lo, hi)} a reply must respect: the observed range (without `without`)
        widened by half its span each side, never below 0 for non-negative quantities."""
        out = {}
        for p in self.visits(target_arm):
            lo, hi = widen_range(*self.extremes[p].range(without))
            if lo is not None and hi is not None:
                out[p] = (round6(lo), round6(hi))
        return out

    def tte_spec(self, without: str | None = None) -> list[dict]:
        """Time-to-event outcomes of the prompt: `[{paramcd, label, max_days}]`."""
        out = []
        for q, ext in self.tte_extremes.items():
            _, hi = ext.range(without)
            out.append({"paramcd": q, "label": self.tte_labels.get(q, q),
                        "max_days": None if hi is None else round6(hi)})
        return out

    def trial_info(self, target_arm: str) -> dict:
        kb = self.kb
        info = {"title": kb.title, "indication": kb.meta.indication,
                "target_arm_description": kb.meta.arm_descriptions.get(target_arm, "")}
        return {k: v for k, v in info.items() if v and not is_date_like(str(v))}

    def neighbour_blocks(self, nids: set[str], visits: dict[str, list]) -> dict[str, dict]:
        """Prompt block of each neighbour (without its key): covariates, baseline values,
        trajectory at the generated visits, time-to-event outcomes."""
        kb = self.kb
        if not nids:
            return {}
        order = [u for u in kb.subjects["USUBJID"].astype(str) if u in nids]
        sub = kb.subjects.set_index("USUBJID").loc[order]
        base = kb.baseline.reindex(index=order)
        vv = kb.visit_values
        vv = vv[vv["USUBJID"].isin(nids)]
        wanted = {(p, float(v.avisitn)) for p, vs in visits.items() for v in vs}
        traj: dict[str, dict[str, list]] = {u: {} for u in order}
        for u, p, a, val in zip(vv["USUBJID"], vv["PARAMCD"], vv["AVISITN"], vv["AVAL"]):
            if (p, float(a)) in wanted and pd.notna(val):
                traj[u].setdefault(p, []).append([float(a), round6(float(val))])
        events: dict[str, dict] = {u: {} for u in order}
        if kb.tte is not None:
            tt = kb.tte[kb.tte["USUBJID"].isin(nids)]
            for u, q, a, c in zip(tt["USUBJID"], tt["PARAMCD"], tt["AVAL"], tt["CNSR"]):
                if pd.notna(a):
                    events[u][q] = [round6(float(a)), int(c)]
        out = {}
        for u in order:
            covs = {}
            for c in self.covariates:
                v = sub.at[u, c] if c in sub.columns else None
                if v is None or pd.isna(v) or (isinstance(v, str) and is_date_like(v)):
                    continue
                covs[c] = v
            bl = {p: round6(float(base.at[u, p])) for p in base.columns if pd.notna(base.at[u, p])}
            tr = {p: sorted(v) for p, v in traj[u].items()}
            out[u] = {"covariates": covs, "baseline": bl, "trajectory": tr, "events": events[u]}
            if self.ae is not None:
                out[u]["adverse_events"] = self.ae.history.get(u, [])
        return out


def local_samples(run) -> dict[tuple[str, str, float], np.ndarray]:
    """{(source, PARAMCD, avisitn): the values of a local run's twins in twin order}."""
    vals = run.values()
    if vals.empty:
        return {}
    # the run's records are in twin order within a (source, parameter, visit)
    return {(str(s), str(p), float(a)): g.to_numpy(float) for (s, p, a), g in
            vals.dropna(subset=["AVISITN"]).groupby(["SRCSUBJID", "PARAMCD", "AVISITN"],
                                                    sort=False)["AVAL"]}


def local_reference(local, src: Trial, target_arm: str, draws: int, seed: int, cancel
                    ) -> tuple[dict, dict[tuple[str, str, float], np.ndarray]]:
    """The hybrid mode's forecast from the fitted local generator `local`: `draws` twins per
    source. Returns ({source: {PARAMCD: [[avisitn, mean], ...]}}, the prompt's reference) and
    {(source, PARAMCD, avisitn): the draws' values in twin order} (their mean and SD judge the
    replies, see `replies.assemble_replies`)."""
    ref_run = local.generate(src, target_arm, twins_per_patient=draws, seed=seed, cancel=cancel)
    vals = ref_run.values()
    if vals.empty:
        return {}, {}
    means = vals.groupby(["SRCSUBJID", "PARAMCD", "AVISITN"], sort=False)["AVAL"].mean()
    out: dict[str, dict[str, list]] = {}
    for (s, p, a), m in means.items():
        if pd.notna(m) and pd.notna(a):
            out.setdefault(str(s), {}).setdefault(p, []).append([float(a), round6(float(m))])
    for per in out.values():
        for p in per:
            per[p].sort()
    return out, local_samples(ref_run)


def local_twins(local, src: Trial, target_arm: str, k: int, seed: int, cancel
                ) -> tuple[dict[tuple[str, str, float], np.ndarray], dict]:
    """The values of the local twins of the same seed and K (`local_samples`): the draws a
    hybrid twin falls back to, so that where the model gets no weight its twins are exactly
    those of `local` (balanced residuals make twin t depend on K, so the reference's draws
    would not be); and that run's manifest (its donors give hybrid twins their AEs)."""
    run = local.generate(src, target_arm, twins_per_patient=k, seed=seed, cancel=cancel)
    return local_samples(run), run.manifest


def build_requests(facts: TrialFacts, src: Trial, ids: list[str], keys: dict[str, str], k: int,
                   target_arm: str, seed: int, neigh: dict[str, list], blocks: dict[str, dict],
                   reference: dict, manifest: dict, ask_ae: bool = False
                   ) -> tuple[list[TwinRequest], list[tuple[str, int]]]:
    """One request per (source, twin index), in source order then twin index, and its owner
    (source, twin index). A source of the knowledge base is left out of the ranges shown to
    it. With `ask_ae` (and AE data) the model lists each twin's adverse events. Fills
    `manifest["neighbours"]` (real neighbours of each twin) and `manifest["neighbour_similarity"]`."""
    kb = facts.kb
    trial_info = facts.trial_info(target_arm)
    baseline = src.baseline
    subj = src.subjects.set_index("USUBJID")
    in_kb = set(kb.subjects["USUBJID"].astype(str))
    requests: list[TwinRequest] = []
    owners: list[tuple[str, int]] = []
    for s in ids:
        without = s if s in in_kb else None
        dd = facts.data_dictionary(target_arm, without)
        ranges = facts.plausible_ranges(target_arm, without)
        tte = facts.tte_spec(without)
        covs = {}
        for c in facts.covariates:
            v = subj.at[s, c] if c in subj.columns else None
            if v is None or (isinstance(v, float) and not math.isfinite(v)) or pd.isna(v):
                continue
            if isinstance(v, str) and is_date_like(v):
                continue
            covs[c] = v
        values = {p: round6(float(baseline.at[s, p])) for p in kb.parameters
                  if p in baseline.columns and pd.notna(baseline.at[s, p])}
        aes = (facts.ae.spec(target_arm, [str(h.usubjid) for h in neigh[s]], without)
               if ask_ae and facts.ae is not None else None)
        nbs = []
        for j, h in enumerate(neigh[s]):
            block = dict(blocks[str(h.usubjid)])
            if aes is None:
                block.pop("adverse_events", None)
            nbs.append({"key": f"N{j + 1}", "similarity": round(float(h.similarity), 3),
                        **block})
        for t in range(1, k + 1):
            requests.append(TwinRequest(
                source_key=keys[s], twin_index=t, target_arm=target_arm, trial=trial_info,
                data_dictionary=dd, plausible_ranges=ranges,
                baseline={"covariates": covs, "values": values}, neighbours=nbs, tte=tte,
                reference_forecast=reference.get(s), adverse_events=aes,
                seed=twin_seed(seed, keys[s], t)))
            owners.append((s, t))
            manifest["neighbours"][twin_id(s, t)] = [str(h.usubjid) for h in neigh[s]]
    manifest["neighbour_similarity"] = {
        s: [round(float(h.similarity), 4) for h in neigh[s]] for s in ids}
    return requests, owners
