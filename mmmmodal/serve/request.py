"""Reading an OpenAI chat-completions request body for `mmmmodal serve`: every field is checked, none ignored; then
`encode_request` reads its media under the media policy and renders the conversation into model inputs.

`parse_request` turns the JSON body into a `ChatRequest` or raises `RequestError` (HTTP 400 unless said otherwise)
naming what is wrong. Fields this server implements: `messages`, `model`, `max_completion_tokens` / `max_tokens`,
`n`, `seed`, `stop`, `stream`, `stream_options.include_usage`, `temperature`, `top_p`. A field of the OpenAI API it
does not implement is accepted only when it asks for nothing (absent, null, or its no-op value such as
`frequency_penalty: 0` or `tools: []`); any other value, and any unknown field, is refused with every such field
named. Sampling parameters a request leaves out come from the checkpoint's `generation_config`.
"""

from dataclasses import dataclass, field

from modeling_mmmmodal.configuration_mmmmodal import SPECIAL_TOKENS

from .media import AUDIO_FORMATS, MediaPolicy, read_media

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
PART_KEYS = {"text": {"text"}, "image_url": {"image_url"}, "input_audio": {"input_audio"}, "audio_url": {"audio_url"}}
MAX_N = 8
MAX_STOP = 4

IMPLEMENTED = {
    "messages", "model", "max_tokens", "max_completion_tokens", "n", "seed", "stop", "stream", "stream_options",
    "temperature", "top_p",
}
# OpenAI fields this server does not implement, with the values that ask for nothing (null is always fine)
NO_OP = {
    "frequency_penalty": [0], "presence_penalty": [0], "logprobs": [False], "top_logprobs": [0], "logit_bias": [{}],
    "tools": [[]], "tool_choice": ["none"], "parallel_tool_calls": [], "functions": [[]], "function_call": ["none"],
    "response_format": [{"type": "text"}], "modalities": [["text"]], "audio": [], "prediction": [], "store": [False],
    "metadata": [{}], "user": [], "service_tier": [], "reasoning_effort": [], "web_search_options": [],
    "verbosity": [], "prompt_cache_key": [], "safety_identifier": [],
}


class RequestError(ValueError):
    """A request the server refuses; becomes HTTP `status` (400 by default) with `message` as the reason."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass(frozen=True)
class Sampling:
    """How a request's tokens are chosen: greedy when `temperature` is 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class ChatRequest:
    messages: list  # chat messages for the template (media parts as {"type": "image"} / {"type": "audio"})
    media: list  # (modality, source, where) in placeholder order
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    stop: tuple = ()
    stream: bool = False
    include_usage: bool = False
    sampling: Sampling = field(default_factory=Sampling)


def sampling_defaults(generation_config) -> Sampling:
    """The sampling a request gets when it gives no `temperature` / `top_p`: the checkpoint's, greedy if it says so."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return Sampling()
    temperature = generation_config.temperature if generation_config.temperature is not None else 1.0
    top_p = generation_config.top_p if generation_config.top_p is not None else 1.0
    return Sampling(float(temperature), float(top_p), int(generation_config.top_k or 0))


def parse_request(body, model_name: str, defaults: Sampling, max_media: int) -> ChatRequest:
    """Check every field of a chat-completions body; see the module docstring."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    _refuse_unimplemented(body)
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(f"The model {model!r} does not exist; this server serves {model_name!r}.", status=404,
                           param="model", code="model_not_found")
    messages, media = parse_messages(body.get("messages"))
    if len(media) > max_media:
        raise RequestError(f"The request holds {len(media)} images and audio clips; this server takes at most "
                           f"{max_media} per request (--max-media-per-request).", param="messages")
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise RequestError("`stream_options` is only allowed with `stream: true`.", param="stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise RequestError("`stream_options` takes only {'include_usage': true | false}.", param="stream_options")
    return ChatRequest(
        messages, media, max_tokens=_max_tokens(body), n=_n(body), seed=_seed(body), stop=_stop(body), stream=stream,
        include_usage=_typed(options or {}, "include_usage", bool, False), sampling=_sampling(body, defaults),
    )


def _refuse_unimplemented(body: dict):
    unimplemented = [k for k in body if k in NO_OP and body[k] is not None and body[k] not in NO_OP[k]]
    unknown = [k for k in body if k not in IMPLEMENTED and k not in NO_OP]
    if unimplemented or unknown:
        found = [f"this server does not implement {', '.join(map(repr, unimplemented))}" if unimplemented else "",
                 f"unknown field(s) {', '.join(map(repr, unknown))}" if unknown else ""]
        raise RequestError(f"Refused rather than ignored: {'; '.join(f for f in found if f)}. Remove them.",
                           param=(unimplemented + unknown)[0])


def _typed(body: dict, key: str, kind, default):
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RequestError(f"`{key}` must be {_kind_name(kind)}, got {value!r}.", param=key)
    return value


def _kind_name(kind) -> str:
    names = {bool: "true or false", int: "an integer", str: "a string", dict: "an object", list: "a list"}
    return names.get(kind, "a number")


def _max_tokens(body: dict) -> int | None:
    values = {key: _typed(body, key, int, None) for key in ("max_completion_tokens", "max_tokens")}
    given = {key: value for key, value in values.items() if value is not None}
    if len(set(given.values())) > 1:
        raise RequestError("`max_completion_tokens` and `max_tokens` disagree; give one.", param="max_tokens")
    for key, value in given.items():
        if value < 1:
            raise RequestError(f"`{key}` must be a positive integer, got {value}.", param=key)
    return next(iter(given.values()), None)


def _n(body: dict) -> int:
    n = _typed(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise RequestError(f"`n` must be between 1 and {MAX_N}, got {n}.", param="n")
    return n


def _seed(body: dict) -> int | None:
    seed = _typed(body, "seed", int, None)
    return None if seed is None else seed % 2**63


def _stop(body: dict) -> tuple:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"`stop` must be a non-empty string or a list of 1 to {MAX_STOP} of them, got {stop!r}.",
                           param="stop")
    return tuple(dict.fromkeys(stops))


def _sampling(body: dict, defaults: Sampling) -> Sampling:
    temperature, top_p = (_typed(body, key, (int, float), None) for key in ("temperature", "top_p"))
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestError(f"`temperature` must be in [0, 2], got {temperature}.", param="temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(f"`top_p` must be in (0, 1], got {top_p}.", param="top_p")
    temperature = defaults.temperature if temperature is None else float(temperature)
    if temperature == 0:
        return Sampling()
    return Sampling(temperature, defaults.top_p if top_p is None else float(top_p), defaults.top_k)


# ------------------------------------------------------------------------------------------------ messages
def parse_messages(messages) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """OpenAI messages -> (chat messages for our template, media as `(modality, source, where)` in order)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list of {'role', 'content'} objects.", param="messages")
    parsed, media = [], []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise RequestError(f"messages[{i}]: role {role!r} is not supported; use one of {tuple(ROLES)}.",
                               param="messages")
        extra = set(message) - {"role", "content"}
        if extra:
            raise RequestError(f"messages[{i}]: this server does not implement {sorted(extra)} in messages.",
                               param="messages")
        parsed.append({"role": ROLES[role], "content": _parse_content(message.get("content"), i, media)})
    if parsed[-1]["role"] == "assistant":
        raise RequestError("The last message is the assistant's: end with a user message to get an answer.",
                           param="messages")
    return parsed, media


def _parse_content(content, i: int, media: list) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        refuse_media_tokens(content, f"messages[{i}].content")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(f"messages[{i}].content must be a string or a list of parts.", param="messages")
    parts = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_KEYS:
            raise RequestError(f"{where}: unknown content type {kind!r}. Supported: {', '.join(PART_KEYS)}.",
                               param="messages")
        extra = set(part) - {"type"} - PART_KEYS[kind]
        if extra:
            raise RequestError(f"{where}: unknown keys {sorted(extra)} in a {kind!r} part.", param="messages")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{where}: a text part needs a string `text`.", param="messages")
            refuse_media_tokens(part["text"], where)
            parts.append({"type": "text", "text": part["text"]})
            continue
        modality, source = _media_source(part, kind, where)
        parts.append({"type": modality})
        media.append((modality, source, f"{where} ({kind})"))
    return parts


def refuse_media_tokens(text: str, where: str):
    """A 400 naming the first media token (`<image>`, `</audio>`, `<|image_pad|>`, ...) written in `text`: typed
    into a message, it would reach the model as a placeholder or a span token, not as text. vLLM's plugin refuses
    the same (docs/serving.md)."""
    found = [token for token in SPECIAL_TOKENS if token in text]
    if found:
        raise RequestError(
            f"{where}: the text holds {found[0]!r}, one of this model's media tokens, which a message's text may not "
            "contain. Send images and audio as `image_url` / `input_audio` parts (each gets its placeholder); to "
            "mean the characters as text, write them differently (e.g. '< image>').", param="messages")


def _media_source(part: dict, kind: str, where: str) -> tuple[str, str]:
    """(`"image"` or `"audio"`, source string) of one OpenAI media part."""
    value = part.get(kind)
    if kind == "input_audio":  # {"data": <base64>, "format": "wav" | "mp3" | ...}
        if not isinstance(value, dict) or not isinstance(value.get("data"), str) or set(value) - {"data", "format"}:
            raise RequestError(f"{where}: `input_audio` must be {{'data': <base64>, 'format': 'wav'}}.", param="messages")
        if value.get("format") not in (None, *AUDIO_FORMATS):
            raise RequestError(f"{where}: audio format {value.get('format')!r} is not one of {AUDIO_FORMATS}.",
                               param="messages")
        return "audio", f"data:audio/{value.get('format') or 'wav'};base64,{value['data']}"  # base64 by definition
    allowed = {"url", "detail"} if kind == "image_url" else {"url"}
    if isinstance(value, dict) and set(value) - allowed:
        raise RequestError(f"{where}: unknown keys {sorted(set(value) - allowed)} in `{kind}`.", param="messages")
    if isinstance(value, dict) and value.get("detail", "auto") != "auto":
        raise RequestError(f"{where}: `detail` {value['detail']!r} is not implemented: every image is seen at the "
                           "vision tower's resolution. Leave it out or send 'auto'.", param="messages")
    source = value.get("url") if isinstance(value, dict) else value
    if not isinstance(source, str) or not source:
        raise RequestError(f"{where}: `{kind}` needs a `url` (http(s) URL, data: URI, base64 or path).",
                           param="messages")
    return ("image" if kind == "image_url" else "audio"), source


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
