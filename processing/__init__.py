"""Data side of MMMModal: the paper's data pipelines, converters to training rows, and the
built-in synthetic shapes-and-beeps task. Never shipped with model weights."""
