"""Verdict practice rows (mmmmodal/demo_verdicts.py): text-only comparison questions answered with random values,
and the collator that trains them on the verdict token alone (mmmmodal/demo_collate.py: VerdictOnlyLabels)."""

import itertools

import pytest
import torch

from mmmmodal.demo_collate import VerdictOnlyLabels, project_collator
from mmmmodal.demo_data import stream_rows, task_config, tokenizer_corpus
from mmmmodal.demo_verdicts import verdict_rows
from mmmmodal.tiny import TinySizes, save_tiny_parts
from modeling_mmmmodal import MMMModalProcessor
from processing.synthetic_questions import QUESTION_TYPES, YES_NO


def _answers(rows):
    for messages, verdict in rows:
        values, said = messages[1]["content"][0]["text"].split(": ")
        yield messages[0]["content"][0]["text"], values.split(", "), said, verdict


def test_rows_are_comparisons_whose_verdict_follows_from_the_written_values():
    rows = verdict_rows(3000, seed=0, weights=task_config().weights, equal_share=0.5)
    templates = {t.format(a=a, b=b): q for q in QUESTION_TYPES.values() if q.cross for t in q.templates.values()
                 for a in range(1, 4) for b in range(1, 4)}  # every question the rows can ask -> its type
    same = []
    for question, (first, second), said, verdict in _answers(rows):
        qtype = templates[question]
        assert said == verdict and verdict in qtype.space("en") + qtype.space("ms")
        if qtype.asks_same:
            assert (verdict in (YES_NO["en"][0], YES_NO["ms"][0])) == (first == second)
            same.append(first == second)
        elif qtype.compared == "count" and first == second:  # "more?" about equal counts
            assert verdict in ("no", "tidak", "same", "sama")
    assert 0.5 < sum(same) / len(same) < 0.75  # half made equal, plus the pairs equal by chance
    assert len({q for q, *_ in _answers(rows)}) > 50  # questions name different items
    assert verdict_rows(50, 3, task_config().weights) == verdict_rows(50, 3, task_config().weights)  # seeded


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    sizes = TinySizes(hidden_size=32, layers=1, heads=2, image_size=32, patch_size=16, audio_window_seconds=2,
                      vocab_size=600)
    parts = save_tiny_parts(tmp_path_factory.mktemp("parts"), sizes, corpus=tokenizer_corpus(task_config()))
    return MMMModalProcessor.from_parts(parts["vision"], parts["audio"], parts["text"])


def test_collator_trains_verdict_rows_on_the_verdict_alone_and_leaves_other_rows_as_they_were(processor):
    rows = list(itertools.islice(stream_rows(seed=0, batch_size=8, verdict_share=0.5), 64))
    flagged = [r for r in rows if r.get("verdict_only")]
    assert 20 < len(flagged) < 44 and all(not r["images"] and "qtypes" not in r for r in flagged)
    examples = [{"messages": r["messages"], "images": r["images"], "verdict_only": bool(r.get("verdict_only"))}
                for r in rows[:16]]
    assert any(e["verdict_only"] for e in examples) and not all(e["verdict_only"] for e in examples)
    plain = project_collator(processor)
    batch = VerdictOnlyLabels(plain)(examples)
    reference = plain([{k: v for k, v in e.items() if k != "verdict_only"} for e in examples])
    for key in reference:
        if key != "labels":
            assert torch.equal(batch[key], reference[key]), key
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        kept = batch["labels"][row][batch["labels"][row] != -100]
        if not example["verdict_only"]:
            assert torch.equal(batch["labels"][row], reference["labels"][row])
            continue
        answer = example["messages"][1]["content"][0]["text"]
        assert len(kept) == 1 and tokenizer.decode(kept).strip() == answer.split(": ")[1]
        full = reference["labels"][row][reference["labels"][row] != -100]
        assert tokenizer.decode(full) == answer + "<|im_end|>"  # what the plain collator would have trained on
