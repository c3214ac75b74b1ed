"""vLLM (with this package's plugin) vs `mmmmodal serve` on the same checkpoint, under a realistic open load.

    MMMMODAL_VLLM_PYTHON=.venv-vllm/bin/python python -m benchmarks --only vllm_serve
    MMMMODAL_VLLM_PYTHON=.venv-vllm/bin/python python -m benchmarks.vllm_serve [--seconds 20] [--requests 12] [--start 1]

vLLM runs from its own venv (it pins transformers <5.20): README, "Serving at scale with vLLM", makes one;
`MMMMODAL_VLLM_PYTHON` names its python. Without it this benchmark reports that it was skipped, and why.

One checkpoint (hidden 512, 8 layers, heads of 64, which vLLM's CPU attention takes; random weights) is served by
each server in turn, alone on the machine, and both get the same seeded request list: Poisson arrivals (at each
rate, the same unit-rate arrival times divided by the rate), prompts that mix text only, one image, one clip and
image + clip, and an output budget (`max_tokens`) drawn from 8-256, streamed and greedy. At each rate the list's
first requests are sent: at least `--requests`, and as many as arrive within `--seconds` (at most
`--max-requests`), so that a high rate is a sustained load and not a burst of a dozen. Each server's rates are
searched on a doubling grid (1/32 ... 128 req/s): from 1 req/s up while p99 time to first token (TTFT) stays under
2 s, or down while it does not, so each server's limit lands between two neighbouring rates. For each rate tried:
generated tokens per second (sum of `usage.completion_tokens` over the time from the first arrival to the last
answer), p50 / p99 TTFT and end-to-end latency; then the highest rate each sustains with p99 TTFT under 2 s, and
the ratio of those rates vLLM / `mmmmodal serve` (set only when both limits are bracketed; otherwise the row says
the bound). On CPU, float32, wall clock.
"""

import argparse
import base64
import bisect
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from .common import Row
from .serve_load import free_port, server_process, wait_until_up

API_KEY = "bench-key"
MODEL = "tiny-mmmmodal"
VLLM_PYTHON_ENV = "MMMMODAL_VLLM_PYTHON"
# What works for vLLM 0.32 on a CPU: float32, no graph capture, a small slice of memory for the KV cache.
VLLM_CPU_ARGS = ("--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.1", "--max-model-len", "2048")


def build_checkpoint(out_dir, max_audio_seconds: float | None = None, seed: int = 0, sizes=None, **config_kwargs):
    """A tiny MMMModal whose heads are 64 wide (vLLM's CPU attention refuses the default 16); returns
    (model in eval mode, processor, checkpoint path). `max_audio_seconds` sets the clip cap of both; `sizes` is a
    `TinySizes` (hidden 128, 2 heads by default); `config_kwargs` are other `MMMModalConfig` fields."""
    from mmmmodal.build import build_tiny
    from mmmmodal.tiny import TinySizes

    model, processor = build_tiny(Path(out_dir) / "build", sizes or TinySizes(hidden_size=128, heads=2), seed=seed,
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
    port = free_port()
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


KINDS = ("text", "image", "audio", "image + audio")
RATES = tuple(2.0 ** k for k in range(-5, 8))  # requests per second: 1/32 ... 128, doubling
START_RATE = 1.0  # where the search for each server's limit starts
TTFT_GOAL_S = 2.0
SECONDS = 20.0  # each rate's arrivals span at least this long (a sustained load, not a burst)
LEAST_REQUESTS = 12
MAX_REQUESTS = 400
LOAD_SIZES = dict(hidden_size=512, layers=8, heads=8)  # decode is not all overhead; head size 64


@dataclass(frozen=True)
class Request:
    arrival: float  # seconds after the start at 1 request/s (divided by the rate)
    kind: str
    max_tokens: int
    index: int


def request_list(n: int, seed: int = 0, max_tokens=(8, 256)) -> list[Request]:
    """The seeded request list both servers get: unit-rate Poisson arrivals, kinds and output budgets."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0, n))
    kinds = rng.integers(0, len(KINDS), n)
    budgets = rng.integers(max_tokens[0], max_tokens[1] + 1, n)
    return [Request(float(a - arrivals[0]), KINDS[k], int(b), i) for i, (a, k, b) in enumerate(zip(arrivals, kinds, budgets))]


def requests_at(pool: list[Request], rate: float, least: int = LEAST_REQUESTS, seconds: float = SECONDS
                ) -> list[Request]:
    """The first requests of `pool` sent at `rate`: at least `least`, and every one that arrives within `seconds`
    at that rate (all of `pool` at most)."""
    within = bisect.bisect_right([r.arrival for r in pool], rate * seconds)
    return pool[: max(least, within)]


def request_body(request: Request) -> dict:
    """The chat request of `request`: an image of its own colour and / or a 1 s clip of its own pitch, a question."""
    import soundfile as sf
    from PIL import Image

    parts = []
    if "image" in request.kind:
        png = io.BytesIO()
        Image.new("RGB", (40, 40), ((37 * request.index) % 256, 90, 200)).save(png, format="PNG")
        parts.append({"type": "image_url",
                      "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}})
    if "audio" in request.kind:
        wav = io.BytesIO()
        sf.write(wav, (0.3 * np.sin(np.arange(16000) / (4 + request.index % 13))).astype(np.float32), 16000,
                 format="WAV")
        parts.append({"type": "input_audio",
                      "input_audio": {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}})
    parts.append({"type": "text", "text": f"Question {request.index}: what is this about?"})
    return {"model": MODEL, "max_tokens": request.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": parts}]}


async def _one_stream(http, body: dict) -> tuple[float, float, int]:
    """(seconds to the first streamed token, seconds to the end, completion tokens) of one streamed request."""
    started, first, tokens = time.perf_counter(), None, None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise RuntimeError("the stream ended without usage")
    end = time.perf_counter() - started
    return (first if first is not None else end), end, tokens


def _percentile(values, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_rate(url: str, requests: list[Request], rate: float, drain_timeout_s: float = 300) -> dict:
    """Send `requests` at their arrival times / `rate`; the figures of that run."""
    import asyncio

    async def drive():
        headers = {"Authorization": f"Bearer {API_KEY}"}
        limits = httpx.Limits(max_connections=len(requests) + 1)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as http:
            start = time.perf_counter()

            async def one(request: Request):
                await asyncio.sleep(max(0.0, start + request.arrival / rate - time.perf_counter()))
                return await _one_stream(http, request_body(request))

            tasks = [asyncio.ensure_future(one(r)) for r in requests]
            done, pending = await asyncio.wait(tasks, timeout=requests[-1].arrival / rate + drain_timeout_s)
            for task in pending:
                task.cancel()
            return [t.result() for t in done if not t.exception()], \
                [repr(t.exception()) for t in done if t.exception()] + ["unfinished"] * len(pending), \
                time.perf_counter() - start

    results, errors, seconds = asyncio.run(drive())
    ttft, e2e, tokens = [r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results)
    return {"rate": rate, "sent": len(requests), "requests": len(results), "errors": errors, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "ttft_p50_s": _percentile(ttft, 50), "ttft_p99_s": _percentile(ttft, 99),
            "e2e_p50_s": _percentile(e2e, 50), "e2e_p99_s": _percentile(e2e, 99)}


def sweep(url: str, requests_for, rates, start: float = START_RATE) -> list[dict]:
    """`run_rate` on the grid `rates` with `requests_for(rate)`, after one warm-up request, searching for the
    server's limit: `search` from the rate nearest `start`. The figures, lowest rate first."""
    run_rate(url, [Request(0.0, "image + audio", 2, 10**6)], 1.0)
    return search(rates, lambda rate: run_rate(url, requests_for(rate), rate), start)


def search(rates, measure, start: float = START_RATE) -> list[dict]:
    """`measure(rate)` from the grid's rate nearest `start`, then up the grid while each rate sustains the goal, or
    down it while each misses, so that the limit lands between two neighbouring rates (unless the grid ends first)
    without running the uninformative rates far from it. The figures, lowest rate first."""
    grid = sorted(set(float(r) for r in rates))
    if not grid or grid[0] <= 0:
        raise ValueError(f"rates must be positive, got {list(rates)}")
    if not start > 0:
        raise ValueError(f"the start rate must be positive (req/s), got {start}")
    i = min(range(len(grid)), key=lambda k: abs(math.log(grid[k] / start)))
    figures = [measure(grid[i])]
    up = sustains(figures[0])
    i += 1 if up else -1
    while 0 <= i < len(grid):
        figures.append(measure(grid[i]))
        if sustains(figures[-1]) != up:
            break
        i += 1 if up else -1
    return sorted(figures, key=lambda f: f["rate"])


def sustains(figures: dict) -> bool:
    return not figures["errors"] and figures["ttft_p99_s"] < TTFT_GOAL_S


def highest_sustained(figures: list[dict]) -> float | None:
    return max((f["rate"] for f in figures if sustains(f)), default=None)


def limit(figures: list[dict]) -> tuple[float | None, float | None]:
    """(the highest rate that sustains the goal, the lowest tried rate above it that does not); None for an end the
    run did not reach."""
    best = highest_sustained(figures)
    above = [f["rate"] for f in figures if not sustains(f) and (best is None or f["rate"] > best)]
    return best, min(above, default=None)


def ratio_text(vllm: list[dict], ours: list[dict]) -> tuple[str, float | None]:
    """The row's words and ratio for the highest sustained rates, vLLM / `mmmmodal serve`. The ratio is set only
    when both limits are bracketed (each sustained one rate and missed the next one up); otherwise the words give
    the bound the run shows and the ratio is None."""
    (v_best, v_fail), (o_best, o_fail) = limit(vllm), limit(ours)

    def side(best, fail):
        if best is None:
            return f"none (missed already at {fail:g} req/s, the lowest tried)"
        return f"{best:g} req/s" + (f" (missed at {fail:g})" if fail is not None else " (the highest tried)")

    words = f"vLLM {side(v_best, v_fail)}, mmmmodal serve {side(o_best, o_fail)}"
    if v_best is not None and o_best is not None and v_fail is not None and o_fail is not None:
        return words, v_best / o_best
    if v_best is not None and (o_best is None or o_fail is not None):
        low = v_best / (o_best if o_best is not None else o_fail)
        return words + f"; the ratio is at least {low:g}x (not bracketed)", None
    return words + "; the ratio is not bracketed", None


def compare(python, checkpoint, pool: list[Request], rates, log_dir: Path, start: float = START_RATE,
            least: int = LEAST_REQUESTS, seconds: float = SECONDS) -> dict:
    """Both servers on `checkpoint`, one after the other, the same requests (`requests_at`) and rates; their
    figures by name."""
    figures, requests_for = {}, lambda rate: requests_at(pool, rate, least, seconds)
    with vllm_server(python, checkpoint, log_path=log_dir / "vllm.log") as (_, url):
        figures["vllm"] = sweep(url, requests_for, rates, start)
    args = ["--api-key", API_KEY, "--max-new-tokens", str(max(r.max_tokens for r in pool)),
            "--max-batch-size", "16", "--model-name", MODEL, "--log-level", "warning"]
    with server_process(checkpoint, *args, log_path=log_dir / "mmmmodal.log") as (_, url):
        figures["mmmmodal_serve"] = sweep(url, requests_for, rates, start)
    return figures


def rows_from(figures: dict, requests: list[Request], size: str) -> list[Row]:
    """The rows of `compare`'s figures; `requests` is the pool the rates took their requests from."""
    case = (f"{size}, streamed requests (Poisson; text / image / audio / both; "
            f"max_tokens {min(r.max_tokens for r in requests)}-{max(r.max_tokens for r in requests)}), CPU, wall clock")
    rows = []
    for server, runs in figures.items():
        for f in runs:
            rows.append(Row("vllm_serve", f"{case}: {server} at {f['rate']:g} req/s ({f['sent']} requests)",
                            f"{f['tokens_per_s']:.0f} tok/s; TTFT p50 {f['ttft_p50_s']:.2f} s, p99 "
                            f"{f['ttft_p99_s']:.2f} s; end-to-end p50 {f['e2e_p50_s']:.2f} s, p99 {f['e2e_p99_s']:.2f} s"
                            f"{'; errors: ' + str(len(f['errors'])) if f['errors'] else ''}", extra=f))
    words, ratio = ratio_text(figures["vllm"], figures["mmmmodal_serve"])
    rows.append(Row("vllm_serve", f"{case}: highest rate with p99 TTFT < {TTFT_GOAL_S:g} s, vLLM vs mmmmodal serve",
                    words, ratio, "(higher x)"))
    return rows


def main(quick: bool = False, repeats=None, rates=None, requests: int | None = None, start: float = START_RATE,
         seconds: float | None = None, max_requests: int = MAX_REQUESTS) -> list[Row]:
    python, why = vllm_python()
    if python is None:
        return [Row("vllm_serve", "vLLM vs mmmmodal serve", f"skipped: {why}")]
    rates = rates or ((0.5, 1.0, 2.0) if quick else RATES)
    least = requests or (6 if quick else LEAST_REQUESTS)
    seconds = (0.0 if quick else SECONDS) if seconds is None else seconds
    if least < 1 or seconds < 0 or max_requests < least:
        raise ValueError(f"need 1 <= requests <= max_requests and seconds >= 0; got requests {least}, "
                         f"max_requests {max_requests}, seconds {seconds}")
    load = request_list(max_requests, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        from mmmmodal.tiny import TinySizes

        checkpoint = build_checkpoint(Path(tmp), sizes=TinySizes(**LOAD_SIZES))[2]
        figures = compare(python, checkpoint, load, rates, Path(tmp), start, least, seconds)
    return rows_from(figures, load, "hidden 512, 8 layers")


def cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vllm_serve", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES), help="requests per second, a,b,c")
    parser.add_argument("--requests", type=int, default=LEAST_REQUESTS, help="the fewest requests sent at a rate")
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help="each rate also sends every request that arrives within this many seconds")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS, help="the most requests sent at a rate")
    parser.add_argument("--start", type=float, default=START_RATE,
                        help="the rate each server's search starts from (then up or down the grid)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    if args.start <= 0 or min(rates) <= 0:
        parser.error(f"--start and --rates must be positive rates in req/s, got {args.start:g} and {args.rates}")
    if not 1 <= args.requests <= args.max_requests or args.seconds < 0:
        parser.error(f"need 1 <= --requests ({args.requests}) <= --max-requests ({args.max_requests}) and "
                     f"--seconds >= 0 ({args.seconds:g})")
    rows = main(rates=rates, requests=args.requests, start=args.start, seconds=args.seconds,
                max_requests=args.max_requests)
    print(json.dumps([vars(r) for r in rows], indent=1, default=str))
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli())
