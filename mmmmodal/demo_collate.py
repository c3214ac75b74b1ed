"""Demo collator: the project's collator, run once per row, its output cached and padded into batches.

The demo revisits its training conversations for several epochs on 2 CPU cores, where rendering the chat template,
the assistant mask and Whisper's log-mel features of a batch costs as much as the model's step. The rows never
change, so each row is collated once (by `processing.collate.MMMModalDataCollator`, or TRL's vision collator where
that is not available) and later batches are assembled from the cache, padded exactly as the inner collator pads
(right side: pad token, attention 0, label -100). Keep it in a persistent dataloader worker so the cache survives
epochs.
"""

import json
from dataclasses import dataclass, field

import torch

SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")
MEDIA_KEYS = ("pixel_values", "input_features", "input_features_mask")


def project_collator(processor):
    """The training path's collator: processing/collate.py when present, else TRL's vision collator."""
    try:
        from processing.collate import MMMModalDataCollator
    except ImportError:
        from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

        return DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    return MMMModalDataCollator(processor, assistant_only_loss=True)


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
                one = self.inner([example])
                self.cache[key] = {k: (v[0] if k in SEQUENCE_KEYS else v) for k, v in one.items()}
            rows.append(self.cache[key])
        return self.pad(rows)

    def pad(self, rows: list[dict]) -> dict:
        length = max(row["input_ids"].shape[0] for row in rows)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": -100}
        batch = {}
        for key in SEQUENCE_KEYS:
            out = torch.full((len(rows), length), fill[key], dtype=rows[0][key].dtype)
            for i, row in enumerate(rows):
                out[i, : row[key].shape[0]] = row[key]
            batch[key] = out
        for key in MEDIA_KEYS:
            parts = [row[key] for row in rows if key in row]
            if parts:
                batch[key] = torch.cat(parts)
        return batch


__all__ = ["CachingCollator", "project_collator"]
