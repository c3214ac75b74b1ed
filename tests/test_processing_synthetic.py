"""The synthetic shapes-and-beeps task: determinism, split disjointness, answers re-derived from
pixels and waveforms, and the evaluator's accuracy and chance levels."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from processing.synthetic_eval import evaluate, format_report, normalize_answer
from processing.synthetic_media import COLOURS, GRID_CELLS, PITCHES, SAMPLING_RATE, SHAPES
from processing.synthetic_questions import ATTRIBUTES, QUESTION_TYPES, chance_level, reference_answer
from processing.synthetic_task import TaskConfig, render_row, sample_split, signature, write_synthetic

CFG = TaskConfig(image_size=48)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(out, n_train=60, n_test=30, seed=3, cfg=CFG, n_alignment=20)


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_deterministic_by_seed(tmp_path, written):
    again = write_synthetic(tmp_path, n_train=60, n_test=30, seed=3, cfg=CFG, n_alignment=20)
    for split in ("train", "test", "alignment"):
        first, second = _rows(written[split]), _rows(again[split])
        assert [r["messages"][-1] for r in first] == [r["messages"][-1] for r in second]
        assert [r.get("answers") for r in first] == [r.get("answers") for r in second]
        for a, b in zip(first, second):
            for pa, pb in zip(a["images"], b["images"]):
                assert Path(pa).read_bytes() == Path(pb).read_bytes()
    assert _rows(written["train"])[0]["answers"] != _rows(write_synthetic(tmp_path / "s4", 1, 1, seed=4)["train"])[0]


def test_train_test_disjoint_even_with_same_seed():
    for train_seed, test_seed in ((0, 1), (5, 5)):
        train = {signature(s) for s in sample_split(400, train_seed, "train", CFG)}
        test = {signature(s) for s in sample_split(400, test_seed, "test", CFG)}
        assert not train & test


def _image_attributes(path):
    """Colour, shape and count of a drawn image, re-derived from its pixels."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    size = pixels.shape[0]
    ink = (pixels != 255).any(-1)
    colours = {name: rgb for name, (rgb, _) in COLOURS.items()}
    mean = pixels[ink].mean(0)
    colour = min(colours, key=lambda n: np.abs(np.array(colours[n]) - mean).sum())
    cell = size // 2
    cells = [ink[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] for c, r in GRID_CELLS]
    filled = [m for m in cells if m.any()]
    mask = filled[0][np.ix_(filled[0].any(1), filled[0].any(0))]  # crop to the shape's box
    ratio, widths = mask.mean(), mask.sum(1)
    if ratio > 0.95:
        shape = "square"
    elif ratio > 0.65:
        shape = "circle"
    else:
        shape = "triangle" if widths[-1] > widths[len(widths) // 2] else "diamond"
    return colour, shape, len(filled)


def _audio_attributes(path):
    """Beep count (runs of loud 10-ms frames) and pitch (spectral peak) from the waveform."""
    wave, sr = sf.read(path)
    assert sr == SAMPLING_RATE and 1.0 <= len(wave) / sr <= 3.0
    frames = np.abs(wave[: len(wave) // 160 * 160]).reshape(-1, 160).max(1) > 0.2
    count = int(np.sum(frames[1:] & ~frames[:-1]) + frames[0])
    peak = np.argmax(np.abs(np.fft.rfft(wave))) * sr / len(wave)
    pitch = min(PITCHES, key=lambda p: abs(PITCHES[p][0] - peak))
    return count, pitch


def _assert_media_match_recorded_attributes(rows):
    """Every image's pixels and every clip's waveform show the attributes its row records."""
    audio_paths = lambda row: [p["path"] for m in row["messages"] for p in m["content"] if p["type"] == "audio"]
    for row in rows:
        for path, spec in zip(row["images"], row["media"]["images"]):
            assert _image_attributes(path) == (spec["colour"], spec["shape"], spec["count"])
        for path, spec in zip(audio_paths(row), row["media"]["audios"]):
            assert _audio_attributes(path) == (spec["count"], spec["pitch"])


def test_media_match_recorded_attributes(written):
    _assert_media_match_recorded_attributes(_rows(written["train"]) + _rows(written["test"]))


def test_shorter_beeps_fit_the_task_into_one_second_clips(tmp_path):
    """`beep_seconds` sets both a beep's length and the gap after it: at 0.1 s four beeps and the latest onset fit a
    1 s clip (the demo's setting), which at the default 0.15 s they do not."""
    cfg = TaskConfig(image_size=32, clip_seconds=1.0, beep_seconds=0.1)
    written = write_synthetic(tmp_path / "short", n_train=40, n_test=0, seed=5, cfg=cfg)
    rows = _rows(written["train"])
    clips = [p["path"] for row in rows for m in row["messages"] for p in m["content"] if p["type"] == "audio"]
    counts = {spec["count"] for row in rows for spec in row["media"]["audios"]}
    assert len(clips) > 20 and counts == {1, 2, 3, 4}
    assert {sf.info(path).frames for path in clips} == {SAMPLING_RATE}
    _assert_media_match_recorded_attributes(rows)
    with pytest.raises(ValueError, match="raise `seconds` or shorten `beep_s`"):
        write_synthetic(tmp_path / "long", n_train=40, n_test=0, seed=5, cfg=TaskConfig(image_size=32, clip_seconds=1.0))


def test_answers_follow_from_media_and_wording(written):
    rows = _rows(written["train"])
    seen = set()
    for row in rows:
        assert len(row["qtypes"]) == len(row["answers"]) == len(row["verdicts"]) == len(row["messages"]) // 2
        n_images = sum(p["type"] == "image" for m in row["messages"] for p in m["content"])
        assert n_images == len(row["images"])
        for qtype, answer, verdict in zip(row["qtypes"], row["answers"], row["verdicts"]):
            question = QUESTION_TYPES[qtype]
            assert verdict in question.space(row["language"])
            if question.cross:  # "3, 2: yes": each item's attribute, in the row's language, then the verdict
                values, said = answer.split(": ")
                assert said == verdict
                assert len(values.split(", ")) == 2
                assert all(v in ATTRIBUTES[question.compared][1](row["language"]) for v in values.split(", "))
            else:
                assert answer == verdict
            seen.add(qtype)
    # Malay rows answer in Malay.
    ms = [a for r in rows if r["language"] == "ms" for q, a in zip(r["qtypes"], r["answers"]) if q == "image_colour"]
    assert set(ms) <= {name for _, name in COLOURS.values()}
    assert any(QUESTION_TYPES[q].cross for q in seen) and any(not QUESTION_TYPES[q].cross for q in seen)


def test_specific_answers(tmp_path):
    spec = sample_split(1, 0, "train", CFG)[0]
    row = render_row(spec, "x", tmp_path, CFG)
    one_word = render_row(spec, "x", tmp_path, TaskConfig(image_size=48, explain_comparisons=False))
    for turn, answer, verdict, plain in zip(spec["turns"], row["answers"], row["verdicts"], one_word["answers"]):
        qtype = QUESTION_TYPES[turn["qtype"]]
        media = [spec["images"][i] if k == "image" else spec["audios"][i] for k, i in zip(qtype.refs, turn["refs"])]
        assert verdict == plain == qtype.answer(media, spec["language"])
        assert answer == reference_answer(qtype, media, spec["language"])


def test_explained_comparisons_name_both_items_then_the_verdict():
    from processing.synthetic_media import AudioSpec, ImageSpec

    two, three = ImageSpec("red", "circle", 2, (0, 1)), ImageSpec("blue", "square", 3, (0, 1, 2))
    more = QUESTION_TYPES["image_image_more"]
    assert reference_answer(more, [three, two], "en") == "3, 2: yes"
    assert reference_answer(more, [two, three], "ms") == "2, 3: tidak"
    assert reference_answer(more, [two, three], "en", explain=False) == "no"
    colour = QUESTION_TYPES["image_image_colour"]
    assert reference_answer(colour, [two, three], "ms") == "merah, biru: tidak"
    pitch = QUESTION_TYPES["audio_audio_pitch"]
    assert reference_answer(pitch, [AudioSpec(1, "low", 0.1), AudioSpec(4, "low", 0.1)], "en") == "low, low: yes"
    which = QUESTION_TYPES["image_audio_more"]
    assert reference_answer(which, [two, AudioSpec(2, "high", 0.1)], "ms") == "2, 2: sama"
    assert reference_answer(QUESTION_TYPES["image_count"], [three], "en") == "3"  # single-media: one word


def test_alignment_captions_match_media(written):
    for row in _rows(written["alignment"]):
        caption = row["messages"][-1]["content"][0]["text"]
        if row["images"]:
            colour, shape, count = _image_attributes(row["images"][0])
            if row["language"] == "en":
                assert caption.split()[1:] == [colour, shape + ("s" if count > 1 else "")]
            else:
                assert caption.split()[1:] == [SHAPES[shape], COLOURS[colour][1]]
        else:
            count, pitch = _audio_attributes(row["messages"][0]["content"][0]["path"])
            assert normalize_answer(caption.split()[0]) == str(count)


def test_loads_with_datasets(written):
    import datasets

    ds = datasets.load_dataset("json", data_files={k: written[k] for k in ("train", "test")})
    assert ds["train"].num_rows == 60 and ds["test"].num_rows == 30
    assert Path(ds["train"][0]["images"][0] if ds["train"][0]["images"] else written["train"]).exists()


def test_chance_levels():
    assert chance_level("image_colour") == pytest.approx(1 / len(COLOURS))
    assert chance_level("image_shape", "ms") == pytest.approx(1 / len(SHAPES))
    assert chance_level("audio_pitch") == pytest.approx(1 / 3)
    assert chance_level("image_count") == chance_level("audio_count") == pytest.approx(1 / 4)
    assert chance_level("image_audio_same_count") == chance_level("audio_audio_pitch") == 0.5
    assert chance_level("image_audio_more") == pytest.approx(1 / 3)
    # an explained comparison: a uniform guess over the pairs of attribute values (each fixes the verdict)
    assert chance_level("image_image_colour", "ms", explained=True) == pytest.approx(1 / len(COLOURS) ** 2)
    assert chance_level("audio_audio_pitch", explained=True) == pytest.approx(1 / 9)
    assert chance_level("image_audio_more", explained=True) == pytest.approx(1 / 16)
    assert chance_level("image_count", explained=True) == pytest.approx(1 / 4)  # single-media: unchanged


def test_evaluator_explained_answers_need_attributes_and_verdict():
    rows = [{"qtypes": ["image_image_more"] * 4, "answers": ["3, 2: yes", "1, 4: no", "2, 2: no", "4, 3: yes"],
             "verdicts": ["yes", "no", "no", "yes"], "language": "en"}]
    preds = [["three, 2: YES",  # right (normalised)
              "1, 3: no",  # a wrong count, right verdict
              "2, 2: yes",  # wrong verdict
              "3, 4: yes"]]  # items swapped, right verdict
    r = evaluate(rows, predictions=preds)["per_type"]["image_image_more"]
    assert r["accuracy"] == pytest.approx(1 / 4)  # the whole answer must match
    assert r["verdict_accuracy"] == pytest.approx(3 / 4)  # the last word alone
    assert r["chance"] == pytest.approx(1 / 16)
    assert r["verdict_majority"] == pytest.approx(2 / 4) and r["majority"] == pytest.approx(1 / 4)


def test_evaluator_perfect_answer_fn(written):
    rows = _rows(written["test"])
    lookup = {}
    for row in rows:
        turns = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]
        for i, answer in zip(turns, row["answers"]):
            lookup[json.dumps([row["messages"][:i], row["images"]])] = f"  {answer.upper()}. "  # normalisation is tested too
    result = evaluate(rows, answer_fn=lambda messages, images: lookup[json.dumps([messages, images])])
    assert result["overall"]["accuracy"] == 1.0
    assert result["single_media"]["n"] + result["cross_media"]["n"] == result["overall"]["n"]
    assert "single_media" in format_report(result)


def test_evaluator_random_is_near_chance():
    specs = sample_split(1500, 11, "test", CFG)
    rows = []
    for spec in specs:  # rows without media files: the evaluator needs only qtypes/answers/language
        answers = []
        for turn in spec["turns"]:
            qtype = QUESTION_TYPES[turn["qtype"]]
            media = [spec["images"][i] if k == "image" else spec["audios"][i] for k, i in zip(qtype.refs, turn["refs"])]
            answers.append(qtype.answer(media, spec["language"]))
        rows.append({"qtypes": [t["qtype"] for t in spec["turns"]], "answers": answers, "language": spec["language"]})
    rng = random.Random(0)
    preds = [[rng.choice(QUESTION_TYPES[q].space(r["language"])) for q in r["qtypes"]] for r in rows]
    result = evaluate(rows, predictions=preds)
    for name in ("single_media", "cross_media"):
        assert abs(result[name]["accuracy"] - result[name]["chance"]) < 0.04, result[name]
    for qtype, r in result["per_type"].items():
        assert abs(r["accuracy"] - r["chance"]) < 4 * (r["chance"] * (1 - r["chance"]) / r["n"]) ** 0.5 + 0.01, qtype


def test_majority_baseline_is_what_a_constant_answer_per_language_scores():
    rows = [{"qtypes": ["image_image_colour"] * 4, "answers": ["no", "no", "no", "yes"], "language": "en"},
            {"qtypes": ["image_image_colour"] * 2, "answers": ["tidak", "ya"], "language": "ms"},
            {"qtypes": ["image_colour"] * 2, "answers": ["red", "blue"], "language": "en"}]
    constant = [["no"] * 4, ["tidak"] * 2, ["red"] * 2]
    result = evaluate(rows, predictions=constant)
    same = result["per_type"]["image_image_colour"]
    assert same["majority"] == pytest.approx(4 / 6) == pytest.approx(same["accuracy"])  # "no"/"tidak" both count
    assert result["cross_media"]["majority"] == pytest.approx(4 / 6)
    assert result["single_media"]["majority"] == pytest.approx(1 / 2)
    assert result["overall"]["majority"] == pytest.approx(5 / 8) == pytest.approx(result["overall"]["accuracy"])
    assert result["cross_media"]["verdict_majority"] == pytest.approx(4 / 6)  # rows without verdicts: the answers


def test_evaluator_rejects_misaligned_predictions(written):
    rows = _rows(written["test"])[:2]
    with pytest.raises(ValueError, match="expected one list per row"):
        evaluate(rows, predictions=[[]])
    with pytest.raises(ValueError, match=rows[0]["id"]):
        evaluate(rows, predictions=[[], []])
