"""Time one stage-2 training step of a demo checkpoint at batch 32 and 16 (notes/demo.md, round 5).

    python notes/scripts/step_time.py DIR/checkpoint      # DIR: the --out folder of `mmmmodal demo`

One torch thread (as the demo trains), batches of the stage-2 stream collated beforehand, so this is the model's
forward + backward + AdamW step alone. Prints seconds per step and milliseconds per row.
"""

import itertools
import sys
import time

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmmmodal.demo_collate import project_collator
from mmmmodal.demo_data import stream_rows


def main(checkpoint: str):
    torch.set_num_threads(1)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    model.set_training_stage(2)
    model.train()
    collator = project_collator(processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for batch_size in (32, 16):
        rows = list(itertools.islice(stream_rows(seed=3, batch_size=batch_size, caption_share=0.1), batch_size * 24))
        batches = [collator([{"messages": r["messages"], "images": r["images"]} for r in rows[i : i + batch_size]])
                   for i in range(0, len(rows), batch_size)]
        for k, batch in enumerate(batches):
            if k == 4:  # the first steps warm up
                start = time.time()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        per_step = (time.time() - start) / (len(batches) - 4)
        print(f"batch {batch_size}: {per_step:.3f} s/step, {1000 * per_step / batch_size:.2f} ms/row", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
