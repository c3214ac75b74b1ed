"""MMMModal configuration: a SigLIP vision tower, a Whisper audio encoder and any causal LM.

This file ships with every checkpoint: it may import only transformers (and the standard library). It also holds
the one place where the supported transformers releases differ (see "transformers releases" below).
"""

from transformers.utils.versions import require_version

# ----------------------------------------------------------------------------------------- transformers releases
# The three shipped files work on every transformers release in this range. Checked first, so that any other
# release fails here with the range named, never deep inside a later import or call.
SUPPORTED_TRANSFORMERS = "transformers>=5.16.1,<6"
require_version(
    SUPPORTED_TRANSFORMERS, "This MMMModal checkpoint's code supports these transformers releases only: "
    "`pip install 'transformers>=5.16.1,<6'`."
)

from transformers import AutoConfig, PreTrainedConfig  # noqa: E402  (after the version check, on purpose)

# What differs inside that range is decided here, by feature checks, and nowhere else:
# - 5.20 declares sub-configs with `SubConfigSpec` (class + default model type + optional) in
#   `sub_configs_defaults`; 5.16-5.19 take a plain `sub_configs = {name: AutoConfig}` dict.
# - 5.24 renamed the KV cache `past_key_values` -> `cache`, in forward arguments and model outputs
#   (`CACHE_KWARG`, used by the model).
try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers < 5.20
    SubConfigSpec = None
try:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    CACHE_KWARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
except ImportError:  # no torch: configs and processors still work, models need torch anyway
    CACHE_KWARG = None

# The special tokens of the span format. The processor writes `<image>` + N x `<|image_pad|>` + `</image>`
# for every image (and the same for audio); the model writes projected features over the pad tokens.
IMAGE_TOKEN = "<image>"
IMAGE_END_TOKEN = "</image>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
AUDIO_TOKEN = "<audio>"
AUDIO_END_TOKEN = "</audio>"
AUDIO_PAD_TOKEN = "<|audio_pad|>"
SPECIAL_TOKENS = (
    IMAGE_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_PAD_TOKEN,
    AUDIO_TOKEN,
    AUDIO_END_TOKEN,
    AUDIO_PAD_TOKEN,
)
# The turn tokens of the ChatML fallback template, added only for a language model that has no chat template of its
# own (a model with a template keeps its own turn format and end-of-turn token).
TURN_START_TOKEN = "<|im_start|>"
TURN_END_TOKEN = "<|im_end|>"
CHATML_TOKENS = (TURN_START_TOKEN, TURN_END_TOKEN)

TRAINING_STAGES = (None, 1, 2)

# The sub-configs: name -> (model type when none is given, whether it may be None: a model without that tower).
SUB_CONFIGS = {
    "vision_config": ("siglip_vision_model", True),
    "audio_config": ("whisper", True),
    "text_config": ("llama", False),
}

# Written into every saved config so that all the usual auto classes resolve to our code with
# `trust_remote_code=True` (`register_for_auto_class` records only one class per object).
_MODEL = "modeling_mmmmodal.MMMModalForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_mmmmodal.MMMModalConfig",
    "AutoModel": _MODEL,
    "AutoModelForCausalLM": _MODEL,
    "AutoModelForImageTextToText": _MODEL,
    "AutoModelForMultimodalLM": _MODEL,
    "AutoProcessor": "processing_mmmmodal.MMMModalProcessor",
}


def audio_encoder_lengths(mel_lengths):
    """Whisper's encoder halves the mel frames with a stride-2 convolution (kernel 3, padding 1).

    Works on ints and on integer tensors.
    """
    return (mel_lengths - 1) // 2 + 1


def audio_token_lengths(mel_lengths, kernel_size: int, stride: int):
    """Number of LLM tokens one audio window yields, given its valid mel frames.

    The one length formula shared by the processor (to expand `<audio>`) and the model (to trim the projector's
    output). The audio projector is a Conv1d(kernel_size, stride) over the encoder frames; windows shorter than
    the kernel still yield one token (the convolution then reads into the window's silence padding).
    A full 30 s Whisper window: 3000 mel -> 1500 frames -> (1500 - 40) // 3 + 1 = 487 tokens.
    """
    frames = audio_encoder_lengths(mel_lengths)
    if hasattr(frames, "clamp"):
        frames = frames.clamp(min=kernel_size)
    else:
        frames = max(int(frames), kernel_size)
    return (frames - kernel_size) // stride + 1


class MMMModalConfig(PreTrainedConfig):
    r"""
    Configuration of an MMMModal model: LLaVA-style composition of a vision tower, an audio tower and a causal LM.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower (SigLIP vision model). `None` builds a model without a vision tower.
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the audio tower (a Whisper config; only its encoder is used). `None` builds a model without
            an audio tower.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the language model: any causal LM that `AutoConfig` knows (Llama, Mistral, Qwen2, ...).
            Defaults to a Llama config.
        image_token_id / image_start_token_id / image_end_token_id (`int`, *optional*):
            Ids of `<|image_pad|>`, `<image>` and `</image>`. Set by the builder once the tokenizer has them.
        audio_token_id / audio_start_token_id / audio_end_token_id (`int`, *optional*):
            Ids of `<|audio_pad|>`, `<audio>` and `</audio>`.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Hidden layer of the vision tower the features come from (the paper saw more hallucination with the
            final output).
        audio_feature_layer (`int`, *optional*, defaults to -2):
            Hidden layer of the Whisper encoder the features come from.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of both projectors.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projectors' layers have a bias.
        audio_projector_kernel_size (`int`, *optional*, defaults to 40):
            Kernel of the audio projector's Conv1d over time.
        audio_projector_stride (`int`, *optional*, defaults to 3):
            Stride of that Conv1d: it cuts the audio sequence by about this factor (1500 frames -> 487 tokens).
        max_audio_seconds (`float`, *optional*, defaults to 300.0):
            Longest audio clip accepted. Longer clips are split into consecutive Whisper windows up to this cap;
            going over it is an error, never a silent cut.
        training_stage (`int`, *optional*):
            `1`: feature alignment, only the projectors train. `2`: instruction tuning, projectors and LLM train.
            `None`: leave `requires_grad` as it is. Applied when the model is built or loaded, so it can be set
            with `from_pretrained(..., training_stage=1)` or `trl sft --model_init_kwargs '{"training_stage": 1}'`.
        train_vision_tower / train_audio_tower (`bool`, *optional*, defaults to `False`):
            Whether stage 2 also trains that tower (the paper keeps both frozen).
        train_token_ids (`list[int]`, *optional*):
            Tokens whose embedding rows (and `lm_head` rows) train in stage 1 as well, all other rows staying frozen:
            the turn tokens the builder adds for a language model without a chat template of its own (ChatML's
            `<|im_start|>` / `<|im_end|>`), so that stage 1 can teach the model to end its answers. Set by
            `mmmmodal.compose.compose_model`. (With a weight decay above 0 the optimizer would shrink the other rows too; the recipes
            use none.)

    Example:

    ```python
    >>> from transformers import LlamaConfig, SiglipVisionConfig, WhisperConfig
    >>> from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration

    >>> config = MMMModalConfig(vision_config=SiglipVisionConfig(), audio_config=WhisperConfig(), text_config=LlamaConfig())
    >>> model = MMMModalForConditionalGeneration(config)
    ```
    """

    model_type = "mmmmodal"
    # Declared to transformers in the form its release takes (see "transformers releases" above).
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            key: SubConfigSpec(config_class=AutoConfig, model_type=default_type, optional=optional)
            for key, (default_type, optional) in SUB_CONFIGS.items()
        }
    else:
        sub_configs = {key: AutoConfig for key in SUB_CONFIGS}

    def __init__(
        self,
        vision_config=None,
        audio_config=None,
        text_config=None,
        image_token_id: int | None = None,
        image_start_token_id: int | None = None,
        image_end_token_id: int | None = None,
        audio_token_id: int | None = None,
        audio_start_token_id: int | None = None,
        audio_end_token_id: int | None = None,
        vision_feature_layer: int = -2,
        audio_feature_layer: int = -2,
        projector_hidden_act: str = "gelu",
        multimodal_projector_bias: bool = True,
        audio_projector_kernel_size: int = 40,
        audio_projector_stride: int = 3,
        max_audio_seconds: float = 300.0,
        training_stage: int | None = None,
        train_vision_tower: bool = False,
        train_audio_tower: bool = False,
        train_token_ids: list[int] | None = None,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        self.vision_config = self._sub_config("vision_config", vision_config)
        self.audio_config = self._sub_config("audio_config", audio_config)
        self.text_config = self._sub_config("text_config", text_config)
        if getattr(self.vision_config, "vision_use_head", False):
            # SigLIP's attention-pooling head feeds only the contrastive loss; a LLaVA-style model never uses it,
            # and an unused trainable head breaks DDP / ZeRO gradient reduction.
            self.vision_config.vision_use_head = False
        self.image_token_id = image_token_id
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.audio_token_id = audio_token_id
        self.audio_start_token_id = audio_start_token_id
        self.audio_end_token_id = audio_end_token_id
        self.vision_feature_layer = vision_feature_layer
        self.audio_feature_layer = audio_feature_layer
        self.projector_hidden_act = projector_hidden_act
        self.multimodal_projector_bias = multimodal_projector_bias
        self.audio_projector_kernel_size = audio_projector_kernel_size
        self.audio_projector_stride = audio_projector_stride
        self.max_audio_seconds = max_audio_seconds
        if training_stage not in TRAINING_STAGES:
            raise ValueError(f"training_stage must be one of {TRAINING_STAGES}, got {training_stage!r}.")
        self.training_stage = training_stage
        self.train_vision_tower = train_vision_tower
        self.train_audio_tower = train_audio_tower
        self.train_token_ids = list(train_token_ids) if train_token_ids else None
        # Like LlavaConfig: the tying flag lives in the text config for most LMs, so forward it.
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @classmethod
    def _sub_config(cls, key, value):
        default_model_type, optional = SUB_CONFIGS[key]
        if value is None and optional:
            return None
        if isinstance(value, PreTrainedConfig):
            return value
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"`{key}` must be a dict, a PreTrainedConfig or None, got {type(value).__name__}.")
        value = dict(value or {})
        model_type = value.pop("model_type", default_model_type)
        return AutoConfig.for_model(model_type, **value)

    @property
    def num_image_tokens(self) -> int:
        """Feature vectors (LLM tokens) per image: one per SigLIP patch (SigLIP has no CLS token)."""
        if self.vision_config is None:
            return 0
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2


MMMModalConfig.register_for_auto_class()

__all__ = ["MMMModalConfig"]
