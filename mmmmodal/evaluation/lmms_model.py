"""The lmms-eval model classes for MMMModal checkpoints: `--model mmmmodal` (registered by `mmmmodal.evaluation`).

`MMMModalChat` (lmms-eval's default for this model) reads a task's `doc_to_messages`: lmms-eval's `ChatMessages`
(text, image and audio parts, any number of turns). `MMMModalSimple` (`--force_simple`) reads a context string and
`doc_to_visual`'s list, PIL images and audio (datasets' `{"array", "sampling_rate"}` dicts, decoders or paths)
mixed, in the order of the context's `<image>` / `<audio>` placeholders; a context without placeholders gets the
media before its text, as lmms-eval's other models do. Both become standard chat messages that the checkpoint's
processor renders and encodes (`apply_chat_template`), exactly as `ChatSession` and `mmmmodal serve` do.

- `generate_until`: `--batch_size N` requests per left-padded `generate` call (one batch may mix image-only,
  audio-only, both and text-only requests); requests with different generation settings never share a batch.
  Honours `until` (the answer is cut at the first stop string), `max_new_tokens`, `temperature`, `do_sample`,
  `num_beams`, `top_p`, `top_k`; other keys are named in a warning.
- `loglikelihood` returns `(loss, is_greedy)` as lmms-eval's HF models do (`models/simple/llava_hf.py`): the mean
  cross-entropy of the tokens the chat template writes for the continuation as the assistant's answer (its turn
  end included), after the prompt with the generation prompt; lmms-eval's multiple-choice scoring takes the
  argmin of these losses.
- `generate_until_multi_round`: each round's prompt comes from the task (`doc_to_text` / `doc_to_messages` with
  `round_idx`, the earlier outputs and the round info it gave), as lmms-eval's own models run it. Simple: the
  rounds' results are what the task's last `doc_to_text` returns (it may rewrite them), as in lmms-eval's simple HF
  models; chat: every round's answer, as in its chat models.

Bad input never scores silently: a video, a doc whose placeholders and media disagree, or media that cannot be
read raise a `ValueError` naming the task and doc id (lmms-eval logs it and stops the run).
"""

import json
import logging
import re
import time
from collections import defaultdict

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm.auto import tqdm

from modeling_mmmmodal.configuration_mmmmodal import AUDIO_TOKEN, IMAGE_TOKEN

from ..loading import context_limit, load_checkpoint
from ..training.padding import pad_batch

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus")
PLACEHOLDER = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(AUDIO_TOKEN)})")
KIND_OF_PLACEHOLDER = {IMAGE_TOKEN: "image", AUDIO_TOKEN: "audio"}
MODEL_ARGS = ("pretrained", "device", "dtype", "attn_implementation", "trust_remote_code", "max_new_tokens")


def _where(task, doc_id) -> str:
    return f"task {task!r}, doc {doc_id}"


def _describe(visual) -> str:
    if isinstance(visual, str):
        return repr(visual[:200])
    if isinstance(visual, dict):
        return f"a dict with keys {sorted(visual)}"
    return f"a {type(visual).__name__}"


def media_kind(visual, where: str, declared: str | None = None) -> str:
    """"image" or "audio" for one image or clip of a request; `ValueError` naming `where` for video or anything else.

    `declared` is the part's type in a chat message. lmms-eval labels a media dict without a "type" key as video
    (`ConfigurableMessagesTask._visual_to_content`): such a dict holding a waveform is audio.
    """
    if isinstance(visual, Image.Image):
        kind = "image"
    elif hasattr(visual, "get_all_samples") or (isinstance(visual, dict) and visual.get("array") is not None):
        kind = "audio"  # datasets' Audio feature: a torchcodec decoder (datasets 4+) or {"array", "sampling_rate"}
    elif isinstance(visual, (str, dict)):
        path = visual if isinstance(visual, str) else str(visual.get("path") or visual.get("url") or "")
        extension = path.lower().rsplit("?", 1)[0]
        kind = ("image" if extension.endswith(IMAGE_EXTENSIONS) else "audio" if extension.endswith(AUDIO_EXTENSIONS)
                else declared if declared in ("image", "audio") and path else None)
    else:
        kind = None
    if kind is None:
        raise ValueError(
            f"{where}: MMMModal takes images and audio, not video or other media; got {_describe(visual)}"
            f"{f' (a {declared} part)' if declared else ''}. Pass PIL images, audio arrays ({{'array', "
            "'sampling_rate'}), or image / audio file paths."
        )
    if declared in ("image", "audio") and kind != declared:
        raise ValueError(f"{where}: a {declared} part holds {_describe(visual)}, which is {kind}.")
    return kind


def _part(kind: str, visual) -> dict:
    return {"type": kind, kind: visual}


def simple_messages(context: str, visuals: list, where: str) -> list[dict]:
    """The user turn of a simple request: `context` with its media at the placeholders, or before it."""
    kinds = [media_kind(visual, where) for visual in visuals]
    pieces = PLACEHOLDER.split(context or "")
    wanted = [KIND_OF_PLACEHOLDER[p] for p in pieces[1::2]]
    if not wanted:
        parts = [_part(kind, visual) for kind, visual in zip(kinds, visuals)]
        return [{"role": "user", "content": parts + ([{"type": "text", "text": context}] if context else [])}]
    if wanted != kinds:
        raise ValueError(
            f"{where}: its text holds the placeholders {wanted} but doc_to_visual gave {kinds or 'no media'}. "
            f"Give one image per {IMAGE_TOKEN} and one clip per {AUDIO_TOKEN}, in the order of the placeholders."
        )
    media = iter(zip(kinds, visuals))
    parts = []
    for i, piece in enumerate(pieces):
        if i % 2:
            parts.append(_part(*next(media)))
        elif piece:
            parts.append({"type": "text", "text": piece})
    return [{"role": "user", "content": parts}]


def chat_messages(raw_messages, where: str) -> list[dict]:
    """lmms-eval's chat messages (`ChatMessages` schema) as this processor's standard chat messages.

    A message whose text holds `<image>` / `<audio>` placeholders for its own media parts (what lmms-eval's chat
    turn of a placeholder task gives: the media first, then the text) gets its media at the placeholders.
    """
    messages = []
    for message in ChatMessages(messages=raw_messages).messages:
        parts = []
        for content in message.content:
            if content.type == "text":
                parts.append({"type": "text", "text": content.text})
            else:
                declared = content.type if content.type in ("image", "audio") else None
                parts.append(_part(media_kind(content.url, where, declared), content.url))
        text = "".join(part["text"] for part in parts if part["type"] == "text")
        media = [part[part["type"]] for part in parts if part["type"] != "text"]
        if media and PLACEHOLDER.search(text):
            parts = simple_messages(text, media, where)[0]["content"]
        messages.append({"role": message.role, "content": parts})
    return messages


def _as_bool(value) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return bool(value)


class _MMMModal(lmms):
    """What both interfaces share: loading, encoding, batched generation, continuation losses.

    Args (lmms-eval's `--model_args`, comma-separated `key=value`):
        pretrained (`str`): a checkpoint folder written by `save_pretrained`, or a hub repository id.
        device (`str`, *optional*): `cpu`, `cuda`, `cuda:1`, ...; CUDA when there is one. Under `accelerate launch`
            each process takes its own device.
        dtype (`str`, defaults to `"auto"`): `auto` (the saved dtype), `float32`, `bfloat16` or `float16`.
        attn_implementation (`str`, *optional*): `sdpa`, `eager`, ...; transformers' default otherwise.
        trust_remote_code (`bool`, defaults to `False`): run the checkpoint's own code files instead of the
            installed mmmmodal classes (a warning says so when they differ).
        max_new_tokens (`int`, defaults to 256): answer budget for tasks whose generation_kwargs set none.
    `--batch_size N` is lmms-eval's own flag: N requests per forward / `generate` call.
    """

    def __init__(self, pretrained: str | None = None, device: str | None = None, dtype: str = "auto",
                 attn_implementation: str | None = None, trust_remote_code=False, max_new_tokens: int = 256,
                 batch_size=1, max_batch_size=None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"--model_args for mmmmodal: unknown {sorted(unknown)}; expected some of {list(MODEL_ARGS)}.")
        if not pretrained:
            raise ValueError("--model_args for mmmmodal: give pretrained=CHECKPOINT (a folder or a hub id).")
        if str(batch_size).startswith("auto"):
            raise ValueError("--batch_size auto is not supported by mmmmodal: give a number (e.g. --batch_size 8).")
        if max_batch_size is not None:
            logger.warning("mmmmodal ignores --max_batch_size: it only bounds --batch_size auto, which it does not support.")
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"--batch_size must be at least 1, found {batch_size}.")
        self.max_new_tokens = int(max_new_tokens)
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:  # data parallel: each process scores its share of the requests
            device = str(self.accelerator.device)
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model, self.processor = load_checkpoint(str(pretrained), device, str(dtype), _as_bool(trust_remote_code),
                                                      attn_implementation)
        self.pretrained = str(pretrained)
        self.tokenizer = self.processor.tokenizer
        self.limit = context_limit(self._model)

    @property
    def model(self):
        return self._model

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._model.device

    # ------------------------------------------------------------------------------------------------ encoding
    def _encode(self, messages: list[dict], where: str, add_generation_prompt: bool = True) -> dict:
        """(1, S) model inputs of a conversation, as `apply_chat_template` gives them; errors name the doc."""
        try:
            inputs = self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                        tokenize=True, return_dict=True, return_tensors="pt")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        return dict(inputs)

    def _batch(self, encoded: list[dict], padding_side: str) -> dict:
        rows = [{**inputs, "input_ids": inputs["input_ids"][0], "attention_mask": inputs["attention_mask"][0]}
                for inputs in encoded]
        batch = pad_batch(rows, self.tokenizer.pad_token_id, padding_side=padding_side)
        return {key: value.to(self.device) for key, value in batch.items()}  # the model casts media to its dtype

    # ------------------------------------------------------------------------------------------------ generation
    def _settings(self, gen_kwargs: dict, where: str) -> tuple[dict, list[str]]:
        """`generate` keyword arguments and the stop strings for one request's generation_kwargs."""
        given = dict(gen_kwargs or {})
        until = given.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        temperature = float(given.pop("temperature", 0) or 0)
        do_sample = _as_bool(given.pop("do_sample", temperature > 0))
        settings = {"max_new_tokens": int(given.pop("max_new_tokens", self.max_new_tokens)),
                    "num_beams": int(given.pop("num_beams", 1) or 1), "do_sample": do_sample}
        top_p, top_k = given.pop("top_p", None), given.pop("top_k", None)
        if do_sample:
            if temperature <= 0:
                raise ValueError(f"{where}: do_sample with temperature {temperature}: give a temperature above 0.")
            settings.update(temperature=temperature, top_p=top_p, top_k=top_k)
        else:  # greedy (or beam search): the checkpoint's sampling defaults must not apply
            settings.update(temperature=None, top_p=None, top_k=None)
        if given:
            logger.warning(f"mmmmodal ignores these generation_kwargs of {where}: {sorted(given)}")
        return settings, until

    def _generate_all(self, items: list[tuple[list[dict], dict, str]]) -> list[str]:
        """Answers for (messages, generation_kwargs, where) items, in order, `batch_size` per `generate` call."""
        groups = defaultdict(list)  # requests with the same settings may share a batch
        for index, (_, gen_kwargs, _) in enumerate(items):
            groups[json.dumps(gen_kwargs or {}, sort_keys=True, default=str)].append(index)
        answers, tokens, started = [None] * len(items), 0, time.perf_counter()
        progress = tqdm(total=len(items), desc="mmmmodal generate", disable=self.rank != 0)
        for indices in groups.values():
            settings, until = self._settings(items[indices[0]][1], items[indices[0]][2])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts, new = self._generate_batch([items[i][0] for i in chunk], [items[i][2] for i in chunk], settings)
                tokens += new
                for i, text in zip(chunk, texts):
                    answers[i] = _cut(text, until)
                progress.update(len(chunk))
        progress.close()
        elapsed = time.perf_counter() - started  # lmms-eval's throughput summary (results JSON, "throughput")
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=tokens, avg_speed=tokens / elapsed if elapsed else 0.0,
                    additional_metrics={"total_requests": len(items), "rank": self.rank})
        return answers

    def _generate_batch(self, conversations: list[list[dict]], wheres: list[str], settings: dict
                        ) -> tuple[list[str], int]:
        encoded = [self._encode(messages, where) for messages, where in zip(conversations, wheres)]
        for inputs, where in zip(encoded, wheres):
            length = inputs["input_ids"].shape[1]
            if self.limit is not None and length + settings["max_new_tokens"] > self.limit:
                raise ValueError(f"{where}: its prompt ({length} tokens, media included) + max_new_tokens "
                                 f"{settings['max_new_tokens']} exceed the model's context of {self.limit}.")
        batch = self._batch(encoded, padding_side="left")
        with torch.inference_mode():
            sequences = self.model.generate(**batch, **settings, pad_token_id=self.tokenizer.pad_token_id)
        new = sequences[:, batch["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return texts, int((new != self.tokenizer.pad_token_id).sum())

    # ------------------------------------------------------------------------------------------------ likelihood
    def loglikelihood(self, requests) -> list[GenerationResult]:
        """(mean cross-entropy of the continuation's tokens, whether greedy decoding writes exactly them) per request,
        each wrapped in a `GenerationResult`: lmms-eval 0.7.3's evaluator passes every response through
        `unwrap_generation_output`, which turns a bare tuple into its `str()` (and multiple-choice scoring then
        fails to unpack it), but hands a `GenerationResult`'s `text` on as it is."""
        items = []
        for request in requests:
            if len(request.args) == 2:  # an unconditional request (acc_mutual_info): no doc, no media
                (context, continuation), visuals, where = request.args, [], "an unconditional request"
            else:
                context, target, doc_to_visual, doc_id, task, split = request.args
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                visuals, where = (doc_to_visual(doc) if doc_to_visual else None) or [], _where(task, doc_id)
            items.append((simple_messages(context, visuals, where), str(continuation), where))
        results = []
        progress = tqdm(total=len(items), desc="mmmmodal loglikelihood", disable=self.rank != 0)
        for start in range(0, len(items), self.batch_size):
            results += self._losses(items[start : start + self.batch_size])
            progress.update(len(items[start : start + self.batch_size]))
        progress.close()
        return [GenerationResult(text=result) for result in results]

    def _losses(self, items: list[tuple[list[dict], str, str]]) -> list[tuple[float, bool]]:
        prompts, encoded = [], []
        for messages, continuation, where in items:
            prompt = self._encode(messages, where)["input_ids"][0]
            answer = {"role": "assistant", "content": [{"type": "text", "text": continuation}]}
            full = self._encode(messages + [answer], where, add_generation_prompt=False)
            if not torch.equal(full["input_ids"][0, : len(prompt)], prompt) or full["input_ids"].shape[1] <= len(prompt):
                raise ValueError(f"{where}: the chat template does not write the answer {continuation!r} after the "
                                 "generation prompt, so its tokens cannot be told apart.")
            prompts.append(len(prompt))
            encoded.append(full)
        batch = self._batch(encoded, padding_side="right")
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()  # (B, S, V)
        results = []
        for row, (start, inputs) in enumerate(zip(prompts, encoded)):
            end = inputs["input_ids"].shape[1]
            targets = batch["input_ids"][row, start:end]
            predicted = logits[row, start - 1 : end - 1]  # position p predicts token p + 1
            loss = torch.nn.functional.cross_entropy(predicted, targets)
            results.append((float(loss), bool((predicted.argmax(-1) == targets).all())))
        return results

    def _generate_rounds(self, first: list[dict], next_round, gen_kwargs: dict, where: str) -> GenerationResult:
        """The rounds of a multi-round request. `next_round(round_idx, outputs, info)` gives (the next round's
        messages, or None when the task says it is done; the rounds' results so far; the info for the next call).
        Wrapped in a `GenerationResult`, so that lmms-eval hands the list to the task as it is (a bare list of
        two strings would be read as (text, metadata))."""
        outputs, messages, info, round_idx = [], first, None, 0
        while messages is not None:
            outputs = list(outputs) + self._generate_all([(messages, gen_kwargs, f"{where}, round {round_idx}")])
            round_idx += 1
            messages, outputs, info = next_round(round_idx, outputs, info)
        return GenerationResult(text=list(outputs))


def _cut(text: str, until: list[str]) -> str:
    """`text` up to the first of the stop strings."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class MMMModalSimple(_MMMModal):
    """lmms-eval's simple interface (`--force_simple`): a context string and `doc_to_visual`'s media."""

    is_simple = True

    def generate_until(self, requests) -> list[str]:
        items = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (request.args for request in requests):
            doc = self.task_dict[task][split][doc_id]
            where = _where(task, doc_id)
            items.append((simple_messages(context, (doc_to_visual(doc) if doc_to_visual else None) or [], where),
                          gen_kwargs, where))
        return self._generate_all(items)

    def generate_until_multi_round(self, requests) -> list[GenerationResult]:
        results = []
        for context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split in (r.args for r in requests):
            doc, where = self.task_dict[task][split][doc_id], _where(task, doc_id)

            def next_round(round_idx, outputs, info, doc=doc, where=where, doc_to_text=doc_to_text):
                payload = doc_to_text(doc, previous_output=outputs, round_idx=round_idx, previous_round_info=info)
                if not (isinstance(payload, tuple) and len(payload) == 5):
                    raise ValueError(f"{where}, round {round_idx}: a multi-round doc_to_text returns (visuals, text, "
                                     f"terminal, round results, round info); got {_describe(payload)}.")
                visuals, text, terminal, round_results, info = payload
                round_results = outputs if round_results is None else round_results
                return (None if terminal else simple_messages(text, visuals or [], where)), round_results, info

            first = simple_messages(context, (doc_to_visual(doc) if doc_to_visual else None) or [], where)
            results.append(self._generate_rounds(first, next_round, gen_kwargs, where))
        return results


class MMMModalChat(_MMMModal):
    """lmms-eval's chat interface (the default): a task's `doc_to_messages`, any number of turns."""

    is_simple = False

    def generate_until(self, requests) -> list[str]:
        items = []
        for _, doc_to_messages, gen_kwargs, doc_id, task, split in (request.args for request in requests):
            where = _where(task, doc_id)
            items.append((chat_messages(doc_to_messages(self.task_dict[task][split][doc_id]), where), gen_kwargs, where))
        return self._generate_all(items)

    def generate_until_multi_round(self, requests) -> list[GenerationResult]:
        results = []
        for _, doc_to_messages, gen_kwargs, doc_id, task, split in (request.args for request in requests):
            doc, where = self.task_dict[task][split][doc_id], _where(task, doc_id)

            def next_round(round_idx, outputs, info, doc=doc, where=where, doc_to_messages=doc_to_messages):
                """lmms-eval's chat protocol: (messages, terminal, outputs, info); anything else ends the request."""
                payload = doc_to_messages(doc, round_idx=round_idx, previous_output=outputs, previous_round_info=info)
                if not (isinstance(payload, tuple) and len(payload) == 4) or payload[1]:
                    return None, outputs, info
                return chat_messages(payload[0], where), outputs, payload[3]

            results.append(self._generate_rounds(chat_messages(doc_to_messages(doc), where), next_round, gen_kwargs, where))
        return results
