"""`mmmmodal serve`: an OpenAI-compatible chat-completions server for MMMModal checkpoints.

    mmmmodal serve ./my-checkpoint --port 8000 --api-key "$KEY" --allowed-local-media-path ./media
    # then, with the official client:
    # OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).chat.completions.create(model="my-checkpoint", ...)

Requests speak the OpenAI protocol: `text`, `image_url` (http(s) URL, `data:` URI, or a local path under
`--allowed-local-media-path`) and `input_audio` (`{"data": <base64>, "format": "wav"}`) content parts, plus
`audio_url` as an extension; multi-turn; `stream`, `n`, `seed`, `stop`, `max_completion_tokens`,
`stream_options.include_usage`. Media are fetched and decoded under the media policy (`mmmmodal.media`), fields
are checked by `mmmmodal.serve_request`, and requests that arrive together (within `--batch-wait-ms`) are answered
by one left-padded `generate` call (`mmmmodal.serve_batch`). Every error is OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`); bad input is a 400 with the reason, and the server goes on.
A client that disconnects cancels its generation.

Why not `transformers serve --trust-remote-code`: in transformers 5.23 it picks the modality and the model class
from its built-in name mappings (`MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`), which the public `Auto*.register` APIs
do not fill, so a remote-code model is not recognised without editing a private dict; its sequential path answers
one request at a time (continuous batching is text-only there); and a corrupt media part ends as HTTP 500.
"""

import asyncio
import hmac
import json
import logging
import os
import time
import uuid

from .loading import add_loading_arguments, context_limit, load_checkpoint
from .media import MediaPolicy, read_media
from .serve_batch import Batcher, Job
from .serve_request import RequestError, parse_request, sampling_defaults

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
DISCONNECT_POLL_S = 0.05  # how often a non-streamed request checks that its client is still there
API_KEY_ENV = "MMMMODAL_API_KEY"
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error"}


def encode_request(processor, request, policy: MediaPolicy, limit: int | None, default_max_new_tokens: int):
    """Read the media under `policy`, render and tokenize the conversation; returns (model inputs, answer budget)."""
    rate = processor.feature_extractor.sampling_rate
    images, audio = [], []
    try:
        for modality, source, where in request.media:
            loaded = read_media(modality, source, policy, where, rate)
            if modality == "image":
                images.append(processor.load_image(loaded, where))
            else:
                audio.append(processor.load_audio(loaded, rate, where))
        text = processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        # the rendered template carries its own special tokens (a bos, where the template writes one)
        inputs = processor(text=text, images=images or None, audio=audio or None, add_special_tokens=False,
                           return_tensors="pt")
    except ValueError as error:
        raise RequestError(str(error)[:1000], param="messages") from None
    prompt, asked = inputs["input_ids"].shape[1], request.max_tokens
    budget = asked if asked is not None else default_max_new_tokens
    if limit is not None:
        if prompt >= limit or (asked is not None and prompt + asked > limit):
            raise RequestError(
                f"The conversation does not fit the model's context: its text and media take {prompt} tokens"
                f"{f' and max_tokens asks for {asked} more' if asked else ''}, but the model holds {limit}. "
                "Send fewer or shorter images and audio clips, fewer turns, or a smaller max_tokens.",
                param="messages",
            )
        budget = min(budget, limit - prompt)
    return dict(inputs), budget


# ------------------------------------------------------------------------------------------------ HTTP app
def error_body(message: str, status: int, param=None, code=None) -> dict:
    """OpenAI's error JSON."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiKeyMiddleware:
    """Answers 401 to a `/v1/...` request without `Authorization: Bearer <key>` (ASGI, so streaming is untouched)."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                from fastapi.responses import JSONResponse

                body = error_body("Incorrect or missing API key: send `Authorization: Bearer <key>`.", 401,
                                  code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(model, processor, model_name: str, batcher: Batcher, policy: MediaPolicy | None = None,
              default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, api_key: str | None = None,
              max_media: int = 32, max_body_bytes: int = 64 * 2**20):
    """The FastAPI app: `/v1/chat/completions`, `/v1/models`, `/v1/models/{id}`, `/health`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="MMMModal", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
    policy = policy or MediaPolicy()
    limit, defaults, started = context_limit(model), sampling_defaults(model.generation_config), int(time.time())
    card = {"id": model_name, "object": "model", "created": started, "owned_by": "mmmmodal"}

    @app.get("/health")
    async def health():
        return {"status": "ok", **batcher.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str):
        if model_id != model_name:
            raise RequestError(f"The model {model_id!r} does not exist.", status=404, code="model_not_found")
        return card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        chat = parse_request(await _json_body(request, max_body_bytes), model_name, defaults, max_media)
        inputs, budget = await asyncio.to_thread(encode_request, processor, chat, policy, limit, default_max_new_tokens)
        events = asyncio.Queue()
        jobs = [Job(inputs, budget, asyncio.get_running_loop(), events, chat.sampling, chat.seed, chat.stop, index=i)
                for i in range(chat.n)]
        if await request.is_disconnected():
            return JSONResponse(error_body("The client went away.", 400), status_code=400)
        for job in jobs:
            batcher.submit(job)
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", model_name, inputs["input_ids"].shape[1], chat.n)
        if chat.stream:
            return StreamingResponse(reply.sse(jobs, batcher, chat.include_usage), media_type="text/event-stream")
        completion = await reply.collect(jobs, batcher, request)
        if completion is None:  # the client went away; nobody reads this
            return JSONResponse(error_body("The client went away.", 400), status_code=400)
        return JSONResponse(completion, headers={"x-batch-size": str(jobs[0].batch_size)})

    return app


def _install_error_handlers(app):
    """Every error the app can give (ours, routing's 404 / 405, validation's 422, anything else's 500) in one shape."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def refused(_request, error: RequestError):
        return JSONResponse(error_body(str(error), error.status, error.param, error.code), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        message = {404: f"No such route: {request.method} {request.url.path}.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(error.status_code)
        return JSONResponse(error_body(message or str(error.detail), error.status_code), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse(error_body(f"Invalid request: {where}", 422), status_code=422)

    @app.exception_handler(Exception)
    async def crashed(_request, error: Exception):
        logger.error("Unhandled error", exc_info=error)
        return JSONResponse(error_body(f"The server failed on this request ({type(error).__name__}).", 500),
                            status_code=500)


async def _json_body(request, max_bytes: int) -> dict:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"The request body is {declared} bytes, over this server's limit of {max_bytes} bytes "
                           "(--max-request-mb).", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(f"The request body is over this server's limit of {max_bytes} bytes (--max-request-mb).",
                               status=413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as error:
        raise RequestError(f"The request body is not valid JSON: {error}.") from None


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


# ------------------------------------------------------------------------------------------------ CLI
def _number(kind, minimum):
    def parse(text):
        value = kind(text)
        if value < minimum:
            raise ValueError(text)
        return value

    parse.__name__ = f"{kind.__name__} >= {minimum}"  # argparse names it in its error
    return parse


def register(subparsers):
    parser = subparsers.add_parser("serve", help="Serve a checkpoint over the OpenAI chat-completions protocol.")
    parser.add_argument("checkpoint", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="Name reported in responses (default: the checkpoint).")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"Require `Authorization: Bearer KEY` on /v1 routes (default: ${API_KEY_ENV}; none).")
    parser.add_argument("--max-new-tokens", type=_number(int, 1), default=DEFAULT_MAX_NEW_TOKENS,
                        help="Answer length when a request gives no max_completion_tokens (default: %(default)s).")
    parser.add_argument("--max-batch-size", type=_number(int, 1), default=8, help="(default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=_number(float, 0), default=10.0,
                        help="How long the first request of a batch waits for others to join it (default: %(default)s).")
    parser.add_argument("--max-request-mb", type=_number(float, 0.001), default=64.0,
                        help="Largest request body (default: %(default)s).")
    parser.add_argument("--max-media-per-request", type=_number(int, 1), default=32,
                        help="Most images + audio clips per request (default: %(default)s).")
    _add_media_arguments(parser)
    add_loading_arguments(parser)
    parser.set_defaults(func=_main)


def _add_media_arguments(parser):
    group = parser.add_argument_group("media policy (what image_url / audio_url / input_audio may read)")
    group.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                       help="Read local paths and file:// URLs, but only under DIR (symlinks and .. resolved first). "
                            "Default: local files are refused.")
    group.add_argument("--allowed-media-domains", nargs="+", default=(), metavar="HOST",
                       help="Fetch URLs (and follow redirects) only to these hosts. Default: any public host.")
    group.add_argument("--allowed-media-networks", nargs="+", default=(), metavar="CIDR",
                       help="Non-public networks URLs may reach anyway (e.g. 10.0.0.0/8). Default: loopback, private, "
                            "link-local, multicast and reserved addresses are refused.")
    group.add_argument("--media-max-redirects", type=_number(int, 0), default=3,
                       help="Redirects followed per URL, each hop checked (default: %(default)s).")
    group.add_argument("--media-fetch-timeout", type=_number(float, 0.001), default=20.0,
                       help="Seconds per URL fetch, transfer included (default: %(default)s).")
    group.add_argument("--media-max-mb", type=_number(float, 0.001), default=25.0,
                       help="Most bytes read from one media source, in MiB (default: %(default)s).")
    group.add_argument("--media-max-pixels", type=_number(int, 1), default=25_000_000,
                       help="Most pixels of one image (default: %(default)s).")
    group.add_argument("--media-max-audio-seconds", type=_number(float, 0.001), default=None,
                       help="Longest audio clip (default: the processor's max_audio_seconds).")


def media_policy(args, processor) -> MediaPolicy:
    return MediaPolicy(
        local_root=args.allowed_local_media_path,
        domains=tuple(args.allowed_media_domains),
        networks=tuple(args.allowed_media_networks),
        max_bytes=int(args.media_max_mb * 2**20),
        max_redirects=args.media_max_redirects,
        timeout_s=args.media_fetch_timeout,
        max_pixels=args.media_max_pixels,
        max_audio_seconds=args.media_max_audio_seconds or getattr(processor, "max_audio_seconds", 300.0),
    )


def _main(args) -> int:
    import uvicorn

    try:
        policy = media_policy(args, None)  # bad flags fail before the model loads
    except ValueError as error:
        raise SystemExit(f"mmmmodal serve: {error}") from None
    model, processor = load_checkpoint(args.checkpoint, args.device, args.dtype, args.trust_remote_code)
    policy = media_policy(args, processor)
    batcher = Batcher(model, processor, args.max_batch_size, args.batch_wait_ms / 1000)
    name = args.model_name or args.checkpoint.rstrip("/").split("/")[-1]
    app = build_app(model, processor, name, batcher, policy, args.max_new_tokens, args.api_key,
                    args.max_media_per_request, int(args.max_request_mb * 2**20))
    logger.info(f"Serving {name!r} on http://{args.host}:{args.port}/v1 (API key: {'yes' if args.api_key else 'no'}; "
                f"local media: {policy.local_root or 'refused'}; URL fetches: "
                f"{', '.join(policy.domains) or 'any public host'}"
                f"{'; plus networks ' + ', '.join(map(str, policy.networks)) if policy.networks else ''}).")
    uvicorn.run(app, host=args.host, port=args.port, log_level=logging.getLevelName(logger.getEffectiveLevel()).lower())
    return 0
