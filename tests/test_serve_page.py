"""The web page end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright
with the system browser): classify an upload, search by text and by image, ask a question, and
show a bad upload's error as text. Skipped when Playwright or Chromium is missing (`.ci/run`
installs both)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_serve import PHOTOS, fusion_run, index_dir, photos, scene  # noqa: F401  (fixtures)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("VLKIT_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable on PATH")
expect = sync_api.expect  # polls from Python: the page's CSP forbids wait_for_function's eval
QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def server(checkpoint, index_dir, fusion_run):  # noqa: F811
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "vlkit", "serve", "--model", str(checkpoint), "--index",
               str(index_dir), "--vlm", str(fusion_run), "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/api/info", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    assert process.poll() is None, process.stdout.read().decode()
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        problems = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(server)
        expect(page.locator("#info")).to_contain_text("indexed images")
        yield page
        browser.close()
        assert problems == [], problems  # no JavaScript errors (CSP refusals included)


def test_the_page_names_models_without_server_paths(page, checkpoint, fusion_run):  # noqa: F811
    info = page.inner_text("#info")
    assert checkpoint.name in info and fusion_run.name in info
    assert str(checkpoint.parent) not in page.content()
    assert f"{len(PHOTOS)} indexed images" in info


def test_classify_an_upload(page, photos):  # noqa: F811
    page.set_input_files("#zs-image", str(photos / "coffee.jpg"))
    page.fill("#zs-labels", "a cup of coffee, a rocket, a cat")
    page.click("#zeroshot-form button")
    expect(page.locator("#zs-result tr")).to_have_count(3)
    rows = page.locator("#zs-result tr").all_inner_texts()
    assert {row.split("\t")[0] for row in rows} == {"a cup of coffee", "a rocket", "a cat"}
    assert page.inner_text("#zs-error") == ""


def test_a_bad_upload_shows_its_error_as_text(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#zs-image", str(notes))
    page.click("#zeroshot-form button")
    expect(page.locator("#zs-error")).not_to_have_text("")
    message = page.inner_text("#zs-error")
    assert message == "cannot load image notes.txt: not a recognised image file"


def test_search_by_text_and_by_image(page, photos):  # noqa: F811
    page.fill("#search-text", "a photo of a cat")
    page.fill("#search-k", "3")
    page.click("#search-form button")
    expect(page.locator("#hits .hit")).to_have_count(3)
    # The thumbnails load (same origin, allowed by the page's CSP) and are shown whole.
    loaded = "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"
    deadline = time.monotonic() + 20
    while not page.eval_on_selector_all("#hits img", loaded) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert page.eval_on_selector_all("#hits img", loaded)
    fit = page.eval_on_selector("#hits img", "img => getComputedStyle(img).objectFit")
    assert fit == "contain"

    page.set_input_files("#search-image", str(photos / "rocket.jpg"))
    page.click("#search-image-form button")
    expect(page.locator("#hits .hit div").first).to_have_text(re.compile(r"rocket\.jpg$"))
    assert page.inner_text("#hits .hit div").startswith("1.000")  # itself, cosine 1


def test_ask_a_question(page, server, scene):  # noqa: F811
    page.set_input_files("#gen-image", str(scene))
    page.fill("#gen-prompt", QUESTION)
    page.fill("#gen-max", "6")
    page.click("#generate-form button")
    expect(page.locator("#gen-meta")).to_contain_text("token")
    assert page.inner_text("#gen-error") == ""
    # The same answer as the JSON API.
    body, boundary = [], "b0undary"
    for name, value in (("prompt", QUESTION), ("max_new_tokens", "6")):
        body.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                    f"{value}\r\n".encode())  # fmt: skip
    body.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="scene.png"\r\n\r\n'.encode() + scene.read_bytes() + b"\r\n")  # fmt: skip
    body.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{server}/api/generate", data=b"".join(body),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        expected = json.load(response)["text"]
    shown = page.inner_text("#gen-answer")
    assert shown == (expected or "(no text: the model stopped at once)")
