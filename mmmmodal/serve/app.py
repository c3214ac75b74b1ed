"""The FastAPI app of `mmmmodal serve`: `/v1/chat/completions`, `/v1/models`, `/health`, the API key and the
error handlers (every error in OpenAI's shape)."""

import asyncio
import hmac
import json
import logging
import time
import uuid

from mmmmodal.loading import context_limit
from .batching import Batcher, Job
from .media import MediaPolicy
from .request import RequestError, encode_request, parse_request, sampling_defaults
from .responses import Reply, error_body

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256


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
