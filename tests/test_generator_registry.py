"""Adding a generator is one module plus one registry line: a toy generator registered here is
offered by the CLI (`--generator`, its declared default K) and by the What-if page, and runs
through the contract's template methods (validation, manifest, timings, run id)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from services.cli import main
from services.data.loading import load_trial
from services.data.trial import Trial
from services.generation import (
    GENERATORS,
    Capabilities,
    GeneratorError,
    TwinGenerator,
    get_generator,
    register,
    unregister,
)
from services.generation.assembly import assemble_run, run_counts

APP = str(Path(__file__).resolve().parents[1] / "app.py")


class VisitMeanGenerator(TwinGenerator):
    """Every twin gets the target arm's mean value at every scheduled visit (no time to event):
    the simplest generator the contract allows."""

    name = "visitmean"
    description = "Each twin: the target arm's mean at every visit."
    capabilities = Capabilities(label="visit mean (toy)", supports_tte=False, twins_per_patient=2,
                                neighbors=1)

    def __init__(self, shift: float = 0.0):
        self.shift = float(shift)

    def _fit(self, knowledge_base: Trial, retriever) -> None:
        self._means = knowledge_base.visit_values.groupby(["ARM", "PARAMCD", "AVISITN", "AVISIT"],
                                                          as_index=False)[["AVAL", "ADY"]].mean()

    def _generate(self, src, target_arm, k, seed, manifest, progress, cancel):
        kb = self.knowledge_base
        means = self._means[self._means["ARM"] == target_arm]
        ids = list(src.subjects["USUBJID"])
        rows = [(s, t, r.PARAMCD, r.AVAL + self.shift, r.ADY, r.AVISITN, r.AVISIT)
                for s in ids for t in range(1, k + 1) for r in means.itertuples()]
        frame = pd.DataFrame(rows, columns=["SRCSUBJID", "_TW", "PARAMCD", "AVAL", "ADY", "AVISITN",
                                            "AVISIT"])
        frame["USUBJID"] = [f"{s}-T{t}" for s, t in zip(frame["SRCSUBJID"], frame["_TW"])]
        dataset = {p: i.dataset for p, i in kb.parameters.items()}
        generated = {name: [g] for name, g in frame.groupby(frame["PARAMCD"].map(dataset))}
        adsl, bds, ok = assemble_run(src, kb, ids, k, target_arm, generated, set(),
                                     manifest["trial"]["labels"])
        manifest["counts"] = run_counts(ok, len(ids), adsl, bds, None, [])
        if progress:
            progress(len(ids), len(ids))
        from services.generation.run import TwinRun

        return TwinRun(adsl=adsl, bds=bds, tte=None, manifest=manifest)


@pytest.fixture
def toy():
    register(VisitMeanGenerator)
    yield VisitMeanGenerator
    unregister("visitmean")


def test_the_template_methods_validate_and_fill_the_manifest(toy, pbc):
    gen = get_generator("visitmean", shift=1.5)
    with pytest.raises(GeneratorError, match="not fitted"):
        gen.generate(pbc, "Placebo")
    with pytest.raises(GeneratorError, match="must be a Trial"):
        gen.fit("pbc")
    gen.fit(pbc)
    with pytest.raises(GeneratorError, match="not an arm"):
        gen.generate(pbc.subset(list(pbc.subjects["USUBJID"][:3])), "Aspirin")
    treated = list(pbc.subjects.loc[pbc.subjects["ARM"] == "D-penicillamine", "USUBJID"][:4])
    run = gen.generate(pbc.subset(treated), "Placebo", seed=3)
    m = run.manifest
    assert m["generator"] == "visitmean" and m["settings"] == {"shift": 1.5}
    assert m["twins_per_patient"] == 2 and run.n_twins == 8           # the declared default K
    assert m["run_id"] and m["created"] and {"fit_s", "total_s"} <= set(m["timings"])
    values = run.values()
    real = pbc.visit_values[pbc.visit_values["ARM"] == "Placebo"]
    expect = real.groupby(["PARAMCD", "AVISITN"])["AVAL"].mean() + 1.5
    got = values.groupby(["PARAMCD", "AVISITN"])["AVAL"].first()
    assert np.allclose(got.to_numpy(), expect.loc[got.index].to_numpy())
    # baseline records are the sources' own, copied to each twin
    base = run.bds["adlb"][run.bds["adlb"]["ABLFL"] == "Y"]
    assert len(base) == 2 * len(pbc.baseline_long[pbc.baseline_long["USUBJID"].isin(treated)])


def test_the_cli_offers_a_registered_generator(toy, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "--trial", "pbc", "--target-arm", "Placebo", "--cohort-arm",
                 "D-penicillamine", "--generator", "visitmean", "--setting", "shift=2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "visitmean" and manifest["settings"] == {"shift": 2.0}
    twins = load_trial(out)
    assert len(twins.subjects) == 158 * 2
    assert main(["generate", "--trial", "pbc", "--target-arm", "Placebo", "--cohort-arm", "Placebo",
                 "--generator", "visitmean", "--setting", "scale=2", "--out", str(tmp_path / "x")]) == 1
    assert "not a setting of the visitmean generator (settings: shift)" in capsys.readouterr().err


def test_the_cli_rejects_an_unregistered_name(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--trial", "pbc", "--target-arm", "Placebo", "--cohort-arm", "Placebo",
              "--generator", "visitmean", "--out", "/tmp/never"])
    assert "invalid choice: 'visitmean'" in capsys.readouterr().err
    assert "visitmean" not in GENERATORS


def test_the_what_if_page_offers_a_registered_generator(toy):
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/whatif.py").run()
    assert not at.exception, at.exception
    radio = at.radio(key="whatif_generator")
    # AppTest lists the options as displayed: each generator's declared label, registry order
    assert list(radio.options) == ["local (offline, statistical)", "llm (TWIN-GPT style, chat model)",
                                   "visit mean (toy)"]
    radio.set_value("visitmean").run()
    assert not at.exception, at.exception
    assert at.number_input(key="whatif_k_visitmean").value == 2          # its declared default K
    assert at.number_input(key="whatif_neighbours_visitmean").value == 1
