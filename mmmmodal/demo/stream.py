"""The demo's stage-2 data: an endless stream of fresh conversations of the task's train split, easy ones first."""

import random
from dataclasses import replace

from datasets import IterableDataset

from processing.synthetic_task import alignment_row, iter_split, render_row

from .batching import length_batches
from .data import approximate_length, label_media, task_config


def stream_rows(seed: int, batch_size: int, group: int = 8, curriculum_rows: int = 0, caption_share: float = 0.0,
                boost: dict | None = None):
    """Fresh training rows forever (full rows: `messages`, `images`, `qtypes`, `answers`, `media`, ...), media in
    memory, in length-grouped order. See `stream_dataset` for the arguments."""
    if batch_size < 1 or group < 1:
        raise ValueError(f"Stream: expected batch_size >= 1 and group >= 1, found batch_size={batch_size}, "
                         f"group={group}.")
    cfg, rng = task_config(), random.Random(seed)
    if boost:
        unknown = set(boost) - set(cfg.weights)
        if unknown:
            raise ValueError(f"Stream: boost names unknown question types {sorted(unknown)}.")
        cfg = replace(cfg, weights={k: v * boost.get(k, 1.0) for k, v in cfg.weights.items()})
    simple = replace(cfg, max_images=1, max_audios=1)
    specs, simple_specs = iter_split(seed, "train", cfg), iter_split(seed + 7919, "train", simple)
    count = 0
    while True:
        rows = []
        for _ in range(batch_size * group):
            row_id = f"stream-{seed}-{count:08d}"
            caption = rng.random() < caption_share
            easy = not caption and curriculum_rows and rng.random() < 1.0 - count / curriculum_rows
            if easy:  # half captions, half chats with at most one picture and one clip
                caption = rng.random() < 0.5
            if caption:
                rows.append(label_media(alignment_row(rng, row_id, None, cfg)))
            else:
                rows.append(label_media(render_row(next(simple_specs if easy else specs), row_id, None, cfg)))
                rng.random()  # a draw that decides nothing: it keeps each seed's stream the one docs/demo.md measured
            count += 1
        batches = length_batches(rows, approximate_length, batch_size)
        rng.shuffle(batches)
        for batch in batches:
            yield from batch


def _trl_rows(**kwargs):
    for row in stream_rows(**kwargs):
        yield {"messages": row["messages"], "images": row["images"]}


def stream_dataset(seed: int, batch_size: int, group: int = 8, curriculum_rows: int = 0,
                   caption_share: float = 0.0, boost: dict | None = None) -> IterableDataset:
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
    - `boost`: question type -> factor on its weight in the training mix (the held-out mix stays the task's):
      more of the questions that learn slowest.
    - `group=1`: batches of random lengths, for packing (short conversations share a row).
    """
    return IterableDataset.from_generator(_trl_rows, gen_kwargs={
        "seed": seed, "batch_size": batch_size, "group": group, "curriculum_rows": curriculum_rows,
        "caption_share": caption_share, "boost": boost})


__all__ = ["stream_dataset", "stream_rows"]
