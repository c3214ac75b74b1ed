"""Where a stage-2 training step of demo checkpoints goes: tokens per row, forward time of each part of the model
(vision tower, projectors, audio tower, language model), and the whole forward, backward and AdamW step with the
demo's loss on the labelled positions (notes/demo.md, round 7).

    python notes/scripts/part_time.py DIR/checkpoint [DIR2/checkpoint ...] [--attn eager]

One torch thread (as the demo trains), batch 32, 14 batches of the stage-2 stream collated beforehand by each
checkpoint's own processor (the stream's clips follow the current `task_config()`). Checkpoints take turns, twice
each, after 3 warm-up steps; the faster of the two passes is printed. `--attn eager` also times each checkpoint
with eager attention in every part.
"""

import argparse
import time
from collections import defaultdict

import torch

from _stage2 import load_for_stage2, stage2_batches
from mmmmodal.demo_loss import labelled_loss


def timed_pass(model, batches, warmup: int = 3) -> dict:
    parts, starts, totals = defaultdict(float), {}, defaultdict(float)
    hooks = []
    for name, module in model.model.named_children():
        hooks.append(module.register_forward_pre_hook(lambda m, i, n=name: starts.__setitem__(n, time.perf_counter())))
        hooks.append(module.register_forward_hook(
            lambda m, i, o, n=name: parts.__setitem__(n, parts[n] + time.perf_counter() - starts[n])))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    for k, batch in enumerate(batches):
        if k == warmup:
            parts.clear()
            totals.clear()
        t0 = time.perf_counter()
        loss = labelled_loss(model, batch)[0]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t3 = time.perf_counter()
        totals["forward"] += t1 - t0
        totals["backward"] += t2 - t1
        totals["optimizer"] += t3 - t2
    for hook in hooks:
        hook.remove()
    n = len(batches) - warmup
    out = {name: seconds / n for name, seconds in {**parts, **totals}.items()}
    out["step"] = out["forward"] + out["backward"] + out["optimizer"]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--attn", choices=["eager"], help="also time with this attention implementation")
    args = parser.parse_args()
    runs = {}
    for path in args.checkpoints:
        model, processor = load_for_stage2(path)
        batches = stage2_batches(processor, 32, 14)
        real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["input_ids"].shape[0] for b in batches)
        padded = sum(b["input_ids"].shape[1] for b in batches) / len(batches)
        print(f"{path}: {real:.1f} tokens per row ({padded:.1f} with padding)", flush=True)
        runs[path] = (model, batches, "sdpa")
        if args.attn:
            runs[f"{path} [{args.attn}]"] = (model, batches, args.attn)
    best = {}
    for name, (model, batches, attn) in list(runs.items()) * 2:
        model.set_attn_implementation(attn)
        result = timed_pass(model, batches)
        if name not in best or result["step"] < best[name]["step"]:
            best[name] = result
    for name, result in best.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
