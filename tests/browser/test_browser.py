"""The notebooks and the report as a reader opens them: JupyterLab from the kit's environment in headless Chromium
(Debian's package, driven by playwright without a browser download of its own). `make test-browser` runs it.

Everything happens on copies under ``runs/browser/`` (notebooks, their outputs, figures, screenshots, a report of
its own run); no tracked file is touched.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from moescope import paths

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
#: flags for a closed network: no background connections, no first-run, no sandbox (root)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ROOT = paths.RUNS / "browser"
NOTEBOOKS = ("00_quick_tour.ipynb", "59_explorer.ipynb")
TOKEN = "moescope-browser-test"
CELL_SECONDS = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    """A JupyterLab server on a copy of notebooks 00 and 59 (its app exposed to page scripts); its URL."""
    work = ROOT / "lab"
    shutil.rmtree(ROOT, ignore_errors=True)
    work.mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copy(paths.NOTEBOOKS / name, work / name)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MOESCOPE_HEADLESS"} | {"MOESCOPE_FIGURES": str(ROOT / "figures")}
    log = open(ROOT / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         "--ServerApp.disable_check_xsrf=True", "--allow-root"], cwd=work, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; see {ROOT / 'jupyterlab.log'}") from None
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium package is missing: `make test-browser` installs it"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext || !panel.sessionContext.session) return null;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  return {kernel: panel.sessionContext.kernelDisplayStatus,
          counts: cells.map(c => c.model.executionCount),
          errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                                       .map(o => o.ename + ': ' + o.evalue))};
}"""


def _run_all(page, url: str, name: str) -> dict:
    """Open ``name`` in JupyterLab, run all cells, wait until every code cell ran and the kernel is idle."""
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={TOKEN}")  # a workspace of its own
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext "
                           "&& window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'",
                           timeout=120_000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + CELL_SECONDS
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE)
        if state and state["kernel"] == "idle" and all(c is not None for c in state["counts"]):
            return state
        time.sleep(1)
    raise AssertionError(f"{name} did not finish within {CELL_SECONDS} s: {state}")


def test_quick_tour_runs_clean_in_jupyterlab(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    state = _run_all(page, lab, "00_quick_tour.ipynb")
    page.screenshot(path=str(ROOT / "00_quick_tour.png"), full_page=True)
    assert state["errors"] == [] and len(state["counts"]) >= 5


def test_explorer_renders_its_widgets_and_every_control_redraws(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    state = _run_all(page, lab, "59_explorer.ipynb")
    assert state["errors"] == []
    selects = page.locator(".jupyter-widgets select")
    page.wait_for_function("() => document.querySelectorAll('.jupyter-widgets select').length >= 3", timeout=60_000)
    panel = page.locator(".jupyter-widgets .widget-output img").first
    panel.wait_for(timeout=60_000)  # the default selection is drawn under the controls from the start
    page.locator(".jupyter-widgets.widget-vbox").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ROOT / "59_explorer.png"))
    choices = {"model": {"label": "olmoe-like"}, "relation": {"label": "name_birthplace"}, "prompt": {"index": 1}}
    for i, (control, choice) in enumerate(choices.items()):
        before = panel.get_attribute("src")
        assert selects.nth(i).locator("option").count() >= 2, f"the {control} control offers one choice only"
        selects.nth(i).select_option(**choice)
        try:
            page.wait_for_function("(old) => { const img = document.querySelector('.jupyter-widgets .widget-output "
                                   "img'); return img && img.src !== old; }", arg=before, timeout=120_000)
        finally:
            page.screenshot(path=str(ROOT / f"59_explorer_{control}.png"))
        assert "Traceback" not in page.locator(".jupyter-widgets .widget-output").first.inner_text()


def test_report_loads_every_figure_of_both_papers(browser):
    """The report of a run of every notebook (into runs/browser/report, not the default run) shows each figure."""
    out = ROOT / "runs"
    subprocess.run([sys.executable, "-m", "moescope", "run", "--out", str(out), "--run", "report"], check=True,
                   stdout=subprocess.DEVNULL)
    report = out / "report" / "report.html"
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(report.as_uri())
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete && e.naturalWidth > 0])")
    page.screenshot(path=str(ROOT / "report.png"))
    names = {alt for alt, _ in images}
    assert all(ok for _, ok in images), [alt for alt, ok in images if not ok]
    assert any(n.startswith("attr_") for n in names) and any(n.startswith("desmoe_") for n in names)
    recorded = set()
    for metrics in (out / "report").glob("*/*.metrics.json"):
        recorded |= set(json.loads(metrics.read_text()).get("figures") or [])
    assert recorded and recorded <= names, sorted(recorded - names)
