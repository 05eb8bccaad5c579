"""A self-contained HTML report of a twin arm: opens offline (Plotly's JavaScript is inlined,
no network request), for clinical stakeholders and statisticians.

Sections: trial and cohort; method; validation card; trajectories, survival and embedding
figures; fidelity, privacy and utility tables; PROCOVA sample size; limitations.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

import pandas as pd
import plotly.io as pio

from services import __version__
from services.data.cohort import CohortError, CohortSpec
from services.data.trial import Trial
from services.evaluation import comparison as ev
from services.evaluation import patient_space as ps
from services.evaluation.backtest_verdicts import backtest_setup
from services.evaluation.effects_table import effect_methods, effects_display, generator_term_cell
from services.evaluation.survival_comparison import km_curves
from services.evaluation.trajectories import suggested_scale, trajectory_summary
from services.reporting.figures import compare as figs
from services.reporting.safety_section import safety_backtest_section, safety_section
from services.reporting.tables import (
    IN_SAMPLE_PRIVACY_NOTE,
    INFORMATION_NOTE,
    code_labels,
    table_for_display,
    validation_card_table,
)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff}
h1{color:#1f6f8b;margin-bottom:4px}h2{border-bottom:2px solid #1f6f8b;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#eef3f6}.ok{color:#1a7f37}.bad{color:#b35900}
.muted{color:#57606a;font-size:13px}.card{border-left:4px solid #1f6f8b;padding:4px 12px;margin:8px 0;background:#f6f8fa}
figure{margin:0 0 8px}figcaption{color:#57606a;font-size:13px;margin:6px 0 20px}
"""


def _table(frame: pd.DataFrame, digits: int = 3, codes: dict[str, dict] | None = None) -> str:
    """The frame as the app's tables show it (`tables.table_for_display`: every column, labelled,
    codes spelled out), as HTML."""
    if frame is None or len(frame) == 0:
        return '<p class="muted">None.</p>'
    shown = table_for_display(frame, codes=codes, digits=digits).astype(object)
    return shown.where(shown.notna(), "").to_html(index=False, escape=True, border=0)


def _kv(rows: dict) -> str:
    return _table(pd.DataFrame({"item": list(rows), "value": [str(v) for v in rows.values()]}))


class _Figures:
    """Plotly figures as HTML divs; the library is inlined once, in the first figure."""

    def __init__(self):
        self.first = True

    def __call__(self, figure, caption: str) -> str:
        div = pio.to_html(figure, full_html=False, include_plotlyjs=bool(self.first),
                          include_mathjax=False, config={"displaylogo": False, "responsive": True})
        self.first = False
        return f"<figure>{div}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _effects_section(effects: dict | None, units: dict[str, str] | None = None) -> str:
    """The treatment effect against the twins, as on Compare's Effect tab."""
    out = ["<h2>Treatment effect against the twins</h2>"]
    if not effects:
        return out[0] + '<p class="muted">Not computed.</p>'
    if effects.get("note"):
        out.append(f'<p class="muted">{html.escape(effects["note"])}</p>')
    rows = effects.get("effects") or []
    if rows:
        frame = effects_display(rows, units)
        out.append(_table(frame[[c for c in frame.columns if not c.startswith("_")]]))
        out.append(f'<p class="muted">{effects["n_patients"]} real source patients against their twins; the '
                   f"patient is the unit; {effects.get('refits', 0)} generator refits carry the generator's "
                   "own uncertainty (the doubly robust difference has none: see its method).</p>")
        out.append("<ul>" + "".join(f'<li class="muted">{html.escape(m)}: {html.escape(how)}.</li>'
                                    for m, how in effect_methods(rows).items()) + "</ul>")
    return "\n".join(out)


def run_cohort(manifest: dict, n_sources: int, source_arm: str) -> str:
    """The cohort the run was generated for, as its manifest recorded it (the app's cohort label),
    never the cohort chosen on the screen since (a review downloaded a report of a run made for
    130 patients that named a 37-patient cohort chosen after it)."""
    cohort = manifest.get("cohort") or {}
    label = cohort.get("label")      # What-if's choice, with its count
    text = label or f"{n_sources} patients of {source_arm}"
    if cohort.get("spec"):           # its criteria: a name alone would let a misleading one pass (a browser review)
        try:
            text += f" (criteria: {CohortSpec.from_dict(cohort['spec']).summary()})"
        except CohortError:
            pass
    return text


def _survival_rows(s: dict, effects: dict | None, paramcd: str) -> dict:
    """The survival section's figures. The hazard ratio against the twin arm is the Treatment
    effect table's, whose interval carries the generator's own uncertainty; the comparison's
    (patients as the unit, without it) only where no effect was estimated, and then labelled so
    (a review found two unexplained intervals for one hazard ratio here)."""
    rows = {}
    eff = next((e for e in (effects or {}).get("effects") or []
                if e.get("measure") == "hazard_ratio" and e.get("paramcd") == paramcd
                and e.get("estimate") is not None), None)
    hr = s.get("hr_source_vs_twins") or {}
    if eff is not None:
        p = "" if eff.get("p_value") is None else f", p {eff['p_value']:.3f}"
        rows["HR real source cohort vs twin arm (as in Treatment effect: patients as the unit; the generator's "
             f"uncertainty: {generator_term_cell(eff)})"] = \
            f"{eff['estimate']:.2f} (95 % CI {eff['ci_low']:.2f}-{eff['ci_high']:.2f}{p})"
    elif hr.get("hazard_ratio") is not None:
        rows["HR real source cohort vs twin arm (patients as the unit; the generator's own uncertainty NOT "
             "included)"] = f"{hr['hazard_ratio']:.2f} (95 % CI {hr['ci_low']:.2f}-{hr['ci_high']:.2f}, p {hr['p_value']:.3f})"
    hr = s.get("hr_source_vs_real_target") or {}
    if hr.get("hazard_ratio") is not None:
        rows["HR real source cohort vs real target arm"] = (
            f"{hr['hazard_ratio']:.2f} (95 % CI {hr['ci_low']:.2f}-{hr['ci_high']:.2f}, p {hr['p_value']:.3f})")
    lr = s.get("logrank_twins_vs_real_target") or {}
    if lr.get("p_value") is not None:
        rows["log-rank p, twin arm (twins weighted 1/K, variance clustered by patient) vs real target arm; a small p "
             "says they differ, a large one is not evidence of agreement"] = f"{lr['p_value']:.3f}"
    return rows


def build_report(kb: Trial, run, cohort_description: str = "", backtest=None, procova: dict | None = None,
                 embedding_method: str = "tsne", seed: int = 0, effects: dict | None = None,
                 evaluation: dict | None = None, run_dir=None, procova_inputs: dict | None = None,
                 safety_backtest=None) -> str:
    """The report as one HTML string. `backtest` (a BacktestResult of the run's own generator,
    settings and K), `procova` (services.evaluation.validation.procova) and `effects`
    (services.evaluation.effects.run_effects) and `evaluation` (comparison.evaluate of the run,
    e.g. the one kept in its folder) are computed here when not given; with the run's folder
    `run_dir`, the backtest and the embedding are those kept there (computed once per run).
    `procova_inputs`: the Validate page's planning inputs (effect, SD, power, ...), so the
    report's plan is the one on the screen; the defaults (0.4 SD) without them. `safety_backtest`:
    the Validate page's safety backtest of this run, when one was run there."""
    from services.evaluation.effects import run_effects
    from services.evaluation.validation import (
        ancova_headline,
        backtestable,
        bootstrap_card,
        cached_validate_run,
    )
    from services.evaluation.validation import procova as procova_plan

    twins = run.as_trial()
    comp = ev.compare(kb, twins, run.manifest)
    result = evaluation if evaluation is not None else ev.evaluate(kb, twins, run.manifest,
                                                                    seed=seed)
    if backtest is None and backtestable(kb):
        backtest = cached_validate_run(kb, run, run_dir, seed=seed)
    if effects is None:
        effects = run_effects(kb, run, seed=seed)
    if procova is None and backtest is not None and kb.longitudinal_parameters:
        procova = procova_plan(kb, backtest, **(procova_inputs or {}))
    if procova is None and not kb.longitudinal_parameters:
        procova = {"error": "PROCOVA adjusts a continuous endpoint; this trial has no parameter with follow-up "
                            "visits."}
    fig = _Figures()
    m = run.manifest
    parts = [f"<h1>TwinArm report: {html.escape(kb.title)}</h1>",
             (f'<p class="muted">Run {html.escape(run.run_id)} · generated '
             f'{datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} · TwinArm {__version__}</p>')]

    # trial and cohort
    parts.append("<h2>Trial and cohort</h2>")
    if kb.meta.description:
        parts.append(f"<p>{html.escape(kb.meta.description)}</p>")
    parts.append(_kv({"trial": kb.title, "indication": kb.meta.indication or "-", "source": kb.meta.source or "-",
                      "subjects": len(kb.subjects),
                      "arms": ", ".join(f"{a} ({n})" for a, n in kb.arm_counts().items()),
                      "cohort twinned": cohort_description or run_cohort(run.manifest, len(comp.source_ids),
                                                                         comp.source_arm()),
                      "twin arm": f"{run.n_twins} twins under {comp.target_arm}",
                      "knowledge base hash": kb.content_hash[:16]}))

    # method
    parts.append("<h2>Method</h2>")
    parts.append(_kv({"generator": m.get("generator"), "model": m.get("model") or "-",
                      "prompt version": m.get("prompt_version") or "-", "seed": m.get("seed"),
                      "twins per patient": m.get("twins_per_patient"),
                      "neighbours per twin": (m.get("settings") or {}).get("neighbors", "-"),
                      "retriever": json.dumps(m.get("retriever"))[:120] if m.get("retriever") else "-",
                      "failures": len(m.get("failures") or []), "created": m.get("created")}))
    parts.append('<p class="muted">Each twin keeps its source patient\'s baseline; everything after baseline is '
                 "generated under the target arm from the knowledge base's real patients of that arm, personalised "
                 "by the patients most similar to the source (retrieved from a Chroma vector index).</p>")

    # validation card
    parts.append("<h2>Validation card (backtest on the real target arm)</h2>")
    if backtest is not None:
        parts.append(f'<p>Generator <b>{html.escape(backtest.generator)}</b> with the settings of this run, '
                     f"{html.escape(backtest_setup(backtest))}.</p>")
        card = bootstrap_card(backtest, seed=seed, trial=kb)
        headline = ancova_headline(card)      # as the Validate page opens its card
        for verdict in ([headline] if headline else []) + backtest.summary.get("verdicts", []):
            parts.append(f'<div class="card">{html.escape(verdict)}</div>')
        codes = {"PARAMCD": code_labels({p: i.label for p, i in kb.parameters.items()}
                                        | {p: kb.tte_label(p) for p in kb.tte_parameters})}
        if len(card):
            parts.append(_table(validation_card_table(card, codes["PARAMCD"])))
        if len(backtest.tte):
            parts.append(_table(backtest.tte, codes=codes))
            parts.append('<p class="muted">Time to event: Kaplan-Meier sup distance of the pooled twins to the '
                         "held-out patients vs that of the knowledge base's arm (ratio ≤ 1 met), and C-index of "
                         "the twins vs a Cox model (met when ≥ Cox − 0.01).</p>")
        if len(card):
            parts.append('<p class="muted">Intervals are 95 % bootstrap intervals over patients.</p>')
        if len(card) and "gain" in card:
            parts.append(f'<p class="muted">{html.escape(INFORMATION_NOTE)}</p>')
    else:
        parts.append('<p class="muted">No parameter with follow-up visits and no time-to-event data: '
                     "nothing to backtest.</p>")

    # figures
    if comp.parameters:
        parts.append("<h2>Trajectories</h2>")
    for paramcd in comp.parameters:     # every one (the first 4 only left the others out unsaid)
        p = kb.parameters[paramcd]
        scale = suggested_scale(comp, paramcd)      # Compare's default: geometric means on a log axis if skewed
        what = "geometric mean" if scale == "log" else "mean"
        parts.append(fig(figs.mean_trajectories(trajectory_summary(comp, paramcd, scale), f"{p.label}: {what} with 95 % CI",
                                                p.unit, log=scale == "log"),
                         "Twins (over source patients, each the mean of its twins) should follow the real target "
                         "arm. The gap to the real source cohort is not an effect estimate by itself: see "
                         "Treatment effect."))
    if comp.tte_parameters:
        parts.append("<h2>Survival</h2>")
        for paramcd in comp.tte_parameters:
            curves, at_risk = km_curves(comp, paramcd)
            parts.append(fig(figs.kaplan_meier(curves, at_risk, f"Kaplan-Meier: {kb.tte_label(paramcd)}"),
                             "Kaplan-Meier curves with 95 % bands and numbers at risk; the twin arm's numbers count "
                             "patients (twins at 1/K) and its band is clustered by patient (the band, unlike the "
                             "hazard ratio below, leaves out the generator's own uncertainty)."))
            parts.append(_kv(_survival_rows(result["survival"].get(paramcd, {}), effects, paramcd)))
    parts.append(_effects_section(effects, kb.parameter_units))
    parts.append("<h2>Embedding</h2>")
    try:
        points = ps.cached_embedding_points(comp, run_dir, method=embedding_method, seed=seed)
        parts.append(fig(figs.embedding_scatter(points, f"{'t-SNE' if embedding_method == 'tsne' else 'UMAP'} of "
                                                "patient vectors", comp.arm_groups()),
                         "Twins (crosses) should mix with the real target arm rather than form an island."))
        parts.append(fig(figs.similarity_histogram(ps.similarity(comp, seed=seed), "Cosine similarity"),
                         "Real-to-twin similarities like those within real patients mean twins mirror the "
                         "population; twin-to-own-source shows personalisation."))
    except ValueError as exc:
        parts.append(f'<p class="muted">Embedding not available: {html.escape(str(exc))}</p>')

    # metrics
    parts.append("<h2>Fidelity, privacy and utility</h2>")
    head = ev.headline(result)
    parts.append(_table(head[["verdict", "group", "metric", "value", "ci_low", "ci_high", "ideal", "threshold",
                              "meaning", "detail"]]))
    parts.append(f'<p class="muted">{html.escape(IN_SAMPLE_PRIVACY_NOTE)}</p>')
    marginal = pd.DataFrame(result["fidelity"]["marginal"])
    if len(marginal):
        parts.append(fig(figs.smd_dot_plot(marginal, "Standardized mean difference, twins vs real target arm"),
                         "Inside the green band (|SMD| < 0.1) twin means are practically the real ones. Open "
                         "circles: raw SMD; filled: net of the sources' own baseline imbalance, which twins "
                         "inherit."))

    parts.append(safety_section(comp, fig))   # empty without adverse-event data
    if safety_backtest is not None:
        parts.append(safety_backtest_section(safety_backtest))

    # PROCOVA
    parts.append("<h2>PROCOVA sample size</h2>")
    if procova and "error" not in procova:
        parts.append(_kv({"endpoint": f"{procova['paramcd']} at {procova.get('visit') or procova['avisitn']}",
                          "rho (held-out twins vs observed)": f"{procova['rho']['rho']:.2f} "
                          f"(95 % CI {procova['rho']['ci_low']:.2f}-{procova['rho']['ci_high']:.2f}, n={procova['n_pairs']})",
                          "twins beyond the baseline (partial correlation)":
                              f"{procova['rho_partial']:.2f}" if "rho_partial" in procova else "-",
                          "effect / SD": f"{procova['effect']:g} / {procova['sd']:.3g} {procova['unit']}",
                          "alpha / power / allocation": f"{procova['alpha']} / {procova['power']:.0%} / {procova['ratio']:g}:1",
                          "patients without adjustment": procova["n_unadjusted"],
                          "patients with a baseline ANCOVA": procova.get("n_baseline_ancova", "-"),
                          "patients with PROCOVA": procova["n_adjusted"],
                          "saving vs the baseline ANCOVA": (
                              f"{procova['saving_vs_baseline_total']} patients "
                              f"({procova['saving_vs_baseline_pct']:.0f} %)"
                              if "saving_vs_baseline_total" in procova else "-"),
                          "saving vs unadjusted": f"{procova['saving_total']} patients ({procova['saving_pct']:.0f} %)",
                          "sizes": "noncentral t",
                          procova["rho_used_label"]: f"{procova['plan']['rho_used']:.2f} ({procova['rule']})"}))
        if procova.get("note"):
            parts.append(f'<p class="muted">{html.escape(procova["note"])}.</p>')
        parts.append('<p class="muted">' + ("Planning inputs as set on the Validate page. " if procova_inputs else
                     "The effect to detect is 0.4 SD (the default, not set on the Validate page): a moderate "
                     "effect, to be replaced by the effect the trial is powered for. ") +
                     "The saving that counts is against the baseline ANCOVA a regulator expects anyway.</p>")
        parts.append(fig(figs.sample_size_bars({"n_unadjusted": procova["n_unadjusted"],
                                                "n_adjusted": procova["n_adjusted"],
                                                "n_baseline_ancova": procova.get("n_baseline_ancova")},
                                               "Total sample size"),
                         "Variance times 1 - rho² as in the EMA-qualified PROCOVA method."))
    else:
        parts.append(f'<p class="muted">{html.escape((procova or {}).get("error", "Not computed."))}</p>')

    validated = " and ".join(filter(None, ["accuracy and calibration of the visits" if kb.longitudinal_parameters
                                           else "", "survival" if kb.tte_parameters else ""])) or "nothing"
    parts.append("<h2>Limitations</h2><ul>"
                 "<li>Correlation is not causation: twins reproduce associations in the knowledge base; a treatment "
                 "effect estimated against a synthetic control assumes no unmeasured differences between the "
                 "source patients and the real patients the generator learned from.</li>"
                 "<li>The twins are as good as the data: a small or unrepresentative target arm, missing "
                 "baseline covariates or informative dropout limit what any generator can learn.</li>"
                 f"<li>What was validated: {validated} on held-out real patients of the "
                 "target arm of this trial (the validation card). What was not: transport to another trial, "
                 "population or era; subgroups smaller than the held-out folds; endpoints not in the data.</li>"
                 "<li>Privacy metrics are empirical tests on this data, not a formal guarantee such as "
                 "differential privacy.</li>"
                 "<li>PROCOVA's saving holds only if the correlation seen here carries over to the new trial; the "
                 "conservative option deflates it.</li></ul>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>TwinArm report - "
            f"{html.escape(kb.title)}</title><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<style>{_CSS}</style></head><body><main>{body}</main></body></html>")
