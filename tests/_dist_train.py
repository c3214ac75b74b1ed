"""Two-rank training where each rank sees one modality only (run by tests/test_training_distributed.py).

    torchrun --nproc_per_node 2 tests/_dist_train.py --checkpoint CKPT --rows ROWS.json --mode zero2 --out OUT.json

`--packed` builds the batches with `mmmmodal.training.packing.MMMModalPackingCollator` (a rank's conversations in one
padding-free row) instead of `MMMModalDataCollator`.

`ROWS.json` holds `{"0": [batch, batch, ...], "1": [...]}`: rank r trains on its own list of batches (rank 0 only
image rows, rank 1 only audio rows). `--mode` is `ddp` (torch DDP, `find_unused_parameters=False`, the strict
setting), `zero2` (examples/deepspeed/zero2_offload.json: ZeRO-2, optimizer on CPU) or `zero3`
(examples/deepspeed/zero3.json). Rank 0 writes the losses, what each rank's batches held, the trainable
parameters of both ranks after the last step, the wall time, the DeepSpeed C++ ops the run loaded, and each
batch's shape (rows and the sequences they hold).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmmmodal.training.collate import MMMModalDataCollator  # noqa: E402
from mmmmodal.training.packing import MMMModalPackingCollator  # noqa: E402

LR = 1e-3


def deepspeed_config(mode: str, batch_size: int) -> dict:
    name = {"zero2": "zero2_offload.json", "zero3": "zero3.json"}[mode]
    config = json.loads((REPO / "examples" / "deepspeed" / name).read_text())
    config.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=1, gradient_clipping=0.0,
                  train_batch_size=batch_size * dist.get_world_size(), bf16={"enabled": False},
                  fp16={"enabled": False})
    config["optimizer"] = {"type": "AdamW", "params": {"lr": LR, "betas": [0.9, 0.999], "eps": 1e-8,
                                                       "weight_decay": 0.0}}
    if mode == "zero3":
        # Without offload DeepSpeed picks its FusedAdam, which on CPU is a C++ op compiled on first use, silently,
        # inside deepspeed.initialize (about a minute here, several on a loaded machine): on a fresh machine that
        # build ran inside the test's timer. torch's AdamW needs no build, and it is the reference's optimizer.
        config["optimizer"]["params"]["torch_adam"] = True
    # The "auto" values that transformers fills in. On this CPU/gloo machine, ZeRO-3 with a tiny persistence
    # threshold (every small parameter gathered on use) did not finish even with identical batches on both ranks;
    # with the tiny model's parameters persistent it runs, and its gradient reduce-scatter is what is checked here.
    autos = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000,
             "stage3_param_persistence_threshold": 10_000_000}
    for key, value in list(config["zero_optimization"].items()):
        if value == "auto":
            config["zero_optimization"][key] = autos[key]
    return config


def load_model(checkpoint: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        checkpoint, trust_remote_code=True, training_stage=2, dtype=torch.float32
    )


def full_params(model, mode: str) -> dict:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mode == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            return {n: p.detach().clone().flatten().tolist() for n, p in named}
    return {n: p.detach().clone().flatten().tolist() for n, p in named}


def jit_ops() -> list:
    """Names of the DeepSpeed C++ ops this process loaded (each one is compiled on first use, then cached)."""
    if "deepspeed" not in sys.modules:
        return []
    from deepspeed.ops.op_builder.builder import OpBuilder

    return sorted(OpBuilder._loaded_ops)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--rows", required=True)
    parser.add_argument("--mode", choices=["ddp", "zero2", "zero3"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--packed", action="store_true", help="padding-free packed batches")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    from transformers import AutoProcessor

    if args.mode == "ddp":
        dist.init_process_group("gloo")
    else:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    batches = json.loads(Path(args.rows).read_text())[str(rank)]
    processor = AutoProcessor.from_pretrained(args.checkpoint, trust_remote_code=True)
    if args.packed:
        collator = MMMModalPackingCollator(processor, max_length=1024, row_length="max_length")
    else:
        collator = MMMModalDataCollator(processor)
    model = load_model(args.checkpoint)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    if args.mode == "ddp":
        engine = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    else:
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=trainable, config=deepspeed_config(args.mode, len(batches[0]))
        )

    start, losses, seen, shapes = time.time(), [], [], []
    for rows in batches:
        batch = collator(rows)
        seen.append(sorted(k for k in ("pixel_values", "input_features") if k in batch))
        sequences = len(batch["cu_seq_lens_q"]) - 1 if "cu_seq_lens_q" in batch else batch["input_ids"].shape[0]
        shapes.append([batch["input_ids"].shape[0], sequences])
        loss = engine(**batch).loss
        if args.mode == "ddp":
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            engine.backward(loss)
            engine.step()
        losses.append(loss.item())
    elapsed = time.time() - start

    params = full_params(model, args.mode)
    gathered = [None, None] if rank == 0 else None
    dist.gather_object({"params": params, "losses": losses, "seen": seen, "shapes": shapes}, gathered, dst=0)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"ranks": gathered, "seconds": elapsed, "mode": args.mode,
                                              "jit_ops": jit_ops()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
