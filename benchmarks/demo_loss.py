"""Benchmark 6: a stage-2 training step of the demo's model: its loss on the labelled positions vs TRL's fused head,
and its packed batches vs the padded, length-grouped ones it trained on before.

`mmmmodal demo` trains through TRL's `SFTTrainer` but with its own `compute_loss` (mmmmodal/demo/loss.py): it
projects only the positions that carry a label through the LM head. TRL's fused LM head (`add_fused_lm_head`, what
`SFTTrainer` scores with) projects every position off Triton devices, to keep tile shapes fixed. Both give the same
loss. The model is the demo's (its sizes, tiny parts built offline, random weights: the timing does not depend on
what was learned), in stage 2 (projectors + LLM train); the batches are the demo's stage-2 stream, collated
beforehand, so a step is the model's forward, backward and AdamW step alone. The ratio is TRL's step time over ours.

The second row (`run_packed`) takes the same rows of the stream two ways, as `mmmmodal demo` and `mmmmodal demo
--padded` batch them: packed (batches in stream order, mixed lengths, `batching.PackingCollator`) and padded
(length-grouped batches, `MMMModalDataCollator`). Both batchings hold the same conversations, so they label the
same tokens (checked); the ratio is packed over padded labelled tokens/s (= steps per minute). Collation runs in
the demo's worker process, beside the step, so it is timed apart and reported, not added.
"""

import itertools
import tempfile
from pathlib import Path

import torch
from trl.trainer.utils import add_fused_lm_head

from .common import Row, time_side_by_side


def demo_model_and_batches(folder: Path, batch_size: int, n_batches: int, seed: int = 3):
    """The demo's model in stage 2 (training mode) and `n_batches` collated batches of its stage-2 stream."""
    from mmmmodal.demo.run import build_model
    from mmmmodal.demo.settings import DemoArguments, DemoSettings
    from mmmmodal.demo.stream import stream_rows
    from mmmmodal.training.collate import MMMModalDataCollator

    model, processor, _, _ = build_model(folder, DemoSettings(), DemoArguments(str(folder), seed=seed))
    model.set_training_stage(2)
    model.train()
    collator = MMMModalDataCollator(processor, assistant_only_loss=True)
    rows = itertools.islice(stream_rows(seed=seed, batch_size=batch_size, caption_share=0.1), batch_size * n_batches)
    rows = [{"messages": r["messages"], "images": r["images"]} for r in rows]
    return model, [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def run(batch_size: int = 32, n_batches: int = 6, repeats: int = 3) -> list[Row]:
    from mmmmodal.demo.loss import labelled_loss

    with tempfile.TemporaryDirectory() as tmp:
        model, batches = demo_model_and_batches(Path(tmp), batch_size, n_batches)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer's compute_loss asks
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    losses = {"labelled positions": lambda b: labelled_loss(model, b)[0],
              "TRL fused head": lambda b: model(**b, fused_lm_head=True).loss}

    def steps(loss_of):
        def call():
            for batch in batches:
                loss_of(batch).backward()
                optimizer.step()
                optimizer.zero_grad()
        return call

    with torch.no_grad():  # both score the same positions the same way
        values = {name: float(loss_of(batches[0])) for name, loss_of in losses.items()}
    times = time_side_by_side({name: steps(loss_of) for name, loss_of in losses.items()}, repeats=repeats)
    ours, trl = (times[name] / len(batches) for name in losses)
    share = sum(int((b["labels"] != -100).sum()) for b in batches) / sum(b["labels"].numel() for b in batches)
    ratio = trl / ours
    return [Row("demo_loss", f"demo stage-2 step, batch {batch_size}: labelled positions vs TRL's fused head",
                f"{ours * 1e3:.0f} vs {trl * 1e3:.0f} ms/step; {share:.1%} of positions labelled", ratio, "> 1",
                ratio > 1, extra={"loss": values})]


def run_packed(batch_size: int = 32, n_batches: int = 8, repeats: int = 3) -> list[Row]:
    from mmmmodal.demo.batching import PackingCollator, length_batches
    from mmmmodal.demo.data import approximate_length
    from mmmmodal.demo.loss import labelled_loss
    from mmmmodal.demo.run import build_model
    from mmmmodal.demo.settings import DemoArguments, DemoSettings
    from mmmmodal.demo.stream import stream_rows
    from mmmmodal.training.collate import MMMModalDataCollator

    with tempfile.TemporaryDirectory() as tmp:
        model, processor, _, _ = build_model(Path(tmp), DemoSettings(), DemoArguments(tmp, seed=3))
    model.set_training_stage(2)
    model.train()
    rows = list(itertools.islice(stream_rows(seed=3, batch_size=batch_size, group=1, caption_share=0.1),
                                 batch_size * n_batches))
    rows = [{"messages": r["messages"], "images": r["images"], "length": approximate_length(r)} for r in rows]
    padded = MMMModalDataCollator(processor, assistant_only_loss=True)
    batchings = {"packed": (PackingCollator(padded, processor),  # stream order: mixed lengths
                            [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]),
                 "padded": (padded, length_batches(rows, lambda r: r["length"], batch_size))}  # length-grouped
    batches, collate = {}, {}
    for name, (collator, groups) in batchings.items():
        groups = [[{"messages": r["messages"], "images": r["images"]} for r in group] for group in groups]
        collate[name] = time_side_by_side({name: lambda: [collator(g) for g in groups]}, repeats=1, warmup=0)[name]
        batches[name] = [collator(g) for g in groups]
    labelled = {name: sum(int((b["labels"][:, 1:] != -100).sum()) for b in out) for name, out in batches.items()}
    if labelled["packed"] != labelled["padded"]:
        raise RuntimeError(f"packed and padded batches label different tokens: {labelled}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def steps(name):
        def call():
            for batch in batches[name]:
                labelled_loss(model, batch)[0].backward()
                optimizer.step()
                optimizer.zero_grad()
        return call

    times = time_side_by_side({name: steps(name) for name in batches}, repeats=repeats)
    per_minute = {name: 60 * n_batches / times[name] for name in batches}
    speed = {name: labelled[name] / times[name] for name in batches}
    tokens = {name: sum(b["input_ids"].numel() for b in out) for name, out in batches.items()}
    ratio = speed["packed"] / speed["padded"]
    return [Row("demo_loss", f"demo stage-2 steps, {n_batches} batches of {batch_size} from its stream: packed vs "
                             "padded, length-grouped",
                f"{per_minute['packed']:,.0f} vs {per_minute['padded']:,.0f} steps/min, {speed['packed']:,.0f} vs "
                f"{speed['padded']:,.0f} labelled tokens/s; tokens computed {tokens['packed']:,} vs "
                f"{tokens['padded']:,}; collation {1e3 * collate['packed'] / n_batches:.0f} vs "
                f"{1e3 * collate['padded'] / n_batches:.0f} ms/batch (in the worker)", ratio, "> 1", ratio > 1,
                extra={"labelled_tokens": labelled["packed"], "tokens_computed": tokens, "seconds": times,
                       "collate_seconds": collate, "steps_per_minute": per_minute})]


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    if quick:
        return (run(batch_size=8, n_batches=3, repeats=repeats or 1)
                + run_packed(batch_size=8, n_batches=3, repeats=repeats or 1))
    return run(repeats=repeats or 3) + run_packed(repeats=repeats or 3)
