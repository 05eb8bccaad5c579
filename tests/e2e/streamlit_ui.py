"""Drive TwinArm in a real browser: start the app, launch Debian's Chromium, read Streamlit's DOM.

Plain functions (no pytest here) so both the e2e test (`tests/e2e/`) and
`scripts/screenshots.py` use the same code. Three layers:

1. processes: `start_app()` runs `streamlit run app.py` on a free port with an isolated
   TWINARM_HOME and no LLM keys; `launch_browser()` starts Chromium with the flags this
   machine's closed network needs.
2. Streamlit DOM helpers: wait for a rerun to finish, find widgets by their label, read
   metrics and dataframes, navigate with the sidebar links, download files.
3. TwinArm steps: `switch_trial`, `build_cohort`, `generate_twin_arm`, ... small functions the
   test chains and asserts on.

Streamlit 1.67 DOM notes (what these helpers rely on):
- `[data-testid="stApp"]` carries `data-test-connection-state` (CONNECTED) and
  `data-test-script-state` (initial / running / notRunning / ...). After an interaction the
  state flips to `running` only after a websocket round trip, so "is it notRunning now?" can
  pass against the page *before* the rerun. `install_run_counter()` counts every
  running -> notRunning transition with a MutationObserver so `rerun()` can wait for a run
  that finished *after* the interaction.
- Elements can render a few hundred ms after the state says notRunning, and elements of the
  previous run stay on screen (marked `data-stale="true"`) until replaced: assert with
  Playwright's retrying `expect(...)`, never on a one-off read.
- `stStatusWidget` ("Running...") only appears for runs longer than about a second;
  don't rely on it alone.
- selectbox and multiselect are react-aria ComboBoxes: an `<input role="combobox"
  aria-label="<label>">` (also with `label_visibility="collapsed"`); options are
  `role="option"` in a listbox rendered in a popover outside the widget.
- st.dataframe is a canvas (Glide data grid); its text is only in a visually hidden
  `<table role="grid">` (header `th`, cells `td`, `aria-rowcount` = rows + header) with only
  the rows scrolled into view.
- Sidebar navigation: `[data-testid="stSidebarNav"] a[data-testid="stSidebarNavLink"]`; the
  link text is the page title. Clicking keeps the session; `page.goto(url + "/cohort")` starts a
  NEW session (fresh session_state), so navigate by clicking.
- st.metric: `[data-testid="stMetric"]` with `stMetricLabel` and `stMetricValue` inside.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TWINARM_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections (component updates,
# sync, QUIC probes) are refused by the closed network and slow or break the launch.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
ARTIFACTS = ROOT / "artifacts" / "e2e"
NUMBA_CACHE = ROOT / ".pytest_cache" / "twinarm_home" / "numba_cache"

TIMEOUT_MS = 30_000          # one rerun (page switch, cohort change)
SLOW_TIMEOUT_MS = 120_000    # generating a twin arm, computing validation metrics

# Variables that must not reach the app under test (LLM keys, a remote Chroma).
_SCRUBBED_ENV = ("OPENAI_", "CHROMA_HOST", "CHROMA_PORT", "TWINARM_LLM_")


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    """A `streamlit run app.py` process in its own process group."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    home: Path
    _log_file: object = field(default=None, repr=False)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the whole process group, SIGKILL if it lingers, and reap it (no zombie)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout)
        else:
            self.proc.wait()
        # Children that outlived the leader (none expected) still share the group id.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def app_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV)}
    env.update(
        TWINARM_HOME=str(home),
        # The app compiles UMAP's numba code in a background thread at start, cached under
        # TWINARM_HOME: with a fresh home that is ~35 s of CPU every run instead of ~10 s, so
        # keep the compiled code where the unit tests keep theirs (git-ignored).
        NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR") or str(NUMBA_CACHE),
        ANONYMIZED_TELEMETRY="False",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        STREAMLIT_SERVER_HEADLESS="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_app(home: Path, log_path: Path, port: int | None = None,
              timeout: float = 90) -> AppServer:
    """Start the app and wait until `/_stcore/health` answers "ok"."""
    port = port or free_port()
    streamlit = Path(sys.executable).with_name("streamlit")
    if not streamlit.exists():
        streamlit = ROOT / ".venv" / "bin" / "streamlit"
    home.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 (closed in AppServer.stop)
    proc = subprocess.Popen(
        [str(streamlit), "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=app_env(home), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    server = AppServer(f"http://127.0.0.1:{port}", proc, log_path, home, log)
    try:
        wait_healthy(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_healthy(server: AppServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    health = server.url + "/_stcore/health"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.proc.returncode} before it "
                               f"answered; its log:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.read().decode().strip() == "ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{health} did not answer 'ok' within {timeout:.0f} s; "
                       f"streamlit log:\n{server.log_tail()}")


def chromium_problem(executable: str = CHROMIUM) -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        return (f"Chromium not found at {executable}: run `make browser` (installs Debian's "
                "chromium with apt) or set TWINARM_CHROMIUM to a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed in this environment (pip install -e '.[dev]')"
    return None


def launch_browser(playwright, executable: str = CHROMIUM, headless: bool = True):
    """Chromium from the system. Playwright's launch() gives it a fresh temporary
    user-data-dir (removed at close), so no profile state leaks between runs."""
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                      headless=headless, timeout=60_000)


def new_page(browser, downloads: bool = True):
    """A page in a new context: a new Streamlit session, 1400x900, downloads accepted."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=downloads)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    install_run_counter(page)
    return page


# ---------------------------------------------------------------------------- Streamlit DOM

_RUN_COUNTER_JS = """
(() => {
  if (window.__twinarmRuns !== undefined) return;
  window.__twinarmRuns = 0;
  const observer = new MutationObserver(records => {
    for (const r of records) {
      const now = r.target.getAttribute('data-test-script-state');
      if (r.oldValue !== now && now === 'notRunning') window.__twinarmRuns += 1;
    }
  });
  observer.observe(document, {subtree: true, attributes: true, attributeOldValue: true,
                              attributeFilter: ['data-test-script-state']});
})();
"""

APP = '[data-testid="stApp"]'
IDLE = (f'{APP}[data-test-connection-state="CONNECTED"]'
        f'[data-test-script-state="notRunning"]')


def install_run_counter(page) -> None:
    """Count finished script runs in `window.__twinarmRuns` (set before any navigation)."""
    page.add_init_script(_RUN_COUNTER_JS)


def runs(page) -> int:
    return page.evaluate("window.__twinarmRuns || 0")


def wait_idle(page, timeout: float = TIMEOUT_MS, after: int | None = None) -> None:
    """Wait until the script is not running, nothing is stale and no skeleton is left.

    `after`: a value of `runs(page)` read before an interaction; then also wait until a run
    finished after it (so we do not mistake the state before the rerun for its result).
    """
    from playwright.sync_api import expect

    if after is not None:
        try:
            page.wait_for_function(f"(window.__twinarmRuns || 0) > {after}", timeout=timeout)
        except Exception as exc:
            raise AssertionError(f"no Streamlit rerun finished within {timeout / 1000:.0f} s "
                                 "after the interaction") from exc
    page.locator(IDLE).wait_for(state="attached", timeout=timeout)
    expect(page.locator('[data-testid="stStatusWidgetRunningIcon"]')).to_have_count(0, timeout=timeout)
    expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=timeout)
    expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0, timeout=timeout)


def rerun(page, action, timeout: float = TIMEOUT_MS) -> None:
    """Do `action()` (a click, a selection) and wait for the rerun it triggers to finish."""
    before = runs(page)
    action()
    wait_idle(page, timeout, after=before)


def open_app(page, url: str, timeout: float = 60_000) -> None:
    """Open the app (a new session) and wait for its first run and its first element."""
    from playwright.sync_api import expect

    page.goto(url, wait_until="domcontentloaded", timeout=timeout)
    page.locator(APP).wait_for(state="attached", timeout=timeout)
    page.wait_for_function("(window.__twinarmRuns || 0) > 0", timeout=timeout)
    wait_idle(page, timeout)
    expect(page.locator('[data-testid="stMainBlockContainer"] h1').first).to_be_visible(timeout=timeout)


def assert_no_exception(page) -> None:
    """Fail with the traceback text if the page shows a Python exception box."""
    boxes = page.locator('[data-testid="stException"]')
    if boxes.count():
        raise AssertionError("the page shows an exception:\n" + boxes.first.inner_text()[:3000])


def sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def main(page):
    return page.locator('[data-testid="stMain"]')


def nav_titles(page) -> list[str]:
    """Titles of the pages in the sidebar navigation (the link text minus the icon)."""
    links = page.locator('[data-testid="stSidebarNav"] a')
    return [t.strip().splitlines()[-1].strip() for t in links.all_inner_texts() if t.strip()]


def has_page(page, title: str) -> bool:
    return title in nav_titles(page)


def go_to(page, title: str, timeout: float = TIMEOUT_MS) -> None:
    """Switch page with the sidebar link (keeps the session) and wait for its run; on the page
    already, only wait until the app is idle."""
    from playwright.sync_api import expect

    link = page.locator('[data-testid="stSidebarNav"] a').filter(
        has=page.get_by_text(title, exact=True))
    if link.count() == 0:
        raise AssertionError(f"no '{title}' link in the sidebar navigation; pages: {nav_titles(page)}")
    if link.first.get_attribute("aria-current") == "page":   # its rerun once never came under load
        wait_idle(page, timeout)
        return
    rerun(page, lambda: link.first.click(), timeout)
    expect(link.first).to_have_attribute("aria-current", "page", timeout=timeout)


def select_option(page, label: str, option: str, scope=None, timeout: float = TIMEOUT_MS) -> None:
    """Choose `option` in the st.selectbox labelled `label` (ComboBox: click, pick from the list)."""
    scope = scope or page
    box = scope.get_by_role("combobox", name=label, exact=True)
    if box.input_value() == option:
        return  # choosing the current value would not rerun
    box.click()
    listbox = page.get_by_role("listbox")
    rerun(page, lambda: listbox.get_by_role("option", name=option, exact=True).click(), timeout)


def selected_value(page, label: str, scope=None) -> str:
    return (scope or page).get_by_role("combobox", name=label, exact=True).input_value()


def multiselect_add(page, label: str, option: str, scope=None, timeout: float = TIMEOUT_MS) -> None:
    """Add `option` to the st.multiselect labelled `label` and close its list."""
    scope = scope or page
    box = scope.get_by_role("combobox", name=label, exact=True)
    box.click()
    listbox = page.get_by_role("listbox")
    rerun(page, lambda: listbox.get_by_role("option", name=option, exact=True).click(), timeout)
    if page.get_by_role("listbox").count():
        page.keyboard.press("Escape")


def multiselect_values(page, label: str, scope=None) -> list[str]:
    """The chosen tags of the st.multiselect labelled `label`."""
    widget = (scope or page).locator('[data-testid="stMultiSelect"]').filter(
        has=page.get_by_role("combobox", name=label, exact=True))
    return [t.get_attribute("aria-label") for t in widget.locator("[data-tag]").all()]


def click_button(page, name: str, scope=None, timeout: float = TIMEOUT_MS) -> None:
    """Click the st.button called `name` and wait for the rerun to finish."""
    button = (scope or page).get_by_role("button", name=name, exact=True)
    rerun(page, lambda: button.click(), timeout)


def metric(page, label: str, scope=None):
    """The st.metric whose label is exactly `label` (a locator)."""
    return (scope or main(page)).locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))


def metric_value(page, label: str, scope=None):
    """Locator of the value of the st.metric labelled `label` (use with expect().to_have_text)."""
    return metric(page, label, scope).locator('[data-testid="stMetricValue"]')


def metrics(page, scope=None) -> dict[str, str]:
    out = {}
    for m in (scope or main(page)).locator('[data-testid="stMetric"]').all():
        label = m.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = m.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return out


def dataframes(page, scope=None):
    return (scope or main(page)).locator('[data-testid="stDataFrame"]')


def dataframe_columns(frame) -> list[str]:
    """Column headers of an st.dataframe (from the grid's hidden accessible table)."""
    frame.locator('table[role="grid"]').wait_for(state="attached")
    return [t.strip() for t in frame.locator('table[role="grid"] th').all_text_contents()]


def dataframe_row_count(frame) -> int:
    """Rows of the dataframe (all of them, not only those rendered)."""
    grid = frame.locator('table[role="grid"]')
    grid.wait_for(state="attached")
    return int(grid.get_attribute("aria-rowcount")) - 1


def dataframe_rows(frame) -> list[list[str]]:
    """The cell texts of the rows currently rendered (the grid virtualizes long tables)."""
    grid = frame.locator('table[role="grid"]')
    grid.wait_for(state="attached")
    return grid.evaluate(
        "t => [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')]"
        ".map(c => c.textContent.trim()))")


def dataframe_after_heading(page, heading: str):
    """The first st.dataframe below the heading/subheader whose text starts with `heading`."""
    return main(page).locator(
        f'xpath=//*[self::h1 or self::h2 or self::h3 or self::h4]'
        f'[starts-with(normalize-space(.), "{heading}")]'
        f'/following::*[@data-testid="stDataFrame"][1]')


def download(page, button_name: str, dest_dir: Path, timeout: float = SLOW_TIMEOUT_MS) -> Path:
    """Click an st.download_button and save the file; returns its path."""
    button = page.get_by_role("button", name=button_name, exact=True)
    button.wait_for(state="visible", timeout=timeout)
    with page.expect_download(timeout=timeout) as info:
        button.click()
    dl = info.value
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / dl.suggested_filename
    dl.save_as(path)
    wait_idle(page, timeout)  # a download button reruns the script by default
    return path


def screenshot(page, path: Path, full_page: bool = False, max_height: int = 6000) -> Path:
    """Screenshot after the app settled, scrolled to the top (README images start at the title).

    `full_page`: the whole page. Streamlit scrolls inside `<main data-testid="stMain">`, not the
    document, so Playwright's own full_page gives only the viewport: grow the viewport to the
    height of the main content for the shot, then restore it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wait_idle(page)
    page.mouse.move(page.viewport_size["width"] - 20, page.viewport_size["height"] - 20)  # no hover
    page.evaluate("""() => {
        const m = document.querySelector('[data-testid="stMain"]'); if (m) m.scrollTo(0, 0);
        window.scrollTo(0, 0); }""")
    size = page.viewport_size
    if full_page:
        height = page.evaluate("""() => {
            const m = document.querySelector('[data-testid="stMain"]');
            return m ? m.scrollHeight : document.documentElement.scrollHeight; }""")
        page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height, max_height))})
    try:
        page.wait_for_timeout(500)  # plotly and the data grids redraw after layout
        page.screenshot(path=str(path), animations="disabled")
    finally:
        if full_page:
            page.set_viewport_size(size)
    return path


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


# ---------------------------------------------------------------------------- TwinArm steps
# Labels and titles here are the UI contract the pages honour (see tests/e2e/test_browser.py).

TRIAL_SELECT = "Bundled public trial"
PAGE_OVERVIEW = "Overview"
PAGE_COHORT = "Cohort"
PAGE_SIMILAR = "Similar patients"
PAGE_WHATIF = "What-if: twin arm"
PAGE_COMPARE = "Compare"
PAGE_VALIDATE = "Validate"
PAGE_EXPORT = "Export & report"
GENERATE_BUTTON = "Generate twin arm"
REPORT_BUTTON = "Download report (HTML)"
ZIP_BUTTON = "Download twin arm (zip)"


def switch_trial(page, name: str) -> None:
    """Pick a bundled trial in the sidebar selectbox (loading it is slow beside background work)."""
    select_option(page, TRIAL_SELECT, name, scope=sidebar(page), timeout=SLOW_TIMEOUT_MS)


def sidebar_trial_title(page):
    """Locator of the bold trial title the sidebar shows under the selectbox."""
    return sidebar(page).locator('[data-testid="stMarkdownContainer"] strong').first


def build_cohort(page, arms: list[str], use: bool = True) -> None:
    """On the Cohort page: choose the arms (empty = all), then "Use this cohort"."""
    for arm in arms:
        multiselect_add(page, "Arms", arm, scope=main(page))
    if use:
        click_button(page, "Use this cohort", scope=main(page))


def generate_twin_arm(page, timeout: float = SLOW_TIMEOUT_MS) -> None:
    """On the What-if page: press "Generate twin arm" and wait for the run to finish."""
    click_button(page, GENERATE_BUTTON, scope=main(page), timeout=timeout)


def tempdir(prefix: str = "twinarm-e2e-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
