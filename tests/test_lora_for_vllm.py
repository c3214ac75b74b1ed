"""`mmmmodal lora-for-vllm`: LoRA-recipe adapters split into a serving base + LLM-only adapters, losslessly, and
every adapter vLLM could not serve as meant refused before anything is written. (vLLM itself: tests/test_vllm.py.)"""

import json

import pytest
import torch
from conftest import random_audio, random_image
from safetensors.torch import load_file

from mmmmodal.adapters import split_for_vllm
from mmmmodal.cli import main as cli
from mmmmodal.build import build_tiny_checkpoint
from mmmmodal.tiny import TinySizes
from tests._lora_adapters import make_adapter, peft_model


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint, tmp_path_factory):
    """Two recipe adapters sharing their projectors (a, b) and one with projectors of its own (c)."""
    root = tmp_path_factory.mktemp("recipe_adapters")
    return {name: make_adapter(tiny_checkpoint, root / name, seed, projector_seed)
            for name, seed, projector_seed in (("a", 1, 7), ("b", 2, 7), ("c", 3, 8))}


@pytest.fixture(scope="module")
def batch(tiny):
    processor = tiny[1]
    chat = [{"role": "user", "content": [{"type": "image", "image": random_image(0)},
                                         {"type": "audio", "audio": random_audio(0, 1.5)},
                                         {"type": "text", "text": "Do they match?"}]}]
    return processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def test_the_split_serves_what_peft_serves(tiny_checkpoint, adapters, batch, tmp_path, capsys):
    out = tmp_path / "served"
    assert cli(["lora-for-vllm", str(adapters["a"]), str(adapters["b"]), "--base", str(tiny_checkpoint),
                "--out", str(out)]) == 0
    assert "--lora-modules a=" in capsys.readouterr().out
    logits = {}
    for name in ("a", "b"):
        config = json.loads((out / name / "adapter_config.json").read_text())
        assert config["modules_to_save"] is None and config["base_model_name_or_path"] == str((out / "base").resolve())
        assert all(".lora_A." in key or ".lora_B." in key for key in load_file(out / name / "adapter_model.safetensors"))
        with torch.no_grad():
            original = peft_model(tiny_checkpoint, adapters[name])(**batch).logits
            split = peft_model(out / "base", out / name)(**batch).logits
        torch.testing.assert_close(split, original, rtol=0, atol=1e-5)
        logits[name] = split
    assert not torch.allclose(logits["a"], logits["b"], atol=1e-3)  # two fine-tunes, two answers
    assert {p.name for p in tiny_checkpoint.iterdir()} <= {p.name for p in (out / "base").iterdir()}


def test_adapters_with_different_projectors_are_refused(tiny_checkpoint, adapters, tmp_path):
    with pytest.raises(ValueError, match=r"were trained with different model\.(audio|multi_modal)_projector\."):
        split_for_vllm([adapters["a"], adapters["c"]], tiny_checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written
    split_for_vllm([adapters["c"]], tiny_checkpoint, tmp_path / "alone")  # alone, c gets a base of its own


def test_an_adapter_of_another_base_is_refused(tiny_checkpoint, tmp_path):
    other = build_tiny_checkpoint(tmp_path / "other", sizes=TinySizes(hidden_size=48))[2]
    adapter = make_adapter(other, tmp_path / "of_other", seed=1)
    with pytest.raises(SystemExit, match="trained on another base"):
        cli(["lora-for-vllm", str(adapter), "--base", str(tiny_checkpoint), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_lora_outside_the_language_model_is_refused(tiny_checkpoint, tmp_path):
    adapter = make_adapter(tiny_checkpoint, tmp_path / "tower", seed=1,
                           target_modules=r"model\.audio_tower\..*\.(q_proj|v_proj)")
    with pytest.raises(ValueError, match="outside the language model"):
        split_for_vllm([adapter], tiny_checkpoint, tmp_path / "out")
