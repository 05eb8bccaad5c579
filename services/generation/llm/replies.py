"""The run's frames from the model's validated replies (the shared `assemble_run` builds the
ADSL and BDS frames as for every generator); failed or cancelled twins are left out, failures
listed in the manifest with their reasons.

Hybrid mode falls back to the local generator where a reply is implausible: a value more
than `fallback_sd` standard deviations of the local draws away from their mean (the local
model's predictive spread for this patient and visit) is replaced by the twin's own local
draw (draw t of twin t), so a confused model cannot make the twins worse than local alone.
Values outside the plausible range never get here (validation rejects the reply).

With a calibration `weight` w (`calibration`), a twin's value is its own local draw plus
w x (model value - local mean): w = 0 keeps the local draws, w = 1 moves them to the model's
forecast; an implausible value counts as the local mean (so it falls back to the draw)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.assembly import assemble_run, run_counts
from services.generation.llm.adverse import model_ae_frame
from services.generation.llm.prompting import TrialFacts
from services.generation.run import TTE_COLUMNS, TwinRun, twin_id

_GENERATED = ["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "ADY", "AVISITN", "AVISIT", "_TW"]


def own_draw(draws: np.ndarray, t: int) -> float:
    """Twin t's own local draw (draw t, cycling when there are fewer draws than twins)."""
    return float(draws[(t - 1) % len(draws)])


def assemble_replies(src: Trial, facts: TrialFacts, ids: list[str], k: int, target_arm: str,
                     results: list, owners: list[tuple[str, int]], visits: dict[str, list],
                     manifest: dict, fallback: dict[tuple[str, str, float], np.ndarray] | None = None,
                     fallback_sd: float | None = None, weight: float | None = None,
                     own: dict[tuple[str, str, float], np.ndarray] | None = None,
                     ae_from_replies: bool = False) -> TwinRun:
    """The contract's frames of the twins whose reply is valid (`results[i]` belongs to
    `owners[i]` = (source, twin index)); fills the manifest's `failures`, `cancelled`,
    `notes` and `counts`. Integer-valued parameters and event times stay whole numbers.
    `fallback` (hybrid): the local draws per (source, PARAMCD, avisitn), see the module
    docstring; the manifest's `llm.fallback` counts the values replaced. `weight`: the
    calibration weight of the model's values (None: the model's values as written); `own`:
    the local twins of the run's seed and K, twin t's own draw (default: draw t of
    `fallback`). `ae_from_replies`: the twins' ADAE are the replies' adverse events
    (`adverse.model_ae_frame`)."""
    kb = facts.kb
    labels = manifest["trial"]["labels"]
    ok: dict[tuple[str, int], Any] = {}
    cancelled = 0
    for (s, t), res in zip(owners, results):
        if res.ok and res.reply is not None:
            ok[(s, t)] = res.reply
        elif res.reason == "cancelled":
            cancelled += 1
        else:
            manifest["failures"].append({
                "source": s, "twin_index": t, "reason": res.reason or "error",
                "errors": [str(e)[:500] for e in res.errors][:5],
                "attempts": res.attempts})
    # the sources with at least one twin, in cohort order (their _SRC in every frame)
    done_ids = [s for s in ids if any((s, t) in ok for t in range(1, k + 1))]
    order = {s: i for i, s in enumerate(done_ids)}
    failed = {(s, t) for s in done_ids for t in range(1, k + 1) if (s, t) not in ok}

    visit_info = {(p, float(v.avisitn)): v for p, vs in visits.items() for v in vs}
    rows: dict[str, list[tuple]] = {}
    tte_rows: list[tuple] = []
    checked = replaced = 0
    replaced_twins: set[tuple[str, int]] = set()
    limits: dict[tuple[str, str, float], tuple[float, float]] = {}
    ranges: dict[str, dict] = {}
    in_kb = set(kb.subjects["USUBJID"].astype(str))
    if fallback and fallback_sd is not None:
        for key, draws in fallback.items():
            if len(draws) >= 2 and np.isfinite(draws).all():
                sd = float(np.std(draws, ddof=1))
                if sd > 0:
                    limits[key] = (float(np.mean(draws)), fallback_sd * sd)
    for (s, t), reply in ok.items():
        tid = twin_id(s, t)
        for vv in reply.visits:
            v = visit_info.get((vv.paramcd, float(vv.avisitn)))
            if v is None:
                continue
            aval = float(vv.aval)
            key = (s, vv.paramcd, float(vv.avisitn))
            if key in limits:
                checked += 1
                mean, width = limits[key]
                if abs(aval - mean) > width:
                    aval = mean if weight is not None else own_draw((own or fallback).get(
                        key, fallback[key]), t)
                    replaced += 1
                    replaced_twins.add((s, t))
            if weight is not None and fallback and key in fallback:
                draws = fallback[key]
                aval = (own_draw((own or fallback).get(key, draws), t)
                        + weight * (aval - float(np.mean(draws))))
                if weight > 0:  # the moved draw stays on the scale the replies must respect
                    lo, hi = ranges.setdefault(s, facts.plausible_ranges(
                        target_arm, s if s in in_kb else None)).get(vv.paramcd, (None, None))
                    aval = min(max(aval, -math.inf if lo is None else lo),
                               math.inf if hi is None else hi)
            if facts.integer.get(vv.paramcd):
                aval = float(round(aval))
            ds = kb.parameters[vv.paramcd].dataset
            rows.setdefault(ds, []).append(
                (tid, s, vv.paramcd, aval, float(v.ady), float(v.avisitn), v.avisit, t))
        for ev in reply.events:
            aval = float(ev.aval)
            if facts.tte_integer:
                aval = float(max(1.0, math.ceil(aval - 1e-9)))
            tte_rows.append((tid, s, ev.paramcd, aval, int(ev.cnsr), order[s], t))
    generated = {name: [pd.DataFrame(rs, columns=_GENERATED)] for name, rs in rows.items()}
    adsl, bds, _ = assemble_run(src, kb, done_ids, k, target_arm, generated, failed, labels)

    tte = None
    if kb.tte is not None:
        tte = pd.DataFrame(tte_rows, columns=["USUBJID", "SRCSUBJID", "PARAMCD", "AVAL", "CNSR",
                                              "_SRC", "_TW"])
        qorder = {q: i for i, q in enumerate(kb.tte_parameters)}
        tte["_Q"] = tte["PARAMCD"].map(qorder)
        tte = tte.sort_values(["_SRC", "_TW", "_Q"], kind="stable")
        tte["PARAM"] = tte["PARAMCD"].map(labels).fillna(tte["PARAMCD"])
        tte = tte[TTE_COLUMNS].reset_index(drop=True)
        tte["CNSR"] = tte["CNSR"].astype(int)

    if fallback_sd is not None and fallback is not None:
        manifest["llm"]["fallback"] = {
            "rule": f"|value - local mean| > {fallback_sd:g} SD of the local draws: the twin's "
                    "local draw", "values_checked": checked, "values_replaced": replaced,
            "twins_with_replacements": len(replaced_twins)}
        if replaced:
            manifest["notes"].append(
                f"hybrid fallback: {replaced} of {checked} values from the model were implausible "
                f"(> {fallback_sd:g} SD from the local forecast) and were replaced by the local "
                f"generator's draw ({len(replaced_twins)} twins)")
    manifest["cancelled"] = cancelled > 0
    if cancelled:
        manifest["notes"].append(f"cancelled: {cancelled} of {len(owners)} twins were not "
                                 "written; the finished twins are kept")
    manifest["counts"] = run_counts(done_ids, len(ids), adsl, bds, tte, manifest["failures"],
                                    twins_requested=len(owners), cancelled_twins=cancelled)
    ae = None
    if ae_from_replies and facts.ae is not None:
        from services.generation.local.adverse_events import twin_followup_end

        listed = [(twin_id(s, t), s, [(a.term, a.day) for a in ok[(s, t)].adverse_events or []])
                  for s in done_ids for t in range(1, k + 1) if (s, t) in ok]
        ae, dropped = model_ae_frame(facts.ae, listed, twin_followup_end(adsl, bds, tte),
                                     target_arm)
        manifest["ae"] = {"source": "model", "records": len(ae),
                          "dropped_after_followup": int(dropped),
                          "twins_with_ae": int(ae["USUBJID"].nunique()),
                          "terms": int(ae["AEDECOD"].nunique())}
        manifest["notes"].append(
            f"adverse events: listed by the model from the trial's terms ({len(ae)} records); "
            f"{dropped} after their twin's end of follow-up were left out; severity and "
            "seriousness are each term's most frequent values in the target arm")
    return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest, ae=ae)
