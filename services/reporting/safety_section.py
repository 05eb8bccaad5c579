"""The "Safety" section of the HTML report (only when the trial has adverse events): the
incidence table by SOC / PT, the incidence and risk-difference figures, and the time to the
first AE of the most frequent term."""

from __future__ import annotations

import html
import re

from services.evaluation import safety
from services.evaluation.backtest_verdicts import backtest_setup
from services.reporting.tables import SAFETY_BY_CONSTRUCTION_NOTE, SAFETY_KM_NOTE, safety_rd_note


def safety_section(comp, fig) -> str:
    """HTML of the section ("" when the knowledge base has no ADAE); `fig` renders figures
    (the report's `_Figures`)."""
    from services.reporting.figures import safety as figs

    if not safety.has_ae(comp.kb):
        return ""
    parts = ["<h2>Safety: adverse events</h2>"]
    if not safety.has_safety(comp):
        parts.append('<p class="muted">This run has no adverse-event twins (its generator makes none).</p>')
        return "\n".join(parts)
    pt = safety.incidence(comp, "PT")
    table = safety.safety_table(comp)
    parts.append(table.head(60).to_html(index=False, escape=True, border=0))
    if len(table) > 60:
        parts.append(f'<p class="muted">First 60 of {len(table)} rows (sorted by frequency).</p>')
    parts.append('<p class="muted">Treatment-emergent adverse events, patients with at least one event, n (%). '
                 "A source patient's K twins count as one patient (the share of its twins with the term is a "
                 "probability; the twin arm's n is their sum). RD: risk differences in percentage points, 95 % CI "
                 "with patients as the unit (source - twins: the signal; twins - real target: what it can show "
                 "is under the forest plot).</p>")
    parts.append(fig(figs.incidence_dots(pt, "Incidence of the most frequent preferred terms (95 % CI)"),
                     "Twins should sit on the real target arm; the gap to the real source cohort is the safety "
                     "profile of the source patients' own treatment. " + SAFETY_BY_CONSTRUCTION_NOTE))
    parts.append(fig(figs.risk_difference_forest(pt, "Risk differences (95 % CI)"),
                     safety_rd_note(comp, min(15, len(pt) - 1))))
    terms = [t for t in pt["PT"] if t != safety.ANY]
    if terms:
        curves, at_risk = safety.km_first_ae(comp, terms[0])
        if len(curves):
            parts.append(fig(figs.time_to_first_ae(curves, at_risk, f"Time to first {html.escape(terms[0])}"),
                             SAFETY_KM_NOTE))
    return "\n".join(parts)


def safety_backtest_section(result) -> str:
    """HTML of the safety backtest run on the Validate page (`safety_backtest.SafetyBacktest`):
    what was run, the plain-words verdict and the per-term table, as the page shows them; the
    report only pointed to the page (a browser review ran it, AUROC 0.51, and found nothing of
    it in the report)."""
    from services.evaluation.safety_backtest import safety_card, safety_verdict

    s = result.summary
    auroc = "n/a" if s["mean_auroc"] != s["mean_auroc"] else f"{s['mean_auroc']:.2f}"
    setup = (f"<p>Generator <b>{html.escape(result.generator)}</b>, {html.escape(backtest_setup(result))}. "
             f"Mean absolute incidence error over the {s['terms']} most frequent terms: twins "
             f"{100 * s['mae_twins']:.1f} pp, the knowledge base's rates {100 * s['mae_kb']:.1f} pp; mean AUROC "
             f"{auroc}.</p>")
    parts = ["<h3>Safety backtest (as run on the Validate page)</h3>", setup]
    for line in safety_verdict(result):       # the page's markdown bold, in HTML
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
        parts.append(f'<div class="card">{text}</div>')
    parts.append(safety_card(result).to_html(index=False, escape=True, border=0))
    return "\n".join(parts)
