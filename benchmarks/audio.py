"""Benchmark 3: LLM tokens and time per audio clip, trimmed to the clip (ours) vs the fixed 487 tokens per window.

The audio tower is a Whisper encoder with real-sized windows (30 s -> 3000 mel frames -> 1500 encoder frames,
projector kernel 40, stride 3) but tiny width. Our processor gives a clip `(frames - 40) // 3 + 1` tokens from its
valid frames only; the paper's reference scheme pads every clip to a full window, 487 tokens per 30 s. The time is
one forward pass (Whisper + projector + LLM prefill) over a one-clip prompt, the same model for both schemes.
"""

import numpy as np
import torch

from .common import SIZES, Row, Size, build_model, build_processor, time_side_by_side

FIXED_TOKENS_PER_WINDOW = 487
DURATIONS = (1, 5, 15, 30, 90)
QUESTION = "What is said in audio 1?"


def clip(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * rate)).astype(np.float32) * 0.1


def prompts(processor, seconds: float) -> tuple[dict, dict, int]:
    """Model inputs for one clip: trimmed (ours) and fixed-size (every window full); and the window count."""
    ours = processor(text=f"<audio>{QUESTION}", audio=[clip(seconds)], return_tensors="pt")
    windows = ours["input_features"].shape[0]
    question = processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    span = [processor.audio_start_token_id] + [processor.audio_token_id] * FIXED_TOKENS_PER_WINDOW * windows
    ids = processor.tokenizer("", add_special_tokens=True)["input_ids"] + span + [processor.audio_end_token_id] + question
    fixed = {"input_ids": torch.tensor([ids]), "input_features": ours["input_features"]}  # mask None: full windows
    ours = {k: ours[k] for k in ("input_ids", "input_features", "input_features_mask")}
    return ours, fixed, windows


def count_tokens(processor, seconds: float) -> int:
    ids = processor(text="<audio>", audio=[clip(seconds)])["input_ids"][0]
    return ids.count(processor.audio_token_id)


def run(size: Size, durations=DURATIONS, repeats: int = 3) -> list[Row]:
    processor = build_processor(size)
    model = build_model(size, vision=False, processor=processor)
    rows, tokens = [], {}
    for seconds in durations:
        ours, fixed, windows = prompts(processor, seconds)
        tokens[seconds] = int((ours["input_ids"] == processor.audio_token_id).sum())
        fixed_tokens = FIXED_TOKENS_PER_WINDOW * windows

        def forward(inputs):
            def call():
                with torch.inference_mode():
                    model(**inputs, logits_to_keep=1)
            return call

        times = time_side_by_side({"ours": forward(ours), "fixed": forward(fixed)}, repeats=repeats)
        rows.append(Row(
            "audio", f"{seconds:g} s clip ({windows} window{'s' if windows > 1 else ''})",
            f"{tokens[seconds]} vs {fixed_tokens} tokens; {times['ours'] * 1e3:.0f} vs {times['fixed'] * 1e3:.0f} ms",
            times["fixed"] / times["ours"], "(time saved x)",
        ))
    if 5 in tokens and 30 in tokens:
        share = tokens[5] / tokens[30]
        rows.append(Row("audio", "tokens(5 s) / tokens(30 s)", f"{tokens[5]} / {tokens[30]}", share,
                        "<= ~1/5 (0.2)", share <= 0.21))
    return rows


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    size = Size("audio", hidden=128, layers=4, heads=4, audio_hidden=64, audio_layers=2)
    durations = (1, 5, 30) if quick else DURATIONS
    return run(size, durations, repeats=repeats or (2 if quick else 3))
