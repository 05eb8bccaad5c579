"""The user's path through TwinArm in a real browser (Debian's Chromium driven by Playwright).

Steps of pages that are not in the navigation yet are skipped and start running as soon as
the page lands in app.py's PAGES.

Sessions: the Overview and "before a run" checks each open a fresh session; the user's path
proper (Cohort -> Similar patients -> What-if -> Compare -> Validate -> Export) shares ONE
session, as a user's would (Streamlit keeps the cohort and the run in the session): the cohort
is built once (`cohort_session`), the twin arm generated once (`twin_session`).

UI CONTRACT the pages honour (what this test and scripts/screenshots.py click and read):
- Navigation titles (sidebar links, from app.py): "Overview", "Cohort", "Similar patients",
  "What-if: twin arm", "Compare", "Validate", "Export & report".
- Sidebar: st.selectbox "Bundled public trial" (options = bundled demo names: "pbc" default,
  "epilepsy", ...); below it the trial title in bold.
- Overview: st.metric "Subjects" (312 for pbc) and one st.metric per arm; the trial title
  as a header.
- Cohort: st.multiselect labelled "Arms" (empty = all arms); st.metric "N"; button
  "Use this cohort"; the subheader "Table 1: baseline characteristics" followed by the
  Table 1 st.dataframe (columns "Variable", "Statistic", one per arm, "Overall", first row N).
- Similar patients: with its defaults (no click needed; a button "Find similar patients" is
  clicked if there is one) and the cohort chosen on Cohort, it shows an st.dataframe of
  neighbours with a patient id column ("Patient" or "USUBJID"), a "Similarity" (or distance)
  column and, if it has an "Arm" column, the chosen cohort patient first and neighbours from
  the control arm, most similar first, never the patient themself.
- What-if: twin arm: a button "Generate twin arm" that works with the page's defaults and no
  LLM key (offline generator) on the cohort chosen on Cohort; when the twin arm is ready the
  page shows an st.success message. Generation may take up to SLOW_TIMEOUT_MS (120 s).
- Compare: before a run, no exception (a pointer to What-if); after a run, at least one plotly
  chart (st.plotly_chart).
- Validate: before and after a run, the backtest verdicts and the PROCOVA st.metric
  "Patients, PROCOVA" (an integer).
- Export & report: before a run, no exception; after a run, st.download_button
  "Download report (HTML)" (a self-contained .html file: no external script, contains the
  trial title) and st.download_button
  "Download twin arm (zip)" (a zip of ADaM-lite files with manifest.json and adsl.csv, which
  TwinArm's own importer loads back: one or more twins for each of the 158 cohort patients).
No page may show a Python exception box (stException) on this path.
"""

from __future__ import annotations

import json
import re
import zipfile

import pytest

from . import streamlit_ui as ui
from .conftest import keep_evidence

try:
    from playwright.sync_api import expect
except ImportError:  # the fixtures skip (or fail in CI) with the reason
    expect = None

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PBC_TITLE = "Mayo Clinic PBC trial"
EPILEPSY_TITLE = "Progabide in partial epilepsy"
COHORT_ARM = "D-penicillamine"
COHORT_N = 158


def require_page(page, title: str) -> None:
    assert ui.has_page(page, title), f"page '{title}' is not in the navigation (pages: {ui.nav_titles(page)})"


def shoot(page, artifacts, title: str) -> None:
    ui.screenshot(page, artifacts / f"{ui.slug(title)}.png", full_page=True)


def integer():
    return re.compile(r"^\d+$")


# ---------------------------------------------------------------------------- fresh sessions


def test_overview_shows_the_default_demo(page, app_url, artifacts):
    ui.open_app(page, app_url)
    ui.assert_no_exception(page)
    expect(ui.main(page).get_by_role("heading", name=re.compile(PBC_TITLE))).to_be_visible()
    expect(ui.metric_value(page, "Subjects")).to_have_text("312")
    expect(ui.metric_value(page, "D-penicillamine")).to_have_text("158")
    expect(ui.metric_value(page, "Placebo (control)")).to_have_text("154")
    assert ui.selected_value(page, ui.TRIAL_SELECT, scope=ui.sidebar(page)) == "pbc"
    expect(ui.sidebar_trial_title(page)).to_contain_text(PBC_TITLE)
    assert ui.nav_titles(page)[:2] == [ui.PAGE_OVERVIEW, ui.PAGE_COHORT]
    shoot(page, artifacts, ui.PAGE_OVERVIEW)


def test_switching_the_bundled_trial_and_back(page, app_url, artifacts):
    ui.open_app(page, app_url)
    ui.switch_trial(page, "epilepsy")
    ui.assert_no_exception(page)
    expect(ui.sidebar_trial_title(page)).to_contain_text(EPILEPSY_TITLE)
    expect(ui.main(page).get_by_role("heading", name=re.compile(EPILEPSY_TITLE))).to_be_visible()
    expect(ui.metric_value(page, "Subjects")).to_have_text("59")
    shoot(page, artifacts, "Overview epilepsy")

    ui.switch_trial(page, "pbc")
    expect(ui.sidebar_trial_title(page)).to_contain_text(PBC_TITLE)
    expect(ui.metric_value(page, "Subjects")).to_have_text("312")
    assert ui.selected_value(page, ui.TRIAL_SELECT, scope=ui.sidebar(page)) == "pbc"


def test_later_pages_open_before_a_twin_arm_exists(page, app_url, artifacts):
    """Before any twin arm: no exception; Compare/Export point to What-if; Validate backtests.
    (One session for the three pages: each app start costs seconds.)"""
    ui.open_app(page, app_url)
    present = [t for t in (ui.PAGE_COMPARE, ui.PAGE_VALIDATE, ui.PAGE_EXPORT) if ui.has_page(page, t)]
    assert len(present) == 3, f"Compare, Validate and Export must be in the navigation ({ui.nav_titles(page)})"
    for title in present:
        ui.go_to(page, title, timeout=ui.SLOW_TIMEOUT_MS)
        ui.assert_no_exception(page)
        # a title or a message (e.g. "No twin arm yet: generate one on the What-if page")
        expect(ui.main(page).locator('h1, [data-testid="stAlert"]').first).to_be_visible()
        if title == ui.PAGE_VALIDATE:  # the backtest needs no run; it starts when asked for
            ui.click_button(page, "Run backtest", timeout=ui.SLOW_TIMEOUT_MS)
            expect(ui.metric_value(page, "Patients, PROCOVA")).to_have_text(
                integer(), timeout=ui.SLOW_TIMEOUT_MS)
        shoot(page, artifacts, f"{title} before a run")


# ---------------------------------------------------------------------------- the user's path
# One session: build the cohort once, then Similar patients, then generate the twin arm once and
# read it on Compare, Validate and Export.


def _session_page(browser, artifacts, name):
    page = ui.new_page(browser)
    return page, artifacts / f"FAILED-{name}.png"


@pytest.fixture(scope="module")
def cohort_session(browser, app_url, artifacts):
    """A session where the D-penicillamine cohort was built and kept ("Use this cohort")."""
    page, failed = _session_page(browser, artifacts, "cohort_session")
    try:
        ui.open_app(page, app_url)
        ui.go_to(page, ui.PAGE_COHORT)
        expect(ui.metric_value(page, "N")).to_have_text("312")
        ui.build_cohort(page, [COHORT_ARM])
        yield page
    except Exception:  # a failure, not a skip: keep a picture of where it stopped
        if not page.is_closed():
            page.screenshot(path=str(failed), full_page=True)
        raise
    finally:
        page.context.close()


@pytest.fixture
def cohort_page(request, cohort_session, app_server, artifacts):
    yield cohort_session
    keep_evidence(request, cohort_session, app_server, artifacts)


def test_cohort_of_the_d_penicillamine_arm(cohort_page, artifacts):
    page = cohort_page
    ui.go_to(page, ui.PAGE_OVERVIEW)     # leave and come back: the kept cohort survives other pages
    ui.go_to(page, ui.PAGE_COHORT)
    ui.assert_no_exception(page)
    assert ui.multiselect_values(page, "Arms", scope=ui.main(page)) == [COHORT_ARM]
    expect(ui.metric_value(page, "N")).to_have_text(str(COHORT_N))
    expect(ui.metric(page, "Placebo (control)")).to_have_count(0)
    expect(ui.main(page).get_by_text(re.compile(rf"{COHORT_N} subjects"))).not_to_have_count(0)

    table1 = ui.dataframe_after_heading(page, "Table 1")
    expect(table1).to_be_visible()
    assert ui.dataframe_columns(table1)[:4] == ["Variable", "Statistic", COHORT_ARM, "Overall"]
    rows = ui.dataframe_rows(table1)
    assert rows[0][0] == "N" and rows[0][2:4] == [str(COHORT_N)] * 2, rows[:2]
    assert ui.dataframe_row_count(table1) > 5
    shoot(page, artifacts, ui.PAGE_COHORT)


def neighbours_table(page):
    """The st.dataframe with a patient id column and a Similarity (or distance) column."""
    frames = ui.dataframes(page)
    expect(frames.first).to_be_visible(timeout=ui.SLOW_TIMEOUT_MS)
    seen = []
    for i in range(frames.count()):
        columns = ui.dataframe_columns(frames.nth(i))
        seen.append(columns)
        if ({"Patient", "USUBJID"} & set(columns)
                and any(re.search(r"simil|distance", c, re.IGNORECASE) for c in columns)):
            return frames.nth(i), columns
    pytest.fail(f"no neighbours table (patient id + similarity columns) on the page: {seen}")


def test_similar_patients_of_a_cohort_patient(cohort_page, artifacts):
    page = cohort_page
    require_page(page, ui.PAGE_SIMILAR)
    ui.go_to(page, ui.PAGE_SIMILAR, timeout=ui.SLOW_TIMEOUT_MS)
    find = ui.main(page).get_by_role("button", name="Find similar patients", exact=True)
    if find.count():
        ui.click_button(page, "Find similar patients", scope=ui.main(page), timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(page)

    table, columns = neighbours_table(page)
    rows = [dict(zip(columns, r)) for r in ui.dataframe_rows(table)]
    id_col = "Patient" if "Patient" in columns else "USUBJID"
    sim_col = next(c for c in columns if re.search(r"simil|distance", c, re.IGNORECASE))
    patient_id = re.compile(r"PBC-\d+")
    neighbours = [r for r in rows[1:] if r[sim_col] and patient_id.fullmatch(r[id_col])]
    assert patient_id.fullmatch(rows[0][id_col]) and neighbours, rows[:3]
    # The patient comes from the cohort chosen on Cohort; by default the neighbours are searched
    # in the control arm (where twins come from), most similar first, never the patient themself.
    if "Arm" in columns:
        assert rows[0]["Arm"] == COHORT_ARM, rows[0]
        assert {r["Arm"] for r in neighbours} == {"Placebo"}, neighbours
    assert rows[0][id_col] not in {r[id_col] for r in neighbours}, "a patient is their own neighbour"
    if re.search(r"simil", sim_col, re.IGNORECASE):
        values = [float(r[sim_col]) for r in neighbours]
        assert all(-1 <= v <= 1 for v in values) and values == sorted(values, reverse=True), values
    shoot(page, artifacts, ui.PAGE_SIMILAR)


@pytest.fixture(scope="module")
def twin_session(cohort_session, artifacts):
    """The cohort session after "Generate twin arm" on the What-if page."""
    page = cohort_session
    require_page(page, ui.PAGE_WHATIF)
    try:
        ui.go_to(page, ui.PAGE_WHATIF, timeout=ui.SLOW_TIMEOUT_MS)
        ui.assert_no_exception(page)
        ui.generate_twin_arm(page)
    except Exception:
        page.screenshot(path=str(artifacts / "FAILED-twin_session.png"), full_page=True)
        raise
    return page


@pytest.fixture
def twin_page(request, twin_session, app_server, artifacts):
    yield twin_session
    keep_evidence(request, twin_session, app_server, artifacts)


def test_whatif_generates_a_twin_arm(twin_page, artifacts):
    ui.go_to(twin_page, ui.PAGE_OVERVIEW)    # leave and come back: the run's note is kept
    ui.go_to(twin_page, ui.PAGE_WHATIF, timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(twin_page)
    expect(ui.main(twin_page).locator('[data-testid="stAlertContentSuccess"]').first).to_be_visible()
    shoot(twin_page, artifacts, ui.PAGE_WHATIF)


def test_compare_shows_the_twin_arm(twin_page, artifacts):
    require_page(twin_page, ui.PAGE_COMPARE)
    ui.go_to(twin_page, ui.PAGE_COMPARE, timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(twin_page)
    expect(ui.main(twin_page).locator('[data-testid="stPlotlyChart"]').first).to_be_visible()
    shoot(twin_page, artifacts, ui.PAGE_COMPARE)
    # the Effect tab's button reruns the page: its result shows in the tab still open (a review saw
    # the page return to Trajectories with the result hidden in Effect)
    tab = ui.main(twin_page).get_by_role("tab", name="Effect", exact=True)
    ui.rerun(twin_page, lambda: tab.click())
    ui.click_button(twin_page, "Estimate the effect", timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(twin_page)
    expect(tab).to_have_attribute("aria-selected", "true")
    expect(ui.main(twin_page).get_by_text("the patient is the unit of inference", exact=False).first).to_be_visible(
        timeout=ui.SLOW_TIMEOUT_MS)


def test_validate_shows_metrics(twin_page, artifacts):
    require_page(twin_page, ui.PAGE_VALIDATE)
    ui.go_to(twin_page, ui.PAGE_VALIDATE, timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(twin_page)
    ui.click_button(twin_page, "Run backtest", timeout=ui.SLOW_TIMEOUT_MS)
    expect(ui.main(twin_page).get_by_text("twins per held-out patient", exact=False).first).to_be_visible(
        timeout=ui.SLOW_TIMEOUT_MS)
    expect(ui.metric_value(twin_page, "Patients, PROCOVA")).to_have_text(integer(),
                                                                       timeout=ui.SLOW_TIMEOUT_MS)
    shoot(twin_page, artifacts, ui.PAGE_VALIDATE)


def test_export_downloads_the_report_and_the_zip(twin_page, artifacts, downloads):
    require_page(twin_page, ui.PAGE_EXPORT)
    ui.go_to(twin_page, ui.PAGE_EXPORT, timeout=ui.SLOW_TIMEOUT_MS)
    ui.assert_no_exception(twin_page)
    shoot(twin_page, artifacts, ui.PAGE_EXPORT)

    report = ui.download(twin_page, ui.REPORT_BUTTON, downloads)
    html = report.read_text(encoding="utf-8")
    assert report.suffix == ".html", report.name
    assert "<html" in html.lower() and PBC_TITLE in html
    assert not re.search(r"<script[^>]+src=[\"']https?://", html, re.IGNORECASE), "report loads an external script"

    archive = ui.download(twin_page, ui.ZIP_BUTTON, downloads)
    assert archive.suffix == ".zip", archive.name
    with zipfile.ZipFile(archive) as zf:
        files = {name.rsplit("/", 1)[-1]: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
    assert {"manifest.json", "adsl.csv"} <= set(files), sorted(files)
    json.loads(files["manifest.json"])

    from services.data.loading import load_trial_files
    from services.data.readers import RawFile

    # manifest.json is provenance, not a dataset: the importer takes the rest as it is.
    data_files = [RawFile(name, data) for name, data in files.items() if name != "manifest.json"]
    twins = load_trial_files(data_files, name="e2e twins")
    assert "USUBJID" in files["adsl.csv"].decode().splitlines()[0]
    assert len(twins.subjects) >= COHORT_N and len(twins.subjects) % COHORT_N == 0, len(twins.subjects)
