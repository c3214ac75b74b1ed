"""Multi-turn chat over images and audio, reusing the KV cache across turns; and the `mmmmodal chat` terminal app.

`ChatSession` keeps the conversation (standard chat messages), the token ids seen so far and the model's
`DynamicCache`. Each new turn encodes only its own text and media and continues from the cache, so earlier
images and audio are never re-encoded and the earlier prompt is never recomputed.

    mmmmodal chat ./my-checkpoint
    > /image cat.jpg
    > /audio https://example.com/meow.wav
    > Does the sound match the picture?
"""

import copy
import json
import shlex
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache, TextIteratorStreamer
from transformers.utils import logging

from modeling_mmmmodal.processing_mmmmodal import media_source

from .chat_template import turn_end
from .loading import add_loading_arguments, context_limit, load_checkpoint

logger = logging.get_logger(__name__)

MEDIA_KINDS = ("image", "audio")


def _source(part: dict):
    """The image or clip a media part carries or points at; `ValueError` for a part that names none."""
    source = media_source(part)
    if source is None:
        raise ValueError(f"The {part['type']} part {part!r} names no source: give it a `path` or a `url`.")
    return source


def conversation_media(messages: list[dict]) -> tuple[list, list]:
    """Images and audio clips of `messages`, each in placeholder order."""
    found = {kind: [] for kind in MEDIA_KINDS}
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") in found:
                found[part["type"]].append(_source(part))
    return found["image"], found["audio"]


@dataclass
class _Turn:
    """Inputs of one new turn: the tokens to add after the cache and the media they hold."""

    input_ids: torch.Tensor
    media: dict = field(default_factory=dict)


class ChatSession:
    """One conversation with an MMMModal model, with the KV cache kept between turns.

    Args:
        model: a loaded MMMModal model (eval mode).
        processor: its processor.
        max_new_tokens (`int`): longest answer per turn.
        system (`str`, *optional*): a system message put at the start of the conversation.
        **generate_kwargs: passed to `model.generate` (`do_sample`, `temperature`, ...). Greedy by default.

    Example:

    ```python
    >>> session = ChatSession(model, processor)
    >>> session.attach("image", "cat.png")
    >>> for piece in session.stream("What is in picture 1?"):
    ...     print(piece, end="")
    >>> session.ask("And what colour is it?")   # the image is not encoded again
    ```
    """

    def __init__(self, model, processor, max_new_tokens: int = 256, system: str | None = None, **generate_kwargs):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.generate_kwargs = {"do_sample": False, **generate_kwargs}
        # The chat template's own end of turn (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, ...) and the text
        # it writes after an answer (`<|im_end|>\n`): what closes a turn before the next one.
        self.turn_end_token, self._turn_tail = turn_end(processor.tokenizer, processor.chat_template)
        self.turn_end_id = processor.tokenizer.convert_tokens_to_ids(self.turn_end_token)
        self.reset()

    # ------------------------------------------------------------------------------------------------ state
    def reset(self):
        """Forget the conversation, the cache and any media attached but not sent."""
        self.messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        self.pending = []  # (content part, loaded image / waveform) attached for the next user turn
        self._ids = None  # (1, S) every token the cache holds, plus the last generated one
        self._cache = None
        self._cached_messages = 0  # how many of `self.messages` the cache holds
        self._closing = ""  # text that closes the last assistant turn (template tail) before the next turn
        self._last_prompt_length = 0  # length of the last turn's prompt within `self._ids`
        self._thread = getattr(self, "_thread", None)  # the generation thread of the last turn

    def attach(self, kind: str, source):
        """Attach an image or audio clip (path, URL, PIL image or array) to the next user turn.

        The media is read now, so a bad file is refused at once with a `ValueError` and nothing is attached.
        """
        self.pending.append(self._read_media(kind, source, f"attached {kind}"))

    def _read_media(self, kind: str, source, where: str) -> tuple[dict, object]:
        """(content part, loaded image or waveform) for one image or clip; `ValueError` if it cannot be read."""
        if kind not in MEDIA_KINDS:
            raise ValueError(f"Unknown media kind {kind!r}: expected one of {MEDIA_KINDS}.")
        if kind == "image":
            loaded = self.processor.load_image(source, where)
        else:
            loaded = self.processor.load_audio(source, None, where)
        if isinstance(source, str):
            part = {"type": kind, "url" if "://" in source or source.startswith("data:") else "path": source}
        else:  # an in-memory object: usable now, but `save` cannot write it out
            part = {"type": kind}
        return part, loaded

    def _read_parts(self, text) -> list[tuple[dict, object]]:
        """(content part, loaded media or None) for each part of a user turn given as text or as content parts."""
        if isinstance(text, str):
            return [({"type": "text", "text": text}, None)]
        parts = []
        for number, part in enumerate(text, 1):
            kind = part.get("type")
            if kind == "text":
                parts.append(({"type": "text", "text": part["text"]}, None))
            elif kind in MEDIA_KINDS:
                parts.append(self._read_media(kind, _source(part), f"{kind} part {number} of the turn"))
            else:
                raise ValueError(f"Content part {number} has type {kind!r}: expected text, image or audio.")
        return parts

    def fork(self) -> "ChatSession":
        """A copy of the conversation so far, KV cache included, that goes on on its own: ask two different follow-ups
        without encoding the earlier turns twice. Media attached but not sent are copied too."""
        if self._thread is not None:  # an abandoned stream may still be writing into the cache
            self._thread.join()
        twin = copy.copy(self)
        twin.messages, twin.pending, twin._thread = list(self.messages), list(self.pending), None
        twin._cache = copy.deepcopy(self._cache)
        return twin

    def save(self, path):
        """Write the conversation as JSON in the standard messages format."""
        Path(path).write_text(json.dumps(self.messages, ensure_ascii=False, indent=2), encoding="utf-8")

    def load(self, path):
        """Replace the conversation by the messages in a JSON file written by `save` (or any standard one).

        Its media are read (and the cache built) at the next turn, in one pass.
        """
        messages = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError(f"{path} does not hold a list of chat messages ({{'role': ..., 'content': ...}}).")
        self.reset()
        self.messages = messages

    @property
    def cached_tokens(self) -> int:
        return 0 if self._cache is None else self._cache.get_seq_length()

    # ------------------------------------------------------------------------------------------------ turns
    def ask(self, text) -> str:
        """Send a user turn (with the attached media) and return the whole answer."""
        return "".join(self.stream(text))

    def stream(self, text):
        """Send a user turn (with the attached media) and yield the answer piece by piece as it is generated.

        `text`: the user's words, or the turn as content parts in their order (`{"type": "text", ...}` parts and
        image / audio parts that carry their source as a `path`, a `url` or the object), after the attached media.
        Raises `ValueError` (before anything is generated, leaving the session as it was) for unreadable media,
        or a conversation that no longer fits the model's context.
        """
        new = self.pending + self._read_parts(text)
        user = {"role": "user", "content": [part for part, _ in new]}
        turn = self._encode_turn(user, new)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result = self._start_generation(turn, streamer)
        yield from streamer
        result["thread"].join()
        if "error" in result:
            raise result["error"]
        self._finish_turn(user, result)

    def _encode_turn(self, user: dict, new_media: list) -> _Turn:
        """Tokenize what the cache does not hold yet (earlier messages after a `load`, then the new user turn, whose
        (part, loaded media) pairs are `new_media`)."""
        template = self.processor.apply_chat_template
        new_messages = self.messages[self._cached_messages :] + [user]
        before = template(self.messages[: self._cached_messages], tokenize=False) if self._cached_messages else ""
        after = template(self.messages[: self._cached_messages] + new_messages, tokenize=False, add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("The chat template does not render a conversation as a prefix of its continuation.")
        images, audio = conversation_media(self.messages[self._cached_messages :])
        images += [loaded for part, loaded in new_media if part["type"] == "image"]
        audio += [loaded for part, loaded in new_media if part["type"] == "audio"]
        inputs = self.processor(
            text=self._closing + after[len(before) :],
            images=images or None,
            audio=audio or None,
            add_special_tokens=False,  # the rendered template carries its own, as `apply_chat_template` assumes
            return_tensors="pt",
        )
        new_ids = inputs.pop("input_ids")
        inputs.pop("attention_mask")
        limit = context_limit(self.model)
        total = self.cached_tokens + new_ids.shape[1] + self.max_new_tokens
        if limit is not None and total > limit:
            raise ValueError(
                f"This turn does not fit the model's context: {self.cached_tokens} tokens so far + {new_ids.shape[1]} "
                f"new (text and media) + up to {self.max_new_tokens} for the answer = {total} > {limit}. "
                "Attach fewer or shorter media, `/reset` the conversation, or lower max_new_tokens."
            )
        media = {k: v.to(self.model.device) for k, v in inputs.items()}  # the model casts them to its towers' dtype
        return _Turn(new_ids.to(self.model.device), media)

    def _start_generation(self, turn: _Turn, streamer) -> dict:
        """Run `generate` on a thread from the kept cache; the result dict gets `sequences` or `error`."""
        if self._thread is not None:  # a turn whose stream was abandoned may still be generating into the cache
            self._thread.join()
        input_ids = turn.input_ids if self._ids is None else torch.cat([self._ids, turn.input_ids], dim=1)
        cache = self._cache if self._cache is not None else DynamicCache(config=self.model.config.text_config)
        if self._ids is not None:  # after a finished turn the cache holds every token but the last generated one;
            _truncate_cache(cache, self._ids.shape[1] - 1)  # drop what a turn whose stream was abandoned left behind
        cached = cache.get_seq_length()
        result = {"prompt_length": input_ids.shape[1], "cache": cache}

        def run():
            try:
                with torch.inference_mode():
                    result["sequences"] = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        past_key_values=cache,
                        max_new_tokens=self.max_new_tokens,
                        streamer=streamer,
                        **turn.media,
                        **self.generate_kwargs,
                    )
            except Exception as error:  # handed to the caller's thread, which re-raises it
                _truncate_cache(cache, cached)  # back to the state before this turn: the session stays usable
                result["error"] = error
                streamer.end()

        result["thread"] = self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return result

    def _finish_turn(self, user: dict, result: dict):
        sequences = result["sequences"]
        answer_ids = sequences[0, result["prompt_length"] :]
        answer = self.processor.decode(answer_ids, skip_special_tokens=True)
        self.messages += [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self._cached_messages = len(self.messages)
        self._ids, self._cache = sequences, result["cache"]
        self._last_prompt_length = result["prompt_length"]
        ended = len(answer_ids) > 0 and int(answer_ids[-1]) == self.turn_end_id
        # The cache holds the answer, and its end-of-turn token if the model stopped there; the rest of the template's
        # closing goes before the next turn.
        tail = self._turn_tail
        self._closing = tail[tail.index(self.turn_end_token) + len(self.turn_end_token):] if ended else tail
        self.pending = []


def _truncate_cache(cache, length: int):
    """Keep the first `length` positions of `cache` (`DynamicCache.crop` takes the number to drop, negated)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


# ---------------------------------------------------------------------------------------------------- terminal app
HELP = """Commands:
  /image PATH_OR_URL   attach an image to your next message (repeat for several)
  /audio PATH_OR_URL   attach an audio clip to your next message (wav, mp3, flac, ...)
  /reset               start a new conversation
  /save FILE.json      save the conversation (standard chat messages)
  /load FILE.json      continue a saved conversation
  /help                this text
  /quit                leave (Ctrl-D too)
Anything else is sent as your message, with the media attached since the last one."""


def run_repl(session: ChatSession, lines, out=sys.stdout) -> int:
    """Read commands and messages from the iterable `lines`, write answers to `out` as they stream."""
    write = out.write
    write("MMMModal chat. /help for commands.\n")
    for line in lines:
        line = line.strip()
        if not line:
            continue
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        try:
            if command == "/quit":
                break
            elif command == "/help":
                write(HELP + "\n")
            elif command in ("/image", "/audio"):
                if not argument:
                    raise ValueError(f"Usage: {command} PATH_OR_URL")
                session.attach(command[1:], _unquote(argument))
                write(f"[attached {command[1:]} {argument}; {len(session.pending)} waiting for your message]\n")
            elif command == "/reset":
                session.reset()
                write("[new conversation]\n")
            elif command in ("/save", "/load"):
                if not argument:
                    raise ValueError(f"Usage: {command} FILE.json")
                getattr(session, command[1:])(_unquote(argument))
                write(f"[{'saved' if command == '/save' else 'loaded'} {len(session.messages)} messages: {argument}]\n")
            elif command.startswith("/") and " " not in command[1:] and command[1:].isalpha():
                raise ValueError(f"Unknown command {command}. /help lists the commands.")
            else:
                write("assistant: ")
                for piece in session.stream(line):
                    write(piece)
                    out.flush()
                write("\n")
        except (ValueError, OSError) as error:
            write(f"[error] {error}\n")
        out.flush()
    return 0


def _unquote(argument: str) -> str:
    try:
        parts = shlex.split(argument)
    except ValueError:
        return argument
    return parts[0] if len(parts) == 1 else argument


def _input_lines():
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def register(subparsers):
    parser = subparsers.add_parser("chat", help="Chat with a checkpoint in the terminal (images and audio by path or URL).")
    parser.add_argument("checkpoint", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy.")
    parser.add_argument("--system", default=None, help="System message.")
    add_loading_arguments(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    model, processor = load_checkpoint(args.checkpoint, args.device, args.dtype, args.trust_remote_code)
    sampling = {"do_sample": True, "temperature": args.temperature} if args.temperature > 0 else {}
    session = ChatSession(model, processor, max_new_tokens=args.max_new_tokens, system=args.system, **sampling)
    lines = _input_lines() if sys.stdin.isatty() else sys.stdin
    return run_repl(session, lines)
