"""Re-create the README screenshots: docs/screenshots/<page>.png, 1400x900, one per page.

    .venv/bin/python scripts/screenshots.py               # starts the app on a free port
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8501   # an app already running

Drives the same path as the browser test (tests/e2e/streamlit_ui.py): the default demo (PBC),
the Cohort page with the D-penicillamine arm, then every later page that is in the navigation
(Similar patients, What-if with a generated twin arm, Compare, Validate, Export & report).
Needs Debian's Chromium (`make browser`); emoji in the navigation need fonts-noto-color-emoji.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def _load_ui():
    # By path: site-packages may hold an unrelated top-level `tests` package.
    path = ROOT / "tests" / "e2e" / "streamlit_ui.py"
    spec = importlib.util.spec_from_file_location("twinarm_streamlit_ui", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ui = _load_ui()


def shoot(page, out: Path, title: str, full: bool) -> Path:
    ui.assert_no_exception(page)
    path = ui.screenshot(page, out / f"{ui.slug(title)}.png", full_page=full)
    print(f"  {title:<20} -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def run(url: str, out: Path, full: bool) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    shots = []
    with sync_playwright() as playwright:
        browser = ui.launch_browser(playwright)
        try:
            page = ui.new_page(browser)
            ui.open_app(page, url)
            expect(ui.metric_value(page, "Subjects")).to_have_text("312")
            shots.append(shoot(page, out, ui.PAGE_OVERVIEW, full))

            ui.go_to(page, ui.PAGE_COHORT)
            ui.build_cohort(page, ["D-penicillamine"])
            expect(ui.metric_value(page, "N")).to_have_text("158")
            shots.append(shoot(page, out, ui.PAGE_COHORT, full))

            if ui.has_page(page, ui.PAGE_SIMILAR):
                ui.go_to(page, ui.PAGE_SIMILAR, timeout=ui.SLOW_TIMEOUT_MS)
                if ui.main(page).get_by_role("button", name="Find similar patients", exact=True).count():
                    ui.click_button(page, "Find similar patients", timeout=ui.SLOW_TIMEOUT_MS)
                shots.append(shoot(page, out, ui.PAGE_SIMILAR, full))

            if ui.has_page(page, ui.PAGE_WHATIF):
                ui.go_to(page, ui.PAGE_WHATIF, timeout=ui.SLOW_TIMEOUT_MS)
                ui.generate_twin_arm(page)
                shots.append(shoot(page, out, ui.PAGE_WHATIF, full))
                for title in (ui.PAGE_COMPARE, ui.PAGE_VALIDATE, ui.PAGE_EXPORT):
                    if ui.has_page(page, title):
                        ui.go_to(page, title, timeout=ui.SLOW_TIMEOUT_MS)
                        if title == ui.PAGE_VALIDATE:
                            ui.click_button(page, "Run backtest", timeout=ui.SLOW_TIMEOUT_MS)
                        shots.append(shoot(page, out, title, full))
            missing = [t for t in (ui.PAGE_SIMILAR, ui.PAGE_WHATIF, ui.PAGE_COMPARE, ui.PAGE_VALIDATE,
                                   ui.PAGE_EXPORT) if not ui.has_page(page, t)]
            if missing:
                print(f"  not in the navigation yet (no screenshot): {', '.join(missing)}")
        finally:
            browser.close()
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use this running app instead of starting one")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--full-page", action="store_true",
                        help="whole pages instead of the 1400x900 viewport")
    args = parser.parse_args(argv)

    problem = ui.chromium_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    server = None
    if not args.url:
        home = Path(tempfile.mkdtemp(prefix="twinarm-shots-home-"))
        server = ui.start_app(home=home, log_path=ui.ARTIFACTS / "screenshots-streamlit.log")
    try:
        url = args.url or server.url
        print(f"screenshots of {url}:")
        shots = run(url, args.out, args.full_page)
    except Exception as exc:  # noqa: BLE001 - any failure: say what and where, exit 1
        print(f"error: {exc}", file=sys.stderr)
        if server is not None:
            print(f"streamlit log ({server.log_path}):\n{server.log_tail(2000)}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    print(f"{len(shots)} screenshots in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
