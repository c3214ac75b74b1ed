"""Training batches: the three row forms, assistant-only labels, and what bad rows get."""

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from mmmmodal.training.collate import MMMModalDataCollator
from processing.rows import to_training_row
from tests._training_rows import audio_row, image_row


@pytest.fixture(scope="module")
def processor(tiny):
    return tiny[1]


def two_turn_rows(media):
    """The same two-turn conversation (two images, then one audio) in the three row forms."""
    question = [{"type": "text", "text": "Compare picture 1 and picture 2."}]
    chat = {"id": "chat", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "path": media["image0"]},
                                     {"type": "image", "url": media["image1"]}] + question},
        {"role": "assistant", "content": [{"type": "text", "text": "Both are noise."}]},
        {"role": "user", "content": [{"type": "audio", "path": media["audio0"]},
                                     {"type": "text", "text": "How many beeps?"}]},
        {"role": "assistant", "content": "Three."}]}
    trl = {"id": "trl", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}] + question},
        {"role": "assistant", "content": [{"type": "text", "text": "Both are noise."}]},
        {"role": "user", "content": [{"type": "audio", "path": media["audio0"], "text": None},
                                     {"type": "text", "text": "How many beeps?", "path": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Three."}]}],
        "images": [media["image0"], media["image1"]]}
    paper = {"id": "paper", "filename": [media["image0"], media["image1"], media["audio0"]], "conversations": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image><image>Compare picture 1 and picture 2."},
        {"role": "assistant", "content": "Both are noise."},
        {"role": "user", "content": "<audio>How many beeps?"},
        {"role": "assistant", "content": "Three."}]}
    return chat, trl, paper


def labelled_text(processor, batch, row: int = 0) -> str:
    return processor.tokenizer.decode(batch["input_ids"][row][batch["labels"][row] != -100])


def test_only_assistant_tokens_and_their_end_of_turn_carry_labels(processor, media_files):
    chat, _, _ = two_turn_rows(media_files)
    batch = MMMModalDataCollator(processor)([chat, audio_row(media_files["audio1"])])
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "pixel_values", "input_features",
                          "input_features_mask"}
    assert batch["pixel_values"].shape[0] == 2 and batch["input_features"].shape[0] == 2
    assert labelled_text(processor, batch, 0) == "Both are noise.<|im_end|>Three.<|im_end|>"
    assert labelled_text(processor, batch, 1) == "Three.<|im_end|>"

    # Exactly the tokens inside the two assistant answers, token for token.
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = processor.tokenizer
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    expected = [-100] * len(ids)
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    for i in range(len(ids)):
        if ids[i] == start and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while ids[j - 1] != tokenizer.convert_tokens_to_ids("<|im_end|>"):
                expected[j] = ids[j]
                j += 1
    assert labels == expected
    media_ids = [processor.image_token_id, processor.audio_token_id, processor.image_start_token_id,
                 processor.image_end_token_id, processor.audio_start_token_id, processor.audio_end_token_id]
    assert not torch.isin(batch["labels"], torch.tensor(media_ids)).any()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_three_row_forms_give_the_same_batch_and_trl_collator_agrees(processor, media_files):
    batches = [MMMModalDataCollator(processor)([row]) for row in two_turn_rows(media_files)]
    for other in batches[1:]:
        assert set(other) == set(batches[0])
        for key in batches[0]:
            assert torch.equal(other[key], batches[0][key]), key
    # What `trl sft` runs (TRL's own vision collator, assistant_only_loss=True) labels the same tokens.
    trl_batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(
        [to_training_row(two_turn_rows(media_files)[1])])
    assert torch.equal(trl_batch["labels"], batches[0]["labels"])


def test_trl_vision_form_rows_pass_through(media_files):
    row = image_row(media_files["image0"])
    assert to_training_row(row) == row


@pytest.mark.parametrize("mutate, message", [
    (lambda r, m: r.update(filename=r["filename"][:2]), "marker"),
    (lambda r, m: r.update(filename=[r["filename"][0], "/nonexistent/x.png", r["filename"][2]]), "not found"),
])
def test_bad_paper_rows_raise_naming_the_row(processor, media_files, mutate, message):
    row = two_turn_rows(media_files)[2]
    mutate(row, media_files)
    with pytest.raises(ValueError, match=f"(?s)paper.*{message}"):
        MMMModalDataCollator(processor)([row])


def test_bad_chat_rows_raise_naming_the_row(processor, media_files):
    row = image_row(media_files["image0"], row_id="two-images-one-file")
    row["messages"][0]["content"].insert(0, {"type": "image"})
    with pytest.raises(ValueError, match="two-images-one-file.*image parts"):
        MMMModalDataCollator(processor)([row])
    missing = audio_row("/nonexistent/clip.wav", row_id="lost-audio")
    with pytest.raises(ValueError, match="lost-audio.*does not exist"):
        MMMModalDataCollator(processor)([missing])


def test_too_long_for_max_length_names_the_row_instead_of_cutting_a_span(processor, media_files):
    rows = [audio_row(media_files["audio0"], row_id="short"), image_row(media_files["image0"], row_id="long")]
    rows[1]["messages"][0]["content"].insert(0, {"type": "text", "text": "word " * 40})
    collator = MMMModalDataCollator(processor, max_length=40)
    with pytest.raises(ValueError, match="long.*media span"):
        collator(rows)
    skipping = MMMModalDataCollator(processor, max_length=40, skip_bad_rows=True)
    batch = skipping(rows)
    assert skipping.skipped == 1 and batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch


def test_skip_bad_rows_counts_and_keeps_the_good_ones(processor, media_files):
    collator = MMMModalDataCollator(processor, skip_bad_rows=True)
    batch = collator([audio_row("/nonexistent/a.wav"), image_row(media_files["image0"])])
    assert collator.skipped == 1 and batch["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match="Every row"):
        collator([audio_row("/nonexistent/b.wav")])


def test_prepare_dataset_names_bad_rows_or_skips_them_counted(media_files, caplog):
    from datasets import Dataset

    from processing.rows import prepare_dataset

    paper = two_turn_rows(media_files)[2]
    bad = {**paper, "id": "one-file-short", "filename": paper["filename"][:2]}
    dataset = Dataset.from_list([paper, bad])
    with pytest.raises(ValueError, match="one-file-short"):
        prepare_dataset(dataset)
    kept = prepare_dataset(dataset, skip_bad_rows=True)
    assert len(kept) == 1 and kept[0]["images"] == paper["filename"][:2]
    assert "Skipped 1 of 2 rows" in caplog.text
