"""MMMModal processor: SigLIP image processor + Whisper feature extractor + tokenizer.

Every `<image>` / `<audio>` placeholder (a written `<image></image>` pair counts as one) becomes start token +
N pad tokens + end token, N being the number of feature vectors that clip yields. The expansion is done on token
ids, so offsets (for `return_assistant_tokens_mask`) stay those of the caller's text.

This file ships with every checkpoint: it imports only numpy, transformers and `.configuration_mmmmodal`.
"""

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
    IMAGE_END_TOKEN,
    IMAGE_PAD_TOKEN,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    audio_token_lengths,
)

logger = logging.get_logger(__name__)

MEDIA_TIMEOUT_S = 20.0
_TEXT_KWARGS = ("padding", "truncation", "max_length", "pad_to_multiple_of", "padding_side", "add_special_tokens",
                "return_offsets_mapping", "return_attention_mask", "return_text_replacement_offsets", "sampling_rate",
                "return_tensors")


class MMMModalProcessor(ProcessorMixin):
    r"""
    Constructs an MMMModal processor from a SigLIP image processor, a Whisper feature extractor and a tokenizer.

    Args:
        image_processor ([`SiglipImageProcessor`]): Turns images into `pixel_values`.
        feature_extractor ([`WhisperFeatureExtractor`]): Turns 16 kHz audio into log-mel `input_features`.
        tokenizer ([`PreTrainedTokenizerBase`]): The checkpoint's tokenizer (the language model's, with the span
            tokens and a pad token).
        chat_template (`str`, *optional*): the checkpoint's Jinja template (its `chat_template.jinja`); defaults to
            the tokenizer's, which must be an MMMModal template (one that renders image and audio parts). A new
            processor for a language model is composed with `mmmmodal.compose.compose_processor`, which extends the
            language model's own template.
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
        compose = "a new language model's processor is composed by `mmmmodal.compose.compose_processor`"
        if chat_template is None:  # a loaded checkpoint passes its own; a tokenizer saved with one carries it
            chat_template = tokenizer.chat_template
            chat_template = chat_template.get("default") if isinstance(chat_template, dict) else chat_template
            if not chat_template or IMAGE_TOKEN not in chat_template or AUDIO_TOKEN not in chat_template:
                raise ValueError(
                    f"The tokenizer has no MMMModal chat template (one that renders image and audio parts as <image> / "
                    f"<audio>): pass the checkpoint's `chat_template` ({compose}, which extends the language model's own)."
                )
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"The tokenizer has no {missing}: it is not an MMMModal checkpoint's tokenizer ({compose}).")
        tokenizer.chat_template = chat_template
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

        The extractor would pad every window to 30 s and run the STFT over all of it. Here it runs over the samples
        plus the `n_fft` zeros that the last frames read; every later frame takes the value the padded computation
        gives a frame of zeros: `(max(-10, M - 8) + 4) / 4` = `max(-1.5, highest feature - 2)`. Equal to the padded
        result, to float32 rounding, on every frame the encoder reads.
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

    def __call__(self, images=None, text=None, audio=None, **kwargs) -> BatchFeature:
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
        # Harnesses pass `videos=None` or empty lists for "no video". Not named in the signature: transformers reads a
        # named `videos` as "this processor takes video" (its common processor tests then send real video).
        if _holds_any(kwargs.pop("videos", None)):
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
        flat_images = [self.load_image(image, f"image {k} of sample {s}")
                       for s, items in enumerate(per_sample_images) for k, image in enumerate(items)]
        flat_audio = [self.load_audio(clip, sampling_rate, f"audio {k} of sample {s}")
                      for s, items in enumerate(per_sample_audio) for k, clip in enumerate(items)]
        image_data, image_tokens = self._image_inputs(flat_images)
        audio_data, audio_tokens = self._audio_inputs(flat_audio)
        return {**image_data, **audio_data}, _regroup(image_tokens, per_sample_images), _regroup(audio_tokens, per_sample_audio)

    def _pad(self, all_ids, all_offsets, kwargs) -> dict:
        """The tokenizer's own padding; offsets are padded zero-width, at the text's end on the right so that they
        stay in order."""
        padding, max_length = kwargs.get("padding", False), kwargs.get("max_length")
        if padding == "max_length" and not max_length:
            max_length = max(len(ids) for ids in all_ids)
        side = kwargs.get("padding_side") or self.tokenizer.padding_side
        data = dict(self.tokenizer.pad({"input_ids": all_ids}, padding=padding, max_length=max_length,
                                       pad_to_multiple_of=kwargs.get("pad_to_multiple_of"), padding_side=side,
                                       return_attention_mask=True, verbose=False))
        if all_offsets is not None:
            data["offset_mapping"] = []
            for offsets, ids in zip(all_offsets, data["input_ids"]):
                end = max((stop for _, stop in offsets), default=0)
                padded = [(0, 0) if side == "left" else (end, end)] * (len(ids) - len(offsets))
                data["offset_mapping"].append(padded + list(offsets) if side == "left" else list(offsets) + padded)
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
        conversation = _map_parts(conversation, _drop_none)
        if not kwargs.get("tokenize"):
            return super().apply_chat_template(conversation, chat_template, **kwargs)
        conversation = _map_parts(conversation, self._read_part)
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

    def _read_part(self, part, where: str):
        """`part` with its image or audio read (`ValueError` naming `where` if it cannot be); other parts as they are."""
        kind = part.get("type") if isinstance(part, dict) else None
        source = media_source(part) if kind in MEDIA_SOURCE_KEYS else None
        if source is None:
            return part
        return {"type": kind, kind: self.load_image(source, where) if kind == "image" else self.load_audio(source, None, where)}

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
    return any(map(_holds_any, media)) if isinstance(media, (list, tuple)) else media is not None


def _split_per_sample(media, markers: list[int], name: str) -> list[list]:
    """Group media per sample: accepts one item, a flat list in placeholder order, or one list per sample."""
    media = [] if media is None else media if isinstance(media, (list, tuple)) else [media]
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


def _drop_none(part, where=None):
    return {k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part


def _map_parts(conversation, change):
    """A copy of `conversation` (one, or a batch) with `change(part, where)` applied to every part of a list content."""
    batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
    out = []
    for c, messages in enumerate(conversation if batched else [conversation]):
        out.append([
            {**message, "content": [change(part, f"part {p} of message {m}" + (f" of conversation {c}" if batched else ""))
                                    for p, part in enumerate(message["content"])]}
            if isinstance(message, dict) and isinstance(message.get("content"), list) else message
            for m, message in enumerate(messages)
        ])
    return out if batched else out[0]


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
