"""Training: the collators `SFTTrainer` and `examples/sft.py` use, and the padding they share.

- `mmmmodal.training.collate`: `MMMModalDataCollator`, TRL's vision collator for any row form, assistant-only labels.
- `mmmmodal.training.packing`: `MMMModalPackingCollator`, the same conversations packed side by side, no padding.
- `mmmmodal.training.padding`: `pad_batch`, torch only (the server uses it without importing TRL).

Rows are turned into TRL's vision form by `processing.rows` (the data side). Nothing is imported here, so that
`mmmmodal.training.padding` stays light.
"""
