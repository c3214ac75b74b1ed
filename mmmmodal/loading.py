"""Load a saved MMMModal checkpoint (local folder or hub id) the way a user would: through the auto classes."""

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


def load_checkpoint(checkpoint: str, device: str = "cpu", dtype: str = "auto"):
    """Return `(model, processor)` for `checkpoint`, loaded with `trust_remote_code=True`, in eval mode.

    Args:
        checkpoint (`str`): a folder written by `save_pretrained` or a hub repository id.
        device (`str`): where to put the model (`"cpu"`, `"cuda"`, `"cuda:1"`, ...).
        dtype (`str`): `"auto"` keeps the saved dtype; or `"float32"`, `"bfloat16"`, `"float16"`.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True, dtype=torch_dtype)
    model.to(device).eval()
    logger.info(f"Loaded {checkpoint} on {device} ({model.dtype}).")
    return model, processor


def context_limit(model) -> int | None:
    """Longest sequence (prompt + answer) the language model's positions allow, if it says."""
    return getattr(model.config.text_config, "max_position_embeddings", None)
