"""Benchmark 8: labelled tokens/s of stage-2 training steps, padding-free packed rows vs TRL's padded vision collator.

The rows follow the paper's length mix: 1-4 user/assistant turns, 0-3 media per row (an image with probability 0.6,
else a clip, short 1-5 s or long 10-30 s alike), at the paper's token counts (SigLIP-384/16 images: 576 tokens,
real 30 s Whisper windows: 487 tokens for 30 s). Both contenders take the same batches of rows in TRL's vision form:
- `TRL padded`: `trl.trainer.sft_trainer.DataCollatorForVisionLanguageModeling` (what `trl sft` runs on vision
  rows: every row padded to the batch's longest);
- `packed`: `mmmmodal.training.packing.MMMModalPackingCollator` (sdpa: rows no wider than the batch's longest
  conversation, as few as the total needs).
A timed step is what `SFTTrainer` does per batch: collate (chat template, media from disk, features), then forward
through TRL's fused LM head, backward and an AdamW step on the stage-2 parameters (projectors + LLM). Both label the
same tokens (checked), so the ratio of labelled tokens/s is the ratio of step times. The LLM is small (CPU), the
towers smaller: they are frozen in stage 2 and cost the same to both.
"""

import random
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
from trl.trainer.utils import add_fused_lm_head

from .common import Row, Size, build_model, build_processor, time_side_by_side

SIZE = Size("packing", hidden=128, layers=4, heads=4, image_size=384, patch_size=16, audio_window_s=30)
QUICK = Size("packing-quick", hidden=32, layers=2, heads=2, image_size=64, patch_size=16, audio_window_s=30)
WORDS = "the red circle sits left of two blue squares and a high beep sounds three times after the low one".split()


def paper_mix_rows(folder: Path, n_rows: int, seed: int = 0) -> list[dict]:
    """Rows in TRL's vision form with the paper's mix of turns, media and clip lengths (media files in `folder`)."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    images, clips = [], {"short": [], "long": []}
    for i in range(6):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
        for kind, seconds in (("short", 1 + 4 * i / 5), ("long", 10 + 4 * i)):
            path = folder / f"{kind}{i}.wav"
            soundfile.write(path, (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32), 16000)
            clips[kind].append(str(path))

    def words(low, high):
        return " ".join(pick.choice(WORDS) for _ in range(pick.randint(low, high)))

    rows = []
    for _ in range(n_rows):
        turns = pick.randint(1, 4)
        media_turns = sorted(pick.randrange(turns) for _ in range(pick.randint(0, 3)))
        messages, row_images = [], []
        for turn in range(turns):
            parts = []
            for _ in range(media_turns.count(turn)):
                if pick.random() < 0.6:
                    parts.append({"type": "image"})
                    row_images.append(pick.choice(images))
                else:
                    parts.append({"type": "audio", "path": pick.choice(clips[pick.choice(("short", "long"))])})
            parts.append({"type": "text", "text": words(4, 16) + "?"})
            messages += [{"role": "user", "content": parts},
                         {"role": "assistant", "content": [{"type": "text", "text": words(3, 40) + "."}]}]
        rows.append({"messages": messages, "images": row_images})
    return rows


def run(size: Size = SIZE, batch_size: int = 8, n_batches: int = 4, repeats: int = 3, max_length: int = 4096,
        seed: int = 0) -> list[Row]:
    from mmmmodal.training.packing import MMMModalPackingCollator

    processor = build_processor(size)
    model = build_model(size, processor=processor, training_stage=2).train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer's compute_loss asks
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    collators = {
        "TRL padded": DataCollatorForVisionLanguageModeling(processor, max_length=max_length, assistant_only_loss=True),
        "packed": MMMModalPackingCollator(processor, max_length=max_length),
    }
    with tempfile.TemporaryDirectory() as tmp:
        rows = paper_mix_rows(Path(tmp), batch_size * n_batches, seed)
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        shapes = {name: [collator(batch) for batch in batches] for name, collator in collators.items()}

        def steps(collator):
            def call():
                for batch in batches:
                    model(**collator(batch), fused_lm_head=True).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
            return call

        times = time_side_by_side({name: steps(c) for name, c in collators.items()}, repeats=repeats)
    labelled = {name: sum(int((b["labels"][:, 1:] != -100).sum()) for b in out) for name, out in shapes.items()}
    if labelled["packed"] != labelled["TRL padded"]:
        raise RuntimeError(f"the two collators label different tokens: {labelled}")
    speed = {name: labelled[name] / times[name] for name in collators}
    padded_tokens = sum(b["input_ids"].numel() for b in shapes["TRL padded"])
    real_tokens = sum(int(b["attention_mask"].sum()) for b in shapes["TRL padded"])
    packed_tokens = sum(b["input_ids"].numel() for b in shapes["packed"])
    packed_rows = sum(b["input_ids"].shape[0] for b in shapes["packed"])
    ratio = speed["packed"] / speed["TRL padded"]
    return [Row("packing", f"stage-2 steps, paper's length mix, {n_batches} batches of {batch_size}, {size.name} LLM: "
                           "packed vs TRL's padded vision collator",
                f"{speed['packed']:,.0f} vs {speed['TRL padded']:,.0f} labelled tokens/s; tokens computed "
                f"{packed_tokens:,} ({packed_rows} rows) vs {padded_tokens:,} ({len(rows)} rows, "
                f"{1 - real_tokens / padded_tokens:.0%} padding)", ratio, ">= 1.5", ratio >= 1.5,
                extra={"labelled_tokens": labelled["packed"], "seconds": times, "tokens_computed":
                       {"packed": packed_tokens, "TRL padded": padded_tokens, "real": real_tokens}})]


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    if quick:
        return run(QUICK, batch_size=4, n_batches=2, repeats=repeats or 1)
    return run(repeats=repeats or 3)
