"""Data side of MMMModal: the paper's data pipelines, converters to training rows (`convert`, `rows`), and the
built-in synthetic shapes-and-beeps task. Never shipped with model weights.

The training collators live in `mmmmodal.training`; `processing.collate` and `processing.packing` are deprecated
aliases of them, kept for scripts that name the old paths."""
