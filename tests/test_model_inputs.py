"""The processor and model on chat messages, paths, and every kind of bad input."""

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import random_audio, random_image

from mmmmodal.build import build_tiny


def two_turn_conversation(media):
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are helpful."}]},
        {"role": "user", "content": [
            {"type": "image", "path": media["image0"]},
            {"type": "image", "path": media["image1"]},
            {"type": "text", "text": "Compare picture 1 and picture 2."},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "Both are noisy."}]},
        {"role": "user", "content": [{"type": "audio", "path": media["audio1"]}, {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": "A hiss."},
    ]


def test_chat_template_loads_media_and_marks_only_assistant_tokens(tiny, media_files):
    _, processor = tiny
    out = processor.apply_chat_template(
        two_turn_conversation(media_files), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        return_tensors="pt",
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    assert out["pixel_values"].shape[0] == 2 and out["input_features"].shape[0] == 1
    marked = processor.tokenizer.decode(ids[mask])
    assert marked == "Both are noisy.<|im_end|>A hiss.<|im_end|>"
    span_ids = {processor.image_token_id, processor.audio_token_id, processor.image_start_token_id,
                processor.image_end_token_id, processor.audio_start_token_id, processor.audio_end_token_id}
    assert not any(int(t) in span_ids for t in ids[mask])


def test_audio_at_another_rate_is_resampled(tiny, media_files):
    _, processor = tiny
    # audio1 is 2 s at 22.05 kHz: after resampling to 16 kHz it fills 200 mel frames
    out = processor(text="<audio>", audio=media_files["audio1"])
    assert int(np.asarray(out["input_features_mask"]).sum()) == 200
    array, rate = sf.read(media_files["audio1"], dtype="float32")
    from_array = processor(text="<audio>", audio={"array": array, "sampling_rate": rate})
    assert int(np.asarray(from_array["input_features_mask"]).sum()) == 200


def test_rows_from_datasets_with_none_keys(tiny, media_files):
    _, processor = tiny
    none_keys = {"text": None, "path": None, "url": None, "image": None, "audio": None}
    messages = [{"role": "user", "content": [
        {**none_keys, "type": "image", "path": media_files["image0"]},
        {**none_keys, "type": "audio", "path": media_files["audio0"]},
        {**none_keys, "type": "text", "text": "hi"},
    ]}]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert np.asarray(out["pixel_values"]).shape[0] == 1 and np.asarray(out["input_features"]).shape[0] == 1


@pytest.mark.parametrize(
    "text, n_images, match",
    [
        ("<image> <image>", 1, r"2 <image> placeholders .* but 1 image"),
        ("<image>", 2, r"1 <image> placeholders .* but 2 image"),
        ("no placeholder", 1, r"0 <image> placeholders .* but 1 image"),
    ],
)
def test_placeholder_and_image_counts_must_agree(tiny, text, n_images, match):
    _, processor = tiny
    with pytest.raises(ValueError, match=match):
        processor(text=text, images=[random_image(i) for i in range(n_images)])


def test_audio_placeholder_count_must_agree_per_sample(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="Sample 1 has 1 <audio> placeholders but 2"):
        processor(text=["<audio>", "<audio>"], audio=[[random_audio(0, 1)], [random_audio(1, 1), random_audio(2, 1)]])


def test_placeholder_without_a_tower(tmp_path):
    model, processor = build_tiny(tmp_path, audio=False, seed=3)
    with pytest.raises(ValueError, match="no audio tower"):
        processor(text="<audio>", audio=random_audio(0, 1.0))
    with pytest.raises(ValueError, match="no audio tower"):
        model(input_ids=torch.tensor([[1, 2]]), input_features=torch.zeros(1, 80, 300))


def test_unreadable_and_empty_media_name_the_file(tiny, tmp_path):
    _, processor = tiny
    bad_image = tmp_path / "not_an_image.png"
    bad_image.write_text("this is text")
    with pytest.raises(ValueError, match="not_an_image.png"):
        processor(text="<image>", images=str(bad_image))
    with pytest.raises(ValueError, match="missing.png"):
        processor(text="<image>", images=str(tmp_path / "missing.png"))
    empty_audio = tmp_path / "empty.wav"
    sf.write(empty_audio, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(ValueError, match="empty.wav"):
        processor(text="<audio>", audio=str(empty_audio))
    corrupt_audio = tmp_path / "corrupt.wav"
    corrupt_audio.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.wav"):
        processor(text="<audio>", audio=str(corrupt_audio))
    messages = [{"role": "user", "content": [{"type": "audio", "path": str(corrupt_audio)}]}]
    with pytest.raises(ValueError, match="corrupt.wav"):
        processor.apply_chat_template(messages, tokenize=True, return_dict=True)


def test_unreachable_url_is_a_clear_error(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="127.0.0.1:9"):
        processor(text="<image>", images="http://127.0.0.1:9/cat.png")


def test_audio_over_the_cap_is_refused(tiny):
    _, processor = tiny
    cap = processor.max_audio_seconds
    with pytest.raises(ValueError, match="max_audio_seconds"):
        processor(text="<audio>", audio=np.zeros(int((cap + 1) * 16000), dtype="float32"))


def test_feature_and_pad_counts_must_match_in_the_model(tiny):
    model, processor = tiny
    batch = processor(text="<image> x", images=random_image(0), return_tensors="pt")
    ids = batch["input_ids"]
    pads = (ids == processor.image_token_id).nonzero()
    ids = ids.clone()
    ids[0, pads[0, 1]] = processor.tokenizer.convert_tokens_to_ids("<pad>")
    with pytest.raises(ValueError, match="15 image pad tokens but the image inputs give 16"):
        model(input_ids=ids, pixel_values=batch["pixel_values"])


def test_truncation_never_cuts_a_span(tiny):
    _, processor = tiny
    text = "hello there <image> and some words after it"
    full = processor(text=text, images=random_image(0))["input_ids"][0]
    span_end = full.index(processor.image_end_token_id) + 1
    with pytest.raises(ValueError, match="cut through a media span"):
        processor(text=text, images=random_image(0), truncation=True, max_length=span_end - 3)
    kept = processor(text=text, images=random_image(0), truncation=True, max_length=span_end + 1)["input_ids"][0]
    assert kept == full[: span_end + 1]


def test_padding_to_multiple_and_left_side(tiny):
    _, processor = tiny
    out = processor(text=["<image> a", "b"], images=[[random_image(0)], []], padding=True, pad_to_multiple_of=8,
                    padding_side="left", return_tensors="pt")
    assert out["input_ids"].shape[1] % 8 == 0
    assert out["attention_mask"][1, 0] == 0 and out["attention_mask"][1, -1] == 1


def test_raw_pad_tokens_in_text_are_refused(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="raw <\\|image_pad\\|>"):
        processor(text="<|image_pad|><|image_pad|> sneaky")


@pytest.mark.parametrize("chunk_seconds", [3, 30])
def test_log_mel_over_the_real_samples_equals_the_padded_computation(tiny, chunk_seconds):
    """The processor runs the STFT over each clip's samples only; every frame the encoder reads must equal the
    feature extractor's own computation over the window padded to its full length."""
    import copy

    from transformers import WhisperFeatureExtractor

    _, processor = tiny
    processor = copy.copy(processor)
    extractor = processor.feature_extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=chunk_seconds)
    rng = np.random.default_rng(0)
    seconds = [0.01, 0.3, 1.0, 2.5, chunk_seconds - 0.01, chunk_seconds, chunk_seconds * 2 + 1.2]
    clips = [(rng.standard_normal(int(s * 16000)) * 0.1).astype("float32") for s in seconds]
    clips.append(np.zeros(4000, dtype="float32"))  # silence: the floor everywhere
    out = processor(text="<audio>" * len(clips), audio=clips)
    windows = [clip[i : i + extractor.n_samples] for clip in clips for i in range(0, clip.size, extractor.n_samples)]
    padded = extractor(windows, sampling_rate=16000, padding="max_length", return_attention_mask=True,
                       return_tensors="np")
    np.testing.assert_allclose(out["input_features"], padded["input_features"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["input_features_mask"], padded["attention_mask"])
