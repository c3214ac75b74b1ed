"""`trl sft` on our checkpoint and a local folder of rows with images and audio (also audio-only rows)."""

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests._training_rows import mixed_rows, write_dataset
from tests.test_training_distributed import cpu_adam_built, run_bounded  # noqa: F401  (fixture)
from tests._weights import changed_parts

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def dataset_dir(media_files, tmp_path_factory):
    rows = mixed_rows(media_files, 8)
    assert any(not r["images"] for r in rows) and any(r["images"] for r in rows)  # audio-only rows included
    return write_dataset(tmp_path_factory.mktemp("sft_data"), rows)


def trl_sft(args: list, log: Path):
    trl = Path(sys.executable).with_name("trl")
    code, output = run_bounded([str(trl), "sft", *args], TIMEOUT_S, log, cwd=REPO)
    assert code == 0, f"trl sft failed (code {code}):\n{output[-4000:]}"
    return output


def test_trl_sft_stage2_zero2_offload_two_processes(tiny_checkpoint, dataset_dir, media_files, cpu_adam_built,
                                                    tmp_path):
    """The README's command: stage-2 recipe, DeepSpeed ZeRO-2 + CPU offload, 2 processes on CPU."""
    out = tmp_path / "stage2"
    trl_sft(["--config", "examples/recipes/stage2.yaml",
             "--accelerate_config", "examples/accelerate/zero2_offload_cpu.yaml",
             "--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(dataset_dir),
             "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "2",
             "--learning_rate", "1e-3", "--max_length", "1024", "--save_strategy", "no",
             "--bf16", "false", "--use_cpu", "true"], tmp_path / "log.txt")
    assert {"modeling_mmmmodal.py", "processing_mmmmodal.py", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    assert changed_parts(tiny_checkpoint, out) == {"multi_modal_projector", "audio_projector", "language_model",
                                                   "lm_head"}

    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    messages = [{"role": "user", "content": [
        {"type": "image", "path": media_files["image0"]}, {"type": "audio", "path": media_files["audio1"]},
        {"type": "text", "text": "What is related between picture 1 and audio 1?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_trl_sft_stage1_through_model_init_kwargs(tiny_checkpoint, dataset_dir, tmp_path):
    """Stage 1 chosen on the command line alone: only the projectors change."""
    out = tmp_path / "stage1"
    trl_sft(["--model_name_or_path", str(tiny_checkpoint), "--trust_remote_code", "--dataset_name", str(dataset_dir),
             "--model_init_kwargs", '{"training_stage": 1}', "--assistant_only_loss", "true",
             "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
             "--learning_rate", "1e-2", "--save_strategy", "no", "--report_to", "none",
             "--bf16", "false", "--use_cpu", "true"], tmp_path / "log.txt")
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    # the tiny LLM has no chat template: ChatML's new turn tokens train with the projectors, their rows only
    token_rows = model.config.train_token_ids
    assert len(token_rows) == 2
    assert changed_parts(tiny_checkpoint, out, token_rows) == {"multi_modal_projector", "audio_projector", "token rows"}
    assert model.config.training_stage == 1
