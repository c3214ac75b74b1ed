"""Padding single-sample rows into one batch, with torch alone: the server, the demo's cached batches and the
collators share it, and importing it pulls in no TRL."""

import torch
from torch.nn.utils.rnn import pad_sequence

MEDIA_INPUTS = ("pixel_values", "input_features", "input_features_mask")  # the model's media inputs, batched by rows


def pad_batch(rows: list[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """One batch from single-sample rows: the one padding helper for batches built outside the processor.

    Each row holds 1-D `input_ids` (and optionally `attention_mask`, `labels`) and its media inputs. Sequences are
    padded to the longest on `padding_side` (`input_ids` with `pad_token_id`, `attention_mask` with 0, `labels` with
    -100; a row without an attention mask attends to all its ids); media tensors are concatenated in row order.
    """
    rows = [{"attention_mask": torch.ones_like(row["input_ids"]), **row} for row in rows]
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": -100}
    batch = {key: pad_sequence([row[key] for row in rows], batch_first=True, padding_value=value,
                               padding_side=padding_side) for key, value in fill.items() if key in rows[0]}
    for key in MEDIA_INPUTS:
        parts = [row[key] for row in rows if key in row]
        if parts:
            batch[key] = torch.cat(parts)
    return batch
