"""The OpenAI-compatible generator against a real local server: `transformers serve` on 127.0.0.1,
serving the tiny LLM folder. The server is always killed at the end."""

import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from _fixtures_processing import write_images
from _tiny_text import save_tiny_llm

from benchmarks.serve_load import free_port
from processing.generators import OpenAIGenerator
from processing.jsonl_io import read_jsonl
from processing.visual_qa import visual_qa

pytest.importorskip("fastapi", reason="`transformers serve` needs fastapi + uvicorn (pip install -e .[serve])")
pytest.importorskip("uvicorn")
STARTUP_TIMEOUT_S = 90


def _wait_healthy(url: str, process, deadline: float):
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"transformers serve not healthy within {STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    llm = str(save_tiny_llm(root / "llm"))
    port = free_port()
    log = open(root / "serve.log", "wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf_home")}
    cli = os.path.join(os.path.dirname(sys.executable), "transformers")
    process = subprocess.Popen([cli, "serve", llm, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process, time.time() + STARTUP_TIMEOUT_S)
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "model": llm, "root": root}
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()


def test_generate_concurrently_in_order(server):
    generator = OpenAIGenerator(server["base_url"], server["model"], max_workers=4, timeout=60, max_retries=1,
                                max_tokens=6, temperature=0.0)
    chats = [[{"role": "user", "content": f"question number {k}"}] for k in range(6)]
    replies = generator.generate(chats)
    assert len(replies) == 6 and all(isinstance(r, str) for r in replies)
    # Greedy decoding: the same chat gives the same reply, in the same slot.
    assert generator.generate(chats[:2]) == replies[:2]


def test_visual_qa_through_endpoint(server):
    images = write_images(server["root"] / "images", 3)
    captions = [{"filename": [str(p)], "caption": f"caption {k}"} for k, p in enumerate(images)]
    generator = OpenAIGenerator(server["base_url"], server["model"], max_workers=3, timeout=60, max_retries=1,
                                max_tokens=6)
    out = server["root"] / "visual_qa.jsonl"
    assert visual_qa(captions, out, generator, n_turns=2)["written"] == 3
    rows = read_jsonl(out)
    assert all([t["role"] for t in r["conversations"]] == ["user", "assistant"] * 2 for r in rows)


def test_unreachable_endpoint_fails_fast_after_retries():
    generator = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", "none", timeout=2, max_retries=1)
    start = time.time()
    with pytest.raises(Exception, match="Connection error"):
        generator.generate([[{"role": "user", "content": "hi"}]])
    assert time.time() - start < 20


def test_thread_pool_is_bounded():
    generator = OpenAIGenerator("http://127.0.0.1:9/v1", "none", max_workers=3)
    active, peak, lock = [0], [0], threading.Lock()

    def slow_reply(chat):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return chat[0]["content"]

    generator._one = slow_reply
    chats = [[{"role": "user", "content": str(k)}] for k in range(12)]
    assert generator.generate(chats) == [str(k) for k in range(12)]
    assert peak[0] == 3
