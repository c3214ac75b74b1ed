"""Time the demo data worker's collation of stage-2 batches, and the assistant-mask walk inside it, with
`MMMModalProcessor`'s walk (offsets as lists) and with transformers' own (offsets as a tensor) (notes/demo.md,
round 7).

    python notes/scripts/collate_time.py DIR/checkpoint      # DIR: the --out folder of `mmmmodal demo`

One torch thread (a dataloader worker's setting); 15 batches of 32 rows of the stage-2 stream, generated once;
the two walks take turns, twice each, after a warm-up batch; the faster pass of each is printed.
"""

import itertools
import sys
import time
from pathlib import Path

import torch
from transformers import AutoProcessor

from mmmmodal.demo_collate import project_collator
from mmmmodal.demo_data import stream_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/ is not installed
from benchmarks.processor import with_base_mask_walk  # noqa: E402


def main(checkpoint: str, batch_size: int = 32, n_batches: int = 15):
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = list(itertools.islice(stream_rows(seed=3, batch_size=batch_size, caption_share=0.1),
                                 batch_size * (n_batches + 1)))
    generate = (time.perf_counter() - start) / (n_batches + 1)
    batches = [[{"messages": r["messages"], "images": r["images"]} for r in rows[i : i + batch_size]]
               for i in range(0, len(rows), batch_size)]
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    processors = {"list offsets (MMMModalProcessor)": processor,
                  "tensor offsets (transformers)": with_base_mask_walk(processor)}
    best = {}
    for name, processor in list(processors.items()) * 2:
        walk, spent = processor._adjust_assistant_masks_indices, [0.0]

        def timed_walk(*args, _walk=walk, **kwargs):
            t = time.perf_counter()
            out = _walk(*args, **kwargs)
            spent[0] += time.perf_counter() - t
            return out

        processor._adjust_assistant_masks_indices = timed_walk
        collator = project_collator(processor)
        collator(batches[0])  # warm-up
        spent[0], t = 0.0, time.perf_counter()
        for batch in batches[1:]:
            collator(batch)
        result = ((time.perf_counter() - t) / n_batches, spent[0] / n_batches)
        processor._adjust_assistant_masks_indices = walk
        if name not in best or result[0] < best[name][0]:
            best[name] = result
    print(f"generate: {generate:.3f} s per batch of {batch_size}")
    for name, (collate, walk) in best.items():
        print(f"collate, {name}: {collate:.3f} s per batch, of which the mask walk {walk:.3f} s")


if __name__ == "__main__":
    main(sys.argv[1])
