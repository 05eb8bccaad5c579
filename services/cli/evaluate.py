"""`twinarm evaluate --real PATH --twins DIR [--json FILE]`: the Compare page's metrics."""

from __future__ import annotations

import json
import math

from services.cli.errors import CliError

MIN_REFITS = 5   # fewer: the generator term's Satterthwaite df can fall below 1 (pbc, 3 refits: df 0.05)


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="fidelity, privacy, utility and survival metrics of a twin arm")
    p.add_argument("--real", required=True, metavar="PATH_OR_DEMO",
                   help="the knowledge base the twins were generated from (folder or demo name)")
    p.add_argument("--twins", required=True, metavar="DIR", help="a folder written by `twinarm generate`")
    p.add_argument("--holdout", metavar="PATH", help="real patients the generator never saw (enables "
                   "membership inference and a true hold-out DCR)")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    p.add_argument("--refits", type=int, default=None, metavar="B",
                   help="generator refits for the effects' intervals (default 20 for local, 0 for "
                        f"generators that call a model per twin; 0 leaves the generator's uncertainty out; "
                        f"else at least {MIN_REFITS})")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from services.data.demo import resolve_trial
    from services.data.loading import load_trial
    from services.data.trial import TrialValidationError
    from services.evaluation import safety
    from services.evaluation.comparison import cached_run_evaluation, compare, evaluate
    from services.evaluation.effects import cached_run_effects
    from services.evaluation.effects_table import generator_term_cell
    from services.generation.run import read_run

    if args.refits is not None and not (args.refits == 0 or args.refits >= MIN_REFITS):   # before any loading
        raise CliError(f"--refits must be 0 (the generator's uncertainty left out) or at least {MIN_REFITS}, got "
                       f"{args.refits}: with fewer, the generator term's degrees of freedom fall near 1 and the "
                       "intervals have no useful bounds")
    try:
        kb = resolve_trial(args.real)
    except TrialValidationError as exc:
        raise CliError(f"--real {args.real}: {exc.messages[0]}") from None
    if not Path(args.twins).is_dir():
        raise CliError(f"--twins {args.twins}: not a folder")
    try:
        run = read_run(args.twins)
        twins = run.as_trial(name=f"twins {Path(args.twins).name}")
    except (FileNotFoundError, TrialValidationError, ValueError) as exc:
        msg = exc.messages[0] if isinstance(exc, TrialValidationError) else str(exc)
        raise CliError(f"--twins {args.twins}: {msg}") from None
    _check_real(kb, run, args.real)
    holdout = None
    if args.holdout:
        try:
            holdout = load_trial(args.holdout)
        except TrialValidationError as exc:
            raise CliError(f"--holdout {args.holdout}: {exc.messages[0]}") from None
    try:
        if holdout is None:  # the run's own evaluation, kept in its folder (the app's too)
            result = dict(cached_run_evaluation(kb, run, args.twins, seed=args.seed))
        else:
            result = evaluate(kb, twins, run.manifest, holdout=holdout, seed=args.seed)
        result["effects"] = effects = dict(cached_run_effects(kb, run, args.twins, refits=args.refits,
                                                              seed=args.seed))
        # each row says whether its interval carries the generator term, as Compare's table does
        effects["effects"] = [e | {"generator_term": generator_term_cell(e)} for e in effects.get("effects") or []]
        if safety.has_safety(comp := compare(kb, twins, run.manifest)):   # AE incidence, as Compare's Safety tab
            result["safety"] = safety.safety_summary(comp)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from services.evaluation.backtest_verdicts import endpoint_visit

    print_summary(result, units=kb.parameter_units, endpoint=endpoint_visit(kb))
    if args.json:
        try:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise CliError(f"--json {args.json}: cannot write it ({exc.strerror or exc})") from None
        print(f"metrics written to {args.json}")
    return 0


def _check_real(kb, run, real: str) -> None:
    """--real should be the data the run was generated from. Another data cut of the same trial
    (more follow-up) is compared with a note; data without the run's sources or target arm are
    refused: every figure would be n/a (a review got exit 0 and "0 source patients")."""
    import sys

    info = run.manifest.get("knowledge_base") or {}
    if not info.get("content_hash") or info["content_hash"] == kb.content_hash:
        return
    sources = set(run.adsl["SRCSUBJID"].astype(str))
    found = len(sources & set(kb.subjects["USUBJID"].astype(str)))
    target = run.manifest.get("target_arm")
    if found == 0 or (target and target not in kb.arm_counts()):
        missing = "none of its source patients" if found == 0 else f"no arm {target!r}"
        raise CliError(f"--real {real} is not the data this run was generated from ({info.get('name')}, content "
                       f"hash differs) and has {missing}: pass the run's knowledge base")
    print(f"note: --real {real} differs from the data this run was generated from ({info.get('name')}, content "
          f"hash differs); compared anyway: {found} of its {len(sources)} source patients found", file=sys.stderr)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _share(value) -> str:
    """A share as a percentage (a share of 1.0 printed as "1" read as a count)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def _term_note(e: dict) -> str:
    """' (generator uncertainty NOT included ...)' where the row's interval lacks the generator term
    (`generator_term_cell`), as Compare's table says; nothing where it is included or not needed."""
    from services.evaluation.effects_table import generator_term_cell

    term = generator_term_cell(e)
    return "" if term == "included" or term.startswith("none needed") else f" (generator uncertainty {term})"


def print_summary(r: dict, units: dict | None = None, endpoint: tuple | None = None) -> None:
    """The evaluation in a few lines. Per-visit effects: the trial's endpoint visit (`endpoint`,
    its PROCOVA endpoint) and each parameter's last visit, each with its n of patients and unit."""
    from services.evaluation.effects import MEASURE_LABELS, PER_VISIT_MEASURES

    f, p, u = r["fidelity"], r["privacy"], r["utility"]
    print(f"{r['n_twins']} twins ({r['target_arm']}) of {r['n_sources']} source patients ({r['source_arm']}) "
          f"vs {r['n_real_target']} real {r['target_arm']} patients")
    print("fidelity:")
    print(f"  |SMD| < 0.1 at {_share(f.get('share_abs_net_smd_below_0_1'))} of parameter-visits net of the "
          f"sources' baseline imbalance ({_share(f['share_abs_smd_below_0_1'])} raw; "
          f"median |SMD| {_fmt(f['median_abs_smd'])}, median KS {_fmt(f['median_ks'])})")
    print(f"  correlation distance {_fmt(f['correlation_distance'].get('mean_abs_diff'))} (0 ideal); "
          f"dimension-wise mean correlation {_fmt(f['dimension_wise_mean_correlation'].get('correlation'))} (1 ideal)")
    det = f.get("detection", {})
    print(f"  detection AUROC {_fmt(det.get('auroc'))} (0.5 ideal)")
    print("privacy:")
    if "error" in p:
        print(f"  {p['error']}")
    else:
        print(f"  DCR ratio {_fmt(p['dcr'].get('ratio_median'))} (>= 1 good; yardstick: "
              f"{p['dcr'].get('yardstick', 'held-out patients')}); NNAA {_fmt(p['nnaa'].get('nnaa'))} (0.5 ideal); "
              f"exact copies {p['exact_copies'].get('n_copies')}")
        mi = p.get("membership", {})
        print("  membership inference: " + (mi["skipped"] if "skipped" in mi else
                                            f"sensitivity {_fmt(mi.get('sensitivity'))}, "
                                            f"advantage {_fmt(mi.get('advantage'))} (0 ideal)"))
    print("utility:")
    if "error" in u:
        print(f"  {u['error']}")
    else:
        print(f"  outcome: {u['outcome']}; TSTR AUROC {_fmt(u['tstr']['tstr'])} vs TRTR {_fmt(u['tstr']['trtr'])} "
              f"(ratio {_fmt(u['tstr']['ratio'])}); augmentation gain {_fmt(u['augmentation']['gain'])}")
    hr_effects = {e["paramcd"]: e for e in (r.get("effects") or {}).get("effects") or []
                  if e["measure"] == "hazard_ratio" and e.get("estimate") is not None}
    for paramcd, s in r["survival"].items():
        # the effects' hazard ratio (with the generator's uncertainty), as the report shows it
        hr = hr_effects.get(paramcd) or s.get("hr_source_vs_twins", {})
        which = _term_note(hr) if paramcd in hr_effects else " (generator uncertainty not included)"
        est = hr.get("estimate", hr.get("hazard_ratio"))
        hr_real = s.get("hr_source_vs_real_target", {})
        twins = (f"{s['events_twins_patients']:.1f} of {s['n_twins_patients']:.0f} patients ({s.get('events_twins')} "
                 f"of {s.get('n_twins')} twins)" if "events_twins_patients" in s
                 else f"{s.get('events_twins')}/{s.get('n_twins')}")
        print(f"survival {paramcd}: events twins {twins}, real "
              f"{s.get('events_real_target')}/{s.get('n_real_target')}; log-rank p (twins 1/K, clustered by patient) "
              f"{_fmt(s.get('logrank_twins_vs_real_target', {}).get('p_value'))}; HR source vs twins "
              f"{_fmt(est)} [{_fmt(hr.get('ci_low'))}, {_fmt(hr.get('ci_high'))}]{which}, "
              f"vs real control {_fmt(hr_real.get('hazard_ratio'))}")
    _print_safety(r.get("safety"))
    eff = r.get("effects") or {}
    if eff.get("note"):
        print(f"effects: {eff['note']}")
    rows = eff.get("effects") or []
    if rows:
        print(f"effects of the real source patients against their twins ({eff['n_patients']} patients, "
              f"{eff.get('refits', 0)} generator refits; unit: patients):")
        shown = [e for e in rows if e["measure"] not in PER_VISIT_MEASURES]
        picked = {}
        ep_p, ep_v = endpoint or (None, None)
        for e in rows:                     # the endpoint visit, and the last visit of each parameter, on each scale
            if e["measure"] in PER_VISIT_MEASURES:
                picked[(e["paramcd"], e["measure"], "last")] = e
                if e["paramcd"] == ep_p and e["avisitn"] is not None and float(e["avisitn"]) == ep_v:
                    picked[(e["paramcd"], e["measure"], "endpoint")] = e
        per_visit = sorted(picked.items(), key=lambda kv: (kv[0][0] != ep_p, kv[0][0], kv[0][2] != "endpoint"))
        seen = set()
        for (_, _, role), e in per_visit:
            if id(e) in seen:
                continue
            seen.add(id(e))
            where = f" at {e['avisit'] or e['avisitn']}" + (" (endpoint)" if role == "endpoint" else "")
            unit = (units or {}).get(e["paramcd"]) or ""
            unit = f" {unit}" if unit and e["measure"] in ("mean_difference", "mean_difference_dr") else ""
            print(f"  {e['paramcd']}{where}: {MEASURE_LABELS.get(e['measure'], e['measure'])} {_fmt(e['estimate'])}"
                  f"{unit} [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] (n={e.get('n_patients')}){_term_note(e)}")
        for e in shown:
            print(f"  {e['paramcd']}: {MEASURE_LABELS.get(e['measure'], e['measure'])} {_fmt(e['estimate'])} "
                  f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] (n={e.get('n_patients')}){_term_note(e)}")


def _print_safety(summary: dict | None, shown: int = 10) -> None:
    """Any AE and the most frequent terms: each group's incidence and the source - twins risk
    difference (the synthetic-control signal), with the screen's caveats."""
    from services.evaluation.groups import SOURCE, TARGET, TWIN
    from services.evaluation.safety import ANY

    if not summary:
        return
    print(f"safety (treatment-emergent AEs; unit: {summary['unit']}; {summary['multiplicity']}):")
    for row in summary["terms"][:shown + 1]:
        pct = "; ".join(f"{g} {100 * row[f'{g}_pct']:.1f} %" for g in (TWIN, TARGET, SOURCE)
                        if row.get(f"{g}_pct") is not None)
        rd = row.get("rd_source_twin")
        lo, hi = row.get("rd_source_twin_lo"), row.get("rd_source_twin_hi")
        diff = "" if rd is None else f"; source - twins {100 * rd:+.1f} pp" + (
            f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None and hi is not None else " (no interval)")
        print(f"  {row['PT'] if row['PT'] != ANY else 'any adverse event'}: {pct}{diff}")
