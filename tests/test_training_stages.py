"""Stage 1 then stage 2 through TRL's SFTTrainer, LoRA save/reload, and resuming from a checkpoint."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer

from mmmmodal.training.collate import MMMModalDataCollator
from tests._training_rows import mixed_rows
from tests._weights import changed_parts, part_of

LLM_LINEAR = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PROJECTORS = ("multi_modal_projector", "audio_projector")


def load(path, **kwargs):
    return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **kwargs)


def sft_args(out, stage, steps=6, lr=1e-2, **kwargs):
    kwargs.setdefault("save_strategy", "no")
    return SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=3, learning_rate=lr,
                     lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to="none", logging_steps=1,
                     trust_remote_code=True, model_init_kwargs={"training_stage": stage},
                     assistant_only_loss=True, gradient_checkpointing=False, seed=0, **kwargs)


@pytest.fixture(scope="module")
def rows(media_files):
    return mixed_rows(media_files, 9)


@pytest.fixture(scope="module")
def fixed_batch(tiny_checkpoint, rows):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    return MMMModalDataCollator(processor)(rows[:3])


def fixed_loss(model, batch) -> float:
    with torch.no_grad():
        return model.eval()(**batch).loss.item()


@pytest.fixture(scope="module")
def stage1(tiny_checkpoint, rows, fixed_batch, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    trainer = SFTTrainer(model=str(tiny_checkpoint), args=sft_args(out, 1), train_dataset=Dataset.from_list(rows))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    loss_before = fixed_loss(trainer.model, fixed_batch)
    trainer.train()
    trainer.save_model(str(out))
    return out, before, loss_before, trainer.model


def test_stage1_trains_only_the_projectors_and_lowers_the_loss(stage1, fixed_batch):
    out, before, loss_before, model = stage1
    # the tiny LLM has no chat template: ChatML's new turn tokens train with the projectors, their rows only
    assert len(model.config.train_token_ids) == 2
    assert changed_parts(before, model, model.config.train_token_ids) == {*PROJECTORS, "token rows"}
    every_projector_tensor = {n for n in before if part_of(n) in PROJECTORS}
    assert all(not torch.equal(before[n], dict(model.named_parameters())[n].detach()) for n in every_projector_tensor)
    assert fixed_loss(model, fixed_batch) < loss_before


def test_stage2_from_stage1_trains_projectors_and_llm_not_towers(stage1, rows, fixed_batch, tmp_path):
    stage1_dir, _, _, _ = stage1
    trainer = SFTTrainer(model=str(stage1_dir), args=sft_args(tmp_path, 2, lr=3e-3),
                         train_dataset=Dataset.from_list(rows))
    assert trainer.model.config.training_stage == 2
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    loss_before = fixed_loss(trainer.model, fixed_batch)
    trainer.train()
    assert changed_parts(before, trainer.model) == {*PROJECTORS, "language_model", "lm_head"}
    assert fixed_loss(trainer.model, fixed_batch) < loss_before


def test_lora_adapter_and_projectors_reload_onto_the_base_with_the_same_logits(stage1, rows, fixed_batch, tmp_path):
    stage1_dir = stage1[0]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LLM_LINEAR, modules_to_save=list(PROJECTORS))
    trainer = SFTTrainer(model=str(stage1_dir), args=sft_args(tmp_path, 2, steps=3), peft_config=lora,
                         train_dataset=Dataset.from_list(rows))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or any(f"{p}.modules_to_save" in n for p in PROJECTORS) for n in trainable)
    assert any(".vision_tower." in n for n, _ in trainer.model.named_parameters())  # towers there, frozen
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    with torch.no_grad():
        trained = trainer.model.eval()(**fixed_batch).logits

    base = load(stage1_dir)
    with torch.no_grad():
        base_logits = base.eval()(**fixed_batch).logits
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(**fixed_batch).logits
    assert not torch.allclose(base_logits, trained, atol=1e-4)  # the adapter and projectors did change something
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-5)


def test_resume_continues_with_the_same_data_order_and_optimizer_state(stage1, rows, tmp_path):
    stage1_dir = stage1[0]
    dataset = Dataset.from_list(rows)
    straight = SFTTrainer(model=str(stage1_dir), args=sft_args(tmp_path / "a", 2, steps=4, lr=3e-3,
                                                              save_strategy="steps", save_steps=2),
                          train_dataset=dataset)
    straight.train()
    resumed = SFTTrainer(model=str(stage1_dir), args=sft_args(tmp_path / "b", 2, steps=4, lr=3e-3),
                         train_dataset=dataset)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    expected = dict(straight.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, expected[name], atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")
