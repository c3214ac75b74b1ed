"""Relationship data (paper §4.1-4.4): what relates two media items, answered from their texts.

Media items are rows with one file and a text: an image caption or an audio transcript (keys
`caption`, `transcript`, `description`, or the first `filename_description`). For each pair kind
the instruction LLM sees both texts and the paper's question; output rows carry the paper's
bilingual fields `instruction`, `answer`, `instruction_ms`, `answer_ms`, plus `conversations` with
the media markers, so that `combine` and `convert` take them like any other record.
"""

import logging
import random

from .jsonl_io import run_resumable, stable_id
from .markers import marker

logger = logging.getLogger(__name__)
INSTRUCTIONS = {
    "image-image": ("image", "image", "What is related between picture 1 and picture 2?"),
    "audio-audio": ("audio", "audio", "What is related between audio 1 and audio 2?"),
    "audio-image": ("audio", "image", "What is related between audio 1 and picture 1?"),
}
CONTEXT_LABELS = {"image": "Picture {n} (description)", "audio": "Audio {n} (transcript)"}


def media_item(row: dict, index: int) -> dict:
    files = row.get("filename")
    files = [files] if isinstance(files, str) else list(files or [])
    text = row.get("caption") or row.get("transcript") or row.get("description")
    if text is None and row.get("filename_description"):
        text = row["filename_description"][0]
    if len(files) != 1 or not text:
        raise ValueError(f"Media row {row.get('id', index)}: expected one `filename` and a caption/transcript, "
                         f"found {len(files)} file(s) and text {text!r}.")
    return {"filename": files[0], "text": text}


def sample_pairs(images: list, audios: list, kinds: list, n_per_kind: int, seed: int = 0) -> list:
    """`n_per_kind` pairs per kind, drawn with a seeded RNG (two distinct items for same-kind pairs)."""
    rng, pools, pairs = random.Random(seed), {"image": images, "audio": audios}, []
    for kind in kinds:
        if kind not in INSTRUCTIONS:
            raise ValueError(f"Pair kind: expected one of {sorted(INSTRUCTIONS)}, found {kind!r}.")
        first, second, _ = INSTRUCTIONS[kind]
        need = 2 if first == second else 1
        if len(pools[first]) < need or not pools[second]:
            raise ValueError(f"Pair kind {kind}: expected at least {need} {first} item(s) and one {second} item, "
                             f"found {len(pools[first])} and {len(pools[second])}. Fix: pass more media rows.")
        found = {}
        for _ in range(20 * n_per_kind):  # distinct pairs; small pools may give fewer than asked
            if len(found) == n_per_kind:
                break
            a, b = (rng.sample(pools[first], 2) if first == second
                    else (rng.choice(pools[first]), rng.choice(pools[second])))
            key = stable_id("relationship", kind, a, b)
            found.setdefault(key, {"kind": kind, "items": [a, b], "id": key})
        if len(found) < n_per_kind:
            logger.warning("Pair kind %s: only %d distinct pairs of %d asked.", kind, len(found), n_per_kind)
        pairs += found.values()
    return pairs


def relation_prompt(pair: dict) -> list:
    first, second, question = INSTRUCTIONS[pair["kind"]]
    numbers = [1, 2] if first == second else [1, 1]
    lines = [f"{CONTEXT_LABELS[k].format(n=n)}: {item['text']}" for k, n, item in zip((first, second), numbers, pair["items"])]
    return [{"role": "system", "content": "You are a helpful assistant that perceives the user's media directly. "
                                          "Answer without mentioning descriptions or transcripts."},
            {"role": "user", "content": "\n".join(lines) + f"\n\n{question}"}]


def _rows(chunk: list, generator, translator) -> list:
    """One result per pair: its row, or the exception that failed it (generation or translation)."""
    answers = generator.generate([relation_prompt(pair) for pair in chunk], return_exceptions=True)
    return [answer if isinstance(answer, BaseException) else _row(pair, answer, translator)
            for pair, answer in zip(chunk, answers)]


def _row(pair: dict, answer: str, translator):
    first, second, question = INSTRUCTIONS[pair["kind"]]
    row = {"id": pair["id"], "kind": pair["kind"], "filename": [i["filename"] for i in pair["items"]],
           "filename_description": [i["text"] for i in pair["items"]], "instruction": question, "answer": answer}
    if translator is not None:
        try:
            row["instruction_ms"], row["answer_ms"] = translator.translate([question, answer])
        except Exception as error:  # a failed translation fails this row only
            return error
    user = {"role": "user", "content": marker(first) + marker(second) + question}
    bot = {"role": "assistant", "content": answer}
    if translator is not None:
        user["content_ms"] = marker(first) + marker(second) + row["instruction_ms"]
        bot["content_ms"] = row["answer_ms"]
    return {**row, "conversations": [user, bot]}


def relationship(image_rows: list, audio_rows: list, out_path, generator, kinds=tuple(INSTRUCTIONS),
                 n_per_kind: int = 100, translator=None, seed: int = 0, chunk_size: int = 8,
                 max_consecutive_failures: int = 32) -> dict:
    """Write relationship rows to `out_path` (resumable JSONL); returns counts."""
    # ASR rows that failed the quality filter (`keep` false) are not used.
    images = [media_item(r, i) for i, r in enumerate(image_rows) if r.get("keep", True)]
    audios = [media_item(r, i) for i, r in enumerate(audio_rows) if r.get("keep", True)]
    pairs = sample_pairs(images, audios, list(kinds), n_per_kind, seed)
    stats = run_resumable(pairs, out_path, lambda chunk: _rows(chunk, generator, translator), chunk_size,
                          desc="relationship", max_consecutive_failures=max_consecutive_failures)
    logger.info("Relationship: %s", stats)
    return stats
