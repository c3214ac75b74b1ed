"""Batched generation for `mmmmodal serve`: requests that arrive together share one left-padded `generate` call.

Each row of a batch keeps its own settings. `RowSampler` (the last logits processor) samples every row with that
row's temperature, top-p and top-k from that row's own `torch.Generator`, so a request with a `seed` gets the same
tokens whether it runs alone or beside others, and requests with different settings still share a batch.
`BatchStreamer` turns each row's tokens into text incrementally (a window of a few tokens is decoded per step,
not the whole answer), cuts it at the request's `stop` strings, and `RowStopper` tells `generate` which rows are
finished: ended by a stop string, their token budget, or a client that went away. When every row is finished the
call returns at once and the next batch starts; a job cancelled while it waits never enters a batch.
"""

import asyncio
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mmmmodal.training.padding import pad_batch

from .request import Sampling

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One answer (one of a request's `n` choices) waiting for, or in, a batch.

    Events `(kind, index, ...)` go to `events` on the server's loop: `("text", i, piece)`,
    `("done", i, finish_reason, completion_tokens)` or `("error", i, message)`.
    """

    inputs: dict
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    sampling: Sampling = field(default_factory=Sampling)
    seed: int | None = None
    stop: tuple = ()
    index: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    batch_size: int = 0

    def emit(self, kind: str, *payload):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, self.index, *payload))
        except RuntimeError:  # the server's loop is closed (shutting down): nobody is listening
            pass


class IncrementalDecoder:
    """Text of a growing token list, piece by piece, decoding only the last few tokens at each step.

    The window starts at the token before the last emitted piece, so merges across the boundary (a leading space,
    a multi-byte character split over tokens) come out as a full decode of the whole list would give them.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.tokens = tokenizer, []
        self.prefix = self.read = 0  # tokens[prefix:read] were decoded and emitted already

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        self.tokens.append(token)
        return self._step(final=False)

    def flush(self) -> str:
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        before = self._decode(self.tokens[self.prefix : self.read])
        now = self._decode(self.tokens[self.prefix :])
        if len(now) <= len(before) or (now.endswith("\ufffd") and not final):  # nothing new, or half a character
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return now[len(before) :]


class StopText:
    """Text of one answer cut at the first of its stop strings; holds back a tail that may begin one."""

    def __init__(self, stops: tuple):
        self.stops, self.text, self.sent = stops, "", 0
        self.longest = max((len(s) for s in stops), default=0)

    def add(self, piece: str, final: bool = False) -> tuple[str, bool]:
        """(text that may be sent now, whether a stop string was reached)."""
        self.text += piece
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            return self._send(min(hits)), True
        if final:
            return self._send(len(self.text)), False
        hold = next((k for k in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1)
                     if any(s.startswith(self.text[-k:]) for s in self.stops)), 0)
        return self._send(len(self.text) - hold), False

    def _send(self, end: int) -> str:
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out


class BatchStreamer:
    """`generate` streamer for a batch: routes each row's new tokens to its job as text pieces."""

    def __init__(self, jobs: list[Job], tokenizer, eos_ids: set[int]):
        self.jobs, self.eos_ids = jobs, eos_ids
        self.decoders = [IncrementalDecoder(tokenizer) for _ in jobs]
        self.texts = [StopText(job.stop) for job in jobs]
        self.done = [False] * len(jobs)
        self.prompt_seen = False

    def put(self, value: torch.Tensor):
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            job, decoder = self.jobs[row], self.decoders[row]
            if job.cancelled.is_set():
                self.done[row] = True
                continue
            if token in self.eos_ids:
                self._finish(row, "stop", len(decoder.tokens) + 1)
                continue
            piece, stopped = self.texts[row].add(decoder.push(token))
            if piece:
                job.emit("text", piece)
            if stopped:
                self._finish(row, "stop", len(decoder.tokens), flush=False)
            elif len(decoder.tokens) >= job.max_new_tokens:
                self._finish(row, "length", len(decoder.tokens))

    def end(self):
        for row in range(len(self.jobs)):
            if not self.done[row]:
                self._finish(row, "length", len(self.decoders[row].tokens))

    def _finish(self, row: int, reason: str, tokens: int, flush: bool = True):
        self.done[row] = True
        if flush:
            piece, stopped = self.texts[row].add(self.decoders[row].flush(), final=True)
            reason = "stop" if stopped else reason
            if piece:
                self.jobs[row].emit("text", piece)
        self.jobs[row].emit("done", reason, tokens)


class RowSampler(LogitsProcessor):
    """Chooses each row's next token with that row's sampling settings and generator.

    It runs last, after `generate`'s own processors, inside a greedy `generate`: for a sampled row it leaves only
    the drawn token finite, so the greedy pick is that token; greedy rows are left as they are.
    """

    def __init__(self, jobs: list[Job]):
        self.jobs, self.generators = jobs, [None] * len(jobs)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row, job in enumerate(self.jobs):
            if job.sampling.greedy:
                continue
            if self.generators[row] is None:
                seed = job.seed + job.index if job.seed is not None else random.SystemRandom().getrandbits(63)
                self.generators[row] = torch.Generator(device=scores.device).manual_seed(seed % 2**63)
            token = _draw(scores[row], job.sampling, self.generators[row])
            scores[row] = torch.where(torch.arange(scores.shape[1], device=scores.device) == token, 0.0, -float("inf"))
        return scores


def _draw(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    logits = logits.float() / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.numel():
        cutoff = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, -float("inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, 0) - sorted_probs >= sampling.top_p  # keep the smallest set >= top_p
        probs = probs.scatter(0, order[outside], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


class RowStopper(StoppingCriteria):
    """Rows the streamer has finished (stop string, budget, cancelled) are finished for `generate` too."""

    def __init__(self, streamer: BatchStreamer):
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = [d or job.cancelled.is_set() for d, job in zip(self.streamer.done, self.streamer.jobs)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """Collects jobs that arrive within `wait_s` of each other and answers them with one `generate` call."""

    def __init__(self, model, processor, max_batch_size: int = 8, wait_s: float = 0.01):
        self.model, self.processor = model, processor
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.queue: queue.Queue = queue.Queue()
        eos = model.generation_config.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
        self.batches = self.cancelled = self.running = self.tokens = 0
        threading.Thread(target=self._run, name="mmmmodal-batcher", daemon=True).start()

    def submit(self, job: Job):
        self.queue.put(job)

    def cancel(self, jobs: list[Job]):
        """Stop these jobs: a waiting one never enters a batch, a running one is finished at the next step."""
        for job in jobs:
            if not job.cancelled.is_set():
                job.cancelled.set()
                self.cancelled += 1

    def stats(self) -> dict:
        return {"batches": self.batches, "running": self.running, "queued": self.queue.qsize(),
                "cancelled": self.cancelled, "generated_tokens": self.tokens}

    def _next_job(self, timeout: float | None) -> Job | None:
        """The next job not cancelled, or None once `timeout` has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                job = self.queue.get(timeout=left)
            except queue.Empty:
                return None
            if not job.cancelled.is_set():
                return job

    def _collect(self) -> list[Job]:
        jobs = [self._next_job(None)]
        deadline = time.monotonic() + self.wait_s
        while len(jobs) < self.max_batch_size and (job := self._next_job(deadline - time.monotonic())) is not None:
            jobs.append(job)
        return jobs

    def _run(self):
        while True:
            jobs = self._collect()
            self.running = len(jobs)
            try:
                self._generate(jobs)
            except Exception as error:  # report to every waiting client; the server keeps serving
                logger.exception("Generation failed")
                for job in jobs:
                    job.emit("error", f"Generation failed: {type(error).__name__}.")
            finally:
                self.running = 0

    def _generate(self, jobs: list[Job]):
        rows = [{**job.inputs, "input_ids": job.inputs["input_ids"][0], "attention_mask": job.inputs["attention_mask"][0]}
                for job in jobs]  # one (1, S) request each
        batch = pad_batch(rows, self.processor.tokenizer.pad_token_id, padding_side="left")
        batch = {k: v.to(self.model.device) for k, v in batch.items()}  # the model casts media to its towers' dtype
        for job in jobs:
            job.batch_size = len(jobs)
        self.batches += 1
        streamer = BatchStreamer(jobs, self.processor.tokenizer, self.eos_ids)
        try:
            self._call_generate(batch, jobs, streamer)
        finally:
            self.tokens += sum(len(decoder.tokens) for decoder in streamer.decoders)

    def _call_generate(self, batch: dict, jobs: list[Job], streamer: BatchStreamer):
        with torch.inference_mode():
            self.model.generate(
                **batch,
                max_new_tokens=max(job.max_new_tokens for job in jobs),
                streamer=streamer,
                logits_processor=LogitsProcessorList([RowSampler(jobs)]),
                stopping_criteria=StoppingCriteriaList([RowStopper(streamer)]),
                do_sample=False,  # RowSampler draws the sampled rows; the checkpoint's sampling defaults are
                temperature=None,  # already in each job's settings
                top_p=None,
                top_k=None,
            )


