"""Demo data: the built-in synthetic task (processing/synthetic_task.py) with the demo's generation settings.

Settings chosen for learnability on 2 CPU cores (DESIGN, last paragraph): 32 px images whose 2x2 shape grid
matches 16 px patches (one shape per patch), fixed-length beeps in 1.5 s clips, short questions, one steady
question mix (the task's default weights, counting and cross-media questions weighted up).

One wrapping step of ours: every media item is introduced by a short label in the row's language
("Picture 2:" / "Gambar 2:", "Audio 1:"), as Qwen-VL does, so a question about "picture 2" can find its media by
content rather than by counting spans.
"""

import json
import logging
import random
from dataclasses import replace
from pathlib import Path

from datasets import Dataset, IterableDataset

from mmmmodal.demo_collate import length_batches
from mmmmodal.demo_verdicts import verdict_row
from processing.synthetic_media import (COLOURS, NUMBER_WORDS, PITCHES, SHAPES, AudioSpec, ImageSpec, describe_audio,
                                        describe_image)
from processing.synthetic_questions import ATTRIBUTES, MORE, QUESTION_TYPES, YES_NO, explained_answer
from processing.synthetic_task import TaskConfig, alignment_row, iter_split, render_row, write_synthetic

logger = logging.getLogger(__name__)

LABELS = {"en": {"image": "Picture {n}:", "audio": "Audio {n}:"}, "ms": {"image": "Gambar {n}:", "audio": "Audio {n}:"}}


# Naming a picture's colour or shape (6 or 4 words per language) learned slowest in measured runs (held-out
# accuracy at chance after 1,300 steps while "same colour?" reached 0.8), so those two get more of the mix.
WEIGHT_CHANGES = {"image_colour": 2.5, "image_shape": 2.5}


def task_config() -> TaskConfig:
    """The task settings the demo trains and evaluates on."""
    # 1 s clips of 0.1 s beeps fill one 1 s Whisper window (1.5 s clips padded into 2 s windows cost the frozen
    # audio tower twice the positions and the LLM 12 audio tokens per clip instead of 4).
    cfg = TaskConfig(image_size=32, clip_seconds=1.0, beep_seconds=0.1)
    cfg.weights.update(WEIGHT_CHANGES)
    return cfg


def tokenizer_corpus(cfg: TaskConfig) -> list[str]:
    """Every word the task can write, so the locally trained tokenizer has them (mostly) as single tokens."""
    lines = []
    for qtype in QUESTION_TYPES.values():
        for language, template in qtype.templates.items():
            lines += [template.format(a=a, b=b) for a in range(1, 4) for b in range(1, 4)]
            lines.append(" ".join(qtype.space(language)))
    for language in cfg.languages:
        lines += [LABELS[language][kind].format(n=n) for kind in ("image", "audio") for n in range(1, 4)]
        lines += [" ".join(YES_NO[language]), " ".join(MORE[language]), " ".join(NUMBER_WORDS[language].values())]
    lines += [" ".join(COLOURS), " ".join(v[1] for v in COLOURS.values()), " ".join(SHAPES), " ".join(SHAPES.values())]
    lines += [" ".join(PITCHES), " ".join(v[1] for v in PITCHES.values()), "bip beep beeps circles squares"]
    # The chat template's role names follow <|im_start|> at a line start: "user" and "assistant" whole (one token
    # each, as in any pretrained LLM's vocabulary) instead of 3 and 6 pieces, ~15 tokens fewer per conversation.
    lines += ["user", "assistant"]
    # Answers start the assistant turn with no space before them: train them as lines of their own too, so that
    # every answer is one token (a byte-level BPE word at a line start has no leading-space marker).
    answers = {a for q in QUESTION_TYPES.values() for language in cfg.languages for a in q.space(language)}
    lines += sorted(answers)
    for qtype in (q for q in QUESTION_TYPES.values() if q.cross):  # explained comparisons: "3, 2: yes"
        for language in cfg.languages:
            values = ATTRIBUTES[qtype.compared][1](language)
            lines += [explained_answer(a, b, verdict) for a in values for b in values
                      for verdict in qtype.space(language)]
    return lines * 4  # repetition only raises merge counts; the content is the same


def label_media(row: dict, as_text: bool = False) -> dict:
    """Put "Picture k:" / "Audio k:" (in the row's language) before every media part of the row's messages.

    `as_text`: replace every media part by its description instead ("Picture 2: three red circles."), from the
    row's `media` attributes: the same conversation for the language model alone (no images, no audio).
    """
    language = row.get("language", "en")
    labels, counters, messages = LABELS[language], {"image": 0, "audio": 0}, []
    for message in row["messages"]:
        content = message["content"]
        if isinstance(content, list):
            new = []
            for part in content:
                kind = part.get("type")
                if kind in counters:
                    counters[kind] += 1
                    label = labels[kind].format(n=counters[kind])
                    if as_text:
                        part = {"type": "text", "text": f"{label} {_describe(row, kind, counters[kind] - 1)}. "}
                    else:
                        new.append({"type": "text", "text": label})
                new.append(part)
            content = new
        messages.append({**message, "content": content})
    if as_text:
        return {**row, "messages": messages, "images": [], "text_only": True}
    return {**row, "messages": messages}


def _describe(row: dict, kind: str, index: int) -> str:
    if kind == "image":
        spec = row["media"]["images"][index]
        return describe_image(ImageSpec(**{**spec, "cells": tuple(spec["cells"])}), row.get("language", "en"))
    return describe_audio(AudioSpec(**row["media"]["audios"][index]), row.get("language", "en"))


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [label_media(json.loads(line)) for line in f if line.strip()]


def make_data(out_dir, n_train: int, n_test: int, n_alignment: int, seed: int) -> dict:
    """Write the task under `out_dir`; return {"train", "test", "alignment"}: lists of labelled rows."""
    written = write_synthetic(Path(out_dir), n_train, n_test, seed=seed, cfg=task_config(), n_alignment=n_alignment)
    return {split: read_rows(path) for split, path in written.items()}


def approximate_length(row: dict, tokenizer=None) -> int:
    """A row's token count, roughly (text tokens, plus a fixed guess per media item and per message): only used
    to put conversations of similar length into one batch, which cuts padding."""
    length = 0
    for message in row["messages"]:
        length += 5
        parts = message["content"] if isinstance(message["content"], list) else [{"type": "text", "text": message["content"]}]
        for part in parts:
            if part.get("type") == "text":
                length += len(tokenizer(part["text"])["input_ids"]) if tokenizer is not None else len(part["text"]) // 4
            else:
                length += 6 if part.get("type") == "image" else 14
    return length


def to_dataset(rows: list[dict], tokenizer=None) -> Dataset:
    """Rows in TRL's vision form (`messages` + `images`), the only columns the training collator needs, plus
    `length` for the trainer's length-grouped sampler."""
    return Dataset.from_list([{"messages": r["messages"], "images": r["images"],
                               "length": approximate_length(r, tokenizer)} for r in rows])


def stream_rows(seed: int, batch_size: int, group: int = 8, curriculum_rows: int = 0, caption_share: float = 0.0,
                text_share: float = 0.0, equal_pairs: float = 0.0, verdict_share: float = 0.0):
    """Fresh training rows forever (full rows: `messages`, `images`, `qtypes`, `answers`, `media`, ...), media in
    memory, in length-grouped order. See `stream_dataset` for the arguments."""
    if batch_size < 1 or group < 1:
        raise ValueError(f"Stream: expected batch_size >= 1 and group >= 1, found batch_size={batch_size}, "
                         f"group={group}.")
    cfg, rng = replace(task_config(), equal_pairs=equal_pairs), random.Random(seed)
    simple = replace(cfg, max_images=1, max_audios=1)
    specs, simple_specs = iter_split(seed, "train", cfg), iter_split(seed + 7919, "train", simple)
    count = 0
    while True:
        rows = []
        for _ in range(batch_size * group):
            row_id = f"stream-{seed}-{count:08d}"
            if verdict_share and rng.random() < verdict_share:
                messages, _ = verdict_row(rng, cfg.weights, cfg.languages)
                rows.append({"id": row_id, "messages": messages, "images": [], "verdict_only": True})
                count += 1
                continue
            caption = rng.random() < caption_share
            easy = not caption and curriculum_rows and rng.random() < 1.0 - count / curriculum_rows
            if easy:  # half captions, half chats with at most one picture and one clip
                caption = rng.random() < 0.5
            if caption:
                rows.append(label_media(alignment_row(rng, row_id, None, cfg)))
            else:
                row = render_row(next(simple_specs if easy else specs), row_id, None, cfg)
                rows.append(label_media(row, as_text=rng.random() < text_share))
            count += 1
        batches = length_batches(rows, approximate_length, batch_size)
        rng.shuffle(batches)
        for batch in batches:
            yield from batch


def _trl_rows(**kwargs):
    for row in stream_rows(**kwargs):
        yield {"messages": row["messages"], "images": row["images"], "verdict_only": bool(row.get("verdict_only"))}


def stream_dataset(seed: int, batch_size: int, group: int = 8, curriculum_rows: int = 0,
                   caption_share: float = 0.0, text_share: float = 0.0, equal_pairs: float = 0.0,
                   verdict_share: float = 0.0) -> IterableDataset:
    """An endless stream of fresh training conversations for TRL (`datasets.IterableDataset`, TRL's vision form).

    Every row is new (the task's train split, seeded by `seed`; a conversation of the held-out split is never
    drawn), so the model cannot learn its training set by heart: held-out accuracy tracks what it reads from the
    media. Media stay in memory (PIL images, waveforms): nothing is written to disk.

    - Length grouping: rows are drawn `group` batches at a time, sorted by length, cut into batches of
      `batch_size` and the batches shuffled, so that a sequential loader of that batch size pads little.
    - `curriculum_rows`: the first rows are mostly easy ones, half captions ("Picture 1: <image>" -> "two red
      circles") and half conversations with at most one image and one clip (no "which picture?" lookup); their
      share falls linearly from 1 to 0 over that many rows.
    - `caption_share`: besides, this share of all rows are captions, all along: every caption names a picture's
      colour, shape and count (or a clip's count and pitch) at once, which keeps the naming questions learning.
    - `text_share`: this share of the conversations comes as text only, every media item replaced by its labelled
      description ("Picture 2: three red circles."), as LLaVA-1.5 mixes text-only chats into its instruction
      data: the language model's reasoning trained apart from reading media. Not measured in full demo runs yet
      (notes/demo.md, round 4), so the demo leaves it at 0.
    - `equal_pairs`: this share of the "same ...?" comparisons get two items with the same compared value
      (`TaskConfig.equal_pairs`), so their verdict is "yes" about half the time instead of 1 time in 6 (colours)
      to 1 in 3 (pitches). The held-out split keeps independently drawn media.
    - `verdict_share`: this share of all rows are text-only comparison questions answered with random values and
      their verdict (`mmmmodal.demo_verdicts.verdict_row`), flagged `verdict_only`, for
      `mmmmodal.demo_collate.VerdictOnlyLabels` to train on the verdict token alone: the comparison step ("3, 2:"
      -> "yes") that a pretrained LLM would bring, practised apart from reading media. `equal_pairs` and
      `verdict_share` are 0 in the demo: measured in notes/demo.md, round 5, with no gain.
    """
    return IterableDataset.from_generator(_trl_rows, gen_kwargs={
        "seed": seed, "batch_size": batch_size, "group": group, "curriculum_rows": curriculum_rows,
        "caption_share": caption_share, "text_share": text_share, "equal_pairs": equal_pairs,
        "verdict_share": verdict_share})


__all__ = ["stream_dataset", "stream_rows", "task_config", "tokenizer_corpus", "label_media", "read_rows", "make_data", "to_dataset", "approximate_length", "LABELS"]
