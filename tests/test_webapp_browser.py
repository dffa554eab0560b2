"""The web app end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python).

`bld serve --model tiny-random` runs as a subprocess on a free localhost port. The browser opens the page,
uploads an image, paints one stroke with the brush, types a prompt, starts a long edit (its progress bar
must count diffusion steps) and stops it, runs a short edit and waits for the gallery;
the best result, downloaded as the page serves it, must differ from the input inside the stroke (mean
absolute difference above 10 levels) and equal it away from the stroke (every pixel farther than 10 px from
the stroke's centre line within 1 level; the default pixel reconstruction makes it exact) and carry its
parameters in its PNG metadata. The page must also work with every request to another host blocked.

The screenshot of the page with its results is saved as test-artifacts/webapp-browser.png in the repository
(gitignored), test-artifacts/webapp-browser-failure.png when the test fails, and the server's output as
test-artifacts/webapp-server.log.

Needs the `playwright` package (the test extra; its driver ships in the wheel, no browser download) and
/usr/bin/chromium (`apt-get install chromium`; .ci/run installs it): without them the browser test is skipped,
saying which is missing, unless BLD_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure. The check that
only the app's own files are served needs neither.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import free_port, make_image

from bld.apps.webapp import MAX_UPLOAD_MB

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STROKE_Y, STROKE_X0, STROKE_X1 = 44, 12, 52  # one horizontal stroke, in image pixels of the 64x64 input
BRUSH_SIZE = 5
OUTSIDE_DISTANCE = 10  # pixels farther than this from the stroke's centre line must be kept
OUTSIDE_TOLERANCE = 1  # levels (of 255)
INSIDE_MIN_MEAN_DIFF = 10  # levels: the tiny random model paints noise where the mask is


@pytest.fixture(scope="module")
def server():
    """`bld serve --model tiny-random` on a free port; yields its URL; stopped (SIGTERM) afterwards."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "webapp-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bld", "serve", "--model", "tiny-random", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bld serve exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"bld serve did not answer within 180 s: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def status_of(response_url: str) -> int:
    try:
        with urllib.request.urlopen(response_url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_apps_own_files_are_served(server, tmp_path):
    outside = Path(os.environ.get("TMPDIR", "/tmp")) / f"bld-not-served-{os.getpid()}.txt"
    outside.write_text("private")
    try:
        for path in (ROOT / "README.md", ROOT / "pyproject.toml", outside, Path("/etc/hostname")):
            assert status_of(f"{server}gradio_api/file={path}") == 403, path
        assert status_of(f"{server}gradio_api/file=README.md") == 403
    finally:
        outside.unlink()


def _browser_or_skip():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]'; scripts/test.sh installs it)"
    if missing is None and not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        missing = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    if missing is not None:
        if os.environ.get("BLD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BLD_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    return sync_playwright


def stroke_distance(shape) -> np.ndarray:
    """Each pixel's distance to the stroke's centre line (a horizontal segment)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    dx = np.clip(x, STROKE_X0, STROKE_X1) - x
    return np.hypot(dx, y - STROKE_Y)


def test_paint_prompt_edit_in_a_real_browser(server, tmp_path):
    sync_playwright = _browser_or_skip()
    image = make_image()
    image_path, text_path, big_path = tmp_path / "photo.png", tmp_path / "notes.png", tmp_path / "huge.png"
    image.save(image_path)
    text_path.write_text("not an image")
    ARTIFACTS.mkdir(exist_ok=True)
    blocked: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})

        def local_only(route):
            if route.request.url.startswith(("http://127.0.0.1", "blob:", "data:")):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        try:
            page.goto(server)
            page.wait_for_selector("#run", timeout=60_000)
            status = lambda: page.inner_text("#status")  # noqa: E731

            def wait_status(text: str) -> str:
                page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                                       timeout=120_000)
                return status()

            # an unsupported file gets the library's message on the page
            page.set_input_files("#image-file input[type=file]", str(text_path))
            assert "cannot read 'notes.png': not an image file" in wait_status("Error")
            page.click("#image-file button[aria-label='Clear']")
            wait_status("Upload an image")

            # an upload over the size limit is refused before it is sent, with Gradio's message on the page
            with open(big_path, "wb") as big:
                big.truncate(MAX_UPLOAD_MB * 2**20 + 1)
            page.set_input_files("#image-file input[type=file]", str(big_path))
            page.get_by_text("exceed the maximum allowed size").wait_for(timeout=30_000)
            assert "Upload an image" in status()  # nothing reached the app

            page.set_input_files("#image-file input[type=file]", str(image_path))
            assert "64x64" in wait_status("Loaded 'photo.png'")
            page.fill("#prompt textarea", "a red apple")
            page.fill("#param-num_inference_steps input[type=number]", "4")
            page.fill("#param-num_images input[type=number]", "2")
            page.fill("#param-seed textarea, #param-seed input", "7")

            # nothing painted yet: the page says so and runs nothing
            page.click("#run")
            assert "the mask is empty" in wait_status("Error")

            # paint one stroke with the brush, at a chosen brush size
            page.click("#editor button[aria-label='Brush']")
            page.click("#editor button[aria-label='Brush Size']")
            page.fill("#editor input[type=range]", str(BRUSH_SIZE))
            page.keyboard.press("Escape")
            box = page.locator("#editor canvas").first.bounding_box()
            zoom = float(page.inner_text("#editor .zoom-number").strip().rstrip("%")) / 100
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

            def at(x, y):  # image pixel centre -> page coordinates (the image is centred in the canvas)
                return cx + (x + 0.5 - image.width / 2) * zoom, cy + (y + 0.5 - image.height / 2) * zoom

            page.mouse.move(*at(STROKE_X0, STROKE_Y))
            page.mouse.down()
            for x in range(STROKE_X0, STROKE_X1 + 1, 2):
                page.mouse.move(*at(x, STROKE_Y))
            page.mouse.up()

            # a long edit shows its progress per diffusion step, and Stop cancels it
            page.fill("#param-num_inference_steps input[type=number]", "1000")
            page.click("#run")
            page.wait_for_function("document.querySelector('#gallery').innerText.match(/denoising, step \\d+ of 750/)",
                                   timeout=60_000)
            assert re.search(r"\d+/750 steps", page.inner_text("#gallery"))  # the bar's count
            page.click("#stop")
            assert "Cancelled: nothing was produced." in wait_status("Cancelled")  # not "Nothing was running."
            # the cancelled event ends at its next step; Gradio ignores Edit clicks until it has ended
            page.wait_for_function("!document.querySelector('#gallery').innerText.match(/denoising/)",
                                   timeout=60_000)

            page.fill("#param-num_inference_steps input[type=number]", "4")
            page.click("#run")
            message = wait_status("Done")
            assert "2 results" in message and "best first" in message
            page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "webapp-browser.png"), full_page=True)
            sources = [img.get_attribute("src") for img in page.query_selector_all("#gallery img")]
            table = page.locator("#results-table").inner_text()
            downloads = page.locator("#downloads").inner_text()
            best = page.request.get(sources[0])
            assert best.ok
            payload = best.body()
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "webapp-browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    assert blocked == []  # the page asked nothing of any other host: it works offline
    served = sources[0].split("gradio_api/file=", 1)[1]
    assert Path(served).parent.parent.name == "results" and Path(served).parents[2].name.startswith("bld-serve-")
    for name in ("bld-1-seed", "bld-2-seed"):  # the scores table and the download list show both results
        assert name in table and name in downloads
    assert "bld-3-seed" not in table
    result_png = PIL.Image.open(BytesIO(payload))
    record = json.loads(result_png.text["bld"])
    assert record["params"]["prompt"] == "a red apple" and record["params"]["seed"] in (7, 8)
    assert record["params"]["num_inference_steps"] == 4 and record["model"] == "tiny-random"
    result = np.asarray(result_png.convert("RGB")).astype(int)
    source = np.asarray(image).astype(int)
    assert result.shape == source.shape
    diff = np.abs(result - source).max(axis=-1)
    distance = stroke_distance(diff.shape)
    on_stroke = distance <= 1.0
    far = distance > OUTSIDE_DISTANCE
    assert diff[on_stroke].mean() > INSIDE_MIN_MEAN_DIFF, "the painted stroke was not edited"
    assert diff[far].max() <= OUTSIDE_TOLERANCE, "pixels away from the stroke changed"
