"""One tiny stage-2 training run, launched by `benchmarks.training` (alone or under `accelerate launch`).

Builds the tiny model, trains it with `transformers.Trainer` and `mmmmodal.training.collate.MMMModalDataCollator` on
synthetic rows for a few steps, and writes the steady-state samples/s (steps after the first two) as JSON.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments


class StepClock(TrainerCallback):
    def __init__(self, skip: int = 2):
        self.skip, self.start, self.steps = skip, None, 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.skip:
            self.start = time.perf_counter()
        elif state.global_step > self.skip:
            self.steps += 1
            self.elapsed = time.perf_counter() - self.start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from mmmmodal.build import build_tiny
    from mmmmodal.training.collate import MMMModalDataCollator

    from .processor import make_rows

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = build_tiny(Path(tmp) / "model", training_stage=2)
        rows = make_rows(Path(tmp), args.batch * 2 * (args.steps + 2), seed=1)
        training_args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"), per_device_train_batch_size=args.batch, max_steps=args.steps,
            learning_rate=2e-5, lr_scheduler_type="constant", logging_steps=1000, save_strategy="no", report_to=[],
            remove_unused_columns=False, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        )
        clock = StepClock()
        trainer = Trainer(model=model, args=training_args, train_dataset=rows,
                          data_collator=MMMModalDataCollator(processor), callbacks=[clock])
        trainer.train()
        world = trainer.args.world_size
        if trainer.is_world_process_zero():
            samples = clock.steps * args.batch * world
            Path(args.out).write_text(json.dumps({"samples_per_s": samples / clock.elapsed, "world": world,
                                                  "steps": clock.steps, "seconds": clock.elapsed}))


if __name__ == "__main__":
    main()
