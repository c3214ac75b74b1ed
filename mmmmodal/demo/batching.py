"""The demo's batches. Stage 1: each caption row collated once and cached, batches of similar length in random
order. Stage 2: each batch rendered in one processor call, then packed padding-free (`PackingCollator`).

Stage 1 revisits its caption rows for several epochs on 2 CPU cores, where rendering the chat template, the
assistant mask and Whisper's log-mel features of a batch costs as much as the model's step. The rows never
change, so `CachingCollator` collates each row once (with `mmmmodal.training.collate.MMMModalDataCollator`) and builds
later batches from the cache with `mmmmodal.training.padding.pad_batch`, padded as the collator pads (right side: pad
token, attention 0, label -100). Keep it in a persistent dataloader worker so the cache survives epochs.
"""

import itertools
import json
import random
from dataclasses import dataclass, field

import torch
from torch.utils.data import Sampler

from mmmmodal.training.packing import pack_rows
from mmmmodal.training.padding import MEDIA_INPUTS, pad_batch

SEQUENCE_INPUTS = ("input_ids", "attention_mask", "labels")


@dataclass
class CachingCollator:
    """Collate each distinct row once with `inner`; batch cached rows with right padding."""

    inner: object
    pad_token_id: int
    cache: dict = field(default_factory=dict)

    def __call__(self, examples: list[dict]) -> dict:
        rows = []
        for example in examples:
            key = json.dumps([example.get("messages"), example.get("images")], sort_keys=True, default=str)
            if key not in self.cache:
                one = self.inner([{"messages": example.get("messages"), "images": example.get("images")}])
                self.cache[key] = {k: (v[0] if k in SEQUENCE_INPUTS else v) for k, v in one.items()}
            rows.append(self.cache[key])
        return pad_batch(rows, self.pad_token_id)


def split_rows(batch: dict, image_start_token_id: int, audio_start_token_id: int) -> list[dict]:
    """A right-padded batch (`MMMModalDataCollator`'s) back into one unit per conversation, as `pack_rows` takes
    them: its `input_ids` and `labels` without the padding, and its own media inputs in span order (one
    `pixel_values` row per image span, one `input_features` / `input_features_mask` row per audio span)."""
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1)
    if not bool((mask == (torch.arange(mask.shape[1]) < lengths[:, None])).all()):
        raise ValueError("split_rows: expected a right-padded batch (attention 1 then 0 on every row).")
    spans = {"pixel_values": (batch["input_ids"] == image_start_token_id).sum(1).tolist(),
             "input_features": (batch["input_ids"] == audio_start_token_id).sum(1).tolist()}
    spans["input_features_mask"] = spans["input_features"]
    starts = {}
    for key, counts in spans.items():
        if key in batch and len(batch[key]) != sum(counts):
            raise ValueError(f"split_rows: {len(batch[key])} {key} rows for {sum(counts)} media spans; every span "
                             "must have exactly one row (a clip longer than one window cannot be split this way).")
        starts[key] = [0, *itertools.accumulate(counts)]
    units = []
    for b, n in enumerate(lengths.tolist()):
        unit = {"input_ids": batch["input_ids"][b, :n], "labels": batch["labels"][b, :n], "name": f"row {b}"}
        for key in MEDIA_INPUTS:
            if key in batch and spans[key][b]:
                unit[key] = batch[key][starts[key][b] : starts[key][b + 1]]
        units.append(unit)
    return units


@dataclass
class PackingCollator:
    """Stage 2's packed batches: the batch rendered in one call of `inner` (an `MMMModalDataCollator`: chat
    template, media, assistant-only labels), then its conversations laid side by side with
    `mmmmodal.training.packing.pack_rows` (rows no wider than the longest conversation, restarting `position_ids`, no
    padding between conversations). The result equals `MMMModalPackingCollator`'s for the same rows (tested);
    that collator renders every conversation in a processor call of its own, which costs the demo's one
    collation worker more than a training step takes."""

    inner: object
    processor: object
    max_length: int = 4096

    def __call__(self, examples: list[dict]) -> dict:
        units = split_rows(self.inner(examples), self.processor.image_start_token_id,
                           self.processor.audio_start_token_id)
        return pack_rows(units, self.max_length, self.processor.tokenizer.pad_token_id)


def length_batches(items: list, length, batch_size: int) -> list[list]:
    """`items` sorted by `length(item)` (stable) and cut into consecutive batches of `batch_size` (the last may be
    short): one group of similar-length batches."""
    ordered = sorted(items, key=length)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


class ShuffledLengthBatches(Sampler):
    """Batches of similar length, in random order: less padding without a long-to-short drift within an epoch.

    Every epoch: shuffle the rows, cut them into groups of `group` batches, sort each group by length and split it
    into batches, then shuffle the order of all the batches. (transformers' `LengthGroupedSampler` instead walks
    each mega-batch of up to 50 batches from longest to shortest, so the model sees long conversations for a
    while, then short ones.) Yields row indices; each run of `batch_size` is one batch.
    """

    def __init__(self, lengths, batch_size: int, group: int = 8, seed: int = 0):
        self.lengths, self.batch_size, self.group, self.seed, self.epoch = list(lengths), batch_size, group, seed, 0

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), size):
            batches += length_batches(order[start : start + size], self.lengths.__getitem__, self.batch_size)
        full = [b for b in batches if len(b) == self.batch_size]
        rng.shuffle(full)
        rest = [i for b in batches if len(b) < self.batch_size for i in b]  # at most one short batch, kept last
        return iter([i for b in full for i in b] + rest)


__all__ = ["CachingCollator", "PackingCollator", "ShuffledLengthBatches", "length_batches", "split_rows"]
