"""Demo data: the built-in synthetic task (processing/synthetic_task.py) with the demo's settings, its held-out files
and the tokenizer's corpus.

Settings chosen for learnability on 2 CPU cores (DESIGN, last paragraph): 32 px images whose 2x2 shape grid
matches 16 px patches (one shape per patch), fixed-length beeps in 1 s clips (one tiny-Whisper window each),
short questions, one steady question mix (the task's default weights, counting and cross-media questions weighted up).

One wrapping step of ours: every media item is introduced by a short label in the row's language
("Picture 2:" / "Gambar 2:", "Audio 1:"), as Qwen-VL does, so a question about "picture 2" can find its media by
content rather than by counting spans.
"""

from pathlib import Path

from datasets import Dataset

from processing.jsonl_io import read_jsonl
from processing.synthetic_media import COLOURS, NUMBER_WORDS, PITCHES, SHAPES
from processing.synthetic_questions import ATTRIBUTES, MORE, QUESTION_TYPES, YES_NO, explained_answer
from processing.synthetic_task import TaskConfig, write_synthetic

# The text put before every media part, by language and kind.
MEDIA_LABELS = {"en": {"image": "Picture {n}:", "audio": "Audio {n}:"},
                "ms": {"image": "Gambar {n}:", "audio": "Audio {n}:"}}

# Naming a picture's colour or shape (6 or 4 words per language) is the slowest single-media skill to learn, so
# those two get more of the mix.
WEIGHT_CHANGES = {"image_colour": 2.5, "image_shape": 2.5}


def task_config() -> TaskConfig:
    """The task settings the demo trains and evaluates on."""
    # 1 s clips of 0.1 s beeps fill one 1 s Whisper window (1.5 s clips padded into 2 s windows cost the frozen
    # audio tower twice the positions and the LLM 12 audio tokens per clip instead of 4).
    cfg = TaskConfig(image_size=32, clip_seconds=1.0, beep_seconds=0.1)
    cfg.weights.update(WEIGHT_CHANGES)
    return cfg


def tokenizer_corpus(cfg: TaskConfig) -> list[str]:
    """Every word the task can write, so the locally trained tokenizer has them (mostly) as single tokens."""
    lines = []
    for qtype in QUESTION_TYPES.values():
        for language, template in qtype.templates.items():
            lines += [template.format(a=a, b=b) for a in range(1, 4) for b in range(1, 4)]
            lines.append(" ".join(qtype.space(language)))
    for language in cfg.languages:
        lines += [MEDIA_LABELS[language][kind].format(n=n) for kind in ("image", "audio") for n in range(1, 4)]
        lines += [" ".join(YES_NO[language]), " ".join(MORE[language]), " ".join(NUMBER_WORDS[language].values())]
    lines += [" ".join(COLOURS), " ".join(v[1] for v in COLOURS.values()), " ".join(SHAPES), " ".join(SHAPES.values())]
    lines += [" ".join(PITCHES), " ".join(v[1] for v in PITCHES.values()), "bip beep beeps circles squares"]
    # The chat template's role names follow <|im_start|> at a line start: "user" and "assistant" whole (one token
    # each, as in any pretrained LLM's vocabulary) instead of 3 and 6 pieces, ~15 tokens fewer per conversation.
    lines += ["user", "assistant"]
    # Answers start the assistant turn with no space before them: train them as lines of their own too, so that
    # every answer is one token (a byte-level BPE word at a line start has no leading-space marker).
    answers = {a for q in QUESTION_TYPES.values() for language in cfg.languages for a in q.space(language)}
    lines += sorted(answers)
    for qtype in (q for q in QUESTION_TYPES.values() if q.cross):  # explained comparisons: "3, 2: yes"
        for language in cfg.languages:
            values = ATTRIBUTES[qtype.compared][1](language)
            lines += [explained_answer(a, b, verdict) for a in values for b in values
                      for verdict in qtype.space(language)]
    return lines * 4  # repetition only raises merge counts; the content is the same


def label_media(row: dict) -> dict:
    """Put "Picture k:" / "Audio k:" (in the row's language) before every media part of the row's messages."""
    labels, counters, messages = MEDIA_LABELS[row.get("language", "en")], {"image": 0, "audio": 0}, []
    for message in row["messages"]:
        content = message["content"]
        if isinstance(content, list):
            new = []
            for part in content:
                kind = part.get("type")
                if kind in counters:
                    counters[kind] += 1
                    new.append({"type": "text", "text": labels[kind].format(n=counters[kind])})
                new.append(part)
            content = new
        messages.append({**message, "content": content})
    return {**row, "messages": messages}


def read_rows(path) -> list[dict]:
    """The rows of a task JSONL file, media labelled."""
    return [label_media(row) for row in read_jsonl(path)]


def make_data(out_dir, n_train: int, n_test: int, n_alignment: int, seed: int) -> dict:
    """Write the task under `out_dir`; return {"train", "test", "alignment"}: lists of labelled rows."""
    written = write_synthetic(Path(out_dir), n_train, n_test, seed=seed, cfg=task_config(), n_alignment=n_alignment)
    return {split: read_rows(path) for split, path in written.items()}


def approximate_length(row: dict, tokenizer=None) -> int:
    """A row's token count, roughly (text tokens, plus a fixed guess per media item and per message): only used
    to put conversations of similar length into one batch, which cuts padding."""
    length = 0
    for message in row["messages"]:
        length += 5
        parts = message["content"] if isinstance(message["content"], list) else [{"type": "text", "text": message["content"]}]
        for part in parts:
            if part.get("type") == "text":
                length += len(tokenizer(part["text"])["input_ids"]) if tokenizer is not None else len(part["text"]) // 4
            else:
                length += 6 if part.get("type") == "image" else 14
    return length


def trl_dataset(rows: list[dict], tokenizer=None) -> Dataset:
    """Rows in TRL's vision form (`messages` + `images`), the only columns the training collator needs, plus
    `length` for the trainer's length-grouped sampler."""
    return Dataset.from_list([{"messages": r["messages"], "images": r["images"],
                               "length": approximate_length(r, tokenizer)} for r in rows])


__all__ = ["task_config", "tokenizer_corpus", "label_media", "read_rows", "make_data", "approximate_length",
           "trl_dataset", "MEDIA_LABELS"]
