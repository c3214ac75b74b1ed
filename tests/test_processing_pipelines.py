"""Each data pipeline end to end with tiny local models: ASR -> audio chats, visual QA,
relationship, then combine and convert to training rows. Texts are gibberish; shapes are checked."""

import json

import datasets
import pytest

from _fixtures_processing import tiny_models, write_clips, write_images
from processing.asr import PseudoLabeller, compression_ratio, keep_transcript, pseudo_label
from processing.audio_instructions import audio_instructions
from processing.combine import combine
from processing.convert import convert_records
from processing.generators import LLMTranslator, TransformersGenerator
from processing.jsonl_io import failed_path, read_jsonl
from processing.relationship import relationship
from processing.translate import Seq2SeqTranslator
from processing.visual_qa import visual_qa


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    models = tiny_models(root / "models")
    return {"root": root, **models, "generator": TransformersGenerator(models["llm"], max_new_tokens=6),
            "translator": Seq2SeqTranslator(models["mt"], max_new_tokens=6),
            "clips": write_clips(root / "clips", 3), "images": write_images(root / "images", 4)}


@pytest.fixture(scope="module")
def asr_rows(env):
    out = env["root"] / "asr.jsonl"
    labeller = PseudoLabeller(env["asr"], batch_size=2, language="ms")
    stats = pseudo_label(env["clips"], out, labeller)
    assert stats == {"total": 3, "skipped_done": 0, "written": 3, "failed": 0}
    env["labeller"] = labeller
    return read_jsonl(out)


def test_asr_unreadable_clip_fails_alone(env, tmp_path):
    """A clip that cannot be decoded fails its row only; its chunk's other clips are labelled."""
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really a wave file")
    out = tmp_path / "asr.jsonl"
    clips = [env["clips"][0], broken, env["clips"][1]]
    stats = pseudo_label(clips, out, PseudoLabeller(env["asr"], batch_size=3), chunk_size=3)
    assert stats == {"total": 3, "skipped_done": 0, "written": 2, "failed": 1}
    assert [r["filename"] for r in read_jsonl(out)] == [[str(env["clips"][0])], [str(env["clips"][1])]]
    [record] = read_jsonl(failed_path(out))
    assert record["item"] == str(broken) and record["error"]


def _check_paper_turns(conversations, n_turns, kind, translated=True):
    assert [t["role"] for t in conversations] == ["user", "assistant"] * n_turns
    assert conversations[0]["content"].startswith(f"<{kind}>")
    assert all(f"<{kind}>" not in t["content"] for t in conversations[1:])
    if translated:
        assert conversations[0]["content_ms"].startswith(f"<{kind}>")
        assert all(isinstance(t["content_ms"], str) for t in conversations)


def test_asr_rows_and_score(env, asr_rows):
    for row, clip in zip(sorted(asr_rows, key=lambda r: r["filename"][0]), env["clips"]):
        assert row["filename"] == [str(clip)] and row["transcript"]
        assert row["score"] <= 0.0 and row["compression_ratio"] == compression_ratio(row["transcript"])
        assert row["duration_s"] == pytest.approx(1.0)
    # Transcription and score use the same prompt (<|ms|><|transcribe|>); greedy output scores
    # higher than another text under the same model and audio.
    labeller = env["labeller"]
    prefix = labeller.pipe.tokenizer.convert_ids_to_tokens(labeller.pipe.tokenizer.prefix_tokens)
    assert prefix == ["<|startoftranscript|>", "<|ms|>", "<|transcribe|>", "<|notimestamps|>"]
    from transformers.audio_utils import load_audio

    audio = load_audio(str(env["clips"][0]), sampling_rate=16000)
    row = next(r for r in asr_rows if r["filename"] == [str(env["clips"][0])])
    assert labeller.score(audio, row["transcript"]) == pytest.approx(row["score"], abs=1e-4)
    assert row["score"] > labeller.score(audio, "Apakah kaitan antara gambar 1 dan gambar 2?")
    # The untrained tiny Whisper loops ("re re re ..."): the repetition filter rejects it.
    assert not any(keep_transcript(r) for r in asr_rows)
    assert all(keep_transcript(r, min_score=-1e9, max_compression_ratio=1e9) for r in asr_rows)


@pytest.fixture(scope="module")
def audio_chat(env, asr_rows):
    out = env["root"] / "audio_chat.jsonl"
    stats = audio_instructions(asr_rows, out, env["generator"], n_turns=2, translator=env["translator"],
                               min_score=-1e9, max_compression_ratio=1e9, chunk_size=2)
    return stats, read_jsonl(out)


@pytest.fixture(scope="module")
def visual_chat(env):
    captions = [{"filename": [str(p)], "caption": f"a picture number {k}"} for k, p in enumerate(env["images"])]
    out = env["root"] / "visual_qa.jsonl"
    stats = visual_qa(captions, out, env["generator"], n_turns=3, translator=LLMTranslator(env["generator"]))
    return stats, captions, read_jsonl(out)


def test_audio_instructions(env, asr_rows, audio_chat):
    stats, rows = audio_chat
    assert stats["written"] == 3 and stats["filtered_out"] == 0
    for row in rows:
        assert set(row) == {"id", "filename", "filename_description", "conversations"}
        _check_paper_turns(row["conversations"], 2, "audio")
    assert {r["filename_description"][0] for r in rows} == {r["transcript"] for r in asr_rows}
    # Default thresholds drop every (looping) transcript, and say so.
    assert audio_instructions(asr_rows, env["root"] / "none.jsonl", env["generator"])["filtered_out"] == 3


def test_visual_qa_with_llm_translation(env, visual_chat):
    stats, captions, rows = visual_chat
    assert stats["written"] == 4
    assert [r["filename"] for r in rows] == [c["filename"] for c in captions]
    for row in rows:
        _check_paper_turns(row["conversations"], 3, "image")
    with pytest.raises(ValueError, match="Caption row 7"):
        visual_qa([{"id": 7, "filename": []}], env["root"] / "bad.jsonl", env["generator"])


def test_relationship(env, asr_rows):
    images = [{"filename": [str(p)], "caption": f"picture {k}"} for k, p in enumerate(env["images"])]
    out = env["root"] / "relationship.jsonl"
    audios = [{**r, "keep": True} for r in asr_rows]  # rows failing the ASR filter would be left out
    stats = relationship(images, audios, out, env["generator"], n_per_kind=2, translator=env["translator"])
    assert stats["written"] == 6
    rows = read_jsonl(out)
    assert sorted({r["kind"] for r in rows}) == ["audio-audio", "audio-image", "image-image"]
    for row in rows:
        assert {"instruction", "answer", "instruction_ms", "answer_ms"} <= set(row)
        first, second = row["kind"].split("-")
        assert row["conversations"][0]["content"] == f"<{first}><{second}>{row['instruction']}"
        assert len(row["filename"]) == 2 and row["filename"][0] != row["filename"][1]
    assert next(r for r in rows if r["kind"] == "audio-image")["instruction"].endswith("audio 1 and picture 1?")


def test_pipeline_outputs_combine_and_convert(env, audio_chat, visual_chat):
    image_rows, audio_rows = visual_chat[2], audio_chat[1]
    assert len(image_rows) == 4 and len(audio_rows) == 3
    combined, stats = combine(image_rows, audio_rows, seed=1)
    assert stats["rows"] >= 1
    records = combined + image_rows + audio_rows
    rows, stats = convert_records(records, languages=("en", "ms"))
    assert stats == {"records": len(records), "rows": 2 * len(records), "skipped": 0}
    for row, record in zip(rows[::2], records):
        audio = [p["path"] for m in row["messages"] for p in m["content"] if p["type"] == "audio"]
        kinds = ["image" if f.endswith(".png") else "audio" for f in record["filename"]]
        assert row["images"] == [f for f, k in zip(record["filename"], kinds) if k == "image"]
        assert audio == [f for f, k in zip(record["filename"], kinds) if k == "audio"]
    dataset = datasets.Dataset.from_list(rows)
    assert dataset.num_rows == len(rows) and set(dataset.column_names) == {"id", "messages", "images"}
    json.dumps(dataset[0])


def test_cli_audio_instructions_then_relationship(env, tmp_path):
    from mmmmodal.cli import main

    out = tmp_path / "chat.jsonl"
    common = ["--llm", env["llm"], "--max-new-tokens", "4", "--temperature", "0", "--translator", env["mt"]]
    argv = ["data", "audio-instructions", "--audio", str(env["root"] / "clips"), "--asr", env["asr"], "--turns", "1",
            "--asr-language", "en",
            "--min-score=-1e9", "--max-compression-ratio", "1e9", "--out", str(out)] + common
    assert main(argv) == 0
    asr_rows, rows = read_jsonl(tmp_path / "chat.asr.jsonl"), read_jsonl(out)
    assert len(asr_rows) == len(rows) == 3 and all(r["keep"] for r in asr_rows)
    assert all(r["conversations"][0]["content_ms"].startswith("<audio>") for r in rows)
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"filename": [str(p)], "caption": "x"}) + "\n" for p in env["images"]))
    rel = tmp_path / "rel.jsonl"
    assert main(["data", "relationship", "--images", str(captions), "--audios", str(tmp_path / "chat.asr.jsonl"),
                 "--kinds", "audio-image", "--pairs-per-kind", "2", "--out", str(rel)] + common) == 0
    assert [r["kind"] for r in read_jsonl(rel)] == ["audio-image"] * 2
