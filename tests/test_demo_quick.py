"""A shortened `mmmmodal demo` run (tiny data, a few steps per stage): the report's shape, not its accuracy.

The full demo (10 minutes) is too slow for CI; this runs the same code path end to end through the CLI.
"""

import json
import re

import pytest
import torch
from PIL import Image

from mmmmodal.cli import main
from processing.synthetic_questions import QUESTION_TYPES, chance_level


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--quick", "--seed", "1"]) == 0
    return out


def test_report_json_has_the_required_keys(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    for key in ("accuracy", "chance", "single_media", "cross_media", "minutes"):
        assert key in report
    assert report["accuracy"] and set(report["accuracy"]) == set(report["chance"])
    assert set(report["accuracy"]) <= set(QUESTION_TYPES)
    for qtype, value in report["accuracy"].items():
        assert 0.0 <= value <= 1.0
        question = QUESTION_TYPES[qtype]  # comparisons are explained ("3, 2: yes"): chance over value pairs
        assert report["chance"][qtype] == pytest.approx(chance_level(qtype, "en", explained=question.cross))
    assert 0.0 <= report["single_media"] <= 1.0 and 0.0 <= report["cross_media"] <= 1.0
    assert set(report["majority"]) == set(report["accuracy"])  # the no-media baseline, per type and overall
    assert all(0.0 < v <= 1.0 for v in report["majority"].values())
    assert 0.0 < report["majority_single_media"] <= 1.0 and 0.0 < report["majority_cross_media"] <= 1.0
    cross = {q for q in report["accuracy"] if QUESTION_TYPES[q].cross}  # the verdict alone, for comparisons
    assert set(report["verdict_accuracy"]) == set(report["verdict_majority"]) == cross
    assert all(report["verdict_accuracy"][q] >= report["accuracy"][q] for q in cross)
    assert 0.0 < report["verdict_majority_cross_media"] <= 1.0
    assert 0.0 < report["minutes"] < 10.0
    assert report["quick"] is True
    stage2 = report["stage2"]  # what ran: packed by default, the tokens it computed and those with a label
    assert stage2["batches"] == "packed" and 1 <= stage2["steps"] <= report["settings"]["max_steps"]
    assert stage2["tokens_computed"] > stage2["tokens_labelled"] > 0 and stage2["seconds"] > 0


def test_png_is_a_valid_image(demo_out):
    with Image.open(demo_out / "report.png") as image:
        image.verify()
    with Image.open(demo_out / "report.png") as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 300


def test_markdown_states_the_numbers(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    text = (demo_out / "report.md").read_text()
    assert f"single-media {report['single_media']:.3f}" in text
    assert f"cross-media {report['cross_media']:.3f}" in text
    assert f"majority answer {report['majority_cross_media']:.3f}" in text
    assert f"the verdict is right {report['verdict_cross_media']:.3f}" in text
    assert f"{report['minutes']:.2f} minutes" in text
    assert "report.png" in text
    assert "stand-in for the pretrained" in text  # stage 0 is labelled for what it is
    stage2 = report["stage2"]
    assert (f"Stage 2 ran: packed, {stage2['steps']:,} steps" in text and f"{stage2['tokens_computed']:,} tokens "
            f"computed, {stage2['tokens_labelled']:,} labelled" in text and "labelled tokens/s" in text)
    weights = report["data"]["question_weights"]  # the question mix is stated (train and held-out share it)
    assert set(weights) == set(QUESTION_TYPES) and "question mix" in text
    assert all(f"{qtype} {weight:g}" in text for qtype, weight in weights.items())
    for qtype, value in report["accuracy"].items():
        assert re.search(rf"\| {qtype} \| \w+ \| \d+ \| {value:.3f} \|", text)


def test_conversation_has_two_images_two_clips_and_several_turns(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    turns = report["conversation"]
    assert len(turns) >= 2
    questions = " ".join(t["question"] for t in turns)
    assert questions.count("<image>") == 2 and questions.count("<audio>") == 2
    assert all(isinstance(t["answer"], str) and t["expected"] for t in turns)


def test_every_clip_of_the_task_fills_exactly_one_whisper_window(demo_out):
    """The demo sizes the tiny Whisper's window to the task's clips: no clip is split, none padded with silence
    that the frozen audio tower would still have to encode."""
    from mmmmodal.demo.data import task_config

    extractor = json.loads((demo_out / "checkpoint" / "processor_config.json").read_text())["feature_extractor"]
    assert extractor["n_samples"] == round(task_config().clip_seconds * extractor["sampling_rate"])


def test_checkpoint_reloads_with_remote_code(demo_out):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    report = json.loads((demo_out / "report.json").read_text())
    assert report["reload_max_abs_diff"] < 1e-4
    checkpoint = demo_out / "checkpoint"
    config = json.loads((checkpoint / "config.json").read_text())
    assert "AutoModelForImageTextToText" in config["auto_map"]
    assert (checkpoint / "modeling_mmmmodal.py").exists()
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(model).__module__ != "modeling_mmmmodal.modeling_mmmmodal"  # loaded from the checkpoint's code
    messages = [{"role": "user", "content": [{"type": "text", "text": "Picture 1:"},
                                             {"type": "image", "image": Image.new("RGB", (32, 32), "red")},
                                             {"type": "text", "text": "What colour are the shapes in picture 1?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
