"""Time one stage-2 training step of a demo checkpoint with TRL's fused LM head and with the demo's loss on the
labelled positions only (mmmmodal/demo_loss.py; notes/demo.md, round 6).

    python notes/scripts/loss_time.py DIR/checkpoint      # DIR: the --out folder of `mmmmodal demo`

One torch thread (as the demo trains), batch 32, batches of the stage-2 stream (no curriculum) collated
beforehand: the model's forward + backward + AdamW step alone. The two ways alternate, twice each, on the same
batches; prints seconds per step of each and their ratio.
"""

import sys
import time

import torch
from trl.trainer.utils import add_fused_lm_head

from _stage2 import load_for_stage2, stage2_batches
from mmmmodal.demo_loss import labelled_loss


def main(checkpoint: str, batch_size: int = 32, n_batches: int = 14):
    model, processor = load_for_stage2(checkpoint)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer's compute_loss calls
    batches = stage2_batches(processor, batch_size, n_batches)
    share = sum(int((b["labels"] != -100).sum()) for b in batches) / sum(b["labels"].numel() for b in batches)
    print(f"{share:.1%} of the positions carry a label", flush=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    ways = {"TRL fused head": lambda b: model(**b, fused_lm_head=True).loss,
            "labelled positions": lambda b: labelled_loss(model, b)[0]}
    times = {name: [] for name in ways}
    for name, loss_of in list(ways.items()) * 2:
        for k, batch in enumerate(batches):
            if k == 2:  # the first steps warm up
                start = time.time()
            loss_of(batch).backward()
            optimizer.step()
            optimizer.zero_grad()
        times[name].append((time.time() - start) / (len(batches) - 2))
    per_step = {name: min(t) for name, t in times.items()}
    for name, seconds in per_step.items():
        print(f"{name}: {seconds:.3f} s/step", flush=True)
    print(f"ratio fused / labelled: {per_step['TRL fused head'] / per_step['labelled positions']:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
