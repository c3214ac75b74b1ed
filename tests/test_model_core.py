"""The model: token counts, mixed batches, generation with cache, LLaVA parity, feature layers."""

import json

import numpy as np
import pytest
import torch
from conftest import random_audio, random_image
from transformers import LlavaConfig, LlavaForConditionalGeneration

from mmmmodal.build import build_tiny
from modeling_mmmmodal.configuration_mmmmodal import audio_token_lengths


def _count_runs(ids, start_id, pad_id):
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == start_id:
            j = i + 1
            while j < len(ids) and ids[j] == pad_id:
                j += 1
            runs.append(j - i - 1)
            i = j
        else:
            i += 1
    return runs


def expected_audio_tokens(seconds: float, window_s: int = 3, kernel: int = 40, stride: int = 3) -> int:
    """Tokens for a clip: split into windows, 100 mel frames per second, then the shared length formula."""
    samples = int(seconds * 16000)
    total = 0
    for start in range(0, samples, window_s * 16000):
        n = min(window_s * 16000, samples - start)
        mel = -(-n // 160)  # frames whose hop starts inside the clip
        total += audio_token_lengths(mel, kernel, stride)
    return total


def test_image_token_count(tiny):
    _, processor = tiny
    out = processor(text="<image> a <image></image> b", images=[random_image(0), random_image(1, 57)])
    ids = out["input_ids"][0]
    # 32 px images with 8 px patches: 16 tokens each; the written <image></image> pair is one placeholder
    assert _count_runs(ids, processor.image_start_token_id, processor.image_token_id) == [16, 16]
    assert ids.count(processor.image_end_token_id) == 2
    assert out["pixel_values"].shape == (2, 3, 32, 32)


def test_audio_token_counts_follow_duration(tiny):
    _, processor = tiny
    durations = [0.3, 1.0, 2.0, 3.0, 7.0]
    out = processor(text="<audio>" * len(durations), audio=[random_audio(i, d) for i, d in enumerate(durations)])
    counts = _count_runs(out["input_ids"][0], processor.audio_start_token_id, processor.audio_token_id)
    assert counts == [expected_audio_tokens(d) for d in durations]
    assert counts == sorted(counts) and counts[1] < counts[2] < counts[3]
    # 7 s with a 3 s window: three consecutive windows, nothing cut
    assert out["input_features"].shape[0] == 1 + 1 + 1 + 1 + 3
    assert out["input_features_mask"][-1].sum() == 100  # the last window holds the final second


def test_full_whisper_window_lengths():
    # The paper's numbers: a 30 s window (3000 mel frames) gives 487 tokens with kernel 40, stride 3
    assert audio_token_lengths(3000, 40, 3) == 487
    five_seconds = audio_token_lengths(500, 40, 3)
    assert five_seconds <= 487 / 5
    lengths = torch.tensor([100, 500, 3000])
    assert audio_token_lengths(lengths, 40, 3).tolist() == [audio_token_lengths(int(n), 40, 3) for n in lengths]


def _mixed_batch(processor):
    texts = [
        "<image> and <image> with <audio>: what do you see and hear?",
        "no media at all here",
        "<audio> then <audio> and <audio>",
    ]
    images = [[random_image(0), random_image(1)], [], []]
    audio = [[random_audio(0, 1.0)], [], [random_audio(1, 0.5), random_audio(2, 2.0), random_audio(3, 4.0)]]
    return texts, images, audio


def test_mixed_batch_forward_loss_and_alignment(tiny):
    model, processor = tiny
    texts, images, audio = _mixed_batch(processor)
    batch = processor(text=texts, images=images, audio=audio, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    try:
        out = model(**batch, labels=labels)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        for name in ("multi_modal_projector", "audio_projector"):
            grads = [p.grad for p in getattr(model.model, name).parameters()]
            assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()

    # Each sample alone gives the same logits on its tokens: no feature lands in another sample's pads
    with torch.no_grad():
        batched = model(**batch).logits
        for i in range(3):
            single = processor(text=texts[i], images=images[i] or None, audio=audio[i] or None, return_tensors="pt")
            alone = model(**single).logits[0]
            n = alone.shape[0]
            torch.testing.assert_close(batched[i, :n], alone, atol=1e-4, rtol=1e-4)


def test_input_ids_and_inputs_embeds_agree(tiny):
    model, processor = tiny
    batch = processor(text="<image> look <audio>", images=random_image(3), audio=random_audio(3, 1.0), return_tensors="pt")
    with torch.no_grad():
        from_ids = model(**batch).logits
        embeds = model.get_input_embeddings()(batch["input_ids"])
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        from_embeds = model(inputs_embeds=embeds, **rest).logits
    torch.testing.assert_close(from_ids, from_embeds)


def test_generate_with_cache_equals_full_recompute(tiny):
    model, processor = tiny
    batch = processor(
        text="<image><audio> describe", images=random_image(4), audio=random_audio(4, 1.5), return_tensors="pt"
    )
    kwargs = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12)
    calls = {"vision": 0, "audio": 0}
    hooks = [model.model.vision_tower.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1)),
             model.model.audio_tower.register_forward_hook(lambda *a: calls.__setitem__("audio", calls["audio"] + 1))]
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        assert calls == {"vision": 1, "audio": 1}  # media are encoded on the prefill step only
        uncached = model.generate(**batch, use_cache=False, **kwargs)
    for hook in hooks:
        hook.remove()
    assert cached.shape[1] == batch["input_ids"].shape[1] + 12
    assert torch.equal(cached, uncached)


def test_kv_cache_under_either_name(tiny):
    """transformers 5.24 passes the cache as `cache`, earlier releases as `past_key_values`: both continue alike."""
    from transformers import DynamicCache

    from modeling_mmmmodal.configuration_mmmmodal import CACHE_KWARG

    model, processor = tiny
    batch = processor(text="<image> describe", images=random_image(5), return_tensors="pt")
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        cache = getattr(prefill, CACHE_KWARG)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == batch["input_ids"].shape[1]
        step = prefill.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(step)], dim=1)
        logits = {}
        for name in ("past_key_values", "cache"):
            one = model(**batch, use_cache=True)  # a fresh prefill cache per name
            logits[name] = model(input_ids=step, attention_mask=mask, **{name: getattr(one, CACHE_KWARG)}).logits
        assert torch.equal(logits["past_key_values"], logits["cache"])
        with pytest.raises(ValueError, match="both `past_key_values` and `cache`"):
            model(input_ids=step, attention_mask=mask, past_key_values=cache, cache=cache)


def test_batched_left_padded_generation_equals_one_by_one(tiny):
    model, processor = tiny
    texts = ["<image> first question, longer text here", "<audio> second"]
    images, audio = [[random_image(5)], []], [[], [random_audio(5, 2.0)]]
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    batch = processor(text=texts, images=images, audio=audio, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        together = model.generate(**batch, **kwargs)[:, -8:]
        for i in range(2):
            single = processor(text=texts[i], images=images[i] or None, audio=audio[i] or None, return_tensors="pt")
            alone = model.generate(**single, **kwargs)[:, -8:]
            assert torch.equal(together[i], alone[0]), i


def test_sampled_pad_token_is_plain_text_after_prefill(tiny):
    """generate drops media after prefill; a sampled pad id is then embedded like any token (as LLaVA does)."""
    model, processor = tiny
    ids = torch.tensor([[processor.image_token_id, processor.audio_token_id]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 2, model.config.text_config.vocab_size)


def test_logits_equal_llava_without_audio_tower(tmp_path):
    model, processor = build_tiny(tmp_path, audio=False, seed=1)
    model.eval()
    assert model.model.audio_tower is None
    llava_config = LlavaConfig(
        vision_config=model.config.vision_config.to_dict(),
        text_config=model.config.text_config.to_dict(),
        image_token_id=model.config.image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
    )
    llava = LlavaForConditionalGeneration(llava_config).eval()
    missing, unexpected = llava.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and not missing
    batch = processor(text=["<image> a <image> b", "<image> c"], images=[[random_image(0), random_image(1)], [random_image(2)]],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(ours, theirs)


def test_feature_layer_choice_changes_features(tmp_path):
    model, processor = build_tiny(tmp_path, seed=2)
    pixel_values = processor(text="<image>", images=random_image(0), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        second_last = torch.cat(model.get_image_features(pixel_values).pooler_output)
        model.config.vision_feature_layer = -1
        last = torch.cat(model.get_image_features(pixel_values).pooler_output)
    assert second_last.shape == last.shape == (16, model.config.text_config.hidden_size)
    assert not torch.allclose(second_last, last)


def test_training_stage_freezes_the_right_parameters(tiny):
    model, _ = tiny
    try:
        model.set_training_stage(1)
        trainable = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0]
                     for n, p in model.named_parameters() if p.requires_grad}
        # and the rows of ChatML's turn tokens, new to the tiny LLM (it has no chat template): see the next test
        assert trainable == {"multi_modal_projector", "audio_projector", "language_model", "lm_head"}
        frozen_llm = {n for n, p in model.named_parameters() if not p.requires_grad and n.startswith("model.language")}
        assert frozen_llm and not any("embed_tokens" in n for n in frozen_llm)
        model.set_training_stage(2)
        trainable = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0]
                     for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"multi_modal_projector", "audio_projector", "language_model", "lm_head"}
    finally:
        model.set_training_stage(None)


def test_stage1_trains_the_new_turn_token_rows_only(tiny):
    """ChatML's turn tokens are new to an LLM without a chat template, and `<|im_end|>` is in every answer's labels:
    stage 1 gives their embedding and lm_head rows a gradient, and no other row of those matrices."""
    model, processor = tiny
    ids = model.config.train_token_ids
    assert sorted(ids) == sorted(processor.tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    batch = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    try:
        model.set_training_stage(1)
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            rows = set(matrix.grad.abs().sum(-1).nonzero().flatten().tolist())
            assert rows == set(ids)
        model.set_training_stage(2)  # stage 2: the whole matrix again
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        assert len(model.get_output_embeddings().weight.grad.abs().sum(-1).nonzero()) > len(ids)
    finally:
        model.zero_grad()
        model.set_training_stage(None)


def test_every_trainable_parameter_gets_a_gradient_without_its_modality(tiny):
    """Image-only batch in training mode: audio projector still gets a (zero) gradient, as DDP/ZeRO need."""
    model, processor = tiny
    batch = processor(text="<image> only an image", images=random_image(6), return_tensors="pt")
    model.set_training_stage(2)
    model.train()
    try:
        out = model(**batch, labels=batch["input_ids"])
        out.loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert no_grad == []
        assert all(p.grad.abs().sum() == 0 for p in model.model.audio_projector.parameters())
    finally:
        model.zero_grad(set_to_none=True)
        model.set_training_stage(None)
        model.eval()
    # at inference nothing extra runs: the audio tower is not called for an image-only batch
    calls = []
    handle = model.model.audio_tower.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    assert calls == []


def test_gradient_checkpointing_recomputes_every_stack_and_keeps_the_gradients(tiny):
    """Checkpointing saves memory by running each layer's forward again in backward: with it on, the first linear
    inside layer 0 of the language model, the vision tower and the audio encoder each run twice per step (once
    without), and every gradient is the one computed without checkpointing. (Hooks on the layer itself stay outside
    the checkpoint, so they count one call either way.)"""
    model, processor = tiny
    batch = processor(text="<image><audio> hi", images=random_image(7), audio=random_audio(7, 1.0), return_tensors="pt")
    towers = {"text": model.model.language_model, "vision": model.model.vision_tower, "audio": model.model.audio_tower}
    layers = {name: next(m for n, m in tower.named_modules() if ".layers.0." in f".{n}" and isinstance(m, torch.nn.Linear))
              for name, tower in towers.items()}

    def step(checkpointing: bool):
        calls = dict.fromkeys(layers, 0)
        hooks = [layer.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
                 for name, layer in layers.items()]
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        try:
            model(**batch, labels=batch["input_ids"]).loss.backward()
            return calls, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        finally:
            for hook in hooks:
                hook.remove()
            model.activation_checkpointing_disable()
            model.zero_grad(set_to_none=True)
            model.eval()

    (plain_calls, plain), (checkpointed_calls, checkpointed) = step(False), step(True)
    assert plain_calls == dict.fromkeys(layers, 1)
    assert checkpointed_calls == dict.fromkeys(layers, 2)
    assert checkpointed.keys() == plain.keys() and "model.multi_modal_projector.linear_1.weight" in plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("text_type", ["llama", "mistral", "qwen2"])
def test_any_causal_lm_as_text_model(text_type, tmp_path):
    from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=64, vocab_size=120)
    config = MMMModalConfig(
        vision_config=dict(hidden_size=32, image_size=32, patch_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64),
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=150),
        text_config=dict(model_type=text_type, **small),
        image_token_id=100, audio_token_id=101,
    )
    model = MMMModalForConditionalGeneration(config).eval()
    n_audio = audio_token_lengths(torch.tensor([120]), 40, 3)
    ids = torch.tensor([[1, 2] + [100] * 4 + [3] + [101] * int(n_audio) + [4]])
    mask = torch.zeros(1, 300, dtype=torch.long)
    mask[:, :120] = 1
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), input_features=torch.randn(1, 80, 300),
                    input_features_mask=mask, labels=ids)
    assert type(model.model.language_model).__name__.lower().startswith(text_type.replace("2", ""))
    assert out.logits.shape == (1, ids.shape[1], 120) and torch.isfinite(out.loss)
    # Built from configs alone, it names no causal-LM class; the saved checkpoint does (vLLM builds from it).
    assert config.text_config.architectures is None
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["text_config"]["architectures"]
    assert saved == [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[text_type]]


@pytest.mark.parametrize("text_type, scaling", [("gemma2", {"final_logit_softcapping": 3.0}),
                                                 ("cohere", {"logit_scale": 0.25}),
                                                 ("granite", {"logits_scaling": 4.0})])
def test_text_models_that_rescale_their_logits_score_as_themselves(text_type, scaling, tmp_path):
    """Soft-capping and logit scales live in each LLM's own `*ForCausalLM.forward`: MMMModal applies them too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmmmodal.compose import compose_model, compose_processor
    from mmmmodal.tiny import train_tokenizer

    tokenizer = train_tokenizer()
    config = AutoConfig.for_model(text_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=2, intermediate_size=64, head_dim=16,
                                  vocab_size=len(tokenizer), **scaling)
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(config).eval()
    llm.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    processor = compose_processor(text=str(tmp_path / "text"))
    model = compose_model(text=str(tmp_path / "text"), processor=processor).eval()
    ids = torch.tensor([tokenizer("What is in picture 1? A red circle.")["input_ids"]])
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, llm(input_ids=ids).logits
    torch.testing.assert_close(ours[..., : len(tokenizer)], theirs)
    with torch.no_grad():  # and the rescaling is what makes them equal
        bare = model.lm_head(model.model(input_ids=ids).last_hidden_state)[..., : len(tokenizer)]
    assert not torch.allclose(bare, theirs)


def test_audio_only_model(tmp_path):
    model, processor = build_tiny(tmp_path, vision=False, seed=4)
    assert model.model.vision_tower is None and model.config.vision_config is None
    with pytest.raises(ValueError, match="no vision tower"):
        processor(text="<image>", images=random_image(0))
    batch = processor(text="<audio> hi", audio=random_audio(0, 1.0), return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch, labels=batch["input_ids"]).loss)
