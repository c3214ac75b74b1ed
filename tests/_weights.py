"""What a training run changed: compare two sets of weights by part of the model."""

from pathlib import Path

import torch
from safetensors.torch import load_file

# The embedding matrices, of which stage 1 may train a few rows (`config.train_token_ids`).
EMBEDDINGS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def part_of(name: str) -> str:
    return name.split(".")[1] if name.startswith("model.") else name.split(".")[0]


def weights(source) -> dict:
    """name -> tensor, from a checkpoint folder (its safetensors), a model, or such a dict itself."""
    if isinstance(source, dict):
        return source
    if isinstance(source, (str, Path)):
        return load_file(Path(source) / "model.safetensors")
    return {name: p.detach() for name, p in source.named_parameters()}


def changed_parts(before, after, token_rows=None) -> set:
    """The parts whose weights differ between `before` and `after` (folders or models).

    With `token_rows` (token ids): an embedding matrix whose changed rows are exactly those counts as "token rows"
    instead of its part; one that changed elsewhere counts as its part, as any other tensor does.
    """
    old, new = weights(before), weights(after)
    parts = set()
    for name, tensor in old.items():
        if torch.equal(tensor, new[name]):
            continue
        if token_rows and name in EMBEDDINGS:
            rows = set((tensor != new[name]).any(-1).nonzero().flatten().tolist())
            if rows == set(token_rows):
                parts.add("token rows")
                continue
        parts.add(part_of(name))
    return parts
