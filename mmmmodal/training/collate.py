"""Training rows in, padded batches out: `MMMModalDataCollator`.

It is TRL's `DataCollatorForVisionLanguageModeling` with three additions: it accepts all three row forms
(`processing.rows.to_training_row`), it names the row (and can skip it, counted) when a row is bad, and it never
leaves a label on a span or media token. `trl sft` needs none of it: rows already in TRL's vision form make TRL pick
its own vision collator, which renders our processor's chat template; `--assistant_only_loss true` then labels
exactly the assistant turns (span tokens get zero-width offsets in the processor, so the assistant mask never covers
them).
"""

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from processing.rows import describe_row, to_training_row

logger = logging.getLogger(__name__)

SPAN_TOKENS = ("image_token_id", "image_start_token_id", "image_end_token_id",
               "audio_token_id", "audio_start_token_id", "audio_end_token_id")


@dataclass
class MMMModalDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision collator for MMMModal: any row form in; batch with media, masks and assistant-only labels out.

    Output: `input_ids`, `attention_mask`, `labels` (-100 on system / user turns, padding, span and media tokens),
    and `pixel_values` / `input_features` / `input_features_mask` when the batch has images / audio.

    Args (beyond TRL's):
        base_dir: folder relative media paths start from.
        skip_bad_rows: drop a bad row (counted in `self.skipped`, with a warning) instead of raising.
        language: `"en"` or `"ms"`: which text of a paper-format turn to train on.

    Example:

    ```python
    >>> collator = MMMModalDataCollator(processor, max_length=2048)
    >>> trainer = SFTTrainer(model, args=SFTConfig(..., remove_unused_columns=False), train_dataset=rows,
    ...                      processing_class=processor, data_collator=collator)
    ```
    """

    assistant_only_loss: bool = True
    base_dir: str | None = None
    skip_bad_rows: bool = False
    language: str = "en"
    skipped: int = field(default=0, init=False)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [row for row in (self._normalise(example) for example in examples) if row is not None]
        if not rows:
            raise ValueError(f"Every row of this batch is bad ({len(examples)} skipped); check the dataset.")
        try:
            return self._render(rows)
        except ValueError:
            # The processor names a row by its place in the batch; find it and name it properly (or skip it).
            rows = [row for row in rows if self._check_alone(row)]
            if not rows:
                raise ValueError(f"Every row of this batch is bad ({len(examples)} skipped); check the dataset.")
            return self._render(rows)

    def _render(self, rows: list[dict]) -> dict:
        """Rows in TRL's vision form -> TRL's padded batch, with no label on a span or media token."""
        batch = super().torch_call([{"messages": r["messages"], "images": r["images"]} for r in rows])
        batch["labels"][self._media_mask(batch["input_ids"])] = -100
        return batch

    def _normalise(self, example):
        try:
            return to_training_row(example, base_dir=self.base_dir, language=self.language)
        except ValueError as error:
            return self._skip(error)

    def _check_alone(self, row) -> bool:
        try:
            self._render([row])
            return True
        except ValueError as error:
            self._skip(ValueError(f"Bad training {describe_row(row)}: {error}"))
            return False

    def _skip(self, error: ValueError):
        if not self.skip_bad_rows:
            raise error
        self.skipped += 1
        logger.warning("Skipping a bad row (%d skipped so far): %s", self.skipped, error)
        return None

    def _media_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = [getattr(self.processor, name, None) for name in SPAN_TOKENS]
        return torch.isin(input_ids, torch.tensor([i for i in ids if i is not None], dtype=input_ids.dtype))
