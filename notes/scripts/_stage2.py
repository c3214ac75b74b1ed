"""What the timing scripts share: a demo checkpoint loaded for stage-2 training, and stage-2 stream batches."""

import itertools

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmmmodal.demo_collate import project_collator
from mmmmodal.demo_data import stream_rows


def load_for_stage2(checkpoint: str):
    """(model, processor): the checkpoint in training mode with stage 2's trainable parameters, one torch thread
    (as the demo trains)."""
    torch.set_num_threads(1)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model.set_training_stage(2)
    model.train()
    return model, processor


def stage2_batches(processor, batch_size: int, n_batches: int) -> list[dict]:
    """`n_batches` batches of the stage-2 stream (seed 3, 10% captions), collated beforehand."""
    collator = project_collator(processor)
    rows = list(itertools.islice(stream_rows(seed=3, batch_size=batch_size, caption_share=0.1), batch_size * n_batches))
    return [collator([{"messages": r["messages"], "images": r["images"]} for r in rows[i : i + batch_size]])
            for i in range(0, len(rows), batch_size)]
