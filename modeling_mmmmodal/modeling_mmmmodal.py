"""MMMModal: a SigLIP vision tower and a Whisper encoder feeding any causal LM through LLaVA-style projectors.

The processor expands every `<image>` / `<audio>` placeholder into start token + N pad tokens + end token; the model
writes the projected features over the pad tokens (one boolean mask per modality, no loop over samples or media).

This file ships with every checkpoint: it imports only torch, transformers and `.configuration_mmmmodal`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import can_return_tuple, logging

from .configuration_mmmmodal import CACHE_KWARG, TRAINING_STAGES, MMMModalConfig, audio_token_lengths

logger = logging.get_logger(__name__)


# Both output classes extend transformers' own, so the KV cache field has the name this release gives it
# (`past_key_values`, or `cache` from 5.24 on: `CACHE_KWARG`).
@dataclass
class MMMModalModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.Tensor` of shape `(num_image_tokens, hidden_size)`, *optional*):
        Projected image features, in the order they were written into the sequence.
    audio_hidden_states (`torch.Tensor` of shape `(num_audio_tokens, hidden_size)`, *optional*):
        Projected audio features, trimmed to each clip's length, in sequence order.
    """

    image_hidden_states: torch.Tensor | None = None
    audio_hidden_states: torch.Tensor | None = None


@dataclass
class MMMModalCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    image_hidden_states (`torch.Tensor` of shape `(num_image_tokens, hidden_size)`, *optional*):
        Projected image features, in the order they were written into the sequence.
    audio_hidden_states (`torch.Tensor` of shape `(num_audio_tokens, hidden_size)`, *optional*):
        Projected audio features, trimmed to each clip's length, in sequence order.
    """

    image_hidden_states: torch.Tensor | None = None
    audio_hidden_states: torch.Tensor | None = None


def _cache_kwargs(past_key_values, kwargs: dict) -> dict:
    """The KV cache, given as `past_key_values` or `cache` (transformers 5.24+), under the name this release's
    language models take. Pops `cache` from `kwargs`."""
    cache = kwargs.pop("cache", None)
    if past_key_values is not None and cache is not None:
        raise ValueError("Got both `past_key_values` and `cache`: they are the same argument, pass one.")
    return {CACHE_KWARG: past_key_values if past_key_values is not None else cache}


def _with_pooler_output(tower_outputs, pooler_output) -> BaseModelOutputWithPooling:
    """A tower's output with the projected features as `pooler_output`. A new output rather than setting the field on
    the tower's: a field set after the fact goes last in `to_tuple()` (`return_dict=False`), where the field order is
    wanted."""
    return BaseModelOutputWithPooling(
        last_hidden_state=tower_outputs.last_hidden_state,
        pooler_output=pooler_output,
        hidden_states=tower_outputs.hidden_states,
        attentions=tower_outputs.attentions,
    )


def causal_lm_architecture(text_config) -> str | None:
    """The causal-LM class name of `text_config`: its own `architectures`, else the one transformers maps its
    `model_type` to (`LlamaForCausalLM` for "llama"); None if neither names one. Serving stacks (vLLM) build the
    language model from this name, so a checkpoint built from configs alone still says which class it is."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    named = getattr(text_config, "architectures", None)
    if named:
        return named[0]
    mapped = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(text_config, "model_type", None))
    return mapped if isinstance(mapped, str) else None


class MMMModalMultiModalProjector(nn.Module):
    """The LLaVA projector: Linear -> GELU -> Linear, vision width to LLM width (same parameter names as LLaVA)."""

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_hidden, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MMMModalAudioProjector(nn.Module):
    """The paper's audio projector: Conv1d over time (kernel 40, stride 3) -> GELU -> Linear.

    (W, T, C_audio) -> (W, (T - kernel) // stride + 1, C_text): a full 30 s window, 1500 frames, gives 487 tokens.
    """

    def __init__(self, config: MMMModalConfig):
        super().__init__()
        text_hidden = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.conv = nn.Conv1d(
            config.audio_config.d_model,
            text_hidden,
            kernel_size=config.audio_projector_kernel_size,
            stride=config.audio_projector_stride,
            bias=bias,
        )
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(audio_features.transpose(1, 2)).transpose(1, 2)  # (W, T', C_text)
        return self.linear(self.act(hidden_states))


class MMMModalPreTrainedModel(PreTrainedModel):
    config_class = MMMModalConfig
    config: MMMModalConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "audio", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_KWARG]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False  # audio trimming has data-dependent shapes

    def _init_weights(self, module):
        # Towers and LM bring their own initialisation (post_init of each sub-model); only the projectors are ours.
        if isinstance(module, (MMMModalMultiModalProjector, MMMModalAudioProjector)):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for child in module.children():
                if isinstance(child, (nn.Linear, nn.Conv1d)):
                    nn.init.normal_(child.weight, mean=0.0, std=std)
                    if child.bias is not None:
                        nn.init.zeros_(child.bias)
        else:
            super()._init_weights(module)


class MMMModalModel(MMMModalPreTrainedModel):
    """Vision tower, audio tower, their projectors and the language model, without a language modeling head."""

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        self.vision_tower = None
        self.multi_modal_projector = None
        self.audio_tower = None
        self.audio_projector = None
        if config.vision_config is not None:
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.multi_modal_projector = MMMModalMultiModalProjector(config)
        if config.audio_config is not None:
            self.audio_tower = WhisperEncoder(config.audio_config)
            self.audio_projector = MMMModalAudioProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Encode images with the vision tower and project the chosen hidden layer.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                All images of the batch, in placeholder order.

        Returns:
            The tower's `BaseModelOutputWithPooling`, with `pooler_output` replaced by the projected features,
            a tuple of `(num_patches, hidden_size)` tensors, one per image (`return_dict=False`: as a tuple).
        """
        if self.vision_tower is None:
            raise ValueError("Got `pixel_values`, but this model has no vision tower (`config.vision_config` is None).")
        kwargs["output_hidden_states"] = True
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        selected = image_outputs.hidden_states[self.config.vision_feature_layer]  # (N, P, C_vision)
        image_features = self.multi_modal_projector(selected)  # (N, P, C_text)
        return _with_pooler_output(image_outputs, tuple(image_features))

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.FloatTensor, input_features_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Encode audio windows with the Whisper encoder, project, and trim each window to its clip's length.

        Args:
            input_features (`torch.FloatTensor` of shape `(num_windows, num_mel_bins, window_frames)`):
                Log-mel features of every 30 s window (a long clip spans several consecutive windows).
            input_features_mask (`torch.Tensor` of shape `(num_windows, window_frames)`, *optional*):
                1 for mel frames that hold audio, 0 for padding. `None` treats every window as full.

        Returns:
            The encoder's `BaseModelOutputWithPooling`, with `pooler_output` replaced by a tuple of projected
            `(tokens_of_window, hidden_size)` tensors, one per window, trimmed with `audio_token_lengths`
            (`return_dict=False`: as a tuple).
        """
        if self.audio_tower is None:
            raise ValueError("Got `input_features`, but this model has no audio tower (`config.audio_config` is None).")
        kwargs["output_hidden_states"] = True
        input_features = input_features.to(self.audio_tower.dtype)
        audio_outputs = self.audio_tower(input_features, return_dict=True, **kwargs)
        selected = audio_outputs.hidden_states[self.config.audio_feature_layer]  # (W, T, C_audio)
        audio_features = self.audio_projector(selected)  # (W, T', C_text)
        if input_features_mask is None:
            mel_lengths = torch.full((input_features.shape[0],), input_features.shape[-1], device=selected.device)
        else:
            mel_lengths = input_features_mask.sum(-1).to(selected.device)
        lengths = audio_token_lengths(mel_lengths, self.config.audio_projector_kernel_size, self.config.audio_projector_stride)
        keep = torch.arange(audio_features.shape[1], device=selected.device)[None, :] < lengths[:, None]
        return _with_pooler_output(audio_outputs, torch.split(audio_features[keep], lengths.tolist()))

    def get_placeholder_mask(self, input_ids, inputs_embeds, token_id: int, features: torch.Tensor, name: str):
        """Boolean mask (B, S, 1) of the `name` pad tokens; raises if their count differs from the features'."""
        if token_id is None:
            raise ValueError(f"Got {name} inputs, but `config.{name}_token_id` is not set; build the model with its processor.")
        if input_ids is None:
            pad_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == pad_embedding).all(-1)
        else:
            mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"{name.capitalize()} features and {name} tokens do not match: the input holds {n_tokens} {name} pad "
                f"tokens but the {name} inputs give {n_features} feature vectors. Build inputs with MMMModalProcessor, "
                f"which expands each <{name}> placeholder into exactly as many pad tokens as that clip yields."
            )
        return mask.unsqueeze(-1).to(inputs_embeds.device)

    def _dummy_outputs(self, modality: str) -> BaseModelOutputWithPooling:
        """Run one all-zero input through a tower and its projector (training only, see `_merge_media`)."""
        if modality == "image":
            size = self.config.vision_config.image_size
            pixel_values = torch.zeros(1, self.config.vision_config.num_channels, size, size, device=self.device)
            return self.get_image_features(pixel_values)
        audio_config = self.config.audio_config
        features = torch.zeros(1, audio_config.num_mel_bins, 2 * audio_config.max_source_positions, device=self.device)
        return self.get_audio_features(features)

    def _trains(self, modality: str) -> bool:
        tower, projector = (
            (self.vision_tower, self.multi_modal_projector) if modality == "image" else (self.audio_tower, self.audio_projector)
        )
        return tower is not None and any(p.requires_grad for m in (tower, projector) for p in m.parameters())

    def _merge_media(self, input_ids, inputs_embeds, modality: str, outputs, given: bool):
        """Write one modality's projected features over its pad tokens; returns (inputs_embeds, features).

        `given=False` is the training-only pass through a modality the batch lacks (paper §6.2): under DDP and
        ZeRO-2/3 every rank must give every trainable parameter a gradient, and give them in the same order, or
        the ranks' gradient buckets disagree (a hang, a size error, or silently mixed-up gradients). So a missing
        modality runs the same ops as a present one (tower, projector, `masked_scatter`) with an all-false mask:
        its gradients are exact zeros. The same holds for a trainable tower's top layer, which
        `*_feature_layer=-2` skips. None of this runs at inference.
        """
        features = torch.cat(outputs.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
        if given:
            token_id = self.config.image_token_id if modality == "image" else self.config.audio_token_id
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, token_id, features, modality)
        else:
            mask = torch.zeros(*inputs_embeds.shape[:-1], 1, dtype=torch.bool, device=inputs_embeds.device)
        if self.training and outputs.last_hidden_state.requires_grad:
            features = features + 0.0 * outputs.last_hidden_state.sum().to(features.dtype)
        return inputs_embeds.masked_scatter(mask, features), (features if given else None)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MMMModalModelOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
            Every image of the batch, in the order of the `<image>` spans (sample by sample, left to right).
        input_features (`torch.FloatTensor` of shape `(num_windows, num_mel_bins, window_frames)`, *optional*):
            Whisper log-mel features of every audio window, in the order of the `<audio>` spans.
        input_features_mask (`torch.Tensor` of shape `(num_windows, window_frames)`, *optional*):
            Valid mel frames of each window; sets how many tokens each window yields.
        past_key_values (`Cache`, *optional*):
            The KV cache; transformers 5.24+ passes it as `cache`, which is accepted too.
        """
        cache = _cache_kwargs(past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = audio_features = None
        anchor = self.training and torch.is_grad_enabled()  # see `_merge_media`
        if pixel_values is not None or (anchor and self._trains("image")):
            given = pixel_values is not None
            outputs = self.get_image_features(pixel_values) if given else self._dummy_outputs("image")
            inputs_embeds, image_features = self._merge_media(input_ids, inputs_embeds, "image", outputs, given)
        if input_features is not None or (anchor and self._trains("audio")):
            given = input_features is not None
            outputs = self.get_audio_features(input_features, input_features_mask) if given else self._dummy_outputs("audio")
            inputs_embeds, audio_features = self._merge_media(input_ids, inputs_embeds, "audio", outputs, given)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **cache,
            **kwargs,
        )
        return MMMModalModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            audio_hidden_states=audio_features,
        )


class MMMModalForConditionalGeneration(MMMModalPreTrainedModel, GenerationMixin):
    """MMMModal with a language modeling head: chat over any number of images and audio clips."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: MMMModalConfig):
        super().__init__(config)
        self.model = MMMModalModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        if config.training_stage is not None:
            self.set_training_stage(config.training_stage)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # A checkpoint is untrusted data: weights come from safetensors only, never from a pickle.
        kwargs.setdefault("use_safetensors", True)
        # Loading replaces the parameters built in __init__, so the training stage is applied again afterwards.
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        if model.config.training_stage is not None:
            model.set_training_stage(model.config.training_stage)
        return loaded

    def save_pretrained(self, *args, **kwargs):
        # A model built from configs alone has no `text_config.architectures`; write the class it is built as.
        text_config = self.config.text_config
        if not getattr(text_config, "architectures", None) and causal_lm_architecture(text_config):
            text_config.architectures = [causal_lm_architecture(text_config)]
        return super().save_pretrained(*args, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_decoder(self):
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_audio_features(self, input_features, input_features_mask=None, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, input_features_mask, **kwargs)

    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The language model's own rescaling of its head's output, which its `*ForCausalLM.forward` applies and the
        backbone used here does not: multipliers (Cohere's `logit_scale`, `output_multiplier`,
        `lm_head_multiplier`), a divisor (Granite's `logits_scaling`), then soft-capping (Gemma 2's
        `final_logit_softcapping`). A language model without them gets its logits unchanged."""
        text_config = self.config.text_config
        for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
            if getattr(text_config, name, None) not in (None, 1, 1.0):
                logits = logits * getattr(text_config, name)
        if getattr(text_config, "logits_scaling", None) not in (None, 1, 1.0):
            logits = logits / text_config.logits_scaling
        if (cap := getattr(text_config, "final_logit_softcapping", None)) is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def set_training_stage(self, stage: int | None):
        """Choose what trains: 1 = projectors only (alignment), 2 = projectors + LLM (instruction tuning).

        Towers stay frozen unless `config.train_vision_tower` / `config.train_audio_tower` is set (stage 2 only).
        `None` makes everything trainable.
        """
        if stage not in TRAINING_STAGES:
            raise ValueError(f"training_stage must be one of {TRAINING_STAGES}, got {stage!r}.")
        self.config.training_stage = stage
        trainable = {"multi_modal_projector", "audio_projector"}
        if stage == 2:
            trainable |= {"language_model", "lm_head"}
            if self.config.train_vision_tower:
                trainable.add("vision_tower")
            if self.config.train_audio_tower:
                trainable.add("audio_tower")
        for name, param in self.named_parameters():
            parts = set(name.split("."))
            param.requires_grad_(stage is None or bool(parts & trainable))
        self._train_token_rows(self.config.train_token_ids if stage == 1 else None)

    def _train_token_rows(self, token_ids: list[int] | None):
        """Make the embedding (and lm_head) rows of `token_ids` trainable, and only them: the whole matrix takes a
        gradient whose other rows are zeroed by a hook (so every rank of a DDP / ZeRO run gives it a gradient, and
        an optimizer without weight decay leaves the other rows exactly as they are). `None` removes the hooks."""
        for handle in getattr(self, "_token_row_hooks", []):
            handle.remove()
        self._token_row_hooks = []
        if not token_ids:
            return
        ids = torch.tensor(sorted(set(token_ids)))

        def keep_rows(grad):
            mask = torch.zeros(grad.shape[0], *([1] * (grad.dim() - 1)), dtype=grad.dtype, device=grad.device)
            mask[ids.to(grad.device)] = 1
            return grad * mask

        weights = {id(w): w for w in (self.get_input_embeddings().weight, self.get_output_embeddings().weight)}
        for weight in weights.values():  # one tensor when the embeddings are tied
            weight.requires_grad_(True)
            self._token_row_hooks.append(weight.register_hook(keep_rows))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MMMModalCausalLMOutputWithPast:
        r"""
        pixel_values, input_features, input_features_mask: see [`MMMModalModel.forward`].
        past_key_values (`Cache`, *optional*):
            The KV cache; transformers 5.24+ passes it as `cache`, which is accepted too.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids to predict; -100 marks tokens without loss (prompt, padding, media spans).

        Example:

        ```python
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor

        >>> model = AutoModelForImageTextToText.from_pretrained("path/to/mmmmodal", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("path/to/mmmmodal", trust_remote_code=True)
        >>> messages = [{"role": "user", "content": [
        ...     {"type": "image", "path": "cat.png"}, {"type": "audio", "path": "meow.wav"},
        ...     {"type": "text", "text": "Does the sound match the picture?"}]}]
        >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
        ...                                        return_dict=True, return_tensors="pt")
        >>> out = model.generate(**inputs, max_new_tokens=32)
        >>> processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        ```
        """
        cache = _cache_kwargs(past_key_values, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            input_features=input_features,
            input_features_mask=input_features_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.scale_logits(self.lm_head(hidden_states[:, slice_indices, :]))

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MMMModalCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_KWARG: getattr(outputs, CACHE_KWARG)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            audio_hidden_states=outputs.audio_hidden_states,
        )


MMMModalForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = ["MMMModalPreTrainedModel", "MMMModalModel", "MMMModalForConditionalGeneration"]
