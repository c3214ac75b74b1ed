"""Padding-free packing: the conversations of a batch share rows, with no padding between them.

TRL's `SFTTrainer` refuses `packing` and `padding_free` for vision datasets, so every multimodal batch pays for its
padding. `MMMModalPackingCollator` removes it: it renders each conversation alone, exactly as
`MMMModalDataCollator` does (chat template, media, assistant-only labels, the same truncation at `max_length`), and
`pack_rows` lays the conversations side by side in as few rows as their total length needs. The batch keeps its
conversations (one step trains on the same conversations, with the same loss and gradients, as unpacked); only the
padding goes.

What makes one row hold several conversations correctly:
- `position_ids` restart at 0 at every conversation. With no `attention_mask` and no KV cache, transformers' masking
  (sdpa, eager, flex) reads the restarts as packed sequences (`masking_utils.find_packed_sequence_indices`) and builds
  block-diagonal causal attention: no token attends across a boundary, and every conversation sees the positions
  it has unpacked. `use_cache=False` comes with the batch, since a cache switches that detection off.
- `cu_seq_lens_q` / `cu_seq_lens_k` and `max_length_q` / `max_length_k` give the same boundaries over the flattened
  `rows x width` tokens, for flash-attention's varlen kernel (as TRL's padding-free collator gives them).
- The first label of every conversation is -100: otherwise the previous conversation's last token would predict it.
- Media spans are never cut: a conversation is placed whole. Media inputs are concatenated in the order their spans
  appear, row by row, left to right: the placeholder order the model fills them in.
- A row shorter than the batch's widest ends in a filler of pad tokens that is a sequence of its own (positions
  from 0, labels -100): it attends only to itself, so it needs no attention mask.

How wide rows get (`row_length`): a dense attention kernel (sdpa, eager) computes a row's full width squared, so by
default (`"longest"`) rows are no wider than the batch's longest conversation: each costs at most what one row of
the padded batch costs, and there are fewer of them. Flash-attention's varlen kernel costs the same whatever the
row width, so there `"max_length"` (rows of up to `max_length` tokens: fewest rows, least filler) is the better
choice.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from processing.rows import describe_row

from .collate import MMMModalDataCollator
from .padding import MEDIA_INPUTS

logger = logging.getLogger(__name__)

ROW_LENGTHS = ("longest", "max_length")
PACKED_KEYS = ("position_ids", "seq_lengths")  # ours, and TRL's `pack_dataset` output


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Which conversations share each row: indices into `lengths`, each row's in their given order.

    As few rows as the total needs (`ceil(sum / capacity)`), more only when a conversation fits in none of them;
    longest first, each into the least-filled row it fits, so that rows come out about equally long.
    """
    rows = [[] for _ in range(max(1, math.ceil(sum(lengths) / capacity)))]
    loads = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [r for r in range(len(rows)) if loads[r] + lengths[i] <= capacity]
        if not fits:
            rows.append([])
            loads.append(0)
            fits = [len(rows) - 1]
        r = min(fits, key=lambda r: loads[r])
        rows[r].append(i)
        loads[r] += lengths[i]
    return sorted(sorted(row) for row in rows if row)


def unit_positions(unit: dict) -> torch.Tensor:
    """A unit's `position_ids`: its own or its `seq_lengths`' (a packed row), else 0..n-1 (one conversation)."""
    if unit.get("position_ids") is not None:
        return torch.as_tensor(unit["position_ids"], dtype=torch.long).flatten()
    if unit.get("seq_lengths") is not None:
        return torch.cat([torch.arange(int(n)) for n in unit["seq_lengths"]] or [torch.arange(0)])
    return torch.arange(len(unit["input_ids"]))


def check_units(units: list[dict], positions: list[torch.Tensor], max_length: int) -> None:
    """Raise a ValueError naming the rows: a mix of packed and unpacked units, bad positions, or a unit too long.

    `positions`: each unit's `unit_positions`; a unit whose positions restart holds several sequences (is packed).
    """
    packed = [bool((p[1:] == 0).any()) for p in positions]
    if any(packed) and not all(packed):
        names = {kind: ", ".join(u["name"] for u, is_packed in zip(units, packed) if is_packed == kind)
                 for kind in (True, False)}
        raise ValueError(
            f"This batch mixes packed rows ({names[True]}: several conversations, positions restarting) with "
            f"unpacked ones ({names[False]}). A batch is packed or not, never both: pack the dataset's rows "
            "all the same way (or give conversations only, which the packing collator packs itself).")
    for unit, unit_pos in zip(units, positions):
        n = len(unit["input_ids"])
        steps = unit_pos[1:] - unit_pos[:-1]
        if len(unit_pos) != n or (n and unit_pos[0] != 0) or bool(((steps != 1) & (unit_pos[1:] != 0)).any()):
            raise ValueError(f"{unit['name']}: its position_ids must count 0, 1, 2, ... from the start of each "
                             f"sequence it holds (got {unit_pos.tolist()[:12]}... for {n} tokens).")
        if len(unit.get("labels", unit["input_ids"])) != n:
            raise ValueError(f"{unit['name']}: labels and input_ids differ in length.")
        if n > max_length:
            raise ValueError(
                f"{unit['name']} is {n} tokens long, more than the packing length max_length={max_length}: a packed "
                "row cannot be cut (it could cut a media span or a conversation). Raise max_length or repack it.")


def pack_rows(units: list[dict], max_length: int, pad_token_id: int, row_length: str = "longest",
              pad_to_multiple_of: int | None = None) -> dict:
    """Pack tokenized units (one conversation each, or packed rows already) into a padding-free batch.

    Args:
        units: dicts with 1-D `input_ids` and `labels`, optional `position_ids` (a row packed already), the media
            inputs of its spans (`pixel_values`, `input_features`, `input_features_mask`) and a `name` for errors.
        max_length: the packing length: no unit may be longer, no row is wider.
        pad_token_id: the filler's token.
        row_length: `"longest"` (rows no wider than the longest unit: for sdpa / eager) or `"max_length"`.
        pad_to_multiple_of: round the row width up to a multiple of this.

    Returns:
        `input_ids`, `labels`, `position_ids` of shape (rows, width), `cu_seq_lens_q` / `cu_seq_lens_k` (int32)
        and `max_length_q` / `max_length_k` over the flattened rows, the media inputs in span order, and
        `use_cache=False`. No `attention_mask`: the restarting positions are the mask.
    """
    if row_length not in ROW_LENGTHS:
        raise ValueError(f"row_length must be one of {ROW_LENGTHS}, got {row_length!r}.")
    positions = [unit_positions(unit) for unit in units]
    check_units(units, positions, max_length)
    lengths = [len(unit["input_ids"]) for unit in units]
    capacity = max(lengths) if row_length == "longest" else max_length
    plan = plan_rows(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in plan)
    if pad_to_multiple_of:
        width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
    rows = {"input_ids": [], "labels": [], "position_ids": []}
    for row in plan:
        parts = [units[i] for i in row]
        fill = width - sum(lengths[i] for i in row)
        rows["input_ids"].append(torch.cat([torch.as_tensor(u["input_ids"]).flatten() for u in parts]
                                           + [torch.full((fill,), pad_token_id)]))
        rows["labels"].append(torch.cat([torch.as_tensor(u.get("labels", u["input_ids"])).flatten() for u in parts]
                                        + [torch.full((fill,), -100)]))
        rows["position_ids"].append(torch.cat([positions[i] for i in row] + [torch.arange(fill)]))
    batch = {key: torch.stack(values).long() for key, values in rows.items()}
    batch["labels"][batch["position_ids"] == 0] = -100  # nothing predicts a sequence's first token
    flat = batch["position_ids"].flatten()
    cu_seq_lens = torch.cat([(flat == 0).nonzero().flatten(), torch.tensor([flat.numel()])]).to(torch.int32)
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
    batch["max_length_q"] = batch["max_length_k"] = int(cu_seq_lens.diff().max())
    for key in MEDIA_INPUTS:
        parts = [torch.as_tensor(units[i][key]) for row in plan for i in row if units[i].get(key) is not None]
        if parts:
            batch[key] = torch.cat(parts)
    batch["use_cache"] = False
    return batch


@dataclass
class MMMModalPackingCollator(MMMModalDataCollator):
    """`MMMModalDataCollator`, padding-free: the batch's conversations packed into shared rows (see `pack_rows`).

    Takes the same rows (any of the three forms; bad ones named, or skipped and counted), renders each alone with
    the same labels and the same truncation at `max_length` (which refuses to cut a media span, naming the row),
    and packs them. Rows already tokenized (`input_ids`, `labels`, their media inputs, and `position_ids` when
    packed already) are taken as they are; a batch that mixes packed and unpacked rows is refused.

    Args (beyond `MMMModalDataCollator`'s):
        max_length: required: the longest a conversation may be (longer ones are truncated, as unpacked) and the
            widest a row may be.
        row_length: `"longest"` (default: rows no wider than the batch's longest conversation, which bounds the
            attention cost of sdpa / eager) or `"max_length"` (fewest rows: for flash-attention's varlen kernel).

    Example:

    ```python
    >>> collator = MMMModalPackingCollator(processor, max_length=8192)
    >>> trainer = SFTTrainer(model, args=SFTConfig(..., remove_unused_columns=False), train_dataset=rows,
    ...                      processing_class=processor, data_collator=collator)
    ```
    """

    row_length: str = "longest"

    def __post_init__(self):
        if self.max_length is None:
            raise ValueError("Packing needs max_length: the longest a conversation may be, and the widest a packed "
                             "row may be (e.g. max_length=8192, the paper's context).")
        if self.row_length not in ROW_LENGTHS:
            raise ValueError(f"row_length must be one of {ROW_LENGTHS}, got {self.row_length!r}.")

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        units = [unit for unit in (self._unit(example, i) for i, example in enumerate(examples)) if unit is not None]
        if not units:
            raise ValueError(f"Every row of this batch is bad ({len(examples)} skipped); check the dataset.")
        return pack_rows(units, self.max_length, self.processor.tokenizer.pad_token_id, self.row_length,
                         self.pad_to_multiple_of)

    def _unit(self, example: dict, index: int) -> dict | None:
        """One example as a tokenized unit: rendered alone if it is a conversation, as it is if tokenized."""
        name = describe_row(example, index)
        if example.get("input_ids") is not None:
            unit = {key: example[key] for key in ("input_ids", "labels", *PACKED_KEYS, *MEDIA_INPUTS) if key in example}
            return {**unit, "name": name}
        if any(example.get(key) is not None for key in PACKED_KEYS):
            raise ValueError(f"{name} has {[k for k in PACKED_KEYS if k in example]} but no input_ids: a packed row "
                             "must come tokenized (input_ids, labels and its media inputs).")
        row = self._normalise(example)
        if row is None:
            return None
        try:
            batch = self._render([row])
        except ValueError as error:
            return self._skip(ValueError(f"Bad training {describe_row(row, index)}: {error}"))
        return {"input_ids": batch["input_ids"][0], "labels": batch["labels"][0], "name": name,
                **{key: batch[key] for key in MEDIA_INPUTS if key in batch}}
