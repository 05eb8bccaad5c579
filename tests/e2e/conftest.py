"""Fixtures of the browser test: the app in a subprocess, Debian's Chromium through Playwright.

- `app_server` / `app_url` (session): `streamlit run app.py` on a free port of 127.0.0.1 with a
  temporary TWINARM_HOME and no OPENAI_* variables; ready once `/_stcore/health` answers "ok";
  its process group is terminated (and reaped) at teardown. Its log: artifacts/e2e/streamlit-PORT.log.
- `browser` (session): Chromium at /usr/bin/chromium (or $TWINARM_CHROMIUM) with the flags the
  closed network needs, a fresh temporary profile.
- `page` (per test): a new browser context, i.e. a new Streamlit session, 1400x900.
  A failing test leaves artifacts/e2e/FAILED-<test>.png and the tail of the server log.

Without Chromium the tests are skipped with the reason (run `make browser`), except in CI
(`CI` set): there they fail, so CI never passes by silently skipping the browser test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import streamlit_ui as ui

HERE = Path(__file__).resolve().parent


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config, items):
    # Everything under tests/e2e is an e2e test, so `-m "not e2e"` leaves all of it out.
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    problem = ui.chromium_problem()
    if problem:
        if in_ci():
            pytest.fail(f"browser test cannot run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    return ui.CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """artifacts/e2e: page screenshots of this run; a previous run's failure pictures go."""
    ui.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ui.ARTIFACTS.glob("FAILED-*.png"):
        old.unlink(missing_ok=True)
    return ui.ARTIFACTS


@pytest.fixture(scope="session")
def app_server(chromium_executable, tmp_path_factory, artifacts):
    port = ui.free_port()  # in the log's name: concurrent runs on one machine keep apart
    server = ui.start_app(home=tmp_path_factory.mktemp("twinarm_home"), port=port,
                          log_path=artifacts / f"streamlit-{port}.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def app_url(app_server) -> str:
    return app_server.url


@pytest.fixture(scope="session")
def browser(chromium_executable):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = ui.launch_browser(playwright, chromium_executable)
        try:
            yield browser
        finally:
            browser.close()


def keep_evidence(request, page, app_server, artifacts) -> None:
    """After a failed test: a screenshot of where the page was and the server's log tail."""
    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    if not failed or page.is_closed():
        return
    path = artifacts / f"FAILED-{request.node.name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
        print(f"\nscreenshot of the failing page: {path}")
    except Exception as exc:  # noqa: BLE001 - evidence is best effort
        print(f"\nno screenshot of the failing page: {exc}")
    print(f"streamlit log ({app_server.log_path}):\n{app_server.log_tail(3000)}")


@pytest.fixture
def page(request, browser, app_server, artifacts):
    """A fresh Streamlit session (new browser context)."""
    page = ui.new_page(browser)
    try:
        yield page
    finally:
        keep_evidence(request, page, app_server, artifacts)
        page.context.close()


@pytest.fixture
def downloads(tmp_path) -> Path:
    return tmp_path / "downloads"
