"""The offline `local` generator on real trials: contract, determinism, personalisation, spread,
no leakage, self-exclusion, output format, time to event."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pandas as pd
import pytest

from services.generation import GENERATORS, GeneratorError, get_generator
from services.generation.local import LocalGenerator
from services.generation.run import BDS_COLUMNS, MANIFEST_KEYS, TTE_COLUMNS
from services.retrieval.retriever import ExactRetriever, Retriever


@pytest.fixture(scope="module")
def pbc_gen(pbc):
    return LocalGenerator(retriever_factory=ExactRetriever).fit(pbc)


def _placebo(trial):
    return list(trial.subjects.loc[trial.subjects["ARM"] == trial.control_arm, "USUBJID"])


def _treated(trial):
    return list(trial.subjects.loc[trial.subjects["ARM"] != trial.control_arm, "USUBJID"])


def _frames(run):
    return [run.adsl] + [run.bds[k] for k in sorted(run.bds)] + ([run.tte] if run.tte is not None else [])


# ---------------------------------------------------------------------------------------------
# contract


def test_registry_and_settings():
    assert GENERATORS["local"] is LocalGenerator
    gen = get_generator("local", neighbors=7)
    assert gen.get_params()["neighbors"] == 7 and "retriever_factory" not in gen.get_params()
    with pytest.raises(GeneratorError, match="unknown generator 'nope'"):
        get_generator("nope")
    with pytest.raises(GeneratorError, match="visits"):
        LocalGenerator(visits="sometimes")
    with pytest.raises(GeneratorError, match="not fitted"):
        LocalGenerator().generate(None, "Placebo")  # type: ignore[arg-type]


def test_bad_target_arm_and_k(pbc_gen, pbc):
    src = pbc.subset(_treated(pbc)[:3])
    with pytest.raises(GeneratorError, match="not an arm"):
        pbc_gen.generate(src, "Aspirin")
    with pytest.raises(GeneratorError, match="twins_per_patient"):
        pbc_gen.generate(src, "Placebo", twins_per_patient=0)


def test_default_retriever_is_the_projects_chroma_retriever(pbc):
    gen = LocalGenerator().fit(pbc)
    assert type(gen.retriever) is Retriever
    run = gen.generate(pbc.subset(_treated(pbc)[:4]), "Placebo", twins_per_patient=2, seed=3)
    assert run.manifest["retriever"]["name"] == "Retriever"
    # Chroma's neighbours are the exact ones on this small trial: same twins as the exact retriever
    exact = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc)
    again = exact.generate(pbc.subset(_treated(pbc)[:4]), "Placebo", twins_per_patient=2, seed=3)
    assert run.manifest["neighbours"] == again.manifest["neighbours"]


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_twins_other_seed_differs(pbc_gen, pbc):
    src = pbc.subset(_treated(pbc)[:25])
    a = pbc_gen.generate(src, "Placebo", twins_per_patient=3, seed=11)
    b = pbc_gen.generate(src, "Placebo", twins_per_patient=3, seed=11)
    for x, y in zip(_frames(a), _frames(b)):
        pd.testing.assert_frame_equal(x, y)
    c = pbc_gen.generate(src, "Placebo", twins_per_patient=3, seed=12)
    assert not a.bds["adlb"]["AVAL"].reset_index(drop=True).equals(c.bds["adlb"]["AVAL"].reset_index(drop=True))
    assert not a.tte["AVAL"].equals(c.tte["AVAL"])


def test_the_same_sources_are_retrieved_once_per_fitted_generator(pbc):
    """A refit's independent draws (`generator_term`) twin the same sources again: the fitted
    generator retrieves their neighbours once (read-only), other sources anew, a refit anew,
    and the twins are those of a fresh generator."""
    gen = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc)
    calls, query = [], gen.retriever.neighbours_many
    def spy(q, *a, **k):                      # sources come as a Trial (arm models ask by id)
        if hasattr(q, "subjects"):
            calls.append(len(q.subjects))
        return query(q, *a, **k)
    gen.retriever.neighbours_many = spy
    src, other = pbc.subset(_treated(pbc)[:20]), pbc.subset(_treated(pbc)[20:30])
    first = gen.generate(src, "Placebo", twins_per_patient=1, seed=1)
    again = gen.generate(src, "Placebo", twins_per_patient=1, seed=2)
    assert calls == [20]
    gen.generate(other, "Placebo", twins_per_patient=1, seed=1)
    assert calls == [20, 10]
    fresh = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc).generate(src, "Placebo", twins_per_patient=1,
                                                                               seed=2)
    for x, y in zip(_frames(again), _frames(fresh)):
        pd.testing.assert_frame_equal(x, y)
    assert not first.bds["adlb"]["AVAL"].equals(again.bds["adlb"]["AVAL"])
    assert all(not a.flags.writeable for v in gen._neighbour_cache.values() for a in v)
    gen.fit(pbc)
    assert gen._neighbour_cache == {}


def test_twins_do_not_depend_on_order_batching_or_other_sources(pbc, pbc_gen):
    ids = _treated(pbc)[:30]
    whole = pbc_gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=2, seed=5)
    # other batch size, fresh generator, and only a part of the sources
    small = LocalGenerator(retriever_factory=ExactRetriever, chunk_size=4).fit(pbc)
    part = small.generate(pbc.subset(ids[10:20]), "Placebo", twins_per_patient=2, seed=5)
    sel = whole.bds["adlb"][whole.bds["adlb"]["SRCSUBJID"].isin(ids[10:20])].reset_index(drop=True)
    pd.testing.assert_frame_equal(sel, part.bds["adlb"])
    sel_tte = whole.tte[whole.tte["SRCSUBJID"].isin(ids[10:20])].reset_index(drop=True)
    pd.testing.assert_frame_equal(sel_tte, part.tte)


def test_concurrent_runs_match_sequential(pbc, pbc_gen):
    src = pbc.subset(_treated(pbc)[:12])
    expected = {s: pbc_gen.generate(src, "Placebo", twins_per_patient=2, seed=s) for s in (1, 2)}
    got = {}

    def work(s):
        got[s] = pbc_gen.generate(src, "Placebo", twins_per_patient=2, seed=s)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in (1, 2):
        pd.testing.assert_frame_equal(got[s].bds["adlb"], expected[s].bds["adlb"])


# ---------------------------------------------------------------------------------------------
# behaviour on real data


def _wide(values: pd.DataFrame, id_col: str) -> pd.DataFrame:
    return values.pivot_table(index=id_col, columns=["PARAMCD", "AVISITN"], values="AVAL")


def test_twin_is_closer_to_its_own_source_than_to_a_random_patient(pbc, pbc_gen):
    """Placebo patients twinned under placebo (cross-fitted: their own follow-up is never
    used): a twin's trajectory is nearer its source's real one than another patient's."""
    ids = _placebo(pbc)
    run = pbc_gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=3, seed=0)
    real = _wide(pbc.visit_values[pbc.visit_values["USUBJID"].isin(ids)], "USUBJID")
    tw = run.values()
    tw = tw[tw["PARAMCD"].isin(["ALB", "BILI", "PLAT", "PT"])]
    twins = _wide(tw.assign(AVAL=tw["AVAL"]), "USUBJID")
    src_of = dict(zip(run.adsl["USUBJID"], run.adsl["SRCSUBJID"]))
    cols = [c for c in twins.columns if c in real.columns]
    logs = {"BILI"}
    scale = {}
    for c in cols:
        r = np.log(real[c]) if c[0] in logs else real[c]
        scale[c] = float(r.std())

    def dist(twin_row, real_row):
        d = []
        for c in cols:
            a, b = twin_row[c], real_row[c]
            if np.isfinite(a) and np.isfinite(b):
                if c[0] in logs:
                    a, b = np.log(a), np.log(b)
                d.append(((a - b) / scale[c]) ** 2)
        return np.sqrt(np.mean(d)) if len(d) >= 4 else np.nan

    rng = np.random.default_rng(0)
    own, other = [], []
    real_ids = list(real.index)
    for tid, row in twins.iterrows():
        src = src_of[tid]
        if src not in real.index:
            continue
        own.append(dist(row, real.loc[src]))
        other.append(dist(row, real.loc[real_ids[rng.integers(len(real_ids))]]))
    own, other = np.array(own), np.array(other)
    ok = np.isfinite(own) & np.isfinite(other)
    assert ok.sum() > 200
    assert np.mean(own[ok]) < 0.85 * np.mean(other[ok])
    assert np.mean(own[ok] < other[ok]) > 0.65


def test_spread_and_cross_visit_correlation_are_kept(pilot):
    """Placebo twins of placebo patients (CDISC pilot vitals): per visit the twins' SD is that
    of the real arm (no shrinkage to the mean), and visit-to-visit correlations hold."""
    gen = LocalGenerator(retriever_factory=ExactRetriever).fit(pilot)
    ids = _placebo(pilot)
    run = gen.generate(pilot.subset(ids), "Placebo", twins_per_patient=5, seed=1)
    real = pilot.visit_values[pilot.visit_values["USUBJID"].isin(ids)]
    tw = run.values()
    for p in ("SYSBP", "DIABP", "PULSE", "WEIGHT"):
        for v in (2.0, 8.0, 16.0):
            r = real[(real["PARAMCD"] == p) & (real["AVISITN"] == v)]
            t = tw[(tw["PARAMCD"] == p) & (tw["AVISITN"] == v) & tw["SRCSUBJID"].isin(r["USUBJID"])]
            ratio = t["AVAL"].std() / r["AVAL"].std()
            assert 0.75 < ratio < 1.35, (p, v, ratio)
    for p, (v1, v2) in (("SYSBP", (2.0, 4.0)), ("WEIGHT", (2.0, 16.0)), ("PULSE", (4.0, 8.0))):
        rw = _wide(real[real["PARAMCD"] == p], "USUBJID")[[(p, v1), (p, v2)]].dropna()
        tww = _wide(tw[tw["PARAMCD"] == p], "USUBJID")[[(p, v1), (p, v2)]].dropna()
        c_real = rw.corr().iloc[0, 1]
        c_twin = tww.corr().iloc[0, 1]
        assert abs(c_real - c_twin) < 0.15, (p, c_real, c_twin)
    # and across parameters at one visit (systolic vs diastolic)
    rw = _wide(real[real["AVISITN"] == 8.0], "USUBJID")[[("SYSBP", 8.0), ("DIABP", 8.0)]].dropna()
    tww = _wide(tw[tw["AVISITN"] == 8.0], "USUBJID")[[("SYSBP", 8.0), ("DIABP", 8.0)]].dropna()
    assert abs(rw.corr().iloc[0, 1] - tww.corr().iloc[0, 1]) < 0.15


def test_post_baseline_data_of_sources_are_never_read(pbc, pbc_gen):
    ids = _placebo(pbc)[:40] + _treated(pbc)[:10]
    clean = pbc.subset(ids)
    corrupt_bds = {}
    for name, df in clean.bds.items():
        df = df.copy()
        post = ~df["ABLFL"].astype(str).eq("Y") & (df["ADY"] > 1)
        df.loc[post, "AVAL"] = df.loc[post, "AVAL"] * 10 + 1000
        corrupt_bds[name] = df
    tte = clean.tte.copy()
    tte["AVAL"] = 1.0
    tte["CNSR"] = 0
    corrupt = dataclasses.replace(clean, bds=corrupt_bds, tte=tte)
    assert not corrupt.visit_values["AVAL"].equals(clean.visit_values["AVAL"])
    a = pbc_gen.generate(clean, "Placebo", twins_per_patient=2, seed=4)
    b = pbc_gen.generate(corrupt, "Placebo", twins_per_patient=2, seed=4)
    for x, y in zip(_frames(a), _frames(b)):
        pd.testing.assert_frame_equal(x, y)


def test_source_is_never_its_own_neighbour_nor_donor(pbc, pbc_gen):
    ids = _placebo(pbc)
    run = pbc_gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=2, seed=0)
    src_of = dict(zip(run.adsl["USUBJID"], run.adsl["SRCSUBJID"]))
    assert set(run.manifest["neighbours"]) == set(run.adsl["USUBJID"])
    for tid, nbrs in run.manifest["neighbours"].items():
        assert src_of[tid] not in nbrs and len(nbrs) == pbc_gen.neighbors
    for tid, donor in run.manifest["donors"].items():
        assert donor is not None and donor != src_of[tid] and donor in run.manifest["neighbours"][tid]
    # event histories are copied from donors only by tte_draw="history" (the default draws from
    # the source's own curve and has none)
    assert run.manifest["tte_donors"] == {}
    hist = LocalGenerator(retriever_factory=ExactRetriever, tte_draw="history").fit(pbc)
    hrun = hist.generate(pbc.subset(ids), "Placebo", twins_per_patient=2, seed=0)
    h_src = dict(zip(hrun.adsl["USUBJID"], hrun.adsl["SRCSUBJID"]))
    assert len(hrun.manifest["tte_donors"]) == len(hrun.adsl)
    assert all(d is not None and d != h_src[t] for t, d in hrun.manifest["tte_donors"].items())
    # the time-to-event neighbourhoods (prognostic) exclude the source too
    model = pbc_gen.arm_model("Placebo")
    rows = np.array([model.index[s] for s in ids[:20]])
    X = model.features.transform(pbc, ids[:20])
    nb, w = pbc_gen._prognostic_neighbours(model, "DEATH", X, model.fold[rows], rows)
    assert not (nb == rows[:, None]).any() and (w > 0).all()


def test_output_format_and_baseline_copy(pbc, pbc_gen):
    ids = _treated(pbc)[:6]
    run = pbc_gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=4, seed=2)
    adsl = run.adsl
    assert list(adsl.columns[:4]) == ["USUBJID", "SRCSUBJID", "ARM", "TWINIDX"]
    assert (adsl["ARM"] == "Placebo").all() and adsl["USUBJID"].is_unique
    assert all(sorted(g) == [1, 2, 3, 4] for _, g in adsl.groupby("SRCSUBJID")["TWINIDX"])
    assert (adsl["USUBJID"] == adsl["SRCSUBJID"] + "-T" + adsl["TWINIDX"].astype(str)).all()
    subj = pbc.subjects.set_index("USUBJID")
    for c in ("AGE", "SEX", "STAGE", "EDEMA"):
        assert (adsl[c].to_numpy() == subj.loc[adsl["SRCSUBJID"], c].to_numpy()).all()
    assert list(run.bds) == list(pbc.bds)
    lb = run.bds["adlb"]
    assert list(lb.columns) == BDS_COLUMNS
    base = lb[lb["ABLFL"] == "Y"]
    gen = lb[lb["ABLFL"] != "Y"]
    assert (gen["ABLFL"] == "").all()
    expected = pbc.baseline_long.set_index(["USUBJID", "PARAMCD"])["AVAL"]
    got = base.set_index(["SRCSUBJID", "PARAMCD"])["AVAL"]
    assert np.allclose(got.to_numpy(), expected.loc[got.index].to_numpy())
    assert (base.groupby("USUBJID").size() == base.groupby("USUBJID").size().max()).all()
    # generated records: one per scheduled visit up to the twin's end of follow-up (its event
    # history), on the visit's nominal day, within range
    model = pbc_gen.arm_model("Placebo")
    end = run.tte.groupby("USUBJID")["AVAL"].max()
    expected_n = sum((o.ady <= end[t]) for t in adsl["USUBJID"] for o in model.outcomes)
    assert len(gen) == expected_n and (gen["ADY"] <= gen["USUBJID"].map(end)).all()
    nominal = {(o.paramcd, o.avisitn): o.ady for o in model.outcomes}
    assert all(nominal[(p, v)] == d for p, v, d in zip(gen["PARAMCD"], gen["AVISITN"], gen["ADY"]))
    assert gen["AVAL"].notna().all() and (gen["AVAL"] >= 0).all()
    assert set(MANIFEST_KEYS) <= set(run.manifest)
    m = run.manifest
    assert m["generator"] == "local" and m["seed"] == 2 and m["target_arm"] == "Placebo"
    assert m["knowledge_base"]["content_hash"] == pbc.content_hash
    assert m["sources"]["content_hash"] == pbc.subset(ids).content_hash
    assert m["counts"]["twins"] == 24 and m["failures"] == [] and m["tool_version"]
    assert any("end of follow-up" in note for note in m["notes"])
    assert m["model"] is None and m["prompt_version"] is None          # LLM-only fields
    assert m["model_details"]["outcomes"] == len(model.outcomes)


def test_without_truncation_every_twin_has_every_scheduled_visit(pbc):
    gen = LocalGenerator(retriever_factory=ExactRetriever, truncate_at_followup=False).fit(pbc)
    run = gen.generate(pbc.subset(_treated(pbc)[:6]), "Placebo", twins_per_patient=2, seed=2)
    values = run.values()
    assert len(values) == run.n_twins * len(gen.arm_model("Placebo").outcomes)


def test_time_to_event_twins(pbc, pbc_gen):
    ids = _placebo(pbc)
    run = pbc_gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=5, seed=3)
    tte = run.tte
    assert list(tte.columns) == TTE_COLUMNS
    assert len(tte) == len(run.adsl) * 2 and set(tte["PARAMCD"]) == {"DEATH", "DTHTX"}
    assert set(tte["CNSR"].unique()) == {0, 1} and (tte["AVAL"] > 0).all()
    real = pbc.tte[pbc.tte["USUBJID"].isin(ids)]
    for q in ("DEATH", "DTHTX"):
        rate_twin = 1 - tte.loc[tte["PARAMCD"] == q, "CNSR"].mean()
        rate_real = 1 - real.loc[real["PARAMCD"] == q, "CNSR"].mean()
        assert abs(rate_twin - rate_real) < 0.1, (q, rate_twin, rate_real)
        assert tte.loc[tte["PARAMCD"] == q, "AVAL"].max() <= real["AVAL"].max() * 1.01
    # as in the real data (death censored at a transplant: one clock), both event types of a
    # twin end at the same day, and a death is an event of both
    wide = tte.pivot(index="USUBJID", columns="PARAMCD", values="AVAL")
    assert (wide["DEATH"] == wide["DTHTX"]).all()
    cn = tte.pivot(index="USUBJID", columns="PARAMCD", values="CNSR")
    assert not ((cn["DEATH"] == 0) & (cn["DTHTX"] == 1)).any()
    assert (tte.groupby("SRCSUBJID")["AVAL"].nunique() > 1).mean() > 0.9   # twins differ


def test_event_twins_follow_their_sources_model_curve(pbc, pbc_gen):
    """tte_draw="model": the twins' event ratio follows the Cox model's risk order, twin t
    is the same draw whatever K, and pbc's nesting (DTHTX contains DEATH, one clock) is read
    from the knowledge base."""
    from scipy.stats import spearmanr

    from services.evaluation.backtest import _twin_scores
    from services.generation.local.model import nested_pairs

    treated = pbc.subset(_treated(pbc)).baseline_only()
    run = pbc_gen.generate(treated, "Placebo", twins_per_patient=20, seed=5)
    model = pbc_gen.arm_model("Placebo")
    ids = list(treated.subjects["USUBJID"])
    lp = model.features.transform(treated, ids) @ model.tte_beta["DTHTX"][-1]
    tw = run.tte[run.tte["PARAMCD"] == "DTHTX"]
    score = _twin_scores(tw).reindex(ids)
    assert spearmanr(score, -lp).statistic > 0.9
    five = pbc_gen.generate(treated, "Placebo", twins_per_patient=5, seed=5).tte
    first5 = run.tte[run.tte["USUBJID"].isin(set(five["USUBJID"]))]
    pd.testing.assert_frame_equal(first5.reset_index(drop=True), five.reset_index(drop=True))
    assert nested_pairs(model.tte) == [("DTHTX", "DEATH", True)] == model.tte_pairs


def test_event_time_helpers_by_hand():
    from services.generation.local.events import _censoring_times, event_times

    # Breslow H0 steps to 0.5 at day 2 and to 1.5 at day 4: spread by the target's position
    # within the step from the midpoint with the previous step (or day 0) to the midpoint with
    # the next (past the last step, its previous gap mirrored up to the last follow-up)
    h_t, h_v = np.array([2.0, 4.0]), np.array([0.5, 1.5])
    got = event_times(np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]), h_t, h_v)
    assert got == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, np.inf])
    # follow-up ending at the last step (events found at a final visit): spread below it only,
    # where the half past it was censored there; with follow-up to day 4.5, up to it
    got = event_times(np.array([1.0, 1.5]), h_t, h_v, end=4.0)
    assert got == pytest.approx([3.5, 4.0])
    assert event_times(np.array([1.0, 1.5]), h_t, h_v, end=4.5) == pytest.approx([3.75, 4.5])
    # a long gap before a short one: the spreads meet without overlapping, so the time still
    # rises with the target (the twins keep the model's risk order)
    got = event_times(np.array([0.99, 1.0, 1.01]), np.array([2.0, 10.0, 11.0]), np.array([0.5, 1.0, 1.5]))
    assert got == pytest.approx([6.0 + 0.98 * 4.5, 10.5, 10.5 + 0.02]) and np.all(np.diff(got) > 0)
    # reverse KM of censorings at 1 and 3, events at 2 and 4: P(C <= 1) = 1/4, P(C <= 3) = 5/8;
    # beyond, the last follow-up (day 4)
    t, c = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 0])
    assert _censoring_times(t, c, np.array([0.9, 0.5, 0.2])) == pytest.approx([0.5 + 0.4 * 1.5, 2.0 + 2 / 3 * 2, 4.0])
    # a censoring tied with an event: the event stays at risk (censorings leave first), so
    # P(C <= 1) = 1/3 of the three at risk, not 1/2
    t2, c2 = np.array([1.0, 1.0, 2.0]), np.array([0, 1, 0])
    assert _censoring_times(t2, c2, np.array([0.7, 0.6])) == pytest.approx([1.0 + 0.4, 2.0])
    # a last censoring step at the last follow-up is that end, not spread below it
    t3, c3 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1])
    assert _censoring_times(t3, c3, np.array([0.4, 0.1])) == pytest.approx([4.0, 4.0])


def test_event_twins_of_a_composite_endpoint_keep_the_real_event_rates(pbc, pbc_gen):
    # pbc: death censored at a transplant (one clock); death and the other causes are competing
    # risks with their own models, so the twins' rates match the arm's
    ids = _placebo(pbc)
    run = pbc_gen.generate(pbc.subset(_treated(pbc)).baseline_only(), "Placebo", twins_per_patient=20, seed=2)
    real = pbc.tte[pbc.tte["USUBJID"].isin(ids)]
    for q in ("DEATH", "DTHTX"):
        rate_twin = 1 - run.tte.loc[run.tte["PARAMCD"] == q, "CNSR"].mean()
        rate_real = 1 - real.loc[real["PARAMCD"] == q, "CNSR"].mean()
        assert abs(rate_twin - rate_real) < 0.04, (q, rate_twin, rate_real)


def test_counts_stay_whole_and_non_negative(demo_trials):
    epil = next(t for t in demo_trials if t.name == "epilepsy")
    gen = LocalGenerator(retriever_factory=ExactRetriever).fit(epil)
    run = gen.generate(epil.subset(_treated(epil)), "Placebo", twins_per_patient=5, seed=0)
    vals = run.values()["AVAL"]
    assert (vals >= 0).all() and np.allclose(vals, np.round(vals))
    assert run.tte is None


def test_external_sources_and_missing_visits_mode(pbc, pilot):
    """Sources from another trial (not in the knowledge base): the full model is used; with
    visits='neighbour' twins attend only their donor's visits."""
    gen = LocalGenerator(retriever_factory=ExactRetriever, visits="neighbour").fit(pbc)
    renamed = pbc.subset(_treated(pbc)[:15])
    new_ids = {u: "EXT-" + u for u in renamed.subjects["USUBJID"]}
    ext = dataclasses.replace(
        renamed, subjects=renamed.subjects.assign(USUBJID=renamed.subjects["USUBJID"].map(new_ids)),
        bds={k: v.assign(USUBJID=v["USUBJID"].map(new_ids)) for k, v in renamed.bds.items()},
        tte=None, name="external")
    run = gen.generate(ext, "Placebo", twins_per_patient=3, seed=0)
    assert run.adsl["SRCSUBJID"].str.startswith("EXT-").all()
    per_twin = run.values().groupby("USUBJID").size()
    full = len(gen.arm_model("Placebo").outcomes)
    assert per_twin.max() <= full and per_twin.min() < full   # drop-out pattern of donors


def test_progress_and_cancel_keep_what_is_done(pbc):
    gen = LocalGenerator(retriever_factory=ExactRetriever, chunk_size=10).fit(pbc)
    ids = _treated(pbc)[:35]
    calls = []
    run = gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=2, seed=0,
                       progress=lambda d, t: calls.append((d, t)))
    assert calls == [(10, 35), (20, 35), (30, 35), (35, 35)]
    stop = threading.Event()

    def progress(done, total):
        if done >= 20:
            stop.set()

    part = gen.generate(pbc.subset(ids), "Placebo", twins_per_patient=2, seed=0, progress=progress, cancel=stop)
    assert part.manifest["cancelled"] and part.manifest["counts"]["sources"] == 20
    assert set(part.adsl["SRCSUBJID"]) == set(ids[:20])
    done = run.bds["adlb"][run.bds["adlb"]["SRCSUBJID"].isin(ids[:20])].reset_index(drop=True)
    pd.testing.assert_frame_equal(done, part.bds["adlb"])
    none = gen.generate(pbc.subset(ids), "Placebo", cancel=lambda: True)
    assert none.n_twins == 0 and none.manifest["cancelled"]
