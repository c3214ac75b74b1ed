# Copyright 2026 The MMMModal authors. Licensed under the Apache License, Version 2.0.
# /// script
# dependencies = [
#     "mmmmodal",
#     "trl==1.16.*",
#     "peft==0.21.*",
#     "deepspeed==0.19.8",  # only for a DeepSpeed accelerate config: the package's `deepspeed` extra
# ]
# ///
"""Stage 1 or stage 2 of MMMModal with TRL's SFTTrainer, on rows in any of the three forms (see processing.rows).

`trl sft` does the same on rows already in TRL's vision form; this script also takes chat-message rows and the
paper's records (checked, bad rows named or skipped), and adds `--training_stage` and LoRA defaults.

Stage 1 (projectors only), then stage 2 (projectors + LLM) from stage 1's checkpoint:

```bash
python examples/sft.py --model_name_or_path checkpoints/base --dataset_name data/alignment \
    --training_stage 1 --learning_rate 1e-3 --output_dir checkpoints/stage1

accelerate launch --config_file examples/accelerate/zero2_offload.yaml examples/sft.py \
    --model_name_or_path checkpoints/stage1 --dataset_name data/instructions \
    --training_stage 2 --learning_rate 2e-5 --lr_scheduler_type constant --per_device_train_batch_size 12 \
    --max_length 8192 --bf16 --output_dir checkpoints/stage2 --push_to_hub
```

Add `--use_peft` for LoRA on the LLM (projectors fully trained and saved with the adapter), and
`--pack_conversations true` for padding-free packing: each batch's conversations share rows of at most
`--max_length` tokens, with no padding (TRL's `--packing` / `--padding_free` refuse vision rows; docs/packing.md):

```bash
python examples/sft.py --config examples/recipes/stage2_packed.yaml \
    --model_name_or_path checkpoints/stage1 --dataset_name data/instructions --output_dir checkpoints/stage2
```
"""

import importlib.metadata
import os
import sys
from dataclasses import dataclass, field

import yaml
from datasets import load_dataset
from transformers import AutoProcessor
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from mmmmodal.training.collate import MMMModalDataCollator
from processing.rows import prepare_dataset
from mmmmodal.training.packing import MMMModalPackingCollator

LLM_LINEAR = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class MMMModalArguments:
    training_stage: int | None = field(
        default=None, metadata={"help": "1: projectors only (alignment). 2: projectors + LLM (instruction tuning)."}
    )
    media_root: str | None = field(default=None, metadata={"help": "Folder that relative media paths start from."})
    language: str = field(default="en", metadata={"help": "Paper records: train on `content` (en) or `content_ms` (ms)."})
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip (and count) bad rows instead of failing."})
    pack_conversations: bool = field(
        default=False,
        metadata={"help": "Padding-free packing: a batch's conversations share rows of at most --max_length tokens, "
                          "with no padding; the same conversations and loss per step, fewer tokens (docs/packing.md)."},
    )


def require_deepspeed_if_asked(argv: list[str], environ=os.environ):
    """Stop, with the install command, when this run asks for DeepSpeed and it is not installed.

    DeepSpeed is asked for by an accelerate config (`accelerate launch` sets ACCELERATE_USE_DEEPSPEED in every
    process), by `--deepspeed`, or by a `deepspeed` key in the `--config` recipe. It is the `deepspeed` extra: the
    plain install leaves it out (PyPI ships it only as a source archive, built at install time).
    """
    asked = environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    asked |= any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv)
    for flag, value in zip(argv, argv[1:]):
        if flag == "--config" and os.path.isfile(value):
            with open(value, encoding="utf-8") as file:
                asked |= bool((yaml.safe_load(file) or {}).get("deepspeed"))
    try:  # the installed distribution: `import deepspeed` from here would find examples/deepspeed/, a folder
        importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        if asked:
            raise SystemExit(
                "This run asks for DeepSpeed (an accelerate config with `distributed_type: DEEPSPEED`, `--deepspeed`, or "
                "a recipe's `deepspeed`), which is not installed: it is the `deepspeed` extra. Install it with "
                "`pip install \"mmmmodal[deepspeed]\"` (from a clone: `pip install -e \".[deepspeed]\" -c constraints.txt`)."
            ) from None


def make_collator(processor, training_args, model_args, mmm_args):
    """The batch builder: padded (TRL's vision collator, extended), or padding-free packed rows."""
    if training_args.packing or training_args.padding_free:
        raise ValueError("TRL's --packing and --padding_free do not take vision rows (SFTTrainer refuses them). "
                         "This script packs multimodal rows itself: use --pack_conversations true instead.")
    common = dict(max_length=training_args.max_length, pad_to_multiple_of=training_args.pad_to_multiple_of,
                  language=mmm_args.language, base_dir=mmm_args.media_root, skip_bad_rows=mmm_args.skip_bad_rows)
    if not mmm_args.pack_conversations:
        return MMMModalDataCollator(processor, **common)
    # Flash-attention's varlen kernel costs the same whatever a row's width: fewest rows. A dense kernel (sdpa,
    # eager) computes a row's full width squared: rows no wider than the batch's longest conversation.
    flash = "flash" in (model_args.attn_implementation or "")
    return MMMModalPackingCollator(processor, row_length="max_length" if flash else "longest", **common)


def main(script_args, training_args, model_args, mmm_args):
    training_args.model_init_kwargs = {
        "trust_remote_code": True,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        **(training_args.model_init_kwargs or {}),
    }
    if mmm_args.training_stage is not None:
        training_args.model_init_kwargs["training_stage"] = mmm_args.training_stage
    training_args.remove_unused_columns = False  # the collator reads the rows as they are
    training_args.assistant_only_loss = True

    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.target_modules = peft_config.target_modules or LLM_LINEAR
        peft_config.modules_to_save = peft_config.modules_to_save or ["multi_modal_projector", "audio_projector"]

    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=True)
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    train = prepare_dataset(dataset[script_args.dataset_train_split], mmm_args.media_root, mmm_args.skip_bad_rows,
                            mmm_args.language)
    collator = make_collator(processor, training_args, model_args, mmm_args)
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train,
        processing_class=processor,
        data_collator=collator,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    require_deepspeed_if_asked(sys.argv[1:])
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, MMMModalArguments))
    main(*parser.parse_args_and_config())
