"""Time one stage-2 training step of a demo checkpoint at batch 32 and 16 (notes/demo.md, round 5).

    python notes/scripts/step_time.py DIR/checkpoint      # DIR: the --out folder of `mmmmodal demo`

One torch thread (as the demo trains), batches of the stage-2 stream collated beforehand, so this is the model's
forward + backward + AdamW step alone. Prints seconds per step and milliseconds per row.
"""

import sys
import time

import torch

from _stage2 import load_for_stage2, stage2_batches


def main(checkpoint: str):
    model, processor = load_for_stage2(checkpoint)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for batch_size in (32, 16):
        batches = stage2_batches(processor, batch_size, 24)
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
