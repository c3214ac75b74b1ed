"""vLLM's prompt renderer for MMMModal: a request without media may not hold the model's media tokens.

vLLM runs a model's multimodal processor (`processing.py`, which refuses placeholders that do not match the media)
only for a prompt that carries images or audio. A text-only prompt goes from the tokenizer straight to the engine,
so a `<image>`, `</audio>` or `<|image_pad|>` typed into a message would reach the model as that special token.
vLLM offers no model hook on that path (the tokenizer, the chat-template kwargs and the processor's
`default_tok_params` are not consulted per request), so the plugin replaces vLLM's Hugging Face renderer (the
`hf` entry of `vllm.renderers.RENDERER_REGISTRY`, what `--tokenizer-mode auto` / `hf` use) by this subclass.
For any other model it is vLLM's renderer unchanged; for an MMMModal checkpoint a text-only prompt holding a
media token is refused with `VLLMValidationError`, which the server answers with HTTP 400 naming the token, as
`mmmmodal serve` does.
"""

from vllm.exceptions import VLLMValidationError
from vllm.renderers.hf import HfRenderer

from modeling_mmmmodal.configuration_mmmmodal import SPECIAL_TOKENS


class MMMModalRenderer(HfRenderer):
    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self._media_tokens = {}  # id -> token, for an MMMModal checkpoint only
        if getattr(config.model_config.hf_config, "model_type", None) == "mmmmodal" and tokenizer is not None:
            ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
            self._media_tokens = {i: token for i, token in zip(ids, SPECIAL_TOKENS) if i is not None}

    def _refuse_media_tokens(self, prompt) -> None:
        if not self._media_tokens or prompt.get("multi_modal_data"):
            return  # with media, the multimodal processor checks the placeholders against them
        found = next((i for i in prompt.get("prompt_token_ids") or () if i in self._media_tokens), None)
        if found is not None:
            raise VLLMValidationError(
                f"The prompt holds {self._media_tokens[found]!r}, one of this model's media tokens, but the request "
                "has no images or audio. Send media as `image_url` / `input_audio` parts (each gets its placeholder); "
                "to mean the characters as text, write them differently (e.g. '< image>').", parameter="messages")

    def _process_tokens(self, prompt, *, skip_mm_cache: bool = False):
        self._refuse_media_tokens(prompt)
        return super()._process_tokens(prompt, skip_mm_cache=skip_mm_cache)

    async def _process_tokens_async(self, prompt, *, skip_mm_cache: bool = False):
        self._refuse_media_tokens(prompt)
        return await super()._process_tokens_async(prompt, skip_mm_cache=skip_mm_cache)
