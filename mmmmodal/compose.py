"""Compose a new MMMModal from three pretrained parts (hub ids or local folders): a SigLIP, a Whisper and a causal LM.

`compose_processor` then `compose_model` (or `mmmmodal.build.build`, which calls both) give a model and processor
whose `save_pretrained` writes a complete checkpoint. This is build-time work: a saved checkpoint never runs it, so it
lives here, in the package, and the three files shipped with every checkpoint (`modeling_mmmmodal/`) only run one.
"""

import json
import logging
import os
import re

import torch

from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration, MMMModalProcessor
from modeling_mmmmodal.configuration_mmmmodal import (
    AUDIO_END_TOKEN,
    AUDIO_PAD_TOKEN,
    AUDIO_TOKEN,
    CHATML_TOKENS,
    IMAGE_END_TOKEN,
    IMAGE_PAD_TOKEN,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
)
from modeling_mmmmodal.modeling_mmmmodal import MMMModalAudioProjector, MMMModalMultiModalProjector

from .chat_template import CHAT_TEMPLATE, extend_chat_template, turn_end

logger = logging.getLogger(__name__)


def compose_tokenizer(tokenizer, name: str) -> str:
    """Make a language model's tokenizer an MMMModal one, in place: the span tokens (and ChatML's turn tokens, for
    a language model without a template) are added, and a pad token if it has none. Returns the chat template: the
    tokenizer's own, extended with image and audio parts, or ChatML (with a warning naming `name`)."""
    own = tokenizer.chat_template
    if isinstance(own, dict):  # named templates: the default one is the chat format
        own = own.get("default")
    if own:
        chat_template = extend_chat_template(own, tokenizer, name)
    else:
        chat_template = CHAT_TEMPLATE
        logger.warning(
            f"The language model {name} has no chat template: the checkpoint uses ChatML, with "
            f"{' and '.join(CHATML_TOKENS)} added as new tokens that the language model has never seen (stage 2 "
            "must train them; a LoRA run needs the embeddings and lm_head in modules_to_save)."
        )
    known = set(tokenizer.get_vocab())
    tokens = SPECIAL_TOKENS + (CHATML_TOKENS if chat_template == CHAT_TEMPLATE else ())
    missing = [token for token in tokens if token not in known]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or AUDIO_PAD_TOKEN
    return chat_template


def compose_processor(vision=None, audio=None, text=None, audio_kernel_size: int = 40, audio_stride: int = 3,
                      max_audio_seconds: float = 300.0, **kwargs) -> MMMModalProcessor:
    """Compose a processor from the three pretrained sources (hub ids or local folders).

    `vision` gives the image processor and patch size, `audio` the Whisper feature extractor, `text` the tokenizer
    (the span tokens are added to it, and a pad token if it has none) and the chat template: the language model's own,
    extended with image and audio parts (`extend_chat_template`), or ChatML for a language model without one (then
    its turn tokens are new tokens too, and a warning says so). A missing tower still gets a default sub-processor
    (the processor always has all three parts), but its placeholders are refused. `kwargs` go to every
    `from_pretrained` (`revision`, `cache_dir`, ...).

    The processor's `new_tokens` lists the tokens the language model does not know, for `compose_model` (not saved;
    a loaded processor has none).

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
    known = set(tokenizer.get_vocab())
    chat_template = compose_tokenizer(tokenizer, str(text))
    patch_size = None
    image_processor = SiglipImageProcessor()
    if vision is not None:
        vision_config = AutoConfig.from_pretrained(vision, **kwargs)
        patch_size = getattr(vision_config, "vision_config", vision_config).patch_size
        image_processor = AutoImageProcessor.from_pretrained(vision, **kwargs)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(audio, **kwargs) if audio else WhisperFeatureExtractor()
    processor = MMMModalProcessor(
        image_processor,
        feature_extractor,
        tokenizer,
        chat_template=chat_template,
        patch_size=patch_size,
        audio_kernel_size=audio_kernel_size if audio is not None else None,
        audio_stride=audio_stride,
        max_audio_seconds=max_audio_seconds,
    )
    vocab = tokenizer.get_vocab()
    processor.new_tokens = sorted((token for token in vocab if token not in known), key=vocab.get)
    return processor


def compose_model(vision=None, audio=None, text=None, processor=None, dtype=None, mean_resizing=True,
                  **config_kwargs) -> MMMModalForConditionalGeneration:
    """Compose a new model from three pretrained sources (hub ids or local folders), keeping their weights.

    Args:
        vision (`str`, *optional*): a SigLIP checkpoint (full SigLIP or vision-only); `None` for no vision tower.
        audio (`str`, *optional*): a Whisper checkpoint (only its encoder is kept); `None` for no audio tower.
        text (`str`): any causal LM checkpoint.
        processor ([`MMMModalProcessor`]): made by `compose_processor`; its tokenizer (with the span tokens added)
            sets the token ids and the grown vocabulary, its chat template the end of turn.
        dtype (`torch.dtype`, *optional*): dtype to load the parts in.
        mean_resizing (`bool`, *optional*, defaults to `True`): start the rows of the new tokens at the mean of
            the language model's rows (transformers' `resize_token_embeddings(mean_resizing=True)`), so that they
            change no prediction of the language model; `False` draws them at random.
        **config_kwargs: other [`MMMModalConfig`] fields (feature layers, ...). The audio projector's kernel,
            stride and the audio cap come from the processor, so that both count tokens alike.

    `generation_config` is the language model's, stopping also at its chat template's end-of-turn token;
    `config.base_models` records each source as given (a hub id), or a local folder's recorded name.

    Example:

    ```python
    >>> processor = compose_processor("google/siglip-base-patch16-384", "openai/whisper-small",
    ...                               "TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    >>> model = compose_model("google/siglip-base-patch16-384", "openai/whisper-small",
    ...                       "TinyLlama/TinyLlama-1.1B-Chat-v1.0", processor=processor)
    ```
    """
    from transformers import AutoConfig, AutoModelForCausalLM, WhisperModel

    if text is None or processor is None:
        raise ValueError("`text` (a causal LM source) and `processor` (from `compose_processor`) are required.")
    load = {"dtype": dtype} if dtype is not None else {}
    vision_config = None
    if vision is not None:
        vision_config = AutoConfig.from_pretrained(vision)
        vision_config = getattr(vision_config, "vision_config", vision_config)
    audio_config = AutoConfig.from_pretrained(audio) if audio is not None else None
    text_model = AutoModelForCausalLM.from_pretrained(text, **load)
    tokenizer = processor.tokenizer
    ids = {
        f"{name}_id": tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token", IMAGE_PAD_TOKEN), ("image_start_token", IMAGE_TOKEN), ("image_end_token", IMAGE_END_TOKEN),
            ("audio_token", AUDIO_PAD_TOKEN), ("audio_start_token", AUDIO_TOKEN), ("audio_end_token", AUDIO_END_TOKEN),
        )
    }
    if processor.audio_kernel_size is not None:
        config_kwargs.setdefault("audio_projector_kernel_size", processor.audio_kernel_size)
    config_kwargs.setdefault("audio_projector_stride", processor.audio_stride)
    config_kwargs.setdefault("max_audio_seconds", processor.max_audio_seconds)
    config = MMMModalConfig(
        vision_config=vision_config, audio_config=audio_config, text_config=text_model.config, **ids, **config_kwargs
    )
    with torch.device("meta"):
        model = MMMModalForConditionalGeneration(config)
    if vision is not None:
        tower_class = type(model.model.vision_tower)
        model.model.vision_tower = tower_class.from_pretrained(vision, config=config.vision_config, **load)
        model.model.multi_modal_projector = MMMModalMultiModalProjector(config)
    if audio is not None:
        model.model.audio_tower = WhisperModel.from_pretrained(audio, **load).get_encoder()
        model.model.audio_projector = MMMModalAudioProjector(config)
    model.model.language_model = text_model.get_decoder()
    model.lm_head = text_model.get_output_embeddings()
    for projector in (model.model.multi_modal_projector, model.model.audio_projector):
        if projector is not None:
            model._init_weights(projector)
            projector.to(text_model.dtype)
    new_tokens = getattr(processor, "new_tokens", [])
    _add_token_rows(model, tokenizer, new_tokens, mean_resizing)
    # Turn tokens the language model never saw (the ChatML fallback's) are in the answers' labels: stage 1 trains
    # their rows, so that the model learns to end a turn before stage 2.
    turn_tokens = [t for t in new_tokens if t in CHATML_TOKENS]
    model.config.train_token_ids = tokenizer.convert_tokens_to_ids(turn_tokens) or None
    model.generation_config = text_model.generation_config
    end_of_turn = tokenizer.convert_tokens_to_ids(turn_end(tokenizer, processor.chat_template)[0])
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    model.generation_config.eos_token_id = eos + [end_of_turn] if end_of_turn not in eos else eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    parts = [(sub, recorded_name(source)) for sub, source in
             ((model.config.vision_config, vision), (model.config.audio_config, audio), (model.config.text_config, text))
             if source is not None]
    for sub_config, name in parts:  # a sub-config saves where it was loaded from: the recorded name instead
        sub_config._name_or_path = name
    model.config.base_models = [name for _, name in parts]
    if config.training_stage is not None:
        model.set_training_stage(config.training_stage)
    return model


def _add_token_rows(model, tokenizer, new_tokens: list[str], mean_resizing: bool):
    """Grow the embeddings (and an untied lm_head) to the tokenizer, never shrinking them.

    A language model whose matrix has spare rows past its tokenizer (Qwen2's, padded for speed) gets the new
    tokens in those rows: with `mean_resizing` they are set to the mean of the rows before them, as transformers
    does for rows it adds.
    """
    rows = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(max(len(tokenizer), rows), mean_resizing=mean_resizing)
    spare = sorted(i for i in tokenizer.convert_tokens_to_ids(new_tokens) if i < rows)
    if not (spare and mean_resizing):
        return
    with torch.no_grad():
        for layer in {model.get_input_embeddings(), model.get_output_embeddings()}:
            weight = layer.weight
            weight[spare] = weight[: spare[0]].float().mean(0).to(weight.dtype)
            if getattr(layer, "bias", None) is not None:
                layer.bias[spare] = layer.bias[: spare[0]].float().mean().to(layer.bias.dtype)


def recorded_name(source) -> str:
    """What `config.base_models` records for a source: a hub id as given; for a local folder, the hub id its
    config recorded (`_name_or_path`, or a hub cache folder `models--org--name`), else the folder's name. Never
    a path of the machine that built the model."""
    path = os.path.abspath(os.path.expanduser(str(source)))
    if not os.path.isdir(path):
        return str(source)
    config_file = os.path.join(path, "config.json")
    recorded = None
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as file:
            recorded = json.load(file).get("_name_or_path")
    if isinstance(recorded, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", recorded) and not os.path.exists(recorded):
        return recorded
    cached = re.search(r"models--([\w.-]+?)--([\w.-]+)[/\\]snapshots[/\\]", path + os.sep)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    return os.path.basename(path.rstrip(os.sep))
