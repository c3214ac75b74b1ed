"""MMMModal as a vLLM model: vLLM's SigLIP, transformers' Whisper encoder, the shipped projectors, any vLLM text LM.

The parts and their weights are those of a checkpoint saved by `MMMModalForConditionalGeneration.save_pretrained`:

- vision: vLLM's `SiglipVisionModel`, built only up to `vision_feature_layer` (as vLLM builds LLaVA's tower), so its
  output is that hidden layer, without the post-norm, as in transformers;
- audio: transformers' `WhisperEncoder` (as vLLM's Qwen2-Audio uses transformers' audio encoder), the
  `audio_feature_layer` hidden state of every 30 s window, each window trimmed with `audio_token_lengths`;
- projectors: the shipped `MMMModalMultiModalProjector` / `MMMModalAudioProjector` classes themselves;
- language model: whatever vLLM registers for `text_config.architectures` (Llama, Mistral, Qwen2, ...; derived
  from `text_config.model_type` through transformers' causal-LM mapping when a checkpoint built from configs names
  none), so tensor and pipeline parallelism, the paged KV cache and continuous batching are vLLM's own. The towers
  and projectors are small and run whole on every rank.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsLoRA, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    get_layer_index,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from modeling_mmmmodal.configuration_mmmmodal import AUDIO_TOKEN, IMAGE_TOKEN
from modeling_mmmmodal.modeling_mmmmodal import (
    MMMModalAudioProjector,
    MMMModalMultiModalProjector,
    causal_lm_architecture,
)

from .processing import (
    MMMModalDummyInputsBuilder,
    MMMModalMultiModalProcessor,
    MMMModalProcessingInfo,
    window_token_counts,
)


logger = init_logger(f"vllm.{__name__}")  # under vLLM's logger, which its processes configure and show


def _as_tensor(value) -> torch.Tensor:
    """vLLM batches a field as one tensor when the items' shapes agree, else as a list of tensors."""
    return value if isinstance(value, torch.Tensor) else torch.cat([torch.as_tensor(v) for v in value])


# The checkpoint's (and a PEFT adapter's) prefixes of the language model: the only part LoRA adapters may change.
LANGUAGE_MODEL_PREFIXES = ("model.language_model.", "lm_head.")


@dataclass
class _CheckpointNames(WeightsMapper):
    """The checkpoint's weight names -> this module's. For LoRA adapters (which vLLM names through
    `get_rename_mapper`) it also refuses, by name, a weight outside the language model: vLLM would load it and then
    apply it nowhere, a silently ignored part of the adapter (the towers and projectors are not vLLM linear layers)."""

    lora: bool = False

    def get_rename_mapper(self) -> WeightsMapper:
        return replace(super().get_rename_mapper(), lora=True)

    def map_name(self, key: str) -> str | None:
        if self.lora and not key.startswith(LANGUAGE_MODEL_PREFIXES):
            module = key.rsplit(".lora_", 1)[0]
            raise ValueError(
                f"This adapter changes {module!r}, outside the language model: vLLM applies MMMModal adapters to the "
                "language model only. Keep the towers and projectors out of target_modules, or write their trained "
                "weights into a serving base: `mmmmodal lora-for-vllm` (docs/serving.md).")
        return super().map_name(key)


@MULTIMODAL_REGISTRY.register_processor(
    MMMModalMultiModalProcessor, info=MMMModalProcessingInfo, dummy_inputs=MMMModalDummyInputsBuilder
)
class MMMModalForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsLoRA):
    # LoRA (`--enable-lora`): adapters on the language model, whose vLLM class brings its own packed modules
    # (`qkv_proj` <- q/k/v_proj, ...; vLLM reads them from the child when this class names none).

    # The checkpoint's names (MMMModalForConditionalGeneration.state_dict()) -> this module's. The vision tower's
    # weights are saved without vLLM's `vision_model.` level by recent transformers releases, with it by older ones.
    hf_to_vllm_mapper = _CheckpointNames(
        orig_to_new_regex={re.compile(r"^model\.vision_tower\.(?!vision_model\.)"): "vision_tower.vision_model."},
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.vision_tower.": "vision_tower.",
            "model.multi_modal_projector.": "multi_modal_projector.",
            "model.audio_tower.": "audio_tower.",
            "model.audio_projector.": "audio_projector.",
        }
    )

    def get_mm_mapping(self) -> MultiModelKeys:
        """Which modules are the language model, the connectors and the towers (vLLM's LoRA reads it)."""
        return MultiModelKeys.from_string_field(language_model="language_model",
                                                connector=["multi_modal_projector", "audio_projector"],
                                                tower_model=["vision_tower", "audio_tower"])

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_TOKEN
        if modality.startswith("audio"):
            return AUDIO_TOKEN
        raise ValueError(f"MMMModal takes images and audio, not {modality}.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        if not config.text_config.architectures:
            # A checkpoint built from configs alone (`MMMModalConfig(text_config=LlamaConfig(...))`) does not name
            # its language model's class; transformers' causal-LM mapping of its model_type does.
            derived = causal_lm_architecture(config.text_config)
            if derived is None:
                raise ValueError(
                    f"The checkpoint's text_config names no `architectures`, and transformers maps its model_type "
                    f"{config.text_config.model_type!r} to no causal-LM class: set text_config.architectures "
                    "(e.g. ['LlamaForCausalLM']) in config.json.")
            logger.info("text_config names no `architectures`: serving its model_type %r as %s (transformers' "
                        "causal-LM mapping).", config.text_config.model_type, derived)
            config.text_config.architectures = [derived]
        self.vision_tower = self.multi_modal_projector = self.audio_tower = self.audio_projector = None
        if config.vision_config is not None:
            with self._mark_tower_model(vllm_config, "image"):
                # Built up to the feature layer, no post-norm: its output is transformers'
                # `hidden_states[vision_feature_layer]` (the way vLLM builds LLaVA's tower).
                layers = get_layer_index(config.vision_feature_layer, config.vision_config.num_hidden_layers)
                self.vision_tower = SiglipVisionModel(
                    config.vision_config, vllm_config.quant_config, num_hidden_layers_override=layers,
                    require_post_norm=False, prefix=maybe_prefix(prefix, "vision_tower"))
                self.multi_modal_projector = MMMModalMultiModalProjector(config)
        if config.audio_config is not None:
            with self._mark_tower_model(vllm_config, "audio"):
                self.audio_tower = WhisperEncoder(config.audio_config)
                self.audio_projector = MMMModalAudioProjector(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config, prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ----------------------------------------------------------------------------------------------- media
    def _image_embeddings(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, 3, H, W) -> one (patches, hidden) tensor per image."""
        features = self.vision_tower(pixel_values.to(self.vision_tower.dtype))  # (N, P, C_vision)
        return tuple(self.multi_modal_projector(features))

    def _audio_embeddings(self, input_features, input_features_mask, audio_windows) -> tuple[torch.Tensor, ...]:
        """(W, mel, frames) windows of all clips -> one (tokens, hidden) tensor per clip, windows trimmed and joined."""
        dtype = next(self.audio_tower.parameters()).dtype
        outputs = self.audio_tower(input_features.to(dtype), output_hidden_states=True, return_dict=True)
        projected = self.audio_projector(outputs.hidden_states[self.config.audio_feature_layer])  # (W, T', C_text)
        lengths = window_token_counts(self.config, input_features_mask.sum(-1).to(projected.device))
        keep = torch.arange(projected.shape[1], device=projected.device)[None, :] < lengths[:, None]
        per_clip = [int(chunk.sum()) for chunk in torch.split(lengths, audio_windows.tolist())]
        return torch.split(projected[keep], per_clip)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Features of every item, modality by modality in the order vLLM passes them."""
        embeddings = []
        for key in kwargs:
            if key == "pixel_values":
                embeddings += self._image_embeddings(_as_tensor(kwargs["pixel_values"]))
            elif key == "input_features":
                embeddings += self._audio_embeddings(_as_tensor(kwargs["input_features"]),
                                                     _as_tensor(kwargs["input_features_mask"]),
                                                     _as_tensor(kwargs["audio_windows"]).flatten())
        return embeddings

    # ------------------------------------------------------------------------------------------ text model
    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
