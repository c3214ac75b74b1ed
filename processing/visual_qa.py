"""Visual context QA (paper §3): image + caption -> multi-turn question/answer dialogue.

Input rows: `{"filename": [image] or "image": path, "caption": str}` (`filename_description` is read
as the caption too). Output rows in the paper's record format, `<image>` before the first question,
`content_ms` when a translator is given.
"""

import logging

from .audio_instructions import build_rows
from .jsonl_io import run_resumable, stable_id

logger = logging.getLogger(__name__)


def caption_item(row: dict, index: int) -> dict:
    files = row.get("filename") or row.get("image")
    files = [files] if isinstance(files, str) else list(files or [])
    caption = row.get("caption")
    if caption is None and row.get("filename_description"):
        caption = row["filename_description"][0]
    if len(files) != 1 or not caption:
        raise ValueError(f"Caption row {row.get('id', index)}: expected one image (`filename` or `image`) and a "
                         f"`caption`, found {len(files)} file(s) and caption {caption!r}. Fix: one image per row.")
    return {"filename": files, "caption": caption}


def visual_qa(caption_rows: list, out_path, generator, n_turns: int = 3, translator=None, chunk_size: int = 8,
              max_consecutive_failures: int = 32) -> dict:
    """Grow image dialogues into `out_path` (resumable JSONL); returns counts."""
    items = []
    for index, row in enumerate(caption_rows):
        item = caption_item(row, index)
        item["id"] = stable_id("visual-qa", item["filename"], item["caption"], n_turns)
        items.append(item)
    stats = run_resumable(items, out_path, lambda chunk: build_rows(chunk, generator, "image", "caption", n_turns,
                                                                     translator),
                          chunk_size, desc="visual QA", max_consecutive_failures=max_consecutive_failures)
    logger.info("Visual QA: %s", stats)
    return stats
