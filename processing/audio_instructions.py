"""Audio instruction data (paper §2): ASR pseudo-labels -> multi-turn chats -> Malay translation.

Input: ASR rows (`asr.pseudo_label` output: `filename`, `transcript`, `score`, ...). Clips that fail
the score filter are skipped (counted). Output rows, in the paper's record format:
`{"id", "filename": [clip], "filename_description": [transcript], "conversations": [{"role",
"content", "content_ms"}]}` with `<audio>` before the first question.
"""

import logging

from .asr import keep_transcript
from .dialogue import grow_dialogues, to_paper_conversation
from .jsonl_io import run_resumable, stable_id

logger = logging.getLogger(__name__)


def build_rows(items: list, generator, kind: str, context_key: str, n_turns: int, translator=None) -> list:
    """Paper records for a chunk of `{"id", "filename", context_key}` items (shared with visual QA).

    One result per item: its record, or the exception that failed it (generation or translation).
    """
    contexts = [item[context_key] for item in items]
    return [dialogue if isinstance(dialogue, BaseException) else _record(item, dialogue, kind, context_key, translator)
            for item, dialogue in zip(items, grow_dialogues(generator, contexts, kind, n_turns))]


def _record(item: dict, dialogue: list, kind: str, context_key: str, translator):
    try:
        conversations = to_paper_conversation(dialogue, kind, translator)
    except Exception as error:  # a failed translation fails this row only
        return error
    return {"id": item["id"], "filename": list(item["filename"]), "filename_description": [item[context_key]],
            "conversations": conversations}


def audio_instructions(asr_rows: list, out_path, generator, n_turns: int = 3, translator=None,
                       min_score: float = -0.5, max_compression_ratio: float = 2.4, chunk_size: int = 8,
                       max_consecutive_failures: int = 32) -> dict:
    """Grow chats for the kept transcripts into `out_path` (resumable JSONL); returns counts."""
    kept = [row for row in asr_rows if keep_transcript(row, min_score, max_compression_ratio)]
    if len(kept) < len(asr_rows):
        logger.warning("Audio instructions: %d of %d clips below the ASR quality filter (score >= %s, "
                       "compression ratio <= %s) are skipped.", len(asr_rows) - len(kept), len(asr_rows),
                       min_score, max_compression_ratio)
    items = [{"id": stable_id("audio-instructions", row["filename"], row["transcript"], n_turns),
              "filename": row["filename"], "transcript": row["transcript"]} for row in kept]
    stats = run_resumable(items, out_path, lambda chunk: build_rows(chunk, generator, "audio", "transcript",
                                                                     n_turns, translator),
                          chunk_size, desc="audio instructions", max_consecutive_failures=max_consecutive_failures)
    stats["filtered_out"] = len(asr_rows) - len(kept)
    logger.info("Audio instructions: %s", stats)
    return stats
