"""JSONL reading and resumable appending, shared by the generation pipelines.

A pipeline run appends one JSON line per finished row, keyed by a stable `id`, and flushes after
each line. A rerun reads the ids already in the output and skips them, so a crash loses at most
the rows in flight. A torn last line (crash mid-write) is cut off, with a warning, before appending.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def read_jsonl(path) -> list:
    """Rows of a JSONL file; a bad line raises ValueError naming the file and line number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: expected one JSON object per line, found invalid JSON "
                                 f"({error}). Fix: repair or remove that line.") from error
    return rows


def stable_id(*parts) -> str:
    """A short content hash: the same inputs give the same id on every run."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _cut_torn_tail(path: Path):
    """Drop an unterminated last line (a write cut short by a crash)."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line of %d bytes (interrupted write).", path, len(data) - keep)
        f.truncate(keep)


def done_ids(path, key: str = "id") -> set:
    """Ids already written to `path` (empty when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return set()
    _cut_torn_tail(path)
    return {row[key] for row in read_jsonl(path)}


class JsonlAppender:
    """Append rows to a JSONL file, one flushed (and fsynced) line per row."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _cut_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict):
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_resumable(items: Iterable, out_path, process_chunk: Callable, chunk_size: int = 8,
                  key: Callable = lambda item: item["id"], desc: str = "rows") -> dict:
    """Process `items` in chunks, appending each result row to `out_path`; skip ids already there.

    `process_chunk(list_of_items) -> list_of_rows`; every row must carry `id` equal to `key(item)`
    (a row may be None to drop an item, which is then redone on the next run). Returns counts.
    """
    items = list(items)
    done = done_ids(out_path)
    todo = [item for item in items if key(item) not in done]
    logger.info("%s: %d to do, %d already in %s", desc, len(todo), len(items) - len(todo), out_path)
    written = 0
    with JsonlAppender(out_path) as out, tqdm(total=len(todo), desc=desc, unit="row") as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            for row in process_chunk(chunk):
                if row is not None:
                    out.write(row)
                    written += 1
            bar.update(len(chunk))
    return {"total": len(items), "skipped_done": len(items) - len(todo), "written": written}
