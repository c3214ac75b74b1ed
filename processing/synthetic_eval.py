"""Scoring of the synthetic task, independent of any model.

Give either an `answer_fn(messages_so_far, images) -> str` (called once per assistant turn, with
the conversation up to and including that turn's user message; earlier assistant turns hold the
reference answers, i.e. teacher forcing) or `predictions` aligned with the rows' `answers`.
Exact match after normalisation (case, punctuation, whitespace; number words -> digits): a comparison's
explained answer ("3, 2: yes") is right only when both attributes and the verdict are. Rows with `verdicts`
(the task's one-word verdicts) also get `verdict_accuracy`: the last word of the prediction against the
verdict alone. What it measures depends on how the predictions were made: with free generation it is the
final answer's accuracy; with teacher-forced predictions (the demo's scoring) the verdict was predicted after
the *reference* values, so it measures the comparison step alone, not what the model would answer.
Each question type is reported with its chance level (uniform guess over its answer space) and its
majority baseline: the accuracy of always giving the most frequent reference answer of the row's
language and question type, the score a model reaches without looking at the media; `verdict_majority`
is the same for the verdict alone (for "same colour?" that is "no" / "tidak", right about 5 times in 6).
"""

import logging
import re
import string
from collections import Counter, defaultdict

from tqdm.auto import tqdm

from .synthetic_media import NUMBER_WORDS
from .synthetic_questions import QUESTION_TYPES, chance_level

logger = logging.getLogger(__name__)
_WORD_TO_DIGIT = {w: str(n) for table in NUMBER_WORDS.values() for n, w in table.items()}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text) -> str:
    words = _PUNCT.sub(" ", str(text or "").lower()).split()
    return " ".join(_WORD_TO_DIGIT.get(w, w) for w in words)


def _predict(rows, answer_fn) -> list:
    predictions = []
    for row in tqdm(rows, desc="evaluate", unit="row"):
        messages, row_preds = row["messages"], []
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                row_preds.append(answer_fn(messages[:i], row.get("images") or []))
        predictions.append(row_preds)
    return predictions


def _check_aligned(rows, predictions):
    if len(predictions) != len(rows):
        raise ValueError(f"Predictions: expected one list per row ({len(rows)}), found {len(predictions)}. "
                         "Fix: align predictions with the rows you score.")
    for index, (row, preds) in enumerate(zip(rows, predictions)):
        if len(preds) != len(row["answers"]):
            raise ValueError(f"Row {row.get('id', index)}: expected {len(row['answers'])} predictions "
                             f"(one per assistant turn), found {len(preds)}.")


def _summary(items) -> dict:
    n = len(items)
    mean = lambda k: sum(item[k] for item in items) / n if n else float("nan")
    return {"accuracy": mean(0), "n": n, "chance": mean(1), "verdict_accuracy": mean(2)}


def evaluate(rows, answer_fn=None, predictions=None) -> dict:
    """Exact-match accuracy per question type, and aggregated over single- and cross-media types.

    Returns {"per_type": {qtype: {accuracy, n, chance, majority, verdict_accuracy}}, "single_media": {...},
    "cross_media": {...}, "overall": {...}}; the aggregates' chance and majority are over the questions they
    hold.
    """
    rows = list(rows)
    if (answer_fn is None) == (predictions is None):
        raise ValueError("Evaluate: expected exactly one of `answer_fn` or `predictions`, found "
                         f"{'both' if answer_fn else 'neither'}.")
    predictions = _predict(rows, answer_fn) if answer_fn is not None else predictions
    _check_aligned(rows, predictions)
    by_type, refs, verdicts, groups = defaultdict(list), defaultdict(Counter), defaultdict(Counter), defaultdict(list)
    for row, preds in zip(rows, predictions):
        language = row.get("language", "en")
        for qtype, ref, verdict, pred in zip(row["qtypes"], row["answers"], row.get("verdicts", row["answers"]), preds):
            pred, ref, verdict = normalize_answer(pred), normalize_answer(ref), normalize_answer(verdict)
            item = (pred == ref, chance_level(qtype, language, explained=ref != verdict),
                    pred.rsplit(" ", 1)[-1] == verdict)
            by_type[qtype].append(item)
            refs[qtype, language][ref] += 1
            verdicts[qtype, language][verdict] += 1
            groups["cross_media" if QUESTION_TYPES[qtype].cross else "single_media"].append(item)
            groups["overall"].append(item)
    hits = {"majority": Counter(), "verdict_majority": Counter()}  # per question type: what a constant
    for key, table in (("majority", refs), ("verdict_majority", verdicts)):  # (type, language) guess gets right
        for (qtype, _), counts in table.items():
            hits[key][qtype] += counts.most_common(1)[0][1]
    per_type = {}
    for qtype in sorted(by_type):
        per_type[qtype] = _summary(by_type[qtype])
        for key in hits:
            per_type[qtype][key] = hits[key][qtype] / len(by_type[qtype])
    result = {"per_type": per_type}
    for name in ("single_media", "cross_media", "overall"):
        members = [q for q in by_type if name == "overall" or QUESTION_TYPES[q].cross == (name == "cross_media")]
        result[name] = _summary(groups[name])
        n = result[name]["n"]
        for key in hits:
            result[name][key] = sum(hits[key][q] for q in members) / n if n else float("nan")
    return result


def format_report(result: dict) -> str:
    """A plain-text table of `evaluate`'s result."""
    lines = [f"{'question type':<26}{'n':>6}{'accuracy':>10}{'chance':>8}{'majority':>10}{'verdict':>9}"
             f"{'(majority)':>11}"]
    groups = [(name, result[name]) for name in ("single_media", "cross_media", "overall")]
    rows = list(result["per_type"].items()) + groups
    for name, r in rows:
        lines.append(f"{name:<26}{r['n']:>6}{r['accuracy']:>10.3f}{r['chance']:>8.3f}{r['majority']:>10.3f}"
                     f"{r['verdict_accuracy']:>9.3f}{r['verdict_majority']:>11.3f}")
    return "\n".join(lines)
