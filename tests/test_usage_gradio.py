"""The Gradio demo in a real headless Chromium: upload images and audio, ask over two turns, see answers."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

pytest.importorskip("gradio", reason="the web demo needs the `ui` extra: pip install -e '.[ui]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the `ui` extra (playwright)")

from benchmarks.serve_load import free_port  # noqa: E402
from mmmmodal.build import build_tiny_checkpoint  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
APP = Path(__file__).resolve().parents[1] / "examples" / "gradio_app.py"
BOT_ANSWERS = """() => Array.from(document.querySelectorAll('#chatbot .message.bot'))
                      .map(m => m.innerText.trim()).filter(t => t.length > 0)"""

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="Chromium is not installed (Debian: apt-get install -y chromium, see .ci/install_system_packages.sh)",
)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradio")
    build_tiny_checkpoint(root)
    port = free_port()
    log = open(root / "app.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen(
        [sys.executable, str(APP), str(root / "checkpoint"), "--port", str(port), "--max-new-tokens", "8"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if app.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the demo did not start:\n{(root / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url, root
    app.terminate()
    app.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def media(app_url):
    root = app_url[1] / "media"
    root.mkdir()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(root / "red.png")
    Image.new("RGB", (40, 40), (30, 60, 220)).save(root / "blue.png")
    t = np.arange(16_000) / 16_000
    sf.write(root / "beep.wav", (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32), 16_000)
    sf.write(root / "low.wav", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16_000)
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


def _send(page, files, text):
    for attempt in range(3):
        if not files or _upload(page, files):
            break
    else:
        raise AssertionError(f"the demo did not take the uploads {files}")
    box = page.locator("#message textarea")
    box.fill(text)
    box.press("Enter")


def _upload(page, files) -> bool:
    """Upload through the message box; True once the box shows them (a message sent earlier goes without them)."""
    file_input = page.locator("#message input[type=file]")
    file_input.set_input_files([])  # so that choosing the same files again is a change, and uploads again
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url, timeout=30_000) as upload:
        file_input.set_input_files([str(f) for f in files])
    assert upload.value.ok
    try:
        page.wait_for_function(
            f"() => document.querySelectorAll('#message .thumbnail-item').length == {len(files)}", timeout=5_000)
    except sync_api.TimeoutError:  # a late update of the box (re-enabling it) can drop a fresh upload: upload again
        return False
    page.wait_for_timeout(300)  # let the component take the uploaded paths as its value
    return True


def _wait_for_answers(page, count):
    """The non-empty assistant bubbles, once there are `count` and the last one has stopped growing."""
    page.wait_for_function(f"() => ({BOT_ANSWERS})().length >= {count}", timeout=60_000)
    answers = page.evaluate(BOT_ANSWERS)
    for _ in range(100):
        page.wait_for_timeout(700)
        answers, previous = page.evaluate(BOT_ANSWERS), answers
        if answers == previous:
            return answers
    raise AssertionError(f"the answer kept changing: {answers[-1]!r}")


def test_upload_images_and_audio_and_chat_over_two_turns(app_url, media):
    url, _ = app_url
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_selector("#message textarea", timeout=60_000)

            _send(page, [media / "broken.png"], "What is this?")  # refused with the reason; the chat goes on
            assert "Could not read the image" in _wait_for_answers(page, 1)[0]

            _send(page, [media / "red.png", media / "blue.png", media / "beep.wav"], "What is related between picture 1 and audio 1?")
            _wait_for_answers(page, 2)
            chat = page.locator("#chatbot")
            assert chat.locator("img").count() >= 2 and chat.locator("audio").count() >= 1  # the uploads are shown
            assert "What is related between picture 1 and audio 1?" in chat.inner_text()

            _send(page, [media / "low.wav"], "And audio 2?")
            answers = _wait_for_answers(page, 3)
            assert len(answers) == 3 and all(answers[1:]) and "Could not read" not in "".join(answers[1:])
            assert chat.locator("audio").count() >= 2 and "And audio 2?" in chat.inner_text()
        except Exception:
            page.screenshot(path=str(app_url[1] / "failure.png"))
            print("screenshot:", app_url[1] / "failure.png", "\nchat:", page.locator("#chatbot").inner_text()[-2000:])
            print("box:", page.evaluate("() => [document.querySelector('#message textarea').value, document.querySelector('#message textarea').disabled, document.querySelectorAll('#message .thumbnail-item').length, document.querySelector('#message').innerText]"))
            raise
        finally:
            browser.close()
