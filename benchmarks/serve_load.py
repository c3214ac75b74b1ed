"""Load test of `mmmmodal serve` on loopback: concurrent clients mixing images, audio, streaming, hang-ups and bad input.

    python -m benchmarks.serve_load --clients 16 --requests 20

Builds a tiny checkpoint, starts the server in its own process, and runs `clients` threads that each send `requests`
requests in a fixed rotation of kinds (text, image, audio, image + audio streamed, `n=2`, a stream the client hangs
up on after its first piece, a plain request whose client hangs up, a corrupt or refused media part, an unknown
field). It prints the figures as JSON: requests by kind and status, concurrency, errors (any 5xx, any good request
not answered in full, any bad one not answered 400, any exception), and the server's resident memory (after a
warm-up, sampled peak, kernel high-water mark, at the end). `tests/test_serve_hostile.py` runs it and asserts on it.
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

API_KEY = "load-test-key"
MODEL = "tiny-mmmmodal"
KINDS = ("text", "image", "audio", "stream_both", "n2", "hangup_stream", "hangup_plain", "bad_media", "bad_field")
GOOD = {"text", "image", "audio", "stream_both", "n2"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the servers of the benchmarks and tests start there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(checkpoint, *args, log_path=None, env=None):
    """`mmmmodal serve checkpoint *args` on a free loopback port; yields (process, base URL) once it answers."""
    port = free_port()
    log = open(log_path or os.devnull, "w")
    command = [sys.executable, "-m", "mmmmodal.cli", "serve", str(checkpoint), "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, 180, log_path)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_until_up(url: str, process, timeout_s: float, log_path=None):
    """Return once the server at `url` answers `/health`; raise with the end of its log if it exits or times out."""
    deadline = time.time() + timeout_s
    while True:
        try:
            httpx.get(f"{url}/health", timeout=5)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.time() > deadline:
                tail = Path(log_path).read_text()[-3000:] if log_path else ""
                raise RuntimeError(f"the server did not start:\n{tail}")
            time.sleep(0.3)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process `pid` from /proc (VmRSS now, VmHWM the peak so far), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise ValueError(f"{field} not in /proc/{pid}/status")


def media_parts() -> dict:
    """Content parts: good ones, and bad ones the server must refuse with 400."""
    import io

    import soundfile as sf
    from PIL import Image

    def uri(kind, data):
        return f"data:{kind};base64,{base64.b64encode(data).decode()}"

    png = io.BytesIO()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(png, format="PNG")
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000, format="WAV")
    nan = io.BytesIO()
    sf.write(nan, np.full(800, np.nan, np.float32), 16000, format="WAV", subtype="FLOAT")
    png, wav = png.getvalue(), wav.getvalue()
    def image(url):
        return {"type": "image_url", "image_url": {"url": url}}

    def audio(data):
        return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}

    return {
        "image": image(uri("image/png", png)),
        "audio": audio(wav),
        "bad": [image(uri("image/png", png[: len(png) // 2])), image(uri("image/png", os.urandom(300))),
                image("data:image/png;base64,@@@"), audio(wav[:40]), audio(nan.getvalue()), audio(b""),
                image("/etc/passwd"), image("http://127.0.0.1:9/x.png"), image("file:///etc/shadow")],
    }


class LoadClient:
    """One client thread's requests; records (kind, outcome) for every request."""

    def __init__(self, url: str, parts: dict, max_tokens: int):
        self.url, self.parts, self.max_tokens = url, parts, max_tokens
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)

    def body(self, content, **fields) -> dict:
        return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": self.max_tokens,
                **fields}

    def run(self, kind: str, step: int) -> str:
        """'ok' (good and answered), 'refused' (400 for bad input), 'hung_up', or what went wrong."""
        text = {"type": "text", "text": f"Question {step}: what is this?"}
        if kind == "text":
            return self._plain(self.body(f"Say something about {step}."))
        if kind == "image":
            return self._plain(self.body([self.parts["image"], text]))
        if kind == "audio":
            return self._plain(self.body([self.parts["audio"], text], temperature=1.0, seed=step))
        if kind == "n2":
            return self._plain(self.body([text], n=2, temperature=0.8, seed=step), choices=2)
        if kind == "stream_both":
            return self._stream(self.body([self.parts["image"], self.parts["audio"], text], stream=True,
                                          stream_options={"include_usage": True}))
        if kind == "hangup_stream":
            return self._stream(self.body([self.parts["image"], text], stream=True, max_tokens=200), hang_up=True)
        if kind == "hangup_plain":
            return self._hang_up(self.body([text], max_tokens=200))
        if kind == "bad_media":
            bad = self.parts["bad"][step % len(self.parts["bad"])]
            return self._refused(self.body([bad, text]))
        return self._refused(self.body([text], logit_bias={"5": 10}, best_of=2))

    def _plain(self, body, choices=1) -> str:
        response = self.http.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        answer = response.json()
        ok = len(answer["choices"]) == choices and all(isinstance(c["message"]["content"], str)
                                                        for c in answer["choices"])
        return "ok" if ok and answer["usage"]["completion_tokens"] >= choices else f"incomplete: {answer}"

    def _stream(self, body, hang_up=False) -> str:
        with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            usage, done = False, False
            for line in response.iter_lines():
                if hang_up and '"content": "' in line and '"content": ""' not in line:
                    return "hung_up"  # leaving the block closes the connection mid-answer
                usage = usage or '"usage": {' in line
                done = done or line == "data: [DONE]"
            return "ok" if done and usage else "incomplete stream"

    def _hang_up(self, body) -> str:
        payload = json.dumps(body).encode()
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
            time.sleep(0.2)  # long enough to be queued or generating; then the client goes away
        return "hung_up"

    def _refused(self, body) -> str:
        response = self.http.post("/v1/chat/completions", json=body)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        error = response.json().get("error", {}) if is_json else {}
        return "refused" if response.status_code == 400 and error.get("message") else f"HTTP {response.status_code}"


def run_load(url: str, pid: int, clients: int = 16, requests: int = 20, max_tokens: int = 4,
             deadline_s: float = 600) -> dict:
    """Drive the server at `url` (process `pid`) and return the figures (see the module docstring)."""
    parts = media_parts()
    warm = LoadClient(url, parts, max_tokens)
    for kind in KINDS:  # one of each, so the baseline memory includes everything a request touches
        warm.run(kind, 0)
    baseline = rss_mib(pid)
    samples, stop = [baseline], threading.Event()

    def sample():
        while not stop.wait(0.2):
            samples.append(rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, end_by = time.time(), time.time() + deadline_s

    def client(index: int) -> list:
        me, outcomes = LoadClient(url, parts, max_tokens), []
        for step in range(requests):
            kind = KINDS[(index + step) % len(KINDS)]
            if time.time() > end_by:
                outcomes.append((kind, "not sent: deadline"))
                continue
            try:
                outcomes.append((kind, me.run(kind, index * requests + step)))
            except Exception as error:  # recorded, and counted as an error
                outcomes.append((kind, f"{type(error).__name__}: {error}"))
        return outcomes

    with ThreadPoolExecutor(clients) as pool:
        outcomes = [o for result in pool.map(client, range(clients)) for o in result]
    elapsed = time.time() - started
    stop.set()
    sampler.join()
    time.sleep(1.0)  # let the last hang-ups be noticed
    health = httpx.get(f"{url}/health", timeout=30).json()
    expected = {kind: ("ok" if kind in GOOD else "hung_up" if kind.startswith("hangup") else "refused") for kind in KINDS}
    errors = [f"{kind}: {outcome}" for kind, outcome in outcomes if outcome != expected[kind]]
    by_kind = {kind: sum(k == kind for k, _ in outcomes) for kind in KINDS}
    return {
        "requests": len(outcomes), "clients": clients, "requests_per_client": requests, "by_kind": by_kind,
        "answered_good": sum(o == "ok" for _, o in outcomes), "refused_bad": sum(o == "refused" for _, o in outcomes),
        "hung_up": sum(o == "hung_up" for _, o in outcomes), "errors": len(errors), "first_errors": errors[:10],
        "seconds": round(elapsed, 1), "server": health,
        "rss_mib": {"after_warmup": round(baseline, 1), "peak_sampled": round(max(samples), 1),
                    "high_water": round(rss_mib(pid, "VmHWM"), 1), "end": round(rss_mib(pid), 1)},
    }


def serve_args(media_root) -> list:
    return ["--api-key", API_KEY, "--max-new-tokens", "8", "--max-batch-size", "8", "--batch-wait-ms", "10",
            "--allowed-local-media-path", str(media_root), "--log-level", "warning"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    from mmmmodal.build import build_tiny_checkpoint
    from mmmmodal.tiny import TinySizes

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp), MODEL, sizes=TinySizes(text_max_positions=256))[2]
        (Path(tmp) / "media").mkdir()
        with server_process(checkpoint, *serve_args(Path(tmp) / "media"), log_path=Path(tmp) / "server.log") as (
                process, url):
            figures = run_load(url, process.pid, args.clients, args.requests, args.max_tokens)
    print(json.dumps(figures, indent=2))
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
