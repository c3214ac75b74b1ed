"""vLLM's multimodal processing for MMMModal: what a prompt's images and clips become before the engine runs.

vLLM tokenizes the prompt itself (`<image>` and `<audio>` are single special tokens) and calls the checkpoint's own
`MMMModalProcessor` only on the media: images once, each clip on its own, so that the processor's windowing tells
how many 30 s windows each clip spans. Every `<image>` / `<audio>` token is then replaced by start + N pads + end
(the processor's span format), N counted by the one formula the shipped files use (`MMMModalConfig.num_image_tokens`,
`audio_token_lengths`). Only the pads receive features.

Everything here runs in vLLM's API server process, before a request reaches the engine: a `ValueError` raised here
(a placeholder count that does not match the media, a clip over the cap, an image the processor cannot read) is
answered with HTTP 400 and the reason, and the engine never sees the request.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from modeling_mmmmodal.configuration_mmmmodal import (
    AUDIO_END_TOKEN,
    AUDIO_PAD_TOKEN,
    AUDIO_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_PAD_TOKEN,
    IMAGE_TOKEN,
    audio_token_lengths,
)

MODALITIES = ("image", "audio")
PLACEHOLDERS = {"image": IMAGE_TOKEN, "audio": AUDIO_TOKEN}
SPAN_TOKENS = {"image": (IMAGE_PAD_TOKEN, IMAGE_END_TOKEN), "audio": (AUDIO_PAD_TOKEN, AUDIO_END_TOKEN)}  # pad, end


def span_ids(config, modality: str) -> tuple[int, int, int]:
    """(start, pad, end) token ids of `modality`'s span."""
    return (getattr(config, f"{modality}_start_token_id"), getattr(config, f"{modality}_token_id"),
            getattr(config, f"{modality}_end_token_id"))


def window_token_counts(config, mel_lengths):
    """LLM tokens of audio windows with `mel_lengths` valid mel frames (an int or a tensor): the model's projector,
    trimmed by the shipped formula, yields exactly this many, so the prompt gets as many pads."""
    return audio_token_lengths(mel_lengths, config.audio_projector_kernel_size, config.audio_projector_stride)


class MMMModalProcessingInfo(BaseProcessingInfo):
    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        # A checkpoint without a tower has no such modality: vLLM refuses those media by name.
        config = self.get_hf_config()
        return {modality: None for modality, sub in zip(MODALITIES, (config.vision_config, config.audio_config))
                if sub is not None}

    def get_data_parser(self) -> MultiModalDataParser:
        # Clips at other rates are resampled to the feature extractor's rate with soxr, as `mmmmodal serve` does.
        return MultiModalDataParser(
            target_sr=self.get_hf_processor().feature_extractor.sampling_rate,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def window_tokens(self) -> int:
        """LLM tokens of one full Whisper window."""
        return window_token_counts(self.get_hf_config(), self.get_hf_processor().feature_extractor.nb_max_frames)

    def max_audio_windows(self, seq_len: int) -> int:
        """Most windows one clip can span: the processor's `max_audio_seconds`, and no more than fits in `seq_len`."""
        processor = self.get_hf_processor()
        window_samples = processor.feature_extractor.n_samples
        by_cap = math.ceil(processor.max_audio_seconds * processor.feature_extractor.sampling_rate / window_samples)
        return max(1, min(by_cap, seq_len // self.window_tokens()))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        limits = self.get_supported_mm_limits()
        out = {}
        if "image" in limits:
            out["image"] = self.get_hf_config().num_image_tokens
        if "audio" in limits:
            out["audio"] = self.max_audio_windows(seq_len) * self.window_tokens()
        return out


class MMMModalDummyInputsBuilder(BaseDummyInputsBuilder[MMMModalProcessingInfo]):
    """The largest inputs vLLM profiles memory with: full-size images and the longest clip that fits."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "".join(PLACEHOLDERS[m] * mm_counts.get(m, 0) for m in MODALITIES)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options) -> dict:
        config = self.info.get_hf_config()
        data = {}
        if mm_counts.get("image", 0):
            size = config.vision_config.image_size
            data["image"] = self._get_dummy_images(width=size, height=size, num_images=mm_counts["image"],
                                                   overrides=mm_options.get("image"))
        if mm_counts.get("audio", 0):
            processor = self.info.get_hf_processor()
            extractor = processor.feature_extractor
            # As many windows as fit, but never over the cap (which need not be a whole number of windows).
            length = min(self.info.max_audio_windows(seq_len) * extractor.n_samples,
                         int(processor.max_audio_seconds * extractor.sampling_rate))
            data["audio"] = self._get_dummy_audios(length=length, num_audios=mm_counts["audio"],
                                                   overrides=mm_options.get("audio"))
        return data


class MMMModalMultiModalProcessor(BaseMultiModalProcessor[MMMModalProcessingInfo]):
    def apply(self, inputs, timing_ctx):
        """Refuse, with the reason, a prompt whose placeholders do not match its media (as the processor does)."""
        config = self.info.get_hf_config()
        prompt = list(inputs.prompt)
        counts = inputs.mm_data_items.get_all_counts()
        for modality in MODALITIES:
            start, pad, end = span_ids(config, modality)
            for token_id, token in ((pad, SPAN_TOKENS[modality][0]), (end, SPAN_TOKENS[modality][1])):
                if token_id is not None and token_id in prompt:
                    raise ValueError(
                        f"The prompt holds a raw {token!r} token. Write one {PLACEHOLDERS[modality]} placeholder per "
                        f"{modality}; it is expanded for you.")
            found, given = (prompt.count(start) if start is not None else 0), counts.get(modality, 0)
            if found != given:
                raise ValueError(
                    f"The prompt holds {found} {PLACEHOLDERS[modality]} placeholders but {given} {modality} inputs "
                    f"were given. Pass one {modality} per placeholder, in order.")
        return super().apply(inputs, timing_ctx)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """The checkpoint's processor on the media: all images at once, then each clip alone (its window count)."""
        images, clips = hf_data.get("images") or [], hf_data.get("audio") or []
        out = {}
        if images:
            out.update(self._processor(dict(text=IMAGE_TOKEN * len(images), images=images), hf_kwargs))
        features, masks, windows = [], [], []
        for clip in clips:
            one = self._processor(dict(text=AUDIO_TOKEN, audio=[clip]), hf_kwargs)
            features.append(one["input_features"])
            masks.append(one["input_features_mask"])
            windows.append(len(one["input_features"]))
        if clips:
            out.update(input_features=torch.cat(features), input_features_mask=torch.cat(masks),
                       audio_windows=torch.tensor(windows))
        return BatchFeature(out)

    def _processor(self, data: dict, hf_kwargs: Mapping[str, object]) -> BatchFeature:
        try:
            return super()._call_hf_processor(data, hf_kwargs)
        except ValueError as error:
            # vLLM wraps the processor's error in one that quotes the whole input; the reason is the processor's.
            if isinstance(error.__cause__, ValueError):
                raise ValueError(str(error.__cause__)) from None
            raise

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        windows = hf_inputs.get("audio_windows", torch.empty(0, dtype=torch.long))
        return dict(
            pixel_values=MultiModalFieldConfig.batched("image"),
            # A clip longer than one window spans several rows of these two.
            input_features=MultiModalFieldConfig.flat_from_sizes("audio", windows),
            input_features_mask=MultiModalFieldConfig.flat_from_sizes("audio", windows),
            audio_windows=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs,
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        audio_items = out_mm_kwargs.get("audio", [])

        def span(modality: str, n: int) -> PromptUpdateDetails:
            start, pad, end = span_ids(config, modality)
            return PromptUpdateDetails.select_token_id([start] + [pad] * n + [end], embed_token_id=pad)

        def audio_span(item_idx: int) -> PromptUpdateDetails:
            mel_lengths = audio_items[item_idx]["input_features_mask"].data.sum(-1)  # (windows of this clip,)
            return span("audio", int(window_token_counts(config, mel_lengths).sum()))

        updates = []
        if "image" in mm_items:
            updates.append(PromptReplacement(modality="image", target=[config.image_start_token_id],
                                             replacement=span("image", config.num_image_tokens)))
        if "audio" in mm_items:
            updates.append(PromptReplacement(modality="audio", target=[config.audio_start_token_id],
                                             replacement=audio_span))
        return updates
