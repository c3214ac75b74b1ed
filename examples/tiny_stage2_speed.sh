#!/usr/bin/env bash
# Steps/s of a tiny stage-2 run through `trl sft` on CPU (the figure in notes/training.md).
#   bash examples/tiny_stage2_speed.sh [WORK_DIR] [STEPS]
# Builds the tiny checkpoint and synthetic shapes-and-beeps rows offline, then runs the stage-2 recipe twice:
# one process, and DeepSpeed ZeRO-2 + CPU optimizer offload on 2 processes. TRL prints train_steps_per_second.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/mmmmodal_speed}
STEPS=${2:-40}
mkdir -p "$WORK/stage2_data"
[ -f "$WORK/base/config.json" ] || mmmmodal build --tiny --out "$WORK/base"
[ -f "$WORK/shapes/train.jsonl" ] || mmmmodal data synthetic --out "$WORK/shapes" --train 400 --test 10 --image-size 32
cp "$WORK/shapes/train.jsonl" "$WORK/stage2_data/train.jsonl"   # a folder that load_dataset reads as one split
COMMON=(--config examples/recipes/stage2.yaml --model_name_or_path "$WORK/base" --dataset_name "$WORK/stage2_data"
        --max_steps "$STEPS" --per_device_train_batch_size 4 --max_length 2048 --save_strategy no
        --bf16 false --use_cpu true --logging_steps 1000 --dataloader_num_workers 0)
echo "== 1 process"
trl sft "${COMMON[@]}" --output_dir "$WORK/out_single" 2>&1 | grep -o "'train_steps_per_second': '[0-9.]*'"
echo "== DeepSpeed ZeRO-2 + CPU offload, 2 processes (per-device batch 4, 8 rows per step)"
trl sft "${COMMON[@]}" --accelerate_config examples/accelerate/zero2_offload_cpu.yaml --output_dir "$WORK/out_zero2" \
    2>&1 | grep -o "'train_steps_per_second': '[0-9.]*'"
