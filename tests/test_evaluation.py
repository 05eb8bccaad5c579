"""The Compare page's numbers on real data: a copied arm (known answers) and a local twin arm."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from services.cli import main
from services.data.loading import load_trial_files
from services.data.readers import RawFile
from services.evaluation.comparison import (
    TARGET,
    TWIN,
    compare,
    evaluate,
)
from services.evaluation.effects import MEASURE_LABELS
from services.evaluation.effects_table import generator_term_cell
from services.evaluation.survival_comparison import km_curves
from services.evaluation.trajectories import trajectory_summary
from services.reporting.figures.compare import kaplan_meier


def copied_arm(kb, sources, donors):
    """A fake twin arm whose 'twins' are exact copies of real donor patients."""
    mapping = dict(zip(donors, [f"{s}-T1" for s in sources]))
    src_of = dict(zip(donors, sources))
    adsl = kb.subjects[kb.subjects.USUBJID.isin(donors)][["USUBJID", "ARM"]].copy()
    adsl["SRCSUBJID"] = adsl.USUBJID.map(src_of)
    adsl["TWINIDX"] = 1
    adsl["USUBJID"] = adsl.USUBJID.map(mapping)
    files = [RawFile("adsl.csv", adsl.to_csv(index=False).encode())]
    for name, frame in kb.bds.items():
        part = frame[frame.USUBJID.isin(donors)].drop(columns=["ARM"]).copy()
        part["SRCSUBJID"] = part.USUBJID.map(src_of)
        part["USUBJID"] = part.USUBJID.map(mapping)
        files.append(RawFile(f"{name}.csv", part.to_csv(index=False).encode()))
    tte = kb.tte[kb.tte.USUBJID.isin(donors)].drop(columns=["ARM"]).copy()
    tte["USUBJID"] = tte.USUBJID.map(mapping)
    files.append(RawFile("adtte.csv", tte.to_csv(index=False).encode()))
    return load_trial_files(files, name="copies")


@pytest.fixture(scope="module")
def copies(pbc):
    placebo = list(pbc.subjects.loc[pbc.subjects.ARM == "Placebo", "USUBJID"])
    treated = list(pbc.subjects.loc[pbc.subjects.ARM != "Placebo", "USUBJID"])[: len(placebo)]
    return copied_arm(pbc, treated, placebo)


def test_copies_of_the_real_target_arm_are_perfectly_faithful_and_flagged_as_privacy_risk(pbc, copies):
    result = evaluate(pbc, copies, {"target_arm": "Placebo"})
    assert result["n_real_target"] == 154 and result["n_twins"] == 154
    marginal = pd.DataFrame(result["fidelity"]["marginal"])
    assert np.allclose(marginal["smd"].fillna(0), 0) and np.allclose(marginal["ks"].fillna(0), 0)
    assert result["fidelity"]["correlation_distance"]["mean_abs_diff"] == pytest.approx(0, abs=1e-9)
    assert result["fidelity"]["detection"]["auroc"] == pytest.approx(0.5, abs=0.05)
    privacy = result["privacy"]
    assert privacy["exact_copies"]["n_copies"] == privacy["n_twins"]
    assert privacy["dcr"]["ratio_median"] == pytest.approx(0, abs=1e-9)
    surv = result["survival"]["DEATH"]
    assert surv["logrank_twins_vs_real_target"]["p_value"] == pytest.approx(1.0, abs=1e-6)
    assert surv["km_distance_twins_vs_real_target"]["sup"] == pytest.approx(0, abs=1e-9)


def test_trajectory_and_km_tables_have_every_group(pbc, copies):
    comp = compare(pbc, copies, {"target_arm": "Placebo"})
    summary = trajectory_summary(comp, "BILI")
    assert set(summary.GROUP) == {TARGET, TWIN, "real source cohort"}
    base = summary[(summary.GROUP == TARGET) & (summary.AVISITN == 0)].iloc[0]
    real_base = pbc.baseline.loc[pbc.subjects.loc[pbc.subjects.ARM == "Placebo", "USUBJID"], "BILI"]
    assert base["mean"] == pytest.approx(real_base.mean()) and base["lo"] < base["mean"] < base["hi"]
    twin = summary[summary.GROUP == TWIN].set_index("AVISITN")["mean"]
    target = summary[summary.GROUP == TARGET].set_index("AVISITN")["mean"]
    pd.testing.assert_series_equal(twin, target, check_names=False)
    curves, at_risk = km_curves(comp, "DEATH")
    assert curves.groupby("GROUP")["survival"].max().le(1).all()
    assert at_risk[at_risk.time == 0].set_index("GROUP")["n"].to_dict()[TARGET] == 154
    fig = kaplan_meier(curves, at_risk, "death")
    groups = list(dict.fromkeys(curves["GROUP"]))
    rows = fig.layout.yaxis2          # the at-risk rows read from the top in the legend's order, clear of the edges
    assert list(rows.categoryarray) == groups[::-1] and rows.range[0] < -0.5 and rows.range[1] > len(groups) - 0.5


def test_an_events_only_trial_is_compared_on_its_event_times_and_copies_are_flagged(pbc_events):
    ev = pbc_events
    assert ev.longitudinal_parameters == [] and set(ev.tte_parameters) == {"DEATH", "DTHTX"}
    placebo = list(ev.subjects.loc[ev.subjects.ARM == "Placebo", "USUBJID"])
    treated = list(ev.subjects.loc[ev.subjects.ARM != "Placebo", "USUBJID"])[: len(placebo)]
    result = evaluate(ev, copied_arm(ev, treated, placebo), {"target_arm": "Placebo"})
    privacy = result["privacy"]
    # log(1 + time) and the event indicator of each event type: copies sit at distance 0
    assert privacy["columns"] == 4 and privacy["exact_copies"]["n_copies"] == privacy["n_twins"] == 154
    assert privacy["exact_copies"]["by_part"] == {"events": 154} and privacy["exact_copies"]["compared"] == "events"
    # on whole days and a 0/1 status, real placebo patients share a record by chance: 2 pairs
    assert privacy["exact_copies"]["real_to_real"] == pytest.approx(4 / 154)
    assert privacy["dcr"]["ratio_median"] == pytest.approx(0, abs=1e-9)
    assert result["fidelity"]["detection"]["auroc"] == pytest.approx(0.5, abs=0.05)


def test_a_copied_trajectory_is_a_copy_whatever_its_event_days(pbc):
    """Visits and events are compared as separate parts: twins that copy real patients' visits
    with their event days moved by one day are still exact copies (of the visits)."""
    placebo = list(pbc.subjects.loc[pbc.subjects.ARM == "Placebo", "USUBJID"])
    treated = list(pbc.subjects.loc[pbc.subjects.ARM != "Placebo", "USUBJID"])[: len(placebo)]
    shifted = dataclasses.replace(pbc, tte=pbc.tte.assign(AVAL=pbc.tte["AVAL"] + 1))
    twins = copied_arm(shifted, treated, placebo)
    copies = evaluate(pbc, twins, {"target_arm": "Placebo"})["privacy"]["exact_copies"]
    assert copies["n_twin"] == 87 and copies["compared"] == "visits"     # observed at half the columns
    assert copies["n_copies"] == copies["by_part"]["visits"] == 87
    assert copies["by_part"]["events"] <= 2             # a moved record meets another one by chance


def test_event_times_of_local_twins_are_not_the_real_patients_days(pbc_events):
    """Twins' event and censoring times are spread over the gap between the real times, so few
    twins carry a real patient's exact record (days and status of both event types)."""
    from services.generation import get_generator

    ev = pbc_events
    treated = ev.subjects.loc[ev.subjects.ARM == "D-penicillamine", "USUBJID"]
    run = get_generator("local").fit(ev).generate(ev.subset(treated).baseline_only(), "Placebo",
                                                  twins_per_patient=2, seed=1)
    result = evaluate(ev, run.as_trial(), run.manifest)
    privacy = result["privacy"]
    assert privacy["n_twins"] == 316 and privacy["columns"] == 4
    # spread +-10 % of the gap to the previous step: 24 % copies, DCR ratio 0.08
    assert privacy["exact_copies"]["fraction"] < 0.08
    assert privacy["exact_copies"]["fraction"] < 3 * privacy["exact_copies"]["real_to_real"]   # ~ chance
    assert privacy["dcr"]["ratio_median"] > 0.5
    # utility on the ADSL covariates: a model trained on twins predicts real deaths
    assert result["utility"]["outcome"].startswith("DEATH event by day")
    assert result["utility"]["tstr"]["tstr"] > 0.65


@pytest.mark.slow
def test_local_twin_arm_metrics_and_cli_evaluate(pbc, tmp_path, capsys):
    from services.generation import get_generator
    from services.generation.run import write_run

    treated = pbc.subjects.loc[pbc.subjects.ARM == "D-penicillamine", "USUBJID"]
    run = get_generator("local").fit(pbc).generate(pbc.subset(treated), "Placebo", twins_per_patient=2, seed=3)
    folder = write_run(run, tmp_path / "run")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--real", "pbc", "--twins", str(folder), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detection AUROC" in printed and "DCR ratio" in printed and "HR source vs twins" in printed
    result = json.loads(out.read_text())
    assert result["n_twins"] == 316 and result["n_sources"] == 158
    assert 0.0 <= result["fidelity"]["detection"]["auroc"] <= 1.0
    assert result["privacy"]["exact_copies"]["n_copies"] == 0
    assert result["privacy"]["dcr"]["ratio_median"] > 0.5
    assert result["utility"]["tstr"]["tstr"] > 0.6  # twins carry the prognosis of real placebo patients
    assert {"DEATH", "DTHTX"} <= set(result["survival"])
    # effects: both scales for a positive lab value, the ratio on the ratio scale
    eff = {(e["measure"], e["paramcd"]) for e in result["effects"]["effects"]}
    assert {("mean_difference", "BILI"), ("geometric_mean_ratio", "BILI"), ("hazard_ratio", "DEATH")} <= eff
    gmr = [e for e in result["effects"]["effects"] if e["measure"] == "geometric_mean_ratio"]
    assert all(0 < e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in gmr)
    # shares print as shares (1.0 read as a count), and every printed effect line says when its
    # interval lacks the generator term, as the JSON's row does (an outside review: late visits did not)
    assert f"{100 * result['fidelity']['share_abs_net_smd_below_0_1']:.0f} % of parameter-visits" in printed
    lines = [ln for ln in printed.splitlines() if ln.startswith("  ") and "(n=" in ln]
    checked = 0
    for e in result["effects"]["effects"]:
        prefix = f"  {e['paramcd']}" + (f" at {e['avisit'] or e['avisitn']}" if e["avisitn"] is not None else "")
        label = MEASURE_LABELS.get(e["measure"], e["measure"])
        for ln in (ln for ln in lines if ln.startswith((f"{prefix}: {label} ", f"{prefix} (endpoint): {label} "))):
            assert ("generator uncertainty" in ln) == (generator_term_cell(e) not in ("included",)
                                                       and not generator_term_cell(e).startswith("none")), ln
            checked += 1
    assert checked == len(lines) > 5
    assert all(e["generator_term"] == generator_term_cell(e) for e in result["effects"]["effects"])
    assert "BILI at " in printed and "ratio of geometric means" in printed
    death = result["survival"]["DEATH"]
    km = death["km_distance_twins_vs_real_target"]
    assert km["ci_low"] <= km["sup"] <= km["ci_high"] and km["ci_high"] - km["ci_low"] > 0.1
    assert f"events twins {death['events_twins_patients']:.1f} of 158 patients ({death['events_twins']} of 316 twins)" \
        in printed


def test_a_twin_arm_counts_its_patients_not_its_twins_in_the_km_and_the_log_rank(pbc):
    # K = 5 twins of each of the 158 treated patients: before, the twin arm's KM band was about
    # sqrt(5) times narrower than a real arm's of the same size and the log-rank's n was 790
    from services.generation import get_generator

    treated = pbc.subjects.loc[pbc.subjects.ARM == "D-penicillamine", "USUBJID"]
    run = get_generator("local").fit(pbc).generate(pbc.subset(treated), "Placebo", twins_per_patient=5, seed=3)
    twins = run.as_trial()
    comp = compare(pbc, twins, run.manifest)
    curves, at_risk = km_curves(comp, "DEATH")
    at0 = at_risk[at_risk.time == 0].set_index("GROUP")["n"]
    assert at0[TWIN] == pytest.approx(158) and at0[TARGET] == 154
    at = 1800.0
    width = {g: float((c[c["time"] <= at]["hi"] - c[c["time"] <= at]["lo"]).iloc[-1]) for g, c in curves.groupby("GROUP")}
    # clustered by source: wider than N x K independent patients', narrower than the 154 real patients'
    # (each patient's curve is averaged over 5 draws); it was sqrt(5) too narrow, then too wide at 1/K
    assert 1.2 / np.sqrt(5) * width[TARGET] < width[TWIN] < width[TARGET]
    surv = evaluate(pbc, twins, run.manifest)["survival"]["DEATH"]
    lr = surv["logrank_twins_vs_real_target"]
    assert lr["n_a"] == 158 and lr["n_b"] == 154
    # the twins' events in patients too (the CLI printed 306/790 twins beside patient statistics)
    deaths = twins.tte[(twins.tte["PARAMCD"] == "DEATH") & (twins.tte["CNSR"] == 0)]
    assert surv["n_twins_patients"] == pytest.approx(158) and surv["events_twins_patients"] == pytest.approx(len(deaths) / 5)


def test_cli_evaluate_bad_input(tmp_path, capsys):
    assert main(["evaluate", "--real", "pbc", "--twins", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--real", "pbc", "--twins", str(tmp_path / "empty")]) == 1
    assert "manifest.json" in capsys.readouterr().err
    # twins learnt from epilepsy, evaluated against another trial: refused, not "0 source patients" and exit 0
    from services.data.demo import load_demo
    from services.generation import get_generator
    from services.generation.run import write_run

    epi = load_demo("epilepsy")
    ids = list(epi.subjects.loc[epi.subjects.ARM == "Progabide", "USUBJID"][:4])
    run = get_generator("local").fit(epi).generate(epi.subset(ids), "Placebo", twins_per_patient=2, seed=0)
    folder = write_run(run, tmp_path / "epi-run")
    assert main(["evaluate", "--real", "btheb", "--twins", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the data this run was generated from" in err[0] and "none of its source" in err[0]
    # the JSON's folder is created, as the report's is
    out = tmp_path / "new" / "dir" / "m.json"
    assert main(["evaluate", "--real", "epilepsy", "--twins", str(folder), "--refits", "0", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_sources"] == 4
    # 3 refits gave a generator term with df 0.05 and a traceback (exp overflow) on pbc: refused in one line
    assert main(["evaluate", "--real", "epilepsy", "--twins", str(folder), "--refits", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refits must be 0" in err[0] and "at least 5, got 3" in err[0]


def test_a_ratio_bound_past_float_range_is_infinite_not_an_error():
    from services.evaluation.effects import _exp

    assert _exp(800.0) == float("inf") and _exp(-800.0) == 0.0 and _exp(0.0) == 1.0


def test_smd_net_of_the_sources_baseline_imbalance_matches_an_ols_hand_computation(pbc, pbc_twins):
    """Twins inherit their sources' baselines: the SMD a perfect generator would show at a visit
    is the real arm's OLS slope of that visit on baseline (statsmodels) x the baseline gap
    sources - target, over the visit's pooled SD; the headline counts the SMD net of it."""
    import statsmodels.api as sm

    from services.evaluation.comparison import SOURCE, TARGET, compare, fidelity

    comp = compare(pbc, pbc_twins.as_trial(), pbc_twins.manifest)
    f = fidelity(comp)
    marginal = f["marginal"]
    row = marginal[(marginal["PARAMCD"] == "BILI")].iloc[1]
    tgt, src = comp.groups[TARGET], comp.groups[SOURCE]
    vv = tgt.visit_values
    y = vv[(vv["PARAMCD"] == "BILI") & (vv["AVISITN"] == row["AVISITN"])].set_index("USUBJID")["AVAL"]
    pairs = pd.concat([tgt.baseline["BILI"].rename("x"), y.rename("y")], axis=1, join="inner").dropna()
    slope = sm.OLS(pairs["y"], sm.add_constant(pairs["x"])).fit().params["x"]
    gap = src.baseline["BILI"].mean() - tgt.baseline["BILI"].mean()
    pooled = np.sqrt((row["sd_real"] ** 2 + row["sd_twin"] ** 2) / 2)
    assert row["smd_expected"] == pytest.approx(slope * gap / pooled, rel=1e-9)
    assert row["smd_net"] == pytest.approx(row["smd"] - row["smd_expected"], rel=1e-12)
    assert f["share_abs_net_smd_below_0_1"] == pytest.approx((marginal["smd_net"].abs() < 0.1).mean())
    print(f"pbc: raw |SMD| < 0.1 at {f['share_abs_smd_below_0_1']:.2f}, net {f['share_abs_net_smd_below_0_1']:.2f}")


def test_group_counts_give_the_twin_arm_its_patients_and_its_twins(pbc):
    from services.evaluation.comparison import group_counts
    from services.generation import get_generator

    treated = list(pbc.subjects.loc[pbc.subjects.ARM == "D-penicillamine", "USUBJID"])[:30]
    run = get_generator("local").fit(pbc).generate(pbc.subset(treated), "Placebo", twins_per_patient=5, seed=0)
    lines = group_counts(compare(pbc, run.as_trial(), run.manifest))
    assert f"{TWIN} (Placebo): 30 patients, 150 twins" in lines
    assert f"{TARGET} (Placebo): 154 patients" in lines


def test_similarity_histograms_are_drawn_in_their_groups_colours(pbc, pbc_twins):
    # "within twins" was drawn in the real target arm's green of every other chart
    from services.evaluation.comparison import compare
    from services.evaluation.patient_space import similarity
    from services.reporting.figures.compare import GROUP_COLOURS, similarity_histogram

    fig = similarity_histogram(similarity(compare(pbc, pbc_twins.as_trial(), pbc_twins.manifest)), "Cosine similarity")
    colours = {t.name: t.line.color for t in fig.data}
    assert colours["within the twin arm"] == GROUP_COLOURS["twin arm"]
    assert colours["within the real target arm"] == GROUP_COLOURS["real target arm"]
    assert colours["twin to its own source"] == GROUP_COLOURS["real source cohort"]
    # a distribution with no finite value is left out, not a crash (a code review)
    assert [t.name for t in similarity_histogram({"within real": np.array([np.nan]), "within twins": np.array([0.5, 0.7])},
                                                 "t").data] == ["within the twin arm"]
    # outlines that integrate to 1 (densities on common bins), not filled bars that blend
    for t in fig.data:
        x, y = np.asarray(t.x), np.asarray(t.y)
        assert np.sum(np.diff(x)[::2] * y[::2]) == pytest.approx(1.0, abs=1e-6)


def test_the_km_distance_interval_covers_a_known_distance():
    # "KM sup distance 0.046: met" had no interval where two samples of ~150 patients differ by up
    # to 0.15 by chance (an outside review). Known truth: exponential curves, rates 1 and 1.3,
    # censored, 3 twins per source patient
    from services.evaluation.survival_comparison import km_distance_interval

    rng = np.random.default_rng(5)
    t = np.linspace(0, 10, 10001)
    hits, reps = 0, 60
    for _ in range(reps):
        a = rng.exponential(1.0, (100, 3)).ravel()
        ca = np.repeat(rng.exponential(2.0, 100), 3)
        b, cb = rng.exponential(1 / 1.3, 100), rng.exponential(2.0, 100)
        twn = pd.DataFrame({"AVAL": np.minimum(a, ca), "CNSR": (a > ca).astype(int)})
        tgt = pd.DataFrame({"AVAL": np.minimum(b, cb), "CNSR": (b > cb).astype(int)})
        r = km_distance_interval(twn, np.repeat(np.arange(100), 3), tgt, n_boot=100, seed=int(rng.integers(1e9)))
        end = min(twn["AVAL"].max(), tgt["AVAL"].max())
        truth = np.abs(np.exp(-t[t <= end]) - np.exp(-1.3 * t[t <= end])).max()
        hits += r["ci_low"] <= truth <= r["ci_high"]
    assert hits / reps >= 0.85


def test_the_embedding_draws_each_real_arm_in_its_groups_colour(pbc, pbc_twins):
    # the fallback palette drew the real source cohort in the real target arm's green (a browser review)
    from services.evaluation.comparison import compare
    from services.reporting.figures.compare import GROUP_COLOURS, embedding_scatter

    comp = compare(pbc, pbc_twins.as_trial(), pbc_twins.manifest)
    assert comp.arm_groups() == {"D-penicillamine": "real source cohort", "Placebo": "real target arm"}
    points = pd.DataFrame({"x": [0.0, 1, 2], "y": [0.0, 1, 2], "SOURCE": ["real", "real", "twin"],
                           "ARM": ["Placebo", "D-penicillamine", "Placebo"], "USUBJID": ["a", "b", "c"]})
    colours = {t.name: t.marker.color for t in embedding_scatter(points, "t", comp.arm_groups()).data}
    assert colours == {"real: Placebo": GROUP_COLOURS["real target arm"],
                       "real: D-penicillamine": GROUP_COLOURS["real source cohort"],
                       "twin: Placebo": GROUP_COLOURS["twin arm"]}
