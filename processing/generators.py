"""Text generators behind one interface: `generate(list_of_chats, return_exceptions=False) -> list[str]`.

A chat is a list of `{"role": ..., "content": str}` messages; the reply list is in the same order.
With `return_exceptions=True` (as `asyncio.gather` has it), a chat whose generation failed gets its
exception in its slot instead of failing the whole call, so that the pipelines can write that row
down as failed and carry on with the others.
- `TransformersGenerator`: any local folder or hub id that `AutoModelForCausalLM` loads; uses the
  tokenizer's chat template when it has one, else a plain "role: content" prompt.
- `OpenAIGenerator`: any OpenAI-compatible endpoint (vLLM, `transformers serve`, ...), requests run
  concurrently in a bounded thread pool, each with a timeout and retries (the `openai` client's
  exponential backoff).
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

logger = logging.getLogger(__name__)


class Generator(Protocol):
    def generate(self, chats: list, return_exceptions: bool = False) -> list:
        """One reply string per chat, in order; with `return_exceptions`, a failed chat's exception instead."""


def plain_prompt(chat: list) -> str:
    """Fallback prompt for tokenizers without a chat template."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat) + "\nassistant:"


class TransformersGenerator:
    """Greedy (or sampled) generation with a local causal LM, batched with left padding."""

    def __init__(self, model: str, max_new_tokens: int = 256, batch_size: int = 4, do_sample: bool = False,
                 temperature: float = 0.7, device: str | None = None, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.sampling = {"do_sample": do_sample, **({"temperature": temperature} if do_sample else {})}

    def _prompt(self, chat: list) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return plain_prompt(chat)

    def _generate_batch(self, chats: list) -> list:
        import torch

        prompts = [self._prompt(chat) for chat in chats]
        # The chat template already holds any BOS; do not add special tokens twice.
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                add_special_tokens=not self.tokenizer.chat_template).to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, **self.sampling)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def _generate_or_errors(self, chats: list) -> list:
        """A failed batch is redone one chat at a time, so that only the chats that fail alone get an error."""
        try:
            return self._generate_batch(chats)
        except Exception as error:
            if len(chats) == 1:
                return [error]
            logger.warning("A generation batch of %d failed (%s: %s); redoing it one chat at a time.", len(chats),
                           type(error).__name__, error)
            return [reply for chat in chats for reply in self._generate_or_errors([chat])]

    def generate(self, chats: list, return_exceptions: bool = False) -> list:
        one_batch = self._generate_or_errors if return_exceptions else self._generate_batch
        replies = []
        for start in range(0, len(chats), self.batch_size):
            replies += one_batch(chats[start:start + self.batch_size])
        return replies


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server, `max_workers` requests at a time."""

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", max_workers: int = 8,
                 timeout: float = 120.0, max_retries: int = 3, max_tokens: int = 512, temperature: float = 0.7):
        from openai import OpenAI

        if max_workers < 1:
            raise ValueError(f"max_workers: expected >= 1, found {max_workers}.")
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.model, self.max_workers = model, max_workers
        self.params = {"max_tokens": max_tokens, "temperature": temperature}

    def _one(self, chat: list) -> str:
        response = self.client.chat.completions.create(model=self.model, messages=chat, **self.params)
        return (response.choices[0].message.content or "").strip()

    def _one_or_error(self, chat: list):
        try:
            return self._one(chat)
        except Exception as error:  # after the client's own retries
            return error

    def generate(self, chats: list, return_exceptions: bool = False) -> list:
        with ThreadPoolExecutor(max_workers=min(self.max_workers, max(1, len(chats)))) as pool:
            return list(pool.map(self._one_or_error if return_exceptions else self._one, chats))


class LLMTranslator:
    """Translation through any `Generator`: one chat per text, reply taken as the translation."""

    def __init__(self, generator: Generator, target: str = "Malay"):
        self.generator, self.target = generator, target

    def translate(self, texts: list) -> list:
        chats = [[{"role": "system", "content": f"Translate the user's text to {self.target}. "
                                               "Reply with the translation only."},
                  {"role": "user", "content": text}] for text in texts]
        return self.generator.generate(chats)
