"""Headless Chromium (the system's, driven by Playwright) opens the report file and the live dashboard."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nas.cli import app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("NAS_REQUIRE_BROWSER") == "1":
            pytest.fail("NAS_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install chromium")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url, offline=False):
    """A page at `url` that records console errors, uncaught exceptions and any request leaving file://."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.problems, page.fetched = [], []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    if offline:
        page.route(re.compile(r"^(?!file:).*"), lambda route: (page.fetched.append(route.request.url), route.abort()))
    page.goto(url)
    return page


def test_report_renders_every_figure_offline_without_errors(browser, finished_study, tmp_path):
    db, _ = finished_study
    out = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", "--storage", db, "--out", str(out)]).exit_code == 0
    page = open_page(browser, out.as_uri(), offline=True)
    ids = page.eval_on_selector_all("section.figure", "els => els.map(e => e.id)")
    assert ids == ["history", "curves", "importances", "parallel", "slices", "pareto-params", "pareto-flops",
                   "confusion", "per-class"]
    assert_drawn(page, ids)


def test_the_report_of_a_search_for_accuracy_and_latency_draws_its_front(browser, multi_study, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--storage", multi_study, "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = open_page(browser, out.as_uri(), offline=True)
    ids = page.eval_on_selector_all("section.figure", "els => els.map(e => e.id)")
    assert {"history", "pareto", "pareto-latency"} <= set(ids), ids
    assert "a Pareto front of" in page.inner_text("body")
    assert_drawn(page, ids)


def assert_drawn(page, ids: list[str]) -> None:
    """Plotly drew every figure: data traces exist and each plot area holds drawn marks; nothing was fetched."""
    for fig_id in ids:
        page.wait_for_function(f"document.getElementById('fig-{fig_id}')._fullData !== undefined")
        traces, marks = page.evaluate(
            f"(() => {{ const gd = document.getElementById('fig-{fig_id}'); return [gd._fullData.length,"
            " gd.querySelectorAll('.main-svg path.point, .main-svg path.js-line, .main-svg .bars path, "
            ".main-svg image, .main-svg .parcoords, .main-svg .hm').length]; })()")
        assert traces > 0 and marks > 0, (fig_id, traces, marks)
    assert page.fetched == [] and page.problems == []
    page.close()


def test_dashboard_serves_the_study_and_stops_on_ctrl_c(browser, finished_study):
    db, _ = finished_study
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", "--storage", db, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as a background job starts
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+", line).group(0)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard/studies/\d+", url), line
        page = open_page(browser, url.split("studies/")[0])
        page.get_by_text("tiny").first.wait_for(timeout=20000)
        page.goto(url + "/trials")
        page.get_by_text("30 Trials").wait_for(timeout=20000)
        assert page.problems == []
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=20)
        finally:
            proc.kill()  # one that did not stop must not outlive the test
    assert proc.returncode == 0 and "dashboard stopped" in rest
