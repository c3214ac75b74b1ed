"""OpenAI's response objects for `mmmmodal serve`: the error JSON, and a request's completion or stream of chunks."""

import asyncio
import json
import time

from .batching import Batcher, Job
from .request import RequestError

DISCONNECT_POLL_S = 0.05  # how often a non-streamed request checks that its client is still there
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}


def error_body(message: str, status: int, param=None, code=None) -> dict:
    """OpenAI's error JSON."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Reply:
    """Turns the events of a request's jobs into an OpenAI completion, or a stream of chunks."""

    def __init__(self, request_id: str, model_name: str, prompt_tokens: int, n: int):
        self.id, self.model, self.prompt_tokens, self.n = request_id, model_name, prompt_tokens, n
        self.created = int(time.time())
        self.include_usage = False

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    async def collect(self, jobs: list[Job], batcher: Batcher, request) -> dict | None:
        """The whole completion, or None if the client disconnected first (its jobs are then cancelled)."""
        texts, finished, tokens = [[] for _ in jobs], [None] * len(jobs), 0
        events, checked = jobs[0].events, time.monotonic()
        try:
            while None in finished:
                try:
                    kind, index, *payload = await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    kind = None
                # every DISCONNECT_POLL_S, whether pieces keep coming or not (they come every step while it runs)
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        batcher.cancel(jobs)
                        return None
                if kind is None:
                    continue
                if kind == "error":
                    raise RequestError(payload[0], status=500)
                if kind == "text":
                    texts[index].append(payload[0])
                else:
                    finished[index] = payload[0]
                    tokens += payload[1]
        finally:
            if None in finished:
                batcher.cancel(jobs)
        choices = [{"index": i, "message": {"role": "assistant", "content": "".join(t)}, "finish_reason": reason}
                   for i, (t, reason) in enumerate(zip(texts, finished))]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(tokens)}

    def chunk(self, choices: list, usage: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}
        if self.include_usage:  # OpenAI: every chunk carries "usage", null until the last one (no choices)
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def sse(self, jobs: list[Job], batcher: Batcher, include_usage: bool):
        """Server-sent events; a client that disconnects ends this generator, which cancels the jobs."""
        events, open_rows, tokens = jobs[0].events, set(range(len(jobs))), 0
        self.include_usage = include_usage
        try:
            for i in range(len(jobs)):
                yield self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            while open_rows:
                kind, index, *payload = await events.get()
                if kind == "error":
                    yield f"data: {json.dumps(error_body(payload[0], 500))}\n\n"
                    return
                if kind == "text":
                    yield self.chunk([{"index": index, "delta": {"content": payload[0]}, "finish_reason": None}])
                else:
                    open_rows.discard(index)
                    tokens += payload[1]
                    yield self.chunk([{"index": index, "delta": {}, "finish_reason": payload[0]}])
            if include_usage:
                yield self.chunk([], usage=self.usage(tokens))
            yield "data: [DONE]\n\n"
        finally:
            if open_rows:
                batcher.cancel(jobs)
