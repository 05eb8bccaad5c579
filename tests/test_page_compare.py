"""AppTest of the Compare page on a local twin arm of the default demo."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_compare_page_without_a_run_points_to_what_if():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert any("No twin arm yet" in i.value for i in at.info)


def test_compare_page_renders_every_tab_on_a_run(pbc, pbc_twins):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["twin_run"] = pbc_twins
    at.session_state["twin_run_dir"] = None
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert "Compare twins with real patients" in at.title[0].value
    assert [t.label for t in at.tabs] == ["Trajectories", "Survival", "Effect", "Embeddings", "Similarity",
                                          "Metrics"]
    labels = [m.label for m in at.metric]
    assert "HR source vs twin arm" in labels and "Log-rank p, twins vs real" in labels
    frames = [d.value for d in at.dataframe]
    headline = next(f for f in frames if "verdict" in f.columns)
    assert {"fidelity", "privacy", "utility", "survival"} <= set(headline["group"])
    assert list(headline.columns) == ["verdict", "group", "metric", "value", "95 % interval", "ideal",
                                      "threshold", "meaning", "detail"]
    dcr = headline.set_index("metric").loc["DCR ratio (twins / real)"]
    assert dcr["threshold"] == "≥ 1" and dcr["95 % interval"] != "–"
    assert dcr["verdict"] != "✅ met" or float(dcr["value"]) >= 1                 # never green below 1
    at.radio(key="cmp_method").set_value("t-SNE").run()
    assert not at.exception
    at.selectbox(key="cmp_param").set_value("ALB").run()
    assert not at.exception
    # the effect is estimated on request: patients as the unit, generator refits
    assert at.button(key="cmp_effects_go").label == "Estimate the effect"
    at.button(key="cmp_effects_go").click().run()
    assert not at.exception, at.exception
    # the button is gone as soon as its result shows (it stayed above it on the click's run)
    assert not [b for b in at.button if b.key == "cmp_effects_go"]
    table = next(d.value for d in at.dataframe if "95 % CI" in d.value.columns)
    assert {"mean difference", "mean difference, doubly robust", "ratio of geometric means",
            "ratio of geometric means, doubly robust", "hazard ratio", "RMST difference (days)"} <= set(table["measure"])
    # a positive lab value offers the log scale (its interval not yet calibrated: the mean
    # difference comes first); the forest plot switches to the ratio
    at.selectbox(key="cmp_effect_param").set_value("BILI").run()
    assert at.radio(key="cmp_effect_scale_BILI").value == "mean_difference"
    assert "difference (real - twins)" in _forest_axes(at)
    at.radio(key="cmp_effect_scale_BILI").set_value("geometric_mean_ratio").run()
    assert not at.exception, at.exception
    assert "ratio (real / twins) (log scale)" in _forest_axes(at)
    at.radio(key="cmp_effect_scale_BILI").set_value("mean_difference_dr").run()
    assert not at.exception, at.exception
    assert "difference (real - twins)" in _forest_axes(at)
    assert any("BILI: real minus twins, doubly robust" in t for t in _forest_titles(at))
    at.radio(key="cmp_effect_scale_BILI").set_value("geometric_mean_ratio_dr").run()
    assert not at.exception, at.exception
    assert "ratio (real / counterfactual) (log scale)" in _forest_axes(at)
    assert any("BILI: real / counterfactual, geometric means, doubly robust" in t for t in _forest_titles(at))
    dr_rows = table[table["measure"].str.endswith("doubly robust")]
    assert dr_rows["real controls"].str.endswith(" effective)").all()         # how many controls the weights spent
    assert (table.loc[~table["measure"].str.endswith("doubly robust"), "real controls"] == "").all()
    # the 40 source patients (those observed at a visit), never the 80 twins
    assert (table.loc[table["measure"] == "hazard ratio", "patients"] == 40).all()
    assert table["patients"].max() == 40
    assert any("20 generator refits" in c.value for c in at.caption)
    methods = next(e for e in at.expander if e.label == "Methods (as in the report)")
    assert any("ratio of geometric means" in m.value and "log real" in m.value for m in methods.markdown)


def _forest_titles(at) -> list[str]:
    """The titles of the Plotly charts on the page."""
    import json

    out = []
    for el in at.get("plotly_chart"):
        title = (json.loads(el.proto.spec).get("layout") or {}).get("title") or {}
        out.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return out


def _forest_axes(at) -> list[str]:
    """The x-axis titles of the Plotly charts on the page."""
    import json

    out = []
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        out.append(((spec.get("layout") or {}).get("xaxis") or {}).get("title", {}).get("text", ""))
    return out


def test_choices_on_compare_and_similar_survive_a_visit_to_another_page(pbc, pbc_twins):
    # Streamlit drops a widget's state when its page is not drawn: a browser review chose SYSBP on
    # the log scale, went to Validate and came back to DIABP, raw (Similar: the patient and x axis)
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["twin_run"] = pbc_twins
    at.session_state["twin_run_dir"] = None
    at.switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_param").set_value("ALB").run()
    default_scale = at.radio(key="cmp_scale_ALB").value
    other = next(o for o in at.radio(key="cmp_scale_ALB").options if o != default_scale)
    at.radio(key="cmp_scale_ALB").set_value(other).run()
    at.selectbox(key="cmp_tte").set_value("DTHTX").run()
    at.switch_page("pages/similar.py").run()
    scope = pbc.content_hash[:12]
    patient = at.selectbox(key=f"similar_patient_{scope}").options[3]
    at.selectbox(key=f"similar_patient_{scope}").set_value(patient).run()
    at.radio(key=f"similar_x_{scope}").set_value("Visit").run()
    at.switch_page("pages/validate.py").run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cmp_param").value == "ALB"
    assert at.radio(key="cmp_scale_ALB").value == other
    assert at.selectbox(key="cmp_tte").value == "DTHTX"
    at.switch_page("pages/similar.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key=f"similar_patient_{scope}").value == patient
    assert at.radio(key=f"similar_x_{scope}").value == "Visit"
    assert not at.warning or all("Session State" not in w.value for w in at.warning)


def test_a_kept_value_that_no_longer_fits_falls_back_to_the_default(demo_trials):
    # a code review: k 30 on a 31-patient arm, then an arm of 28, gave k 1 (Streamlit's minimum), not 10
    epilepsy = next(t for t in demo_trials if t.name == "epilepsy")
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["trial"] = epilepsy
    at.session_state["trial_source"] = "demo"
    at.run()
    at.switch_page("pages/similar.py").run()
    scope = epilepsy.content_hash[:12]
    at.selectbox(key=f"similar_arm_{scope}").set_value("Progabide").run()
    at.number_input(key=f"similar_k_{scope}").set_value(30).run()
    assert at.number_input(key=f"similar_k_{scope}").value == 30
    at.selectbox(key=f"similar_arm_{scope}").set_value("Placebo").run()
    assert not at.exception, at.exception
    assert at.number_input(key=f"similar_k_{scope}").value == 10
