"""Benchmark 4: processor and collator throughput (samples/s) on mixed rows, and their peak memory.

Rows mix 1-3 media each (an image with probability 0.6, else a 1-5 s clip), as the paper's combined data does.
- `collator`: `mmmmodal.training.collate.MMMModalDataCollator` (TRL's vision collator + row checks + span masking) on
  rows in TRL's vision form, batches of 8: chat template, media loading from disk, features, labels.
- `processor`: `MMMModalProcessor.__call__` alone on the same batches, media already decoded: tokenization,
  span expansion and feature extraction.
- `tokenizer`: the tokenizer alone on the same texts: the floor under the processor's text side (its span
  expansion and padding add to it).
- `collator, 4 turns`: the collator on the same rows grown to four user/assistant turns, against the same
  collator rendering through transformers' own `ProcessorMixin.apply_chat_template`, which walks the assistant
  mask over offsets left as a tensor (`MMMModalProcessor.apply_chat_template` hands it lists): the ratio is the
  collator's speed-up from that.
- `processor, 1-5 s clips`: the processor on audio-only rows of one 1-5 s clip, against a copy that computes the
  log-mel features over each window padded to 30 s, as the feature extractor alone does: the ratio is the speed-up
  from computing them over the real samples only (the features are equal, tests/test_model_inputs.py).
Peak memory is Python-tracked allocations (tracemalloc: numpy buffers included, torch tensors not), over the
first 25 batches (a second pass: tracing slows what it traces).
"""

import copy
import random
import tempfile
import tracemalloc
import types
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from transformers.processing_utils import ProcessorMixin

from .common import Row, Size, build_processor, now

SIZE = Size("proc", hidden=32, layers=2, heads=2, image_size=64, patch_size=8, audio_window_s=30)
BATCH = 8


def make_rows(folder: Path, n_rows: int, seed: int = 0) -> list[dict]:
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    images, clips = [], []
    for i in range(16):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
        path = folder / f"clip{i}.wav"
        soundfile.write(path, (rng.standard_normal(16000 * (1 + i % 5)) * 0.1).astype(np.float32), 16000)
        clips.append(str(path))
    rows = []
    for r in range(n_rows):
        parts, row_images = [], []
        for _ in range(pick.randint(1, 3)):
            if pick.random() < 0.6:
                parts.append({"type": "image"})
                row_images.append(pick.choice(images))
            else:
                parts.append({"type": "audio", "path": pick.choice(clips)})
        parts.append({"type": "text", "text": f"What is related between the media of row {r}?"})
        rows.append({"messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": [{"type": "text", "text": "Both show the number two."}]},
        ], "images": row_images})
    return rows


def multi_turn(rows: list[dict], turns: int = 4) -> list[dict]:
    """The rows with `turns` user/assistant exchanges: the first as it was, then text-only follow-ups."""
    out = []
    for r, row in enumerate(rows):
        messages = list(row["messages"])
        for t in range(1, turns):
            messages += [{"role": "user", "content": [{"type": "text", "text": f"And what about turn {t}?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": f"Turn {t} of row {r}."}]}]
        out.append({**row, "messages": messages})
    return out


def with_base_mask_walk(processor):
    """A copy of `processor` whose chat template goes through `ProcessorMixin`'s own method: mask walk on tensors."""
    peer = copy.copy(processor)
    peer.apply_chat_template = types.MethodType(ProcessorMixin.apply_chat_template, peer)
    return peer


def with_padded_log_mel(processor):
    """A copy of `processor` that computes log-mel features as the feature extractor alone does: over every window
    padded to its full 30 s (what the processor did before it computed them over the real samples only)."""
    peer = copy.copy(processor)

    def padded(windows):
        out = processor.feature_extractor(windows, sampling_rate=processor.feature_extractor.sampling_rate,
                                          padding="max_length", return_attention_mask=True, return_tensors="np")
        return out["input_features"], out["attention_mask"]

    peer._log_mel = padded
    return peer


def clip_batches(n_rows: int, seed: int = 0) -> list[dict]:
    """Audio-only processor calls: one 1-5 s clip per row (uniform), batches of `BATCH`."""
    rng = np.random.default_rng(seed)
    clips = [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32) for s in rng.uniform(1, 5, n_rows)]
    return [{"text": ["<audio> How many beeps?"] * len(clips[i : i + BATCH]), "audio": clips[i : i + BATCH]}
            for i in range(0, n_rows, BATCH)]


def processor_batches(rows: list[dict], processor) -> list[dict]:
    """The same rows as plain processor calls: text with placeholders, decoded images and waveforms."""
    batches = []
    for start in range(0, len(rows), BATCH):
        texts, images, audio = [], [], []
        for row in rows[start : start + BATCH]:
            texts.append(processor.apply_chat_template(row["messages"], tokenize=False))
            images += [Image.open(p).convert("RGB") for p in row["images"]]
            audio += [soundfile.read(p["path"], dtype="float32")[0]
                      for m in row["messages"] for p in m["content"] if p["type"] == "audio"]
        batches.append({"text": texts, "images": images or None, "audio": audio or None})
    return batches


def measure(fn, items, memory_items: int = 25) -> tuple[float, float]:
    """(seconds over every item, peak MiB over the first `memory_items`): tracemalloc slows what it traces."""
    start = now()
    for item in items:
        fn(item)
    seconds = now() - start
    tracemalloc.start()
    for item in items[:memory_items]:
        fn(item)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def run(n_rows: int = 1000) -> list[Row]:
    processor = build_processor(SIZE)
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = make_rows(Path(tmp), n_rows)
        batches = processor_batches(rows, processor)
        clips = clip_batches(n_rows)
        padded_peer = with_padded_log_mel(processor)
        contenders = {
            "processor": (lambda b: processor(**b, padding=True, return_tensors="pt"), batches),
            "tokenizer": (lambda b: processor.tokenizer(b["text"], padding=True, return_tensors="pt"), batches),
            "processor, 1-5 s clips": (lambda b: processor(**b, padding=True, return_tensors="pt"), clips),
            "processor, 1-5 s clips, padded log-mel": (lambda b: padded_peer(**b, padding=True, return_tensors="pt"),
                                                       clips),
        }
        try:
            from mmmmodal.training.collate import MMMModalDataCollator

            collator = MMMModalDataCollator(processor)
            chunks = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
            long_chunks = [multi_turn(chunk) for chunk in chunks]
            contenders = {"collator": (collator, chunks), **contenders,
                          "collator, 4 turns": (collator, long_chunks),
                          "collator, 4 turns, transformers' mask walk": (
                              MMMModalDataCollator(with_base_mask_walk(processor)), long_chunks)}
        except ImportError:  # the training side is not there: benchmark the processor alone
            pass
        for fn, items in contenders.values():  # warm-up
            fn(items[0])
        speed = {}
        for name, (fn, items) in contenders.items():
            seconds, peak = measure(fn, items)
            speed[name] = n_rows / seconds
            rows_out.append(Row("processor", f"{name}, {n_rows} rows, batch {BATCH}",
                                f"{speed[name]:,.0f} samples/s; peak {peak:.0f} MiB"))
        ratio = speed["processor, 1-5 s clips"] / speed["processor, 1-5 s clips, padded log-mel"]
        rows_out.append(Row("processor", "1-5 s clips: log-mel over the real samples vs padded to 30 s", "", ratio,
                            ">= 5", ratio >= 5))
        peer = "collator, 4 turns, transformers' mask walk"
        if peer in speed:
            ratio = speed["collator, 4 turns"] / speed[peer]
            rows_out.append(Row("processor", "collator, 4 turns: list offsets vs transformers' mask walk", "",
                                ratio, "> 1", ratio > 1))
    return rows_out


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    return run(n_rows=200 if quick else 1000)
