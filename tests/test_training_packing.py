"""Padding-free packing (mmmmodal.training.packing): the same loss and gradients as the padded batch, attention that
never crosses a conversation, whole media spans, and what bad input gets."""

import copy
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from trl.trainer.utils import add_fused_lm_head

from mmmmodal.training.collate import MMMModalDataCollator
from mmmmodal.training.packing import MMMModalPackingCollator, pack_rows, plan_rows
from tests._training_rows import audio_row, image_row, mixed_row, write_dataset
from tests.conftest import random_audio
from tests.test_training_distributed import run_bounded

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def rows(media_files, tmp_path_factory):
    """Six conversations of unlike lengths: 1-3 turns, 0-3 media, a clip over three of the tiny model's 3 s windows."""
    long_clip = str(tmp_path_factory.mktemp("long_clip") / "long.wav")
    sf.write(long_clip, random_audio(7, 7.0), 16000)
    three_turns = {"id": "three-turns", "images": [media_files["image0"], media_files["image1"]], "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                     {"type": "text", "text": "Compare picture 1 and picture 2."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Both are noise."}]},
        {"role": "user", "content": [{"type": "audio", "path": long_clip}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Three beeps."}]},
        {"role": "user", "content": [{"type": "text", "text": "And in picture 2?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A blue square."}]}]}
    text_only = {"id": "text-only", "images": [], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Say yes."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
        {"role": "user", "content": [{"type": "text", "text": "Say no."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "No."}]}]}
    long_audio = audio_row(long_clip, "Two.", row_id="long-audio")
    return [image_row(media_files["image0"], row_id="image"), three_turns, audio_row(media_files["audio1"]),
            text_only, mixed_row(media_files["image1"], media_files["audio0"], row_id="mixed"), long_audio]


def training_model(tiny, stage: int):
    model = copy.deepcopy(tiny[0])
    model.set_training_stage(stage)
    return model.train()


def loss_and_grads(model, batch, fused: bool = False):
    model.zero_grad()
    loss = model(**batch, fused_lm_head=True).loss if fused else model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage, row_length, attention, checkpointing", [
    (1, "longest", "sdpa", False), (2, "longest", "sdpa", False), (2, "max_length", "sdpa", False),
    (2, "longest", "eager", False), (2, "longest", "sdpa", True),  # the recipes train with gradient checkpointing
])
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny, processor, rows, stage, row_length, attention,
                                                          checkpointing):
    model = training_model(tiny, stage)
    if attention != model.model.language_model.config._attn_implementation:
        model.set_attn_implementation(attention)
    assert model.model.language_model.config._attn_implementation == attention
    if checkpointing:
        model.gradient_checkpointing_enable()
        assert model.model.language_model.is_gradient_checkpointing
    padded = MMMModalDataCollator(processor, max_length=512)(rows)
    packed = MMMModalPackingCollator(processor, max_length=512, row_length=row_length)(rows)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows...
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # ...and fewer tokens
    assert "attention_mask" not in packed and packed["use_cache"] is False
    expected_loss, expected = loss_and_grads(model, padded)
    loss, grads = loss_and_grads(model, packed)
    assert set(grads) == set(expected)
    assert abs(loss - expected_loss) < 1e-5, (loss, expected_loss)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_trl_fused_head_gives_the_same_loss_packed(tiny, processor, rows):
    """SFTTrainer scores through TRL's fused LM head (labels shifted row by row): packing changes nothing there."""
    model = training_model(tiny, 2)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    expected_loss, expected = loss_and_grads(model, MMMModalDataCollator(processor, max_length=512)(rows), fused=True)
    loss, grads = loss_and_grads(model, MMMModalPackingCollator(processor, max_length=512)(rows), fused=True)
    assert abs(loss - expected_loss) < 1e-5
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def segments(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, start, end) of every sequence in a packed batch."""
    out = []
    for r, row in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(row) if p == 0] + [len(row)]
        out += [(r, a, b) for a, b in zip(starts, starts[1:])]
    return out


def test_each_conversation_sees_only_itself(tiny, processor, rows):
    """Every packed conversation's logits equal its own padded row's; an all-ones attention mask (which switches
    transformers' packed-sequence detection off) lets later conversations read earlier ones, and they change."""
    model = tiny[0]
    padded = MMMModalDataCollator(processor, max_length=512)(rows)
    packed = MMMModalPackingCollator(processor, max_length=512, row_length="max_length")(rows)
    with torch.no_grad():
        expected = model(**padded).logits
        logits = model(**packed).logits
        leaky = model(**packed, attention_mask=torch.ones_like(packed["input_ids"])).logits
    real = padded["attention_mask"].sum(-1).tolist()
    matched, later, leaked = 0, 0, 0
    for r, start, end in segments(packed["position_ids"]):
        ids = packed["input_ids"][r, start:end]
        row = next((i for i in range(len(rows)) if real[i] == end - start
                    and torch.equal(padded["input_ids"][i, : real[i]], ids)), None)
        if row is None:  # the filler after the last conversation of a row
            assert (ids == processor.tokenizer.pad_token_id).all()
            continue
        matched += 1
        torch.testing.assert_close(logits[r, start:end], expected[row, : real[row]], atol=1e-5, rtol=1e-5)
        if start > 0:  # a conversation after another in its row: with the mask given, it reads the one before
            later += 1
            leaked += not torch.allclose(leaky[r, start:end], expected[row, : real[row]], atol=1e-3)
    assert matched == len(rows) and leaked == later >= len(rows) // 2


def test_rows_keep_media_spans_whole_and_restart_positions(processor, rows):
    padded = MMMModalDataCollator(processor, max_length=512)(rows)
    lengths = padded["attention_mask"].sum(-1).tolist()
    for row_length, capacity in (("longest", max(lengths)), ("max_length", 512)):
        packed = MMMModalPackingCollator(processor, max_length=512, row_length=row_length)(rows)
        ids, positions, labels = packed["input_ids"], packed["position_ids"], packed["labels"]
        assert ids.shape[1] <= capacity and ids.shape[0] == math.ceil(sum(lengths) / capacity)
        assert (labels[positions == 0] == -100).all()
        assert int((labels != -100).sum()) == int((padded["labels"] != -100).sum())  # every label kept
        bounds = segments(positions)
        cu = [0] + [r * ids.shape[1] + end for r, _, end in bounds]
        assert packed["cu_seq_lens_q"].tolist() == cu and packed["max_length_q"] == max(b - a for _, a, b in bounds)
        for start_id, pad_id, end_id in ((processor.image_start_token_id, processor.image_token_id,
                                          processor.image_end_token_id),
                                         (processor.audio_start_token_id, processor.audio_token_id,
                                          processor.audio_end_token_id)):
            for r, start, end in bounds:  # every span opens and closes inside one conversation
                span = ids[r, start:end].tolist()
                assert span.count(start_id) == span.count(end_id)
                assert span.count(pad_id) == 0 or span.count(start_id) > 0
        assert torch.equal(packed["pixel_values"].sum((1, 2, 3)).sort().values,
                           padded["pixel_values"].sum((1, 2, 3)).sort().values)
        assert packed["input_features"].shape == padded["input_features"].shape


def test_plan_rows_fills_few_rows_evenly():
    assert plan_rows([5, 4, 3, 3, 2, 1], 9) == [[0, 3, 5], [1, 2, 4]]
    lengths = [(k * 37) % 23 + 1 for k in range(40)]
    plan = plan_rows(lengths, 30)
    assert sorted(i for row in plan for i in row) == list(range(40))
    assert all(sum(lengths[i] for i in row) <= 30 for row in plan) and all(row == sorted(row) for row in plan)
    # one row past the least possible at most (balanced rows, not the fullest ones), and none much wider than the rest
    assert math.ceil(sum(lengths) / 30) <= len(plan) <= math.ceil(sum(lengths) / 30) + 1
    loads = [sum(lengths[i] for i in row) for row in plan]
    assert max(loads) - min(loads) <= max(lengths)


def test_too_long_conversations_truncate_as_unpacked_or_name_the_row(processor, rows, media_files):
    text = {**rows[3], "id": "long-text"}
    text["messages"] = text["messages"] + [{"role": "user", "content": [{"type": "text", "text": "word " * 60}]},
                                           {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]
    packed = MMMModalPackingCollator(processor, max_length=40)([text])
    padded = MMMModalDataCollator(processor, max_length=40)([text])
    assert packed["input_ids"].shape == (1, 40) and torch.equal(packed["input_ids"], padded["input_ids"])
    assert torch.equal(packed["labels"], padded["labels"])

    cut = image_row(media_files["image0"], row_id="span-at-the-end")
    cut["messages"][0]["content"].insert(0, {"type": "text", "text": "word " * 40})
    with pytest.raises(ValueError, match="span-at-the-end.*media span"):
        MMMModalPackingCollator(processor, max_length=40)([rows[0], cut])
    skipping = MMMModalPackingCollator(processor, max_length=40, skip_bad_rows=True)
    batch = skipping([rows[0], cut, audio_row("/nonexistent/a.wav")])
    assert skipping.skipped == 2 and len(batch["cu_seq_lens_q"]) == 2


def test_bad_settings_and_mixed_or_oversized_rows_are_refused(processor):
    with pytest.raises(ValueError, match="Packing needs max_length"):
        MMMModalPackingCollator(processor)
    with pytest.raises(ValueError, match="row_length"):
        MMMModalPackingCollator(processor, max_length=64, row_length="widest")
    single = {"id": "single", "input_ids": list(range(4, 10)), "labels": list(range(4, 10))}
    packed = {"id": "packed", "input_ids": list(range(4, 12)), "labels": list(range(4, 12)), "seq_lengths": [3, 5]}
    collator = MMMModalPackingCollator(processor, max_length=64)
    with pytest.raises(ValueError, match=r"mixes packed rows \(row id='packed'.*unpacked ones \(row id='single'"):
        collator([single, packed])
    with pytest.raises(ValueError, match="row id='single' is 6 tokens long, more than the packing length"):
        MMMModalPackingCollator(processor, max_length=5)([single])
    with pytest.raises(ValueError, match="position_ids must count"):
        collator([{**single, "position_ids": [0, 1, 2, 4, 5, 6]}])
    # rows packed already (TRL's `seq_lengths` form) go together, their sequences kept
    batch = collator([packed, {**packed, "id": "packed-2"}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]] * 2
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 8, 11, 16]  # over the flattened rows
    one_row = MMMModalPackingCollator(processor, max_length=64, row_length="max_length")([packed, packed])
    assert one_row["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4]]


def test_pack_rows_rounds_the_width_up(processor):
    units = [{"input_ids": torch.arange(4, 9), "labels": torch.arange(4, 9), "name": "a"},
             {"input_ids": torch.arange(4, 7), "labels": torch.arange(4, 7), "name": "b"}]
    batch = pack_rows(units, 16, pad_token_id=3, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 8) and batch["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert batch["input_ids"][1, 3:].tolist() == [3] * 5 and (batch["labels"][1, 3:] == -100).all()
    # a sequence's first token is predicted by nothing: its label goes, every other label stays
    assert batch["labels"][0].tolist() == [-100, 5, 6, 7, 8, -100, -100, -100]
    assert batch["labels"][1, :3].tolist() == [-100, 5, 6]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attention varlen needs a CUDA GPU")
def test_flash_attention_varlen_matches_the_padded_batch(tiny, processor, rows):
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    model = training_model(tiny, 2).to("cuda", torch.bfloat16)
    model.set_attn_implementation("flash_attention_2")

    def on_gpu(batch):
        return {k: v.to("cuda", torch.bfloat16 if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    expected, _ = loss_and_grads(model, on_gpu(MMMModalDataCollator(processor, max_length=512)(rows)))
    for row_length in ("max_length", "longest"):  # one row, and several rows flattened by the varlen kernel
        loss, _ = loss_and_grads(model, on_gpu(MMMModalPackingCollator(processor, max_length=512,
                                                                       row_length=row_length)(rows)))
        assert abs(float(loss) - float(expected)) < 2e-2 * abs(float(expected)), (row_length, loss, expected)


def load_sft_script():
    spec = importlib.util.spec_from_file_location("mmmmodal_sft_example", REPO / "examples" / "sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sft_script_picks_the_collator_from_its_flags(processor):
    from trl import ModelConfig, SFTConfig

    sft = load_sft_script()
    args = SFTConfig(output_dir="unused", max_length=256, use_cpu=True, bf16=False)
    flags = sft.MMMModalArguments(pack_conversations=True)
    assert type(sft.make_collator(processor, args, ModelConfig(), sft.MMMModalArguments())) is MMMModalDataCollator
    packing = sft.make_collator(processor, args, ModelConfig(attn_implementation="sdpa"), flags)
    assert isinstance(packing, MMMModalPackingCollator) and packing.row_length == "longest"
    assert packing.max_length == 256
    flash = sft.make_collator(processor, args, ModelConfig(attn_implementation="flash_attention_2"), flags)
    assert flash.row_length == "max_length"
    for trl_flag in ("packing", "padding_free"):
        with pytest.raises(ValueError, match="--pack_conversations true instead"):
            sft.make_collator(processor, SFTConfig(output_dir="unused", use_cpu=True, bf16=False, **{trl_flag: True}),
                              ModelConfig(), flags)


def test_sft_script_packed_trains_the_same_weights_as_padded(tiny_checkpoint, rows, tmp_path):
    """examples/sft.py with the packed recipe (SFTTrainer, TRL's fused head, Trainer's token counts) against the same
    run unpacked: after two SGD steps the weights agree."""
    data = write_dataset(tmp_path / "data", rows[:4] * 2)
    outputs = {}
    for packed in (True, False):
        out = tmp_path / ("packed" if packed else "padded")
        command = [sys.executable, str(REPO / "examples" / "sft.py"), "--config",
                   str(REPO / "examples" / "recipes" / "stage2_packed.yaml"), "--pack_conversations", str(packed),
                   "--model_name_or_path", str(tiny_checkpoint), "--dataset_name", str(data),
                   "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
                   "--max_length", "512", "--optim", "sgd", "--learning_rate", "0.1", "--save_strategy", "no",
                   "--gradient_checkpointing", "false", "--bf16", "false", "--use_cpu", "true", "--seed", "0"]
        code, log = run_bounded(command, 300, tmp_path / f"{out.name}.log", cwd=REPO)
        assert code == 0, log[-4000:]
        outputs[packed] = load_file(out / "model.safetensors")
    start = load_file(Path(tiny_checkpoint) / "model.safetensors")
    assert any(not torch.equal(outputs[True][k], start[k]) for k in start)  # it trained
    for name, weight in outputs[False].items():
        torch.testing.assert_close(outputs[True][name], weight, atol=1e-6, rtol=0, msg=lambda m: f"{name}: {m}")
