"""Where a demo run's comparisons go wrong: for each comparison type of the held-out split, how many answers have
both values right / a value wrong, crossed with the verdict right / wrong, and the most frequent wrong answers.

    python notes/scripts/comparison_errors.py DIR      # DIR: the --out folder of `mmmmodal demo`

Uses the run's saved checkpoint and held-out rows, and the demo's own teacher-forced scoring.
"""

import sys
from collections import Counter, defaultdict

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmmmodal.demo_data import read_rows
from mmmmodal.demo_eval import predict_answers
from processing.synthetic_eval import normalize_answer
from processing.synthetic_questions import QUESTION_TYPES


def main(out: str):
    torch.set_num_threads(2)
    model = AutoModelForImageTextToText.from_pretrained(f"{out}/checkpoint", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(f"{out}/checkpoint", trust_remote_code=True)
    rows = read_rows(f"{out}/data/test.jsonl")
    counts, wrong = defaultdict(Counter), defaultdict(Counter)
    for row, predictions in zip(rows, predict_answers(model, processor, rows, 64)):
        for qtype, reference, prediction in zip(row["qtypes"], row["answers"], predictions):
            if not QUESTION_TYPES[qtype].cross:
                continue
            reference, prediction = normalize_answer(reference).split(), normalize_answer(prediction).split()
            values = "values right" if prediction[:-1] == reference[:-1] else "a value wrong"
            verdict = "verdict right" if prediction[-1:] == reference[-1:] else "verdict wrong"
            counts[qtype][f"{values}, {verdict}"] += 1
            if prediction != reference:
                wrong[qtype][f"{' '.join(reference)} -> {' '.join(prediction)}"] += 1
    for qtype in sorted(counts):
        print(f"{qtype}: {dict(counts[qtype])}")
        print("    most frequent wrong answers: " + "; ".join(f"{k} ({n})" for k, n in wrong[qtype].most_common(5)))


if __name__ == "__main__":
    main(sys.argv[1])
