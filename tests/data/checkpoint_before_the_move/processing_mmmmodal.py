"""MMMModal processor: SigLIP image processor + Whisper feature extractor + tokenizer.

Every `<image>` / `<audio>` placeholder (a written `<image></image>` pair counts as one) becomes start token +
N pad tokens + end token, N being the number of feature vectors that clip yields. The expansion is done on token
ids, so offsets (for `return_assistant_tokens_mask`) stay those of the caller's text.

This file ships with every checkpoint: it imports only numpy, transformers and `.configuration_mmmmodal`.
"""

import math

import numpy as np
from transformers.audio_utils import load_audio
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import load_image
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .configuration_mmmmodal import (
    AUDIO_END_TOKEN,
    AUTO_MAP,
    AUDIO_PAD_TOKEN,
    AUDIO_TOKEN,
    CHATML_TOKENS,
    IMAGE_END_TOKEN,
    IMAGE_PAD_TOKEN,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    audio_token_lengths,
)

logger = logging.get_logger(__name__)

MEDIA_TIMEOUT_S = 20.0
_TEXT_KWARGS = (
    "padding",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "padding_side",
    "add_special_tokens",
    "return_offsets_mapping",
    "return_attention_mask",
    "return_text_replacement_offsets",
    "sampling_rate",
    "return_tensors",
)

# The fallback for a language model without a chat template of its own: multi-turn ChatML. Content is a string (may
# hold `<image>` / `<audio>` markers) or a list of parts; keys set to None by `datasets` are ignored.
# `{% generation %}` marks what an assistant is trained on: its answer and the `<|im_end|>` that ends it.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'audio' -%}{{- '<audio>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- render(message['content']) + '<|im_end|>' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}{{- render(message['content']) + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# A language model's own template, extended (`extend_chat_template`). The prelude turns every message's content into
# the string the language model's template expects (text parts as they are, media parts as `<image>` / `<audio>`) and
# brackets each assistant answer with two Unicode noncharacters; the language model's template then renders as it
# always does, into a variable; the epilogue writes that text out without the brackets, each answer and the
# end-of-turn token after it inside `{% generation %}`. The brackets sit inside the answer's outer whitespace, so a
# template that trims the answer renders it exactly as before.
_EXTENDED = "{#- MMMModal: "
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"
_EXTENSION_PRELUDE = r"""{#- MMMModal: the language model's own chat template (between the set and endset below, unchanged), extended
    so that image and audio parts render as <image> / <audio>, and that each assistant answer with the end-of-turn
    token after it is marked with generation for return_assistant_tokens_mask. -#}
{%- macro mmm_text(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}{%- for part in content -%}
{%- if part['type'] == 'text' -%}{{- part['text'] -}}
{%- elif part['type'] == 'image' -%}{{- '<image>' -}}
{%- elif part['type'] == 'audio' -%}{{- '<audio>' -}}
{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set mmm = namespace(messages=[]) -%}
{%- for message in messages -%}
{%- if message['content'] is none -%}
{%- set mmm.messages = mmm.messages + [message] -%}
{%- else -%}
{%- set text = mmm_text(message['content']) | replace('\ufdd0', '') | replace('\ufdd1', '') -%}
{%- set core = text | trim -%}
{%- if message['role'] == 'assistant' and core -%}
{%- set at = text.find(core) -%}
{%- set text = text[:at] + '\ufdd0' + core + '\ufdd1' + text[at + core | length:] -%}
{%- endif -%}
{%- set mmm.messages = mmm.messages + [dict(message, content=text)] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = mmm.messages -%}
{%- set mmm_rendered -%}{{ '' }}"""
_EXTENSION_EPILOGUE = r"""{{ '' }}{%- endset -%}
{%- set mmm_pieces = mmm_rendered.split('\ufdd0') -%}
{{- mmm_pieces[0] -}}
{%- for piece in mmm_pieces[1:] -%}
{%- set answer = piece.split('\ufdd1') -%}
{%- if answer | length != 2 -%}
{{- raise_exception('The language model\'s chat template did not render an assistant answer whole, so it cannot be marked for training.') -}}
{%- endif -%}
{%- set stop = answer[1].find(END_OF_TURN) -%}
{%- set stop = 0 if stop < 0 else stop + END_OF_TURN | length -%}
{%- generation -%}{{- answer[0] + answer[1][:stop] -}}{%- endgeneration -%}
{{- answer[1][stop:] -}}
{%- endfor -%}"""

# Probe conversations: words no template changes, none a prefix of another.
_PROBE_SYSTEM, _PROBE_ANSWERS = "MmmSystemProbe", ("MmmAnswerProbeOne", "MmmAnswerProbeTwo")
_PROBE_QUESTIONS = ("MmmQuestionProbeOne", "MmmQuestionProbeTwo")


def _probe_conversations() -> list[tuple[list[dict], bool]]:
    """(conversation, add_generation_prompt) pairs that an extended template must render as its base template does.

    The second answer has outer whitespace (that a template may trim); one user turn holds media parts.
    """
    system = {"role": "system", "content": _PROBE_SYSTEM}
    q1, q2 = ({"role": "user", "content": q} for q in _PROBE_QUESTIONS)
    a1 = {"role": "assistant", "content": _PROBE_ANSWERS[0]}
    a2 = {"role": "assistant", "content": f" {_PROBE_ANSWERS[1]} \n"}
    media = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{_PROBE_QUESTIONS[1]} "},
                                         {"type": "audio"}, {"type": "text", "text": "and"}, {"type": "image"}]}
    return [([q1], True), ([q1, a1], False), ([system, q1], True), ([q1, a1, q2], True), ([q1, a1, q2, a2], False),
            ([system, q1, a1, q2, a2], False), ([q1, a1, media], True), ([system, media, a2], False)]


def _as_text(conversation: list[dict]) -> list[dict]:
    """The conversation as its base template sees it: content parts written out as text and placeholders."""
    def text(content):
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") if part["type"] == "text" else f"<{part['type']}>" for part in content)

    return [{**message, "content": text(message["content"])} for message in conversation]


def _as_parts(conversation: list[dict]) -> list[dict]:
    """The conversation as standard content parts (what TRL's collator and the processor get)."""
    return [{**m, "content": m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]}
            for m in conversation]


def _render(template: str, tokenizer, conversation: list[dict], add_generation_prompt=False, marks=False):
    """Render one conversation as `apply_chat_template` does; with `marks`, also the (start, end) of its
    `{% generation %}` spans."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, indices = render_jinja_template(
        conversations=[conversation], chat_template=template, add_generation_prompt=add_generation_prompt,
        return_assistant_tokens_mask=marks, **tokenizer.special_tokens_map,
    )
    return (rendered[0], [tuple(span) for span in indices[0]]) if marks else rendered[0]


def turn_end(tokenizer, chat_template: str) -> tuple[str, str]:
    """The end-of-turn token of `chat_template`, and the text the template writes after an assistant answer.

    The end-of-turn token is the first special (or added) token after the answer: the token a model stops at.
    The text after the answer is what closes that turn (ChatML: `("<|im_end|>", "<|im_end|>\n")`).
    Raises `ValueError` if there is none.
    """
    answer = _PROBE_ANSWERS[0]
    text = _render(chat_template, tokenizer, [{"role": "user", "content": _PROBE_QUESTIONS[0]},
                                              {"role": "assistant", "content": answer}])
    if text.count(answer) != 1:
        raise ValueError("it does not render an assistant message's content as given (once, unchanged)")
    tail = text[text.index(answer) + len(answer):]
    tokens = {str(token) for token in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens)
    found = [(tail.find(token), -len(token), token) for token in tokens if token and token in tail]
    if not found:
        raise ValueError(
            f"it writes no special token after an assistant answer (it writes {tail!r}), so the model has no "
            "end-of-turn token to stop at"
        )
    return min(found)[2], tail


def extend_chat_template(template: str, tokenizer, name: str = "the language model") -> str:
    """The language model's own chat template, extended for MMMModal.

    Image and audio parts render as `<image>` / `<audio>` placeholders where they are in the message, and each
    assistant answer, with the end-of-turn token that follows it, is marked with `{% generation %}` (for
    `return_assistant_tokens_mask` / `--assistant_only_loss`). A text-only conversation renders exactly as the
    language model's template renders it. An already extended template is returned as it is.

    Args:
        template (`str`): the language model's chat template.
        tokenizer: the language model's tokenizer (its special tokens and the template's variables).
        name (`str`): what to call the language model in errors (its hub id or folder).

    Raises `ValueError`, naming `name` and what is missing, for a template that cannot be extended.
    """
    import json
    import re

    if template.startswith(_EXTENDED):
        return template
    # The language model's own marks (if any) would be nested in ours: keep their blocks, drop the marking.
    base = re.sub(r"\{%(-?)\s*generation\s*(-?)%\}", r"{%\1 if true \2%}", template)
    base = re.sub(r"\{%(-?)\s*endgeneration\s*(-?)%\}", r"{%\1 endif \2%}", base)
    # Jinja drops one trailing newline of a template; inside ours it would not be the template's end any more.
    base = base[:-2] if base.endswith("\r\n") else base[:-1] if base.endswith(("\n", "\r")) else base
    try:
        end_of_turn, _ = turn_end(tokenizer, base)
    except Exception as error:
        raise ValueError(
            f"The chat template of {name} cannot be extended for MMMModal: {error}. MMMModal needs a template that "
            "renders each message's content as given and ends every assistant turn with a special token; fix the "
            "template in its tokenizer_config.json / chat_template.jinja, or remove it to use ChatML."
        ) from error
    extended = (_EXTENSION_PRELUDE + base + _EXTENSION_EPILOGUE).replace("END_OF_TURN", json.dumps(end_of_turn))
    check_extended_template(template, extended, tokenizer, name)
    return extended


def check_extended_template(base: str, extended: str, tokenizer, name: str = "the language model") -> None:
    """Raise `ValueError` unless `extended` renders the probe conversations as `base` does.

    Text-only conversations must render to the same text (or fail alike, for a template that refuses some role
    order); media parts must render as `<image>` / `<audio>` exactly where they are in the message; the
    `{% generation %}` marks must cover exactly each assistant answer (without its outer whitespace) up to and
    including the end-of-turn token after it.
    """
    end_of_turn, _ = turn_end(tokenizer, base)
    for conversation, prompt in _probe_conversations():
        try:
            expected = _render(base, tokenizer, _as_text(conversation), prompt)
        except Exception:  # the language model's template refuses this conversation: ours must refuse it too
            try:
                _render(extended, tokenizer, _as_parts(conversation), prompt)
            except Exception:
                continue
            raise ValueError(f"The extended chat template of {name} renders a conversation its own template refuses.")
        text, spans = _render(extended, tokenizer, _as_parts(conversation), prompt, marks=True)
        if text != expected:
            raise ValueError(
                f"The extended chat template of {name} renders {_as_parts(conversation)} as {text!r}, but the "
                f"language model's own template gives {expected!r} (media as <image> / <audio> in place)."
            )
        answers = [m["content"].strip() for m in conversation if m["role"] == "assistant"]
        wanted, cursor = [], 0
        for answer in answers:
            start = expected.index(answer, cursor)
            stop = expected.find(end_of_turn, start + len(answer))
            cursor = start + len(answer) if stop < 0 else stop + len(end_of_turn)
            wanted.append(expected[start:cursor])
        # (a mark may take in the whitespace before an answer: ChatML's does, and that renders the same)
        if [text[a:b].lstrip() for a, b in spans] != wanted:
            raise ValueError(
                f"The extended chat template of {name} marks {[text[a:b] for a, b in spans]} for training in "
                f"{text!r}; expected each assistant answer with its end-of-turn token: {wanted}."
            )


class MMMModalProcessor(ProcessorMixin):
    r"""
    Constructs an MMMModal processor from a SigLIP image processor, a Whisper feature extractor and a tokenizer.

    Args:
        image_processor ([`SiglipImageProcessor`]): Turns images into `pixel_values`.
        feature_extractor ([`WhisperFeatureExtractor`]): Turns 16 kHz audio into log-mel `input_features`.
        tokenizer ([`PreTrainedTokenizerBase`]): The language model's tokenizer; the span tokens are added if missing.
        chat_template (`str`, *optional*): Jinja template; defaults to the tokenizer's own template, extended
            (`extend_chat_template`), or to ChatML (`CHAT_TEMPLATE`) for a tokenizer without one.
        patch_size (`int`, *optional*): Vision tower patch size; `None` if the model has no vision tower.
        audio_kernel_size (`int`, *optional*): Audio projector kernel; `None` if the model has no audio tower.
        audio_stride (`int`, *optional*, defaults to 3): Audio projector stride.
        max_audio_seconds (`float`, *optional*, defaults to 300.0): Longest clip accepted (split into windows).
    """

    def __init__(
        self,
        image_processor=None,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        patch_size: int | None = None,
        audio_kernel_size: int | None = None,
        audio_stride: int = 3,
        max_audio_seconds: float = 300.0,
        **kwargs,
    ):
        if chat_template is None:  # the language model's own template, extended; ChatML for one without
            own = tokenizer.chat_template
            own = own.get("default") if isinstance(own, dict) else own
            chat_template = extend_chat_template(own, tokenizer, tokenizer.name_or_path) if own else CHAT_TEMPLATE
        tokenizer.chat_template = chat_template
        tokens = SPECIAL_TOKENS + (CHATML_TOKENS if chat_template == CHAT_TEMPLATE else ())
        missing = [t for t in tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or AUDIO_PAD_TOKEN
        self.patch_size = patch_size
        self.audio_kernel_size = audio_kernel_size
        self.audio_stride = audio_stride
        self.max_audio_seconds = max_audio_seconds
        ids = tokenizer.convert_tokens_to_ids
        self.image_token, self.audio_token = IMAGE_TOKEN, AUDIO_TOKEN
        self.image_start_token_id, self.image_end_token_id = ids(IMAGE_TOKEN), ids(IMAGE_END_TOKEN)
        self.image_token_id, self.audio_token_id = ids(IMAGE_PAD_TOKEN), ids(AUDIO_PAD_TOKEN)
        self.audio_start_token_id, self.audio_end_token_id = ids(AUDIO_TOKEN), ids(AUDIO_END_TOKEN)
        super().__init__(image_processor, feature_extractor, tokenizer, chat_template=chat_template)
        # Loading drops `auto_map` from the processor's attributes and saving writes it back: kept here, a loaded
        # processor serializes as it was saved (the remote-code entry point is this file's class).
        self.auto_map = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}

    # ----------------------------------------------------------------------------------------------- media loading
    def load_image(self, image, where: str = "the image"):
        """Read one image (PIL image, array, path, URL, base64 or data URI); `ValueError` naming `where` if it cannot
        be read or is empty."""
        try:
            image = load_image(image, timeout=MEDIA_TIMEOUT_S) if isinstance(image, str) else image
            if hasattr(image, "load"):
                image.load()
        except Exception as error:
            raise ValueError(f"Could not read the image {_describe(image)} ({where}): {error}") from error
        size = getattr(image, "size", None) or np.shape(image)
        if not size or 0 in tuple(size):
            raise ValueError(f"The image {_describe(image)} ({where}) is empty.")
        return image

    def load_audio(self, audio, sampling_rate: int | None = None, where: str = "the audio") -> np.ndarray:
        """Read one clip as a mono float32 waveform at the feature extractor's rate (16 kHz).

        `audio`: an array (at `sampling_rate`, 16 kHz if `None`), a path, URL or data URI, a `{"array",
        "sampling_rate"}` dict or a datasets `AudioDecoder`. `ValueError` naming `where` if it cannot be read, is
        empty, holds NaN / inf, or is longer than `max_audio_seconds`.
        """
        target = self.feature_extractor.sampling_rate
        try:
            if hasattr(audio, "get_all_samples"):  # datasets 4+'s Audio feature: a torchcodec `AudioDecoder`
                samples = audio.get_all_samples()
                audio, sampling_rate = samples.data.numpy(), samples.sample_rate
            elif isinstance(audio, dict):  # datasets 3's Audio feature: {"array": ..., "sampling_rate": ...}
                sampling_rate = audio.get("sampling_rate", sampling_rate)
                audio = audio.get("array") if audio.get("array") is not None else audio.get("path")
            if isinstance(audio, str):
                waveform = load_audio(audio, sampling_rate=target, timeout=MEDIA_TIMEOUT_S)
            else:
                waveform = np.asarray(audio, dtype=np.float32)
                if waveform.ndim == 2:  # (channels, samples) -> mono
                    waveform = waveform.mean(0)
                if sampling_rate is not None and sampling_rate != target:
                    waveform = _resample(waveform, sampling_rate, target)
        except Exception as error:
            raise ValueError(f"Could not read the audio {_describe(audio)} ({where}): {error}") from error
        if waveform.ndim != 1 or waveform.size == 0:
            raise ValueError(f"The audio {_describe(audio)} ({where}) is empty or not mono (shape {waveform.shape}).")
        if not np.isfinite(waveform).all():
            raise ValueError(f"The audio {_describe(audio)} ({where}) holds NaN or infinite samples.")
        seconds = waveform.size / target
        if seconds > self.max_audio_seconds:
            raise ValueError(
                f"The audio {_describe(audio)} ({where}) lasts {seconds:.1f} s, over max_audio_seconds="
                f"{self.max_audio_seconds:g}. Cut it into shorter clips or raise `max_audio_seconds`."
            )
        return waveform

    # ------------------------------------------------------------------------------------------ feature extraction
    def _image_inputs(self, images: list) -> tuple[dict, list[int]]:
        if not images:
            return {}, []
        if self.patch_size is None:
            raise ValueError("Got images, but this model has no vision tower: remove the <image> placeholders.")
        pixel_values = self.image_processor(images, return_tensors="np")["pixel_values"]
        height, width = pixel_values.shape[-2:]
        per_image = (height // self.patch_size) * (width // self.patch_size)
        return {"pixel_values": pixel_values}, [per_image] * len(images)

    def _audio_inputs(self, waveforms: list[np.ndarray]) -> tuple[dict, list[int]]:
        """Split every clip into consecutive Whisper windows; count the tokens each clip yields."""
        if not waveforms:
            return {}, []
        if self.audio_kernel_size is None:
            raise ValueError("Got audio, but this model has no audio tower: remove the <audio> placeholders.")
        window = self.feature_extractor.n_samples
        windows, clip_of_window = [], []
        for clip_index, waveform in enumerate(waveforms):
            for start in range(0, waveform.size, window):
                windows.append(waveform[start : start + window])
                clip_of_window.append(clip_index)
        features, mask = self._log_mel(windows)
        per_window = [audio_token_lengths(int(n), self.audio_kernel_size, self.audio_stride) for n in mask.sum(-1)]
        per_clip = np.bincount(clip_of_window, weights=per_window, minlength=len(waveforms)).astype(int).tolist()
        return {"input_features": features, "input_features_mask": mask}, per_clip

    def _log_mel(self, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(features `(W, mel bins, window frames)`, mask `(W, window frames)` of the frames that hold audio).

        The feature extractor pads every window to 30 s and runs the STFT over all of it, so a 2 s clip costs as
        much as a 30 s one. Here it runs over each window's samples plus the `n_fft` zeros after them that the
        frames at its end read (the batch padded to its longest), and every later frame, which the padded
        computation fills from zeros alone, takes the value it would get there: log10 of the floor 1e-10, raised to
        the window's maximum - 8 (`(max(-10, M - 8) + 4) / 4` = `max(-1.5, highest feature - 2)`). The result equals
        the padded computation's (to float32 rounding) on every frame the encoder reads.
        """
        extractor = self.feature_extractor
        hop, frames, full = extractor.hop_length, extractor.nb_max_frames, extractor.n_samples
        lengths = np.array([w.size for w in windows])
        if getattr(extractor, "dither", 0.0):  # random noise on every sample, padding included: no shortcut
            span = full
        else:
            span = int(min(full, -(-(lengths.max() + extractor.n_fft) // hop) * hop))
        batch = np.zeros((len(windows), span), dtype=np.float32)
        for i, waveform in enumerate(windows):
            batch[i, : waveform.size] = waveform
        computed = extractor(list(batch), sampling_rate=extractor.sampling_rate, padding="longest",
                             return_tensors="np")["input_features"]
        features = np.empty((len(windows), computed.shape[1], frames), dtype=np.float32)
        features[..., : computed.shape[-1]] = computed
        rest = np.maximum(-1.5, computed.reshape(len(windows), -1).max(-1) - 2.0)
        features[..., computed.shape[-1] :] = rest[:, None, None]
        mask = (np.arange(frames)[None, :] < -(-lengths // hop)[:, None]).astype(np.int32)
        return features, mask

    # ------------------------------------------------------------------------------------------------- expansion
    def _expand(self, ids: list[int], offsets, image_counts: list[int], audio_counts: list[int]):
        """Replace each placeholder (and an immediately following end token) by start + N pads + end.

        Counts were checked against the placeholders already; this only splices, one slice per media item.
        Returns the new ids, their offsets (span tokens are zero-width) and the (start, end) of every span.
        """
        spans = {
            self.image_start_token_id: (self.image_token_id, self.image_end_token_id, iter(image_counts)),
            self.audio_start_token_id: (self.audio_token_id, self.audio_end_token_id, iter(audio_counts)),
        }
        offsets = offsets or [(0, 0)] * len(ids)
        out_ids, out_offsets, media_spans, cursor = [], [], [], 0
        for i in [i for i, token in enumerate(ids) if token in spans]:
            pad_id, end_id, counts = spans[ids[i]]
            n = next(counts)
            out_ids += ids[cursor:i]
            out_offsets += offsets[cursor:i]
            start = len(out_ids)
            out_ids += [ids[i]] + [pad_id] * n + [end_id]
            # Zero width at the placeholder: a span never overlaps text, and the offsets stay in order (older
            # transformers releases bisect them to find the assistant tokens).
            at = offsets[i][0]
            out_offsets += [(at, at)] * (n + 2)
            media_spans.append((start, len(out_ids)))
            cursor = i + (2 if i + 1 < len(ids) and ids[i + 1] == end_id else 1)
        out_ids += ids[cursor:]
        out_offsets += offsets[cursor:]
        return out_ids, out_offsets, media_spans

    def _truncate(self, ids, offsets, media_spans, max_length: int, side: str, sample: int):
        if len(ids) <= max_length:
            return ids, offsets
        keep = slice(0, max_length) if side == "right" else slice(len(ids) - max_length, len(ids))
        for start, end in media_spans:
            if start < keep.start or end > keep.stop:
                raise ValueError(
                    f"Sample {sample} is {len(ids)} tokens long; truncating it to max_length={max_length} would cut "
                    f"through a media span (tokens {start}..{end}). Raise max_length, shorten the text, or drop media."
                )
        return ids[keep], offsets[keep]

    def __call__(self, images=None, text=None, audio=None, videos=None, **kwargs) -> BatchFeature:
        """Tokenize `text`, expand its `<image>` / `<audio>` placeholders, and encode the media.

        Args:
            images: one image, a flat list (in placeholder order across the batch) or one list per sample.
                Each is a PIL image, array, path or URL.
            text (`str` or `list[str]`): text with `<image>` / `<audio>` placeholders.
            audio: one clip, a flat list or one list per sample; arrays at 16 kHz (or `sampling_rate=`), paths,
                URLs, or `{"array", "sampling_rate"}` dicts. Any rate is resampled to 16 kHz.
            **kwargs: `padding`, `truncation`, `max_length`, `pad_to_multiple_of`, `padding_side`,
                `add_special_tokens`, `return_offsets_mapping`, `return_tensors`, `sampling_rate`.
        """
        if _holds_any(videos):  # `None` and empty lists are what evaluation harnesses pass for "no video"
            raise ValueError("MMMModal takes images and audio, not video: pass `videos=None` (or leave it out).")
        if text is None:
            raise ValueError("MMMModalProcessor needs `text` with one <image> / <audio> placeholder per media item.")
        for nested in ("text_kwargs", "images_kwargs", "audio_kwargs"):  # ProcessorMixin's per-modality groups
            kwargs.update(kwargs.pop(nested, None) or {})
        unknown = set(kwargs) - set(_TEXT_KWARGS)
        if unknown:
            logger.warning_once(f"MMMModalProcessor ignores these arguments: {sorted(unknown)}")
        want_offsets = kwargs.get("return_offsets_mapping", False)
        encoded = self.tokenizer(
            [text] if isinstance(text, str) else list(text),
            add_special_tokens=kwargs.get("add_special_tokens", True),
            return_offsets_mapping=want_offsets,
            return_attention_mask=False,
        )
        media_data, image_counts, audio_counts = self._encode_media(
            encoded["input_ids"], images, audio, kwargs.get("sampling_rate")
        )
        all_ids, all_offsets = [], []
        for s, ids in enumerate(encoded["input_ids"]):
            offsets = encoded["offset_mapping"][s] if want_offsets else None
            ids, offsets, spans = self._expand(ids, offsets, image_counts[s], audio_counts[s])
            if kwargs.get("truncation") and kwargs.get("max_length"):
                side = getattr(self.tokenizer, "truncation_side", "right")
                ids, offsets = self._truncate(ids, offsets, spans, kwargs["max_length"], side, s)
            all_ids.append(ids)
            all_offsets.append(offsets)
        data = self._pad(all_ids, all_offsets if want_offsets else None, kwargs)
        data.update(media_data)
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    def _encode_media(self, batch_ids: list[list[int]], images, audio, sampling_rate):
        """Match media to placeholders sample by sample, load and encode them.

        Returns the model inputs and, per sample, the token count of each of its images and of each of its clips.
        """
        for s, ids in enumerate(batch_ids):
            if self.image_token_id in ids or self.audio_token_id in ids:
                raise ValueError(
                    f"Text {s} contains a raw <|image_pad|> or <|audio_pad|> token. Write one <image> / <audio> "
                    "placeholder per media item; the processor expands it."
                )
        per_sample_images = _split_per_sample(images, [ids.count(self.image_start_token_id) for ids in batch_ids], "image")
        per_sample_audio = _split_per_sample(audio, [ids.count(self.audio_start_token_id) for ids in batch_ids], "audio")
        flat_images = [
            self.load_image(image, f"image {k} of sample {s}")
            for s, items in enumerate(per_sample_images)
            for k, image in enumerate(items)
        ]
        flat_audio = [
            self.load_audio(clip, sampling_rate, f"audio {k} of sample {s}")
            for s, items in enumerate(per_sample_audio)
            for k, clip in enumerate(items)
        ]
        image_data, image_tokens = self._image_inputs(flat_images)
        audio_data, audio_tokens = self._audio_inputs(flat_audio)
        return {**image_data, **audio_data}, _regroup(image_tokens, per_sample_images), _regroup(audio_tokens, per_sample_audio)

    def _pad(self, all_ids, all_offsets, kwargs) -> dict:
        padding = kwargs.get("padding", False)
        lengths = [len(ids) for ids in all_ids]
        if padding in (True, "longest"):
            target = max(lengths)
        elif padding == "max_length":
            target = kwargs.get("max_length") or max(lengths)
        else:
            target = None
        multiple = kwargs.get("pad_to_multiple_of")
        if target is not None and multiple:
            target = int(math.ceil(target / multiple) * multiple)
        side = kwargs.get("padding_side") or self.tokenizer.padding_side
        pad_id = self.tokenizer.pad_token_id
        data = {"input_ids": [], "attention_mask": []}
        if all_offsets is not None:
            data["offset_mapping"] = []
        for s, ids in enumerate(all_ids):
            n_pad = 0 if target is None else max(target - len(ids), 0)
            mask = [1] * len(ids)
            offsets = list(all_offsets[s]) if all_offsets is not None else None
            if side == "left":
                ids, mask = [pad_id] * n_pad + ids, [0] * n_pad + mask
                offsets = [(0, 0)] * n_pad + offsets if offsets is not None else None
            else:  # padding offsets are zero-width at the text's end, so that offsets stay in order
                ids, mask = ids + [pad_id] * n_pad, mask + [0] * n_pad
                end = max((stop for _, stop in offsets), default=0) if offsets is not None else 0
                offsets = offsets + [(end, end)] * n_pad if offsets is not None else None
            data["input_ids"].append(ids)
            data["attention_mask"].append(mask)
            if offsets is not None:
                data["offset_mapping"].append(offsets)
        return data

    # ----------------------------------------------------------------------------------------------- chat
    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, with four differences that hold on every supported release.

        - The rendered text is tokenized without adding special tokens (the template writes its own), as the
          tokenizer's `apply_chat_template` does.
        - Content-part keys set to `None` are dropped: rows read by `datasets` give every part every key
          (`{"type": "text", "text": "hi", "path": None}`), and `None` is not a file to load.
        - With `tokenize=True`, every image and audio part is read here first (paths, URLs, arrays, datasets'
          audio decoders), so an unreadable one raises a `ValueError` that names the part and its source.
        - `return_assistant_tokens_mask=True` gives the same mask everywhere and fast: the base class walks every
          token's offsets in Python, which is slow on tensors, so it gets lists and the tensors are made after;
          span, media and padding tokens are never marked.
        """
        conversation = _drop_none_keys(conversation)
        if not kwargs.get("tokenize"):
            return super().apply_chat_template(conversation, chat_template, **kwargs)
        conversation = self._read_conversation_media(conversation)
        # The rendered template carries its own special tokens, as the tokenizer's `apply_chat_template` assumes: the
        # base class adds a bos unless the text starts with one, which a template that writes none (Zephyr's) gets.
        kwargs["processor_kwargs"] = {"add_special_tokens": False, **(kwargs.get("processor_kwargs") or {})}
        if not (kwargs.get("return_dict") and kwargs.get("return_assistant_tokens_mask")):
            return super().apply_chat_template(conversation, chat_template, **kwargs)
        # Tensors are made after the mask walk; `processor_kwargs` is this call's own copy, so popping is safe.
        return_tensors = kwargs["processor_kwargs"].pop("return_tensors", kwargs.pop("return_tensors", None))
        out = super().apply_chat_template(conversation, chat_template, **kwargs)
        never = {self.image_token_id, self.image_start_token_id, self.image_end_token_id,
                 self.audio_token_id, self.audio_start_token_id, self.audio_end_token_id}
        out["assistant_masks"] = [
            [int(marked and attended and token not in never) for marked, token, attended in zip(*row)]
            for row in zip(out["assistant_masks"], out["input_ids"], out["attention_mask"])
        ]
        out.convert_to_tensors(tensor_type=None if return_tensors == "auto" else return_tensors)
        return out

    def _read_conversation_media(self, conversation):
        """A copy of `conversation` (one, or a batch) whose image and audio parts hold the decoded media."""
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        out = []
        for c, messages in enumerate(conversations):
            out.append([self._read_message_media(message, f"message {m}" + (f" of conversation {c}" if batched else ""))
                        for m, message in enumerate(messages)])
        return out if batched else out[0]

    def _read_message_media(self, message, where: str):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return message
        parts = []
        for p, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            source = media_source(part) if kind in MEDIA_SOURCE_KEYS else None
            if source is not None:
                here = f"part {p} of {where}"
                loaded = self.load_image(source, here) if kind == "image" else self.load_audio(source, None, here)
                part = {"type": kind, kind: loaded}
            parts.append(part)
        return {**message, "content": parts}

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @classmethod
    def from_parts(
        cls,
        vision=None,
        audio=None,
        text=None,
        audio_kernel_size: int = 40,
        audio_stride: int = 3,
        max_audio_seconds: float = 300.0,
        **kwargs,
    ) -> "MMMModalProcessor":
        """Compose a processor from the three pretrained sources (hub ids or local folders).

        `vision` gives the image processor and patch size, `audio` the Whisper feature extractor, `text` the
        tokenizer (the span tokens are added to it) and the chat template: the language model's own, extended with
        image and audio parts (`extend_chat_template`), or ChatML for a language model without one (then its turn
        tokens are new tokens too, and a warning says so). A missing tower still gets a default sub-processor (the
        processor always has all three parts), but its placeholders are refused.

        Raises `ValueError` naming `text` if it has no tokenizer, or a chat template that cannot be extended.
        """
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, SiglipImageProcessor
        from transformers import WhisperFeatureExtractor

        if text is None:
            raise ValueError("`text` (the language model's tokenizer source) is required.")
        try:
            tokenizer = AutoTokenizer.from_pretrained(text, **kwargs)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"The language model {text} has no tokenizer that AutoTokenizer can load (tokenizer.json or "
                f"tokenizer_config.json with its vocabulary): {error}"
            ) from error
        own = tokenizer.chat_template
        if isinstance(own, dict):  # named templates: the default one is the chat format
            own = own.get("default")
        if own:
            chat_template = extend_chat_template(own, tokenizer, str(text))
        else:
            chat_template = CHAT_TEMPLATE
            logger.warning(
                f"The language model {text} has no chat template: the checkpoint uses ChatML, with "
                f"{' and '.join(CHATML_TOKENS)} added as new tokens that the language model has never seen (stage 2 "
                "must train them; a LoRA run needs the embeddings and lm_head in modules_to_save)."
            )
        known = set(tokenizer.get_vocab())
        patch_size = None
        image_processor = SiglipImageProcessor()
        if vision is not None:
            vision_config = AutoConfig.from_pretrained(vision, **kwargs)
            patch_size = getattr(vision_config, "vision_config", vision_config).patch_size
            image_processor = AutoImageProcessor.from_pretrained(vision, **kwargs)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(audio, **kwargs) if audio else WhisperFeatureExtractor()
        processor = cls(
            image_processor,
            feature_extractor,
            tokenizer,
            chat_template=chat_template,
            patch_size=patch_size,
            audio_kernel_size=audio_kernel_size if audio is not None else None,
            audio_stride=audio_stride,
            max_audio_seconds=max_audio_seconds,
        )
        # The tokens the language model does not know: `MMMModalForConditionalGeneration.from_parts` initialises
        # their embedding rows (not saved; a loaded processor has none).
        vocab = tokenizer.get_vocab()
        processor.new_tokens = sorted((token for token in vocab if token not in known), key=vocab.get)
        return processor

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values", "input_features", "input_features_mask"]


def _describe(item) -> str:
    if isinstance(item, str):
        return repr(item if len(item) < 200 else item[:200] + "...")
    if isinstance(item, dict):
        return _describe(item.get("path") or "<array>")
    return f"<{type(item).__name__}>"


# Where a standard chat content part keeps its image or audio, in the order transformers' processors read them.
MEDIA_SOURCE_KEYS = {"image": ("image", "url", "path", "base64"), "audio": ("audio", "url", "path")}


def media_source(part: dict):
    """The image or audio a standard content part holds or points at (object, URL, path, base64), or `None` for a
    bare `{"type": "image"}` part (whose image comes separately, as TRL's `images` column gives it)."""
    return next((part[key] for key in MEDIA_SOURCE_KEYS.get(part.get("type"), ()) if part.get(key) is not None), None)


def _holds_any(media) -> bool:
    """Whether `media` (None, one item, or lists of items, nested per sample) holds at least one item."""
    if media is None:
        return False
    if isinstance(media, (list, tuple)):
        return any(_holds_any(item) for item in media)
    return True


def _split_per_sample(media, markers: list[int], name: str) -> list[list]:
    """Group media per sample: accepts one item, a flat list in placeholder order, or one list per sample."""
    if media is None:
        media = []
    elif not isinstance(media, (list, tuple)):
        media = [media]
    if len(media) and all(isinstance(m, (list, tuple)) for m in media) and len(media) == len(markers):
        nested = [list(m) for m in media]
    else:
        if len(media) != sum(markers):
            raise ValueError(
                f"The text holds {sum(markers)} <{name}> placeholders (per sample: {markers}) but {len(media)} "
                f"{name} inputs were given. Pass one {name} per placeholder, in order."
            )
        bounds = np.cumsum([0] + markers)
        nested = [list(media[bounds[i] : bounds[i + 1]]) for i in range(len(markers))]
    for sample, (items, count) in enumerate(zip(nested, markers)):
        if len(items) != count:
            raise ValueError(
                f"Sample {sample} has {count} <{name}> placeholders but {len(items)} {name} inputs. "
                f"Pass one {name} per placeholder, in order."
            )
    return nested


def _regroup(flat: list, like: list[list]) -> list[list]:
    """Split `flat` into consecutive groups as long as the groups of `like`."""
    items = iter(flat)
    return [[next(items) for _ in group] for group in like]


def _drop_none_keys(conversation):
    def clean_message(message):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            return message
        content = [{k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part for part in message["content"]]
        return {**message, "content": content}

    if conversation and isinstance(conversation[0], (list, tuple)):
        return [[clean_message(m) for m in conv] for conv in conversation]
    return [clean_message(m) for m in conversation]


def _resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """soxr's high-quality resampler, as transformers' `load_audio` resamples files (soxr comes with its audio
    backends); for arrays given at another rate."""
    try:
        import soxr
    except ImportError as error:
        raise ValueError(
            f"Resampling audio from {source_rate} Hz to {target_rate} Hz needs `soxr` (`pip install soxr`), or give "
            f"the clip at {target_rate} Hz."
        ) from error
    return soxr.resample(waveform, source_rate, target_rate, quality="soxr_hq").astype(np.float32)


MMMModalProcessor.register_for_auto_class()

__all__ = ["MMMModalProcessor", "media_source"]
