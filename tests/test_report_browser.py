"""`tunefm report`'s index.html in a real browser: headless Chromium (Debian's `chromium`,
driven by Playwright) with the network off loads it, renders every figure, and logs no
error. Without Chromium this test fails and says how to install it (.ci/run does)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from tunefm.analysis import report
from tunefm.run import store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INSTALL = "apt-get install chromium (Debian's package; .ci/run installs it)"


def open_offline(page_path: Path, screenshot: Path | None = None) -> dict:
    """Load a file in headless Chromium with the network off; what rendered, what it logged,
    and every URL it asked for."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"headless Chromium is needed for this test: {INSTALL}"
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function("[...document.querySelectorAll('.plotly-graph-div')]"
                                   ".every(d => d.querySelector('.main-svg'))", timeout=60_000)
            found = page.evaluate("""() => ({
                divs: document.querySelectorAll('.plotly-graph-div').length,
                rendered: [...document.querySelectorAll('.plotly-graph-div')]
                    .filter(d => d.querySelector('.main-svg') && d.getBoundingClientRect().height > 100).length,
                traces: [...document.querySelectorAll('.plotly-graph-div')].map(d => (d.data || []).length),
                titles: [...document.querySelectorAll('.plotly-graph-div .gtitle')].map(t => t.textContent),
                pareto: [...document.querySelectorAll('.plotly-graph-div')]
                    .filter(d => ((d.layout.title || {}).text || '').startsWith('Pareto front'))
                    .map(d => ({legend: [...d.querySelectorAll('.legendtext')].map(t => t.textContent),
                                points: [...d.querySelectorAll('.scatterlayer .trace')]
                                    .map(t => t.querySelectorAll('path.point').length),
                                traces: d.data.map(t => ({name: t.name, text: t.text, color: t.marker.color}))}))})""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {**found, "errors": errors, "requests": requests}


@pytest.mark.slow  # needs Chromium, which the fast tier does not ask of a developer
def test_the_report_loads_offline_and_renders_every_figure(small_fourfam, tmp_path):
    written = report.write(store.load_run(small_fourfam), tmp_path / "report", color_by="batch_size")
    page = written.index.read_text()
    assert not re.findall(r"<script[^>]*\bsrc=", page) and page.count(get_plotlyjs()[:2000]) == 1  # inline, once
    assert page.count("Plotly.newPlot(") == page.count('class="plotly-graph-div"') == 7
    seen = open_offline(written.index)
    assert seen["errors"] == []
    assert all(url.startswith(("file://", "data:", "blob:")) for url in seen["requests"]), seen["requests"]
    assert seen["divs"] == seen["rendered"] == 7 and all(n > 0 for n in seen["traces"])
    # The Pareto figure: trials ASHA stopped are drawn grey, apart from the front, each with its epochs.
    (pareto,) = seen["pareto"]
    trials = store.read_trials(small_fourfam).set_index("trial_id")
    stopped = set(trials.index[trials.stopped_early])
    traces = {t["name"].split(" (")[0]: t for t in pareto["traces"]}
    assert list(traces) == ["compared trial", "not compared", "Pareto front"]
    grey = traces["not compared"]
    assert {text.split("<br>")[0] for text in grey["text"]} == stopped and grey["color"] == "#c4ccd4"
    assert all(f"<br>{trials.epochs[text.split('<br>')[0]]} epoch(s)<br>stopped early by ASHA" in text
               for text in grey["text"])
    assert not {text.split("<br>")[0] for text in traces["Pareto front"]["text"]} & stopped
    assert any(entry.startswith("not compared") for entry in pareto["legend"])
    assert pareto["points"][1] == len(stopped)  # drawn: one marker per stopped trial
    for title in ("Learning curves of every trial, coloured by batch_size", "Parallel coordinates",
                  "over lr x batch_size, per model", "Hyperparameter importance", "Pareto front", "Timeline",
                  "Test-set confusion matrix"):
        assert any(title in t for t in seen["titles"]), (title, seen["titles"])
