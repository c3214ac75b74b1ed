"""Paper records load as they are and become training rows; bad rows raise naming the row, or are
skipped and counted; the CLI writes rows that `datasets` loads."""

import json
import logging

import pytest
import soundfile as sf

from _fixtures_processing import write_clips, write_images
from processing.convert import convert_records, load_records, record_to_row
from processing.synthetic_questions import QUESTION_TYPES


@pytest.fixture()
def media(tmp_path):
    return {"images": write_images(tmp_path / "media", 3), "clips": write_clips(tmp_path / "media", 2, 0.2),
            "root": tmp_path}


def paper_records():
    """Records in the paper's own shapes (relative filenames, as in the released files)."""
    return [
        {"filename": ["media/img0.png"], "filename_description": ["a car"],
         "conversations": [{"role": "user", "content": "<image>What car is this?", "content_ms": "<image>Ini model apa?"},
                           {"role": "assistant", "content": "A sedan.", "content_ms": "Sebuah sedan."}]},
        {"id": "mixed-1", "filename": ["media/clip0.wav", "media/img1.png", "media/clip1.wav"],
         "chat": [{"role": "user", "content": "<audio>What is Tasha's opinion?", "content_ms": "Apa pendapat Tasha?"},
                  {"role": "assistant", "content": "She likes it.", "content_ms": "Dia suka."},
                  {"role": "user", "content": "<image></image> and <audio> what is related between picture 1 "
                                              "and audio 2?",
                   "content_ms": "<image><audio>apa kaitan antara gambar 1 dan audio 2?"},
                  {"role": "assistant", "content": "Both are loud.", "content_ms": "Kedua-duanya bising."}]},
    ]


def test_paper_records_convert_in_both_languages(media):
    rows, stats = convert_records(paper_records(), languages=("en", "ms"), media_root=media["root"])
    assert stats == {"records": 2, "rows": 4, "skipped": 0}
    en, ms = rows[2], rows[3]
    assert en["id"] == "mixed-1:en" and ms["id"] == "mixed-1:ms" and rows[0]["id"] == "#0:en"
    images, clips = [str(p) for p in media["images"]], [str(p) for p in media["clips"]]
    assert en["images"] == ms["images"] == [images[1]]
    assert en["messages"][0]["content"] == [{"type": "audio", "path": clips[0]},
                                            {"type": "text", "text": "What is Tasha's opinion?"}]
    # The Malay turn lost its marker: the English turn's marker is put back in front.
    assert ms["messages"][0]["content"][0] == {"type": "audio", "path": clips[0]}
    assert ms["messages"][0]["content"][1]["text"] == "Apa pendapat Tasha?"
    assert [p["type"] for p in en["messages"][2]["content"]] == ["image", "text", "audio", "text"]
    assert en["messages"][2]["content"][2]["path"] == clips[1]
    assert ms["messages"][3]["content"] == [{"type": "text", "text": "Kedua-duanya bising."}]
    assert rows[1]["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": "Ini model apa?"}]


def test_dataset_and_json_roundtrip(media, tmp_path):
    import datasets

    rows, _ = convert_records(paper_records(), languages=("en",), media_root=media["root"])
    ds = datasets.Dataset.from_list(rows)  # Arrow gives every part the union of the part keys, absent ones None
    assert ds[1]["messages"][0]["content"][0] == {"type": "audio", "text": None, "path": str(media["clips"][0])}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = datasets.load_dataset("json", data_files=str(path))["train"]
    drop_none = lambda messages: [{**m, "content": [{k: v for k, v in p.items() if v is not None} for p in m["content"]]}
                                  for m in messages]
    assert loaded[1]["images"] == ds[1]["images"] and loaded[1]["messages"] == drop_none(ds[1]["messages"])
    assert loaded[1]["messages"] == rows[1]["messages"]


def test_bad_records_raise_naming_the_row(media):
    root = media["root"]
    good = paper_records()[0]
    more_markers = {**good, "id": "r1", "conversations": [{"role": "user", "content": "<image><image>two?"}]}
    with pytest.raises(ValueError, match="Record r1: more markers than files"):
        record_to_row(more_markers, 0, media_root=root)
    more_files = {**good, "filename": ["media/img0.png", "media/img1.png"]}
    with pytest.raises(ValueError, match=r"Record #5: expected one marker per file \(2 filename"):
        record_to_row(more_files, 5, media_root=root)
    missing = {**good, "id": "gone", "filename": ["media/nope.png"]}
    with pytest.raises(ValueError, match="Record gone: file 'media/nope.png' not found"):
        record_to_row(missing, 0, media_root=root)
    wrong_kind = {**good, "id": "k", "filename": ["media/clip0.wav"]}
    with pytest.raises(ValueError, match="Record k: marker 1 is <image> but its file .* is audio"):
        record_to_row(wrong_kind, 0, media_root=root)
    no_ms = {**good, "id": "m", "conversations": [{"role": "user", "content": "<image>hi"}]}
    with pytest.raises(ValueError, match="Record m: turn 0 has no `content_ms`"):
        record_to_row(no_ms, 0, language="ms", media_root=root)
    with pytest.raises(ValueError, match="Record #0: turn 0: expected role"):
        record_to_row({**good, "conversations": [{"role": "narrator", "content": "<image>"}]}, 0, media_root=root)


def test_skip_bad_rows_counts_and_warns(media, caplog):
    records = paper_records() + [{"id": "bad", "filename": ["media/nope.png"],
                                  "conversations": [{"role": "user", "content": "<image>?"}]}]
    with pytest.raises(ValueError, match="Record bad"):
        convert_records(records, media_root=media["root"])
    with caplog.at_level(logging.WARNING, logger="processing.convert"):
        rows, stats = convert_records(records, languages=("en", "ms"), media_root=media["root"], skip_bad_rows=True)
    assert stats == {"records": 3, "rows": 4, "skipped": 1}
    assert "Record bad" in caplog.text and "skipped 1 of 3" in caplog.text


def test_filename_type_overrides_extension(media):
    record = {"id": "t", "filename": ["media/img0.png"], "filename_type": ["audio"],
              "conversations": [{"role": "human", "content": "<audio>x"}, {"role": "gpt", "content": "y"}]}
    row = record_to_row(record, 0, media_root=media["root"], check_files=False)
    assert row["messages"][0]["content"][0]["type"] == "audio" and row["images"] == []
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_cli_convert_and_synthetic(media, tmp_path):
    import datasets

    from mmmmodal.cli import main

    records = media["root"] / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in paper_records()))
    out = tmp_path / "out" / "train.jsonl"
    assert main(["data", "convert", "--input", str(records), "--languages", "en,ms", "--out", str(out)]) == 0
    assert datasets.load_dataset("json", data_files=str(out))["train"].num_rows == 4
    assert len(load_records(out)) == 4
    syn = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(syn), "--train", "5", "--test", "3", "--alignment", "2",
                 "--image-size", "32"]) == 0
    assert len(load_records(syn / "train.jsonl")) == 5 and len(load_records(syn / "alignment.jsonl")) == 2
    short = tmp_path / "short"  # the demo's clips: 1 s of 0.1 s beeps
    assert main(["data", "synthetic", "--out", str(short), "--train", "5", "--test", "1", "--image-size", "32",
                 "--clip-seconds", "1", "--beep-seconds", "0.1"]) == 0
    clips = sorted((short / "media").rglob("*.wav"))
    assert clips and {sf.info(path).duration for path in clips} == {1.0}
    plain = tmp_path / "plain"  # same seed, comparisons answered by their verdict alone
    assert main(["data", "synthetic", "--out", str(plain), "--train", "40", "--test", "1", "--image-size", "32",
                 "--one-word-comparisons"]) == 0
    rows = [json.loads(line) for line in open(plain / "train.jsonl", encoding="utf-8")]
    assert all(r["answers"] == r["verdicts"] for r in rows)
    assert any(QUESTION_TYPES[q].cross for r in rows for q in r["qtypes"])  # there were comparisons to answer
    with pytest.raises(SystemExit):
        main(["data", "combine", "--help"])
