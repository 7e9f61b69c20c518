"""`sjc3d app` end to end in a real browser: headless Chromium driven by Playwright.

The server runs as a user would start it (`sjc3d app --port N`, a subprocess); the browser
is Debian's chromium (Playwright cannot download its own here) with its background networking
off, and every request that is not to this machine is refused and recorded, so the test also
shows that the page needs nothing from the internet.  Stages, each with a screenshot in
outputs/browser/: upload an example → preprocessed view; novel views; a short fit with the
oracle preset → live previews → the mesh in the 3D viewer → the GLB downloaded and loaded; a
corrupt upload → the one-line error, and the server still answers; two fits submitted from two
pages at once → the second waits its turn, both finish.

Run with `make test-browser` (installs chromium and the extras) or `pytest -m browser tests/browser`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "outputs" / "browser"
CHROMIUM = os.environ.get("SJC3D_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
FIT_STEPS = 30  # oracle cpu-tiny: enough for a recognisable mesh in a few seconds
SERVER_START_S = 180
FIT_TIMEOUT_MS = 300_000


class Timings:
    """Wall time of each stage, written to outputs/browser/timings.json (figures, not limits)."""

    def __init__(self, name: str):
        self.name, self.values, self.t0 = name, {}, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.values[stage] = round(now - self.t0, 2)
        self.t0 = now

    def write(self) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / "timings.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data[self.name] = self.values
        path.write_text(json.dumps(data, indent=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_api():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or run make test-browser)")
    pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e .[app]")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e .[browser]")


@pytest.fixture(scope="module")
def server(playwright_api, tiny_zero123, tmp_path_factory):
    """`sjc3d app` on a free port with the tiny random Zero-1-to-3 (the oracle preset needs none)."""
    runs = tmp_path_factory.mktemp("app-runs")
    port = free_port()
    log_path = runs.parent / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sjc3d.cli", "app", "--model", str(tiny_zero123["ccp"]), "--runs", str(runs),
               "--port", str(port), "--device", "cpu"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    timings = Timings("server")
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"sjc3d app exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"sjc3d app did not answer within {SERVER_START_S} s:\n{log_path.read_text()}")
        time.sleep(0.5)
    timings.lap("start_to_first_page")
    timings.write()
    yield {"url": url, "runs": runs, "process": process, "log": log_path}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """One browser tab on the app; requests off this machine are refused and remembered."""

    def __init__(self, browser, url: str, downloads: Path):
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        self.external: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_selector("#upload")
        self.downloads = downloads

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def wait_text(self, selector: str, pattern: str, timeout_ms: int = 60_000) -> str:
        """Wait until the element's text matches `pattern` (a regex); return the text."""
        self.page.wait_for_function(
            "([sel, pat]) => { const e = document.querySelector(sel); return e && new RegExp(pat).test(e.innerText); }",
            arg=[selector, pattern], timeout=timeout_ms)
        return self.text(selector)

    def upload(self, path: Path) -> None:
        clear = self.page.locator("#upload button[aria-label*='lear']")  # a file is shown: remove it first
        if clear.count():
            clear.first.click()
        self.page.locator("#upload input[type=file]").set_input_files(str(path))

    def set_number(self, elem_id: str, value) -> None:
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")

    def choose_preset(self, name: str) -> None:
        self.page.locator("#preset input").click()
        self.page.get_by_role("option", name=name, exact=True).click()

    def open_tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def start_fit(self, preset: str, steps: int) -> None:
        self.open_tab("3D")
        self.choose_preset(preset)
        self.set_number("fit-steps", steps)
        self.page.locator("#fit-button").click()

    def close(self) -> None:
        self.context.close()


def non_white_fraction(png: bytes) -> float:
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.int16)
    return float((np.abs(rgb - 255).max(-1) > 30).mean())


def example_image() -> Path:
    from sjc3d.app.examples import example_images

    return example_images()[0]


def test_the_app_in_a_browser(server, browser, tmp_path):
    import trimesh

    timings = Timings("one_page")
    tab = Page(browser, server["url"], tmp_path)
    page = tab.page
    assert "sjc3d" in page.title()
    timings.lap("page_load")
    tab.shot("1-page")

    # Input: upload an example, see the view the model will get.
    example = example_image()
    tab.upload(example)
    assert tab.wait_text("#input-status", "^ready").startswith(f"ready: {example.name}")
    page.locator("#prepared img").wait_for(state="visible")
    timings.lap("upload_to_preprocessed_view")
    tab.shot("2-input")

    # Novel views from the prior alone.
    tab.set_number("ddim-steps", 5)
    tab.set_number("samples", 2)
    page.locator("#views-button").click()
    tab.wait_text("#views-status", "^2 views", timeout_ms=120_000)
    assert page.locator("#gallery img").count() >= 2
    timings.lap("views_2x5_ddim_tiny_model")
    tab.shot("3-views")

    # A short fit with the oracle preset: live previews, then the mesh in the 3D viewer.
    tab.start_fit("cpu-tiny", FIT_STEPS)
    timings.lap("choose_preset")
    # A step line, or already the end: a fit this small can finish between two looks.
    tab.wait_text("#fit-status", r"step \d+/%d|^done:" % FIT_STEPS, timeout_ms=FIT_TIMEOUT_MS)
    page.locator("#preview img").wait_for(state="visible", timeout=FIT_TIMEOUT_MS)
    tab.shot("4-fit-running")
    status = tab.wait_text("#fit-status", "^done:", timeout_ms=FIT_TIMEOUT_MS)
    run_dir = Path(re.search(r"run directory (\S+)", status).group(1))
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    canvas = page.locator("#model3d canvas")
    canvas.wait_for(state="visible")
    timings.lap(f"fit_{FIT_STEPS}_steps_export_turntable_zip")
    page.wait_for_timeout(3000)  # let the viewer load the GLB and draw a few frames
    assert non_white_fraction(canvas.screenshot()) > 0.01, "the 3D viewer shows no mesh"
    tab.shot("5-mesh")

    # Download the GLB as a user would and load it.
    with page.expect_download() as download:
        page.locator('#downloads a[download="mesh.glb"]').click()
    glb = tmp_path / "downloaded.glb"
    download.value.save_as(glb)
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 100
    files = page.locator("#downloads a[download]").evaluate_all("links => links.map(a => a.download)")
    for name in ("mesh.obj", "mesh.ply", "turntable", ".zip"):
        assert any(name in file for file in files), (name, files)

    # A corrupt upload: the loader's one-line error in the page, and the server carries on.
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really an image")
    tab.upload(corrupt)
    message = tab.wait_text("#input-status", "^error:")
    assert message == "error: corrupt.png is not an image PIL can read (expected PNG/JPEG/WebP ...)"
    tab.shot("6-corrupt-upload")
    assert server["process"].poll() is None
    tab.upload(example)
    tab.wait_text("#input-status", "^ready")

    assert tab.external == [], f"the page asked for files off this machine: {tab.external}"
    tab.close()
    timings.write()


def test_two_fits_at_once_wait_their_turn(server, browser, tmp_path):
    tabs = [Page(browser, server["url"], tmp_path) for _ in range(2)]
    for tab in tabs:
        tab.upload(example_image())
        tab.wait_text("#input-status", "^ready")
    timings = Timings("two_pages")
    # Fit on the first page, and on the second as soon as the first has started: the second
    # waits in Gradio's queue, with its place shown, while the first runs.
    tabs[0].start_fit("cpu-tiny", FIT_STEPS)
    tabs[0].wait_text("#fit-status", r"starting|step \d+/", timeout_ms=FIT_TIMEOUT_MS)
    tabs[1].start_fit("cpu-tiny", FIT_STEPS)
    tabs[1].page.wait_for_function("() => /queue/i.test(document.querySelector('#fit-status').parentElement.innerText)",
                                   timeout=60_000)
    tabs[1].shot("7-second-fit-queued")
    statuses = [tab.wait_text("#fit-status", "^done:", timeout_ms=2 * FIT_TIMEOUT_MS) for tab in tabs]
    timings.lap(f"two_fits_{FIT_STEPS}_steps_each")
    timings.write()
    runs = [Path(re.search(r"run directory (\S+)", s).group(1)) for s in statuses]
    assert runs[0] != runs[1]
    first, later = sorted(runs, key=lambda r: (r / "config.yaml").stat().st_mtime)
    assert (first.parent / f"{first.name}.zip").stat().st_mtime <= (later / "config.yaml").stat().st_mtime
    for tab in tabs:
        assert tab.external == []
        tab.close()
