"""The paper's stage 1 and stage 2 for the demo: TRL's `SFTTrainer`, stopped by the wall clock."""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import IterableDataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from mmmmodal.training.collate import MMMModalDataCollator

from .batching import CachingCollator, PackingCollator, ShuffledLengthBatches
from .loss import labelled_loss
from .settings import DemoSettings


@dataclass
class StageLog:
    """What one stage did: the logged (step, loss) pairs, the number of optimizer steps, how its batches were laid
    out (`"packed"` or `"padded"`), the tokens its steps computed (every position of every row, padding and
    filler included) and those that carried a label, and the seconds it trained."""

    loss: list
    steps: int
    batches: str = "padded"
    tokens: int = 0
    labelled: int = 0
    seconds: float = 0.0

    def throughput(self) -> str:
        """One line for whoever compares two runs: layout, steps, tokens computed and labelled, throughput."""
        minutes = max(self.seconds, 1e-9) / 60
        return (f"{self.batches}, {self.steps:,} steps ({self.steps / minutes:,.0f}/min), {self.tokens:,} tokens "
                f"computed, {self.labelled:,} labelled ({self.labelled / (minutes * 60):,.0f} labelled tokens/s)")


def lr_factor(step: int, progress: float, warmup_steps: int, decay_fraction: float = 1.0,
              floor: float = 0.05) -> float:
    """The learning rate's multiplier: linear warmup over `warmup_steps` steps, then constant, then a linear decay
    to `floor` over the last `decay_fraction` of the stage, by `progress` (the share of its wall-clock time spent)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decayed = max(progress - (1.0 - decay_fraction), 0.0) / decay_fraction
    return max(floor, 1.0 - decayed)


class StopAtDeadline(TrainerCallback):
    """Stops training on the wall clock; its progress bar counts seconds of the stage's budget, not steps."""

    def __init__(self, stage: int, start: float, end: float):
        self.stage, self.start, self.end, self.loss = stage, start, end, "-"

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=round(self.end - self.start), unit="s", desc=f"stage {self.stage}",
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}")

    def on_step_end(self, args, state, control, **kwargs):
        now = time.time()
        self.bar.n = min(round(now - self.start), self.bar.total)
        self.bar.set_postfix(step=state.global_step, loss=self.loss)
        if now >= self.end:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = f"{float(logs['loss']):.3f}"

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class DemoTrainer(SFTTrainer):
    """`SFTTrainer` with the demo's loss (labelled positions only) and, given `lengths`, length-grouped batches."""

    def __init__(self, *args, lengths=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = lengths
        self.tokens = self.labelled = 0

    def _get_train_sampler(self, train_dataset=None):
        if self.lengths is None:
            return super()._get_train_sampler(train_dataset)
        return ShuffledLengthBatches(self.lengths, self.args.per_device_train_batch_size, seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL's fused head scores every position off Triton devices; this scores the labelled ones alone
        loss, correct, count = labelled_loss(model, inputs, num_items_in_batch)
        self.tokens += inputs["input_ids"].numel()
        self.labelled += count
        self._metrics["train"]["mean_token_accuracy"].append(correct / max(count, 1))
        return (loss, None) if return_outputs else loss


def matmul_flops_per_second(size: int = 1024, repeats: int = 3) -> float:
    """How fast this process multiplies two `size` x `size` float32 matrices, at its torch thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def estimate_step_seconds(model, batch: dict, flops_per_second: float) -> float:
    """A lower bound on one stage-2 training step's time for `batch` (a collated batch): forward and backward cost
    6 FLOPs per language-model weight per token computed (the input embeddings are a lookup, not a product), plus
    the LM head at the labelled positions, at `flops_per_second`. The frozen towers and attention come on top."""
    llm = model.base_model.language_model
    weights = sum(p.numel() for name, p in llm.named_parameters() if "embed_tokens" not in name)
    labelled = int((batch["labels"] != -100).sum())
    flops = 6 * weights * batch["input_ids"].numel() + 6 * model.get_output_embeddings().weight.numel() * labelled
    return flops / flops_per_second


def _config(out: Path, stage: int, settings: DemoSettings, seed: int) -> SFTConfig:
    return SFTConfig(
        output_dir=str(out / "trainer" / f"stage{stage}"),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.max_steps,
        logging_steps=settings.log_every,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        assistant_only_loss=True,
        gradient_checkpointing=False,
        max_length=None,
        dataloader_num_workers=settings.workers,
        dataloader_persistent_workers=settings.workers > 0,  # the caching collator's cache lives in the worker
        remove_unused_columns=False,  # keeps the `length` column for the sampler; the collator reads only its keys
        seed=seed,
        disable_tqdm=True,  # a step-count bar means nothing when the clock stops training; ours counts seconds
    )


def train_stage(model, processor, dataset, stage: int, out: Path, settings: DemoSettings, lr: float,
                seconds: float, seed: int, packed: bool = False) -> StageLog:
    """One paper stage through TRL's `SFTTrainer`, stopped by the wall clock after `seconds`.

    `dataset`: a `datasets.Dataset` with a `length` column (rows collated once, cached, batched by length), or a
    `datasets.IterableDataset` of fresh rows (`packed`: each batch packed padding-free, see
    `batching.PackingCollator`; else padded, and the stream should come length-grouped).
    """
    model.set_training_stage(stage)
    start = time.time()
    end = start + max(seconds, 1.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    progress = lambda: (time.time() - start) / (end - start)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, progress(), settings.warmup_steps, settings.decay_fraction))
    collator = MMMModalDataCollator(processor, assistant_only_loss=True)
    streamed = isinstance(dataset, IterableDataset)
    if packed and not streamed:
        raise ValueError("train_stage: packed batches are built for the stream of fresh rows (stage 2).")
    if packed:
        collator = PackingCollator(collator, processor)
    elif not streamed:
        collator = CachingCollator(collator, processor.tokenizer.pad_token_id)
    lengths = dataset["length"] if not streamed and settings.group_by_length else None
    trainer = DemoTrainer(model=model, args=_config(out, stage, settings, seed), train_dataset=dataset,
                          processing_class=processor, data_collator=collator, optimizers=(optimizer, scheduler),
                          callbacks=[StopAtDeadline(stage, start, end)], lengths=lengths)
    trainer.remove_callback(PrinterCallback)  # the seconds bar shows step and loss instead of a dict per log
    trainer.train()
    model.eval()
    return StageLog([(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e], trainer.state.global_step,
                    "packed" if packed else "padded", trainer.tokens, trainer.labelled, time.time() - start)


__all__ = ["train_stage", "lr_factor", "StageLog", "DemoTrainer", "estimate_step_seconds", "matmul_flops_per_second"]
