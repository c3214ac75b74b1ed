"""vLLM (with this package's plugin) vs `mmmmodal serve` on the same checkpoint, N concurrent streaming clients.

    MMMMODAL_VLLM_PYTHON=.venv-vllm/bin/python python -m benchmarks --only vllm_serve
    MMMMODAL_VLLM_PYTHON=.venv-vllm/bin/python python -m benchmarks.vllm_serve --clients 8 --requests 4

vLLM runs from its own venv (it pins transformers <5.20): README, "Serving at scale with vLLM", makes one;
`MMMMODAL_VLLM_PYTHON` names its python. Without it this benchmark reports that it was skipped, and why.

One tiny checkpoint (head size 64, which vLLM's CPU attention takes) is served by each server in turn, alone on the
machine: every client sends `requests` streamed chat requests (one image + one 1 s clip + a question, greedy), one
after another. Reported: generated tokens per second over the whole run (sum of `usage.completion_tokens` / wall
time) and the median time to the first streamed token, for each server, and the ratio vLLM / `mmmmodal serve`. On
CPU, float32, wall clock: the figures are about scheduling and batching, not about a GPU's speed.
"""

import argparse
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from .common import Row
from .serve_load import _free_port, server_process, wait_until_up

API_KEY = "bench-key"
MODEL = "tiny-mmmmodal"
VLLM_PYTHON_ENV = "MMMMODAL_VLLM_PYTHON"
# What works for vLLM 0.32 on a CPU: float32, no graph capture, a small slice of memory for the KV cache.
VLLM_CPU_ARGS = ("--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.1", "--max-model-len", "2048")


def build_checkpoint(out_dir, max_audio_seconds: float | None = None, seed: int = 0, **config_kwargs):
    """A tiny MMMModal whose heads are 64 wide (vLLM's CPU attention refuses the default 16); returns
    (model in eval mode, processor, checkpoint path). `max_audio_seconds` sets the clip cap of both;
    `config_kwargs` are other `MMMModalConfig` fields (feature layers, ...)."""
    from mmmmodal.tiny import TinySizes, build_tiny

    model, processor = build_tiny(Path(out_dir) / "build", TinySizes(hidden_size=128, heads=2), seed=seed,
                                  **config_kwargs)
    if max_audio_seconds is not None:
        processor.max_audio_seconds = model.config.max_audio_seconds = float(max_audio_seconds)
    path = Path(out_dir) / MODEL
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model.eval(), processor, path


def vllm_python() -> tuple[Path | None, str]:
    """(the vLLM venv's python, "") or (None, why not)."""
    given = os.environ.get(VLLM_PYTHON_ENV)
    if not given:
        return None, f"no vLLM venv: set {VLLM_PYTHON_ENV} to its python (README, 'Serving at scale with vLLM')"
    if not Path(given).is_file():
        return None, f"{VLLM_PYTHON_ENV}={given} is not a file"
    return Path(given), ""


@contextmanager
def vllm_server(python, checkpoint, *args, log_path=None, start_timeout_s: float = 420, env=None):
    """vLLM's OpenAI server for `checkpoint` on a free loopback port (the module form: vllm-cpu's `vllm` script
    fails); yields (process, base URL) once `/health` answers. `env`: more environment variables."""
    port = _free_port()
    log = open(log_path or os.devnull, "w")
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--served-model-name", MODEL, "--port", str(port), "--host", "127.0.0.1", "--api-key", API_KEY,
               *VLLM_CPU_ARGS, "--limit-mm-per-prompt", json.dumps({"image": 4, "audio": 4}), *args]
    env = {**os.environ, "VLLM_MEDIA_CONNECTOR": "mmmmodal", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           **(env or {})}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, start_timeout_s, log_path)
        yield process, url
    finally:
        _stop(process)
        log.close()


def _stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def request_parts(client: int) -> list:
    """One image (a colour per client, so that no two clients share a cached image) and one 1 s clip."""
    import soundfile as sf
    from PIL import Image

    png, wav = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (40, 40), ((37 * client) % 256, 90, 200)).save(png, format="PNG")
    sf.write(wav, (0.3 * np.sin(np.arange(16000) / (4 + client))).astype(np.float32), 16000, format="WAV")
    image = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    audio = base64.b64encode(wav.getvalue()).decode()
    return [{"type": "image_url", "image_url": {"url": image}},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]


def _one_stream(http: httpx.Client, parts: list, question: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first streamed token, completion tokens) of one streamed greedy request."""
    body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]}
    started, first, tokens = time.perf_counter(), None, None
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without usage")
    return (first if first is not None else time.perf_counter() - started), tokens


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """Drive the server at `url` with `clients` threads of `requests` streamed requests each; one warm-up first."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        _one_stream(http, request_parts(clients), "Warm up.", 2)
    results, errors = [], []

    def client(index: int):
        parts = request_parts(index)
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            for step in range(requests):
                try:
                    results.append(_one_stream(http, parts, f"Question {index}.{step}: what links them?", max_tokens))
                except Exception as error:  # counted; the figures then say so
                    errors.append(f"{type(error).__name__}: {error}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    tokens = sum(t for _, t in results)
    return {"requests": len(results), "errors": errors, "seconds": round(elapsed, 2), "tokens": tokens,
            "tokens_per_s": tokens / elapsed if elapsed else 0.0,
            "ttft_median_s": statistics.median(f for f, _ in results) if results else float("nan")}


def compare(python, checkpoint, clients: int, requests: int, max_tokens: int, log_dir: Path) -> dict:
    """Both servers on `checkpoint`, one after the other, the same load; their figures by name."""
    figures = {}
    with vllm_server(python, checkpoint, log_path=log_dir / "vllm.log") as (_, url):
        figures["vllm"] = measure(url, clients, requests, max_tokens)
    args = ["--api-key", API_KEY, "--max-new-tokens", str(max_tokens), "--max-batch-size", str(max(clients, 1)),
            "--model-name", MODEL, "--log-level", "warning"]
    with server_process(checkpoint, *args, log_path=log_dir / "mmmmodal.log") as (_, url):
        figures["mmmmodal_serve"] = measure(url, clients, requests, max_tokens)
    return figures


def rows_from(figures: dict, clients: int, requests: int, max_tokens: int) -> list[Row]:
    ours, theirs = figures["mmmmodal_serve"], figures["vllm"]
    case = f"tiny, {clients} clients x {requests} streamed req (img + 1 s clip, {max_tokens} new tok), CPU, wall clock"
    ok = not (ours["errors"] or theirs["errors"]) and ours["tokens"] == theirs["tokens"]
    return [
        Row("vllm_serve", f"{case}: gen tok/s vLLM vs mmmmodal serve",
            f"vLLM {theirs['tokens_per_s']:.0f}, mmmmodal serve {ours['tokens_per_s']:.0f} tok/s "
            f"({theirs['tokens']} vs {ours['tokens']} tokens)", theirs["tokens_per_s"] / ours["tokens_per_s"],
            "(faster x)", None if ok else False, extra=figures),
        Row("vllm_serve", f"{case}: median time to first token", f"vLLM {theirs['ttft_median_s'] * 1000:.0f} ms, "
            f"mmmmodal serve {ours['ttft_median_s'] * 1000:.0f} ms", ours["ttft_median_s"] / theirs["ttft_median_s"],
            "(faster x)"),
    ]


def main(quick: bool = False, repeats=None, clients: int | None = None, requests: int | None = None,
         max_tokens: int = 32) -> list[Row]:
    python, why = vllm_python()
    if python is None:
        return [Row("vllm_serve", "vLLM vs mmmmodal serve", f"skipped: {why}")]
    clients = clients or (4 if quick else 8)
    requests = requests or (2 if quick else 4)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(Path(tmp))[2]
        figures = compare(python, checkpoint, clients, requests, max_tokens, Path(tmp))
    return rows_from(figures, clients, requests, max_tokens)


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_serve", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    rows = main(clients=args.clients, requests=args.requests, max_tokens=args.max_tokens)
    print(json.dumps([vars(r) for r in rows], indent=1, default=str))
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli())
