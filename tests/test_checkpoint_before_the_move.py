"""A checkpoint saved before composition and template extension left the shipped files still loads, renders the
same ids and generates the same tokens, and composing from the same parts today gives that same checkpoint.

`tests/data/checkpoint_before_the_move/` is a tiny checkpoint (its weights, tokenizer, chat template and the three
code files as they were) saved by main at 32c22b2, the commit before the move, with `expected.json`: what that
code rendered and generated for `conversation()`. It was written with this file's own `write`:

    git archive 32c22b2 | tar -x -C /tmp/before && PYTHONPATH=/tmp/before python tests/test_checkpoint_before_the_move.py
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CHECKPOINT = Path(__file__).resolve().parent / "data" / "checkpoint_before_the_move"
SIZES = dict(hidden_size=16, layers=1, heads=2)
SEED = 5


def conversation() -> list[dict]:
    """Two turns with two images and a clip, and an answer between them."""
    red, blue = Image.new("RGB", (40, 24), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 40, 220))
    beep = (0.3 * np.sin(np.arange(24000) * 2 * np.pi * 440 / 16000)).astype(np.float32)  # 1.5 s
    return [
        {"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "What is in picture 1?"},
                                     {"type": "audio", "audio": beep}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
        {"role": "user", "content": [{"type": "text", "text": "And picture 2?"}, {"type": "image", "image": blue}]},
    ]


def outputs(model, processor) -> dict:
    """Rendered ids, assistant mask and media inputs of `conversation()`, and 8 greedy tokens after it."""
    import torch

    trained = processor.apply_chat_template(conversation()[:2], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, return_tensors="pt")
    prompt = processor.apply_chat_template(conversation(), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    return {"ids": trained["input_ids"][0].tolist(), "assistant_masks": trained["assistant_masks"][0].tolist(),
            "prompt_ids": prompt["input_ids"][0].tolist(), "tokens": tokens[0, prompt["input_ids"].shape[1]:].tolist(),
            "pixel_values": prompt["pixel_values"], "input_features": prompt["input_features"]}


def write(out: Path = CHECKPOINT):
    """Save the tiny checkpoint and what the code of this checkout renders and generates for it."""
    import tempfile

    from mmmmodal.tiny import TinySizes, build_tiny_checkpoint  # main's home of it at 32c22b2

    with tempfile.TemporaryDirectory() as tmp:
        model, processor, path = build_tiny_checkpoint(tmp, sizes=TinySizes(**SIZES), seed=SEED)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(path, out)
    found = outputs(model, processor)
    recorded = {key: found[key] for key in ("ids", "assistant_masks", "prompt_ids", "tokens")}
    (out / "expected.json").write_text(json.dumps(recorded) + "\n")


def _load(remote_code: bool):
    if remote_code:  # the checkpoint's own files: the code as it was before the move
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return (AutoModelForImageTextToText.from_pretrained(CHECKPOINT, trust_remote_code=True).eval(),
                AutoProcessor.from_pretrained(CHECKPOINT, trust_remote_code=True))
    from modeling_mmmmodal import MMMModalForConditionalGeneration, MMMModalProcessor  # this checkout's

    return MMMModalForConditionalGeneration.from_pretrained(CHECKPOINT).eval(), MMMModalProcessor.from_pretrained(CHECKPOINT)


def test_the_checkpoint_holds_the_code_from_before_the_move():
    shipped = (CHECKPOINT / "processing_mmmmodal.py").read_text()
    assert "def extend_chat_template" in shipped and "def from_parts" in shipped
    assert "def from_parts" in (CHECKPOINT / "modeling_mmmmodal.py").read_text()


def test_a_checkpoint_saved_before_the_move_renders_and_generates_as_it_did():
    import torch

    expected = json.loads((CHECKPOINT / "expected.json").read_text())
    old, new = outputs(*_load(remote_code=True)), outputs(*_load(remote_code=False))
    assert sum(expected["assistant_masks"]) > 0 and len(expected["tokens"]) == 8
    for key in expected:
        assert new[key] == old[key] == expected[key], key
    for key in ("pixel_values", "input_features"):
        assert torch.equal(new[key], old[key]), key


def test_composing_today_gives_the_checkpoint_saved_before_the_move(tmp_path):
    """The composition API moved to `mmmmodal.compose`: same template, tokens, config, generation config and
    weights from the same tiny parts."""
    import torch
    from safetensors.torch import load_file

    from mmmmodal.build import build_tiny_checkpoint
    from mmmmodal.tiny import TinySizes

    model, processor, path = build_tiny_checkpoint(tmp_path, sizes=TinySizes(**SIZES), seed=SEED)
    assert processor.chat_template == (CHECKPOINT / "chat_template.jinja").read_text()
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "generation_config.json"):
        assert json.loads((path / name).read_text()) == json.loads((CHECKPOINT / name).read_text()), name
    config, saved = (json.loads((folder / "config.json").read_text()) for folder in (path, CHECKPOINT))
    assert config == saved
    ours, theirs = load_file(path / "model.safetensors"), load_file(CHECKPOINT / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    # The rows of tokens the composition adds are drawn by transformers' mean resizing, a sample through the
    # Cholesky factor of the old rows' covariance, whose last bits follow the BLAS build (1e-10 apart on two
    # machines with the same packages). Those rows match to 1e-6; every other value matches exactly.
    old_vocab = json.loads((path.parent / "build" / "parts" / "text" / "config.json").read_text())["vocab_size"]
    for name in ours:
        if ours[name].shape[:1] == (config["text_config"]["vocab_size"],) and ours[name].shape[0] > old_vocab:
            assert torch.equal(ours[name][:old_vocab], theirs[name][:old_vocab]), name
            torch.testing.assert_close(ours[name][old_vocab:], theirs[name][old_vocab:], rtol=0, atol=1e-6)
        else:
            assert torch.equal(ours[name], theirs[name]), name


if __name__ == "__main__":
    sys.exit(write())
