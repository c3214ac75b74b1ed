"""`mmmmodal serve`: an OpenAI-compatible chat-completions server for MMMModal checkpoints.

    mmmmodal serve ./my-checkpoint --port 8000
    # then, with the official client:
    # OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").chat.completions.create(model="my-checkpoint", ...)

Requests speak the OpenAI protocol: `text`, `image_url` (http(s) URL, `data:` URI or base64, local path) and
`input_audio` (`{"data": <base64>, "format": "wav"}`) content parts, plus `audio_url` as an extension; multi-turn;
`stream` true or false. Requests that arrive together (within `--batch-wait-ms`) are answered by one left-padded
`generate` call. Bad input (unreadable media, unknown part types, more than the context holds) gets HTTP 400
with the reason, and the server goes on.

Why not `transformers serve --trust-remote-code`: in transformers 5.23 it picks the modality and the model class
from its built-in name mappings (`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`), which the public `Auto*.register` APIs
do not fill, so a remote-code model is not recognised without editing a private dict; its sequential path answers
one request at a time (continuous batching is text-only there); and a corrupt media part ends as HTTP 500.
"""

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch
from transformers.utils import logging

from .loading import context_limit, load_checkpoint

logger = logging.get_logger(__name__)

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image_url", "input_audio", "audio_url")
DEFAULT_MAX_NEW_TOKENS = 256


class RequestError(ValueError):
    """A request the server refuses; becomes HTTP 400 (or `status`) with `message` as the reason."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


# ------------------------------------------------------------------------------------------------ request parsing
def _media_source(part: dict, where: str, local_files: bool) -> tuple[str, str]:
    """(`"image"` or `"audio"`, source string) of one OpenAI media part."""
    kind = part["type"]
    if kind == "image_url":
        value = part.get("image_url")
        source = value.get("url") if isinstance(value, dict) else value
        modality = "image"
    elif kind == "audio_url":
        value = part.get("audio_url")
        source = value.get("url") if isinstance(value, dict) else value
        modality = "audio"
    else:  # input_audio: {"data": <base64>, "format": "wav" | "mp3" | ...}
        value = part.get("input_audio")
        if not isinstance(value, dict) or not value.get("data"):
            raise RequestError(f"{where}: `input_audio` needs {{'data': <base64>, 'format': 'wav'}}; got {str(value)[:80]!r}.")
        fmt = value.get("format")
        return "audio", f"data:audio/{fmt};base64,{value['data']}" if fmt else value["data"]
    if not isinstance(source, str) or not source:
        raise RequestError(f"{where}: `{kind}` needs a `url` (http(s) URL, data: URI, base64 or path).")
    if source.startswith("file://"):
        source = source[len("file://") :]
    is_local = not source.startswith(("http://", "https://", "data:")) and len(source) < 4096 and os.path.exists(source)
    if is_local and not local_files:
        raise RequestError(f"{where}: this server does not read local files (started with --no-local-files).")
    return modality, source


def parse_messages(messages, local_files: bool = True) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """OpenAI messages -> (chat messages for our template, media as `(modality, source, where)` in order)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list of {'role', 'content'} objects.", param="messages")
    parsed, media = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise RequestError(f"messages[{i}]: role {role!r} is not supported; use one of {ROLES}.", param="messages")
        content = message.get("content")
        if content is None:
            content = []
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content must be a string or a list of parts.", param="messages")
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in PART_TYPES:
                raise RequestError(
                    f"{where}: unknown content type {kind!r}. Supported: {', '.join(PART_TYPES)}.", param="messages"
                )
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
                continue
            modality, source = _media_source(part, where, local_files)
            parts.append({"type": modality})
            media.append((modality, source, f"{where} ({kind})"))
        parsed.append({"role": message["role"], "content": parts})
    if parsed[-1]["role"] == "assistant":
        raise RequestError("The last message is the assistant's: end with a user message to get an answer.")
    return parsed, media


def encode_request(processor, messages: list[dict], media: list, limit: int | None, max_new_tokens: int | None,
                   default_max_new_tokens: int) -> tuple[dict, int]:
    """Read the media, render and tokenize the conversation; returns (model inputs, answer budget)."""
    images, audio = [], []
    for modality, source, where in media:
        try:
            if modality == "image":
                images.append(processor._load_image(source, where))
            else:
                audio.append(processor._load_audio(source, None, where))
        except ValueError as error:
            raise RequestError(str(error)[:1000]) from error
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    try:
        inputs = processor(text=text, images=images or None, audio=audio or None, return_tensors="pt")
    except ValueError as error:
        raise RequestError(str(error)[:1000]) from error
    prompt = inputs["input_ids"].shape[1]
    budget = max_new_tokens if max_new_tokens is not None else default_max_new_tokens
    if limit is not None:
        if prompt >= limit or (max_new_tokens is not None and prompt + max_new_tokens > limit):
            raise RequestError(
                f"The conversation does not fit the model's context: its text and media take {prompt} tokens"
                f"{f' and max_tokens asks for {max_new_tokens} more' if max_new_tokens else ''}, but the model holds "
                f"{limit}. Send fewer or shorter images and audio clips, fewer turns, or a smaller max_tokens.",
                param="messages",
            )
        budget = min(budget, limit - prompt)
    return dict(inputs), budget


# ------------------------------------------------------------------------------------------------ batching
@dataclass
class Job:
    """One request waiting for (or in) a batch. Events go to `events` on the server's loop."""

    inputs: dict
    max_new_tokens: int
    sampling: tuple  # (do_sample, temperature, top_p): requests batch together only when these agree
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    batch_size: int = 0

    def emit(self, *event):
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchStreamer:
    """`generate` streamer for a batch: routes each row's new tokens to its job as text pieces."""

    def __init__(self, jobs: list[Job], tokenizer, stop_ids: set[int]):
        self.jobs, self.tokenizer, self.stop_ids = jobs, tokenizer, stop_ids
        self.tokens = [[] for _ in jobs]
        self.sent = ["" for _ in jobs]
        self.done = [False] * len(jobs)
        self.prompt_seen = False

    def put(self, value: torch.Tensor):
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.stop_ids:
                self._finish(row, "stop")
                continue
            self.tokens[row].append(token)
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(self.sent[row]):
                self.jobs[row].emit("text", text[len(self.sent[row]) :])
                self.sent[row] = text
            if len(self.tokens[row]) >= self.jobs[row].max_new_tokens:
                self._finish(row, "length")

    def end(self):
        for row in range(len(self.jobs)):
            if not self.done[row]:
                self._finish(row, "length")

    def _finish(self, row: int, reason: str):
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if len(text) > len(self.sent[row]):
            self.jobs[row].emit("text", text[len(self.sent[row]) :])
        self.jobs[row].emit("done", reason, len(self.tokens[row]) + (reason == "stop"))
        self.done[row] = True


class Batcher:
    """Collects jobs that arrive within `wait_s` of each other and answers them with one `generate` call."""

    def __init__(self, model, processor, max_batch_size: int = 8, wait_s: float = 0.01):
        self.model, self.processor = model, processor
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.queue: queue.Queue = queue.Queue()
        eos = model.generation_config.eos_token_id
        self.stop_ids = set([eos] if isinstance(eos, int) else (eos or []))
        self.batches = 0
        threading.Thread(target=self._run, name="mmmmodal-batcher", daemon=True).start()

    def submit(self, job: Job):
        self.queue.put(job)

    def _collect(self) -> list[Job]:
        jobs = [self.queue.get()]
        deadline = time.monotonic() + self.wait_s
        held = []
        while len(jobs) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            try:
                job = self.queue.get(timeout=left)
            except queue.Empty:
                break
            (jobs if job.sampling == jobs[0].sampling else held).append(job)
        for job in held:  # other sampling settings: next batch
            self.queue.put(job)
        return jobs

    def _run(self):
        while True:
            jobs = self._collect()
            try:
                self._generate(jobs)
            except Exception as error:  # report to every waiting client; the server keeps serving
                logger.exception("Generation failed")
                for job in jobs:
                    job.emit("error", f"Generation failed: {error}")

    def _generate(self, jobs: list[Job]):
        batch = collate([job.inputs for job in jobs], self.processor.tokenizer.pad_token_id)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        for key in ("pixel_values", "input_features"):
            if key in batch:
                batch[key] = batch[key].to(self.model.dtype)
        do_sample, temperature, top_p = jobs[0].sampling
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        for job in jobs:
            job.batch_size = len(jobs)
        self.batches += 1
        with torch.inference_mode():
            self.model.generate(
                **batch,
                max_new_tokens=max(job.max_new_tokens for job in jobs),
                streamer=BatchStreamer(jobs, self.processor.tokenizer, self.stop_ids),
                **sampling,
            )


def collate(items: list[dict], pad_id: int) -> dict:
    """Left-pad the token ids of several requests; media tensors are concatenated in request order."""
    length = max(item["input_ids"].shape[1] for item in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = item["input_ids"].shape[1]
        ids[row, length - n :] = item["input_ids"][0]
        mask[row, length - n :] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    for key in ("pixel_values", "input_features", "input_features_mask"):
        parts = [item[key] for item in items if key in item]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


# ------------------------------------------------------------------------------------------------ HTTP app
def build_app(model, processor, model_name: str, batcher: Batcher, local_files: bool = True,
              default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
    """The FastAPI app: `/v1/chat/completions`, `/v1/models`, `/health`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="MMMModal")
    limit = context_limit(model)

    @app.exception_handler(RequestError)
    async def refuse(_request, error: RequestError):
        body = {"error": {"message": str(error), "type": "invalid_request_error", "param": error.param, "code": None}}
        return JSONResponse(body, status_code=error.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "mmmmodal"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        messages, media = parse_messages(body.get("messages"), local_files)
        max_new_tokens, sampling = _generation_settings(body)
        inputs, budget = await asyncio.to_thread(
            encode_request, processor, messages, media, limit, max_new_tokens, default_max_new_tokens
        )
        job = Job(inputs, budget, sampling, asyncio.get_running_loop())
        batcher.submit(job)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        prompt_tokens = inputs["input_ids"].shape[1]
        if body.get("stream"):
            return StreamingResponse(_sse(job, request_id, model_name, prompt_tokens), media_type="text/event-stream")
        text, reason, completion_tokens = await _collect(job)
        completion = {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        return JSONResponse(completion, headers={"x-batch-size": str(job.batch_size)})

    return app


async def _json_body(request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError as error:
        raise RequestError(f"The request body is not valid JSON: {error}.") from error
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    if body.get("n", 1) != 1:
        raise RequestError("Only n=1 is supported.", param="n")
    return body


def _generation_settings(body: dict) -> tuple[int | None, tuple]:
    max_new_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise RequestError(f"max_tokens must be a positive integer, got {max_new_tokens!r}.", param="max_tokens")
    temperature = float(body.get("temperature") if body.get("temperature") is not None else 0.0)
    top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
    if temperature < 0 or not 0 < top_p <= 1:
        raise RequestError("temperature must be >= 0 and top_p in (0, 1].", param="temperature")
    sampling = (True, temperature, top_p) if temperature > 0 else (False, 0.0, 1.0)
    return max_new_tokens, sampling


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _collect(job: Job) -> tuple[str, str, int]:
    from fastapi import HTTPException

    pieces = []
    while True:
        event = await job.events.get()
        if event[0] == "text":
            pieces.append(event[1])
        elif event[0] == "done":
            return "".join(pieces), event[1], event[2]
        else:
            raise HTTPException(status_code=500, detail=event[1])


async def _sse(job: Job, request_id: str, model_name: str, prompt_tokens: int):
    def chunk(delta: dict, finish_reason=None, usage=None) -> str:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while True:
        event = await job.events.get()
        if event[0] == "text":
            yield chunk({"content": event[1]})
        elif event[0] == "done":
            yield chunk({}, finish_reason=event[1], usage=_usage(prompt_tokens, event[2]))
            break
        else:
            yield f"data: {json.dumps({'error': {'message': event[1], 'type': 'server_error'}})}\n\n"
            break
    yield "data: [DONE]\n\n"


# ------------------------------------------------------------------------------------------------ CLI
def register(subparsers):
    parser = subparsers.add_parser("serve", help="Serve a checkpoint over the OpenAI chat-completions protocol.")
    parser.add_argument("checkpoint", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="Name reported in responses (default: the checkpoint).")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="Answer length when a request gives no max_tokens.")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="How long the first request of a batch waits for others to join it.")
    parser.add_argument("--no-local-files", dest="local_files", action="store_false",
                        help="Refuse media given as paths on the server's disk (URLs and base64 still work).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    import uvicorn

    model, processor = load_checkpoint(args.checkpoint, args.device, args.dtype)
    batcher = Batcher(model, processor, args.max_batch_size, args.batch_wait_ms / 1000)
    name = args.model_name or args.checkpoint.rstrip("/").split("/")[-1]
    app = build_app(model, processor, name, batcher, args.local_files, args.max_new_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
