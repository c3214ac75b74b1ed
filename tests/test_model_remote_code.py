"""Checkpoints load as remote code, in a Python where `modeling_mmmmodal` cannot be imported."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_audio, random_image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

CLEAN_LOAD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_mmmmodal"] = None  # make `import modeling_mmmmodal` fail: only the checkpoint's code may run
    import torch
    from transformers import AutoModel, AutoProcessor
    ckpt, messages_file, out_file = sys.argv[1:4]
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    messages = json.load(open(messages_file))
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].tolist()
        tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0].tolist()
    json.dump({"logits": logits, "tokens": tokens, "class": type(model).__name__}, open(out_file, "w"))
    """
)


def _messages(media_files):
    return [{"role": "user", "content": [
        {"type": "image", "path": media_files["image0"]},
        {"type": "audio", "path": media_files["audio0"]},
        {"type": "image", "path": media_files["image1"]},
        {"type": "text", "text": "What do you see and hear?"},
    ]}]


def test_checkpoint_folder_is_complete_and_safetensors_only(tiny_checkpoint):
    files = {p.name for p in Path(tiny_checkpoint).iterdir()}
    assert {"config.json", "model.safetensors", "configuration_mmmmodal.py", "modeling_mmmmodal.py",
            "processing_mmmmodal.py", "processor_config.json", "chat_template.jinja", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    auto_map = json.loads((Path(tiny_checkpoint) / "config.json").read_text())["auto_map"]
    for key in ("AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoModelForMultimodalLM", "AutoProcessor"):
        assert key in auto_map
    # shipped code imports only each other (single dot), torch, numpy and transformers
    for name in ("configuration_mmmmodal.py", "modeling_mmmmodal.py", "processing_mmmmodal.py"):
        source = (Path(tiny_checkpoint) / name).read_text()
        assert "from .." not in source and "from . import" not in source
        for line in source.splitlines():
            if line.startswith(("import ", "from ")):
                root = line.split()[1].split(".")[0]
                assert root in {"", "math", "dataclasses", "torch", "numpy", "transformers"}, line


def test_clean_process_loads_and_matches(tiny, tiny_checkpoint, media_files, tmp_path):
    model, processor = tiny
    messages = _messages(media_files)
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_LOAD, str(tiny_checkpoint), str(tmp_path / "messages.json"), str(tmp_path / "out.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads((tmp_path / "out.json").read_text())
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0].tolist()
    assert loaded["class"] == "MMMModalForConditionalGeneration"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, atol=1e-5, rtol=1e-5)
    assert loaded["tokens"] == tokens


def test_auto_classes_sdpa_device_map_and_stage_kwarg(tiny_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(
        tiny_checkpoint, trust_remote_code=True, attn_implementation="sdpa", device_map="auto", training_stage=1
    )
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.config.training_stage == 1
    assert {"SiglipEncoderLayer", "WhisperEncoderLayer", "LlamaDecoderLayer"} <= set(model._no_split_modules)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    # the projectors, and the embedding matrices whose new ChatML turn-token rows alone take a gradient
    assert {n for n in trainable if "projector" in n} and {n for n in trainable if "projector" not in n} == {"model.language_model.embed_tokens.weight",
                                                              "lm_head.weight"}
    assert AutoModel.from_pretrained(tiny_checkpoint, trust_remote_code=True).config.training_stage is None
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert processor.patch_size == 8 and processor.audio_kernel_size == 40


def test_build_command_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "built"
    result = subprocess.run([sys.executable, "-m", "mmmmodal.cli", "build", "--tiny", "--no-audio", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    assert model.model.audio_tower is None and model.model.vision_tower is not None
    # local folders are recorded by name, never by a path of the building machine
    assert model.config.base_models == ["vision", "text"]
    assert str(tmp_path) not in (out / "config.json").read_text()
    # the tiny LLM has no chat template of its own: ChatML, and the build says so
    assert "Chat template: ChatML" in result.stdout and "has no chat template" in result.stderr
    # the new tokens were added and the embeddings grown to match
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer)
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_pickled_weights_are_never_loaded(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoModel.from_pretrained(tmp_path, trust_remote_code=True)


def test_processor_serializes_the_same_after_save_and_load(tiny, tmp_path):
    """transformers' ProcessorTesterMixin: a processor saved and loaded again has the same `to_dict()`, `auto_map`
    included, whether it was built from parts or loaded from a checkpoint."""
    from modeling_mmmmodal import MMMModalProcessor

    _, built = tiny
    built.save_pretrained(tmp_path / "first")
    loaded = MMMModalProcessor.from_pretrained(tmp_path / "first")
    assert loaded.to_dict() == built.to_dict()
    loaded.save_pretrained(tmp_path / "second")
    again = AutoProcessor.from_pretrained(tmp_path / "second", trust_remote_code=True)
    assert again.to_dict() == loaded.to_dict()
    assert again.to_dict()["auto_map"] == {"AutoProcessor": "processing_mmmmodal.MMMModalProcessor"}


@pytest.mark.parametrize("videos", [None, [], [[]], [[], []]])
def test_processor_takes_no_video_as_harnesses_pass_it(tiny, videos):
    _, processor = tiny
    assert processor(text=["a", "b"], videos=videos)["input_ids"] == processor(text=["a", "b"])["input_ids"]


def test_processor_refuses_a_real_video(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="not video"):
        processor(text="a", videos=[[np.zeros((2, 8, 8, 3), dtype=np.uint8)]])


def test_return_dict_false_gives_tuples(tiny):
    model, processor = tiny
    batch = processor(text="<image><audio> x", images=random_image(1), audio=random_audio(1, 1.0), return_tensors="pt")
    with torch.no_grad():
        full = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        base = model.model(**batch, return_dict=False)
        image = model.get_image_features(batch["pixel_values"], return_dict=False)
        audio = model.get_audio_features(batch["input_features"], batch["input_features_mask"], return_dict=False)
    assert all(isinstance(x, tuple) for x in (as_tuple, base, image, audio))
    assert torch.equal(as_tuple[0], full.logits) and torch.equal(base[0], model.model(**batch).last_hidden_state)
    assert torch.equal(torch.cat(image[1]), full.image_hidden_states)  # (last_hidden_state, pooler_output, ...)
