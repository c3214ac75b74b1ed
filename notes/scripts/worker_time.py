"""Time what the demo's data worker does per stage-2 batch: generate 32 fresh conversations of the stream (media in
memory) and collate them (notes/demo.md, round 6).

    python notes/scripts/worker_time.py DIR/checkpoint      # DIR: the --out folder of `mmmmodal demo`

One process, one torch thread (a dataloader worker's setting); the first 3 batches warm up, the next 15 are timed.
"""

import sys
import time

import torch
from transformers import AutoProcessor

from mmmmodal.demo_collate import project_collator
from mmmmodal.demo_data import stream_dataset


def main(checkpoint: str, batch_size: int = 32, warmup: int = 3, timed: int = 15):
    torch.set_num_threads(1)
    collator = project_collator(AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True))
    rows = iter(stream_dataset(3, batch_size, caption_share=0.1))
    for k in range(warmup + timed):
        if k == warmup:
            start = time.time()
        collator([{"messages": r["messages"], "images": r["images"]} for r in (next(rows) for _ in range(batch_size))])
    print(f"{(time.time() - start) / timed:.3f} s per batch of {batch_size} (generate + collate)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
