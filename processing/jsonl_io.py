"""JSONL reading, writing and resumable appending: the one place the project reads and writes JSONL.

A pipeline run appends one JSON line per finished row, keyed by a stable `id`, and flushes after
each line. A rerun reads the ids already in the output and skips them, so a crash loses at most
the rows in flight. A torn last line (crash mid-write) is cut off, with a warning, before appending.

A row whose generation fails (after the generator's own retries) does not stop the run: it is
written to the sidecar `OUT.failed.jsonl` (`failed_path`) with its error, and counted. A rerun
retries exactly the rows missing from the output, which are the failed ones plus any never reached.
After each run the sidecar holds one line per row still failed (none left: no file).
"""

import hashlib
import json
import logging
import os
import tempfile
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


def write_jsonl(path, rows: Iterable[dict]) -> Path:
    """Write `rows` as a new JSONL file (folders made as needed); UTF-8, one object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


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


def failed_path(out_path) -> Path:
    """Where a run writes down its failed rows: `data/x.jsonl` -> `data/x.failed.jsonl`."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".failed" + (out_path.suffix or ".jsonl"))


def describe_error(error: BaseException, limit: int = 2000) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + "..."


class FailedRows:
    """The failed-rows sidecar: one appended, fsynced line `{"id", "error", "attempts", "item"}` per failure.

    A rerun reads it (the last line of an id wins) to count attempts; `close` rewrites it to the rows
    still failed, atomically, or removes it when there are none.
    """

    def __init__(self, out_path):
        self.path = failed_path(out_path)
        self.records = {}
        if self.path.exists():
            _cut_torn_tail(self.path)
            self.records = {row["id"]: row for row in read_jsonl(self.path)}
        self._appender = None

    def add(self, row_id: str, item, error: BaseException) -> dict:
        attempts = self.records.get(row_id, {}).get("attempts", 0) + 1
        record = {"id": row_id, "error": describe_error(error), "attempts": attempts, "item": item}
        self.records[row_id] = record
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.write(record)
        return record

    def close(self, still_failed: set):
        """Keep only the rows in `still_failed` (ids neither written nor dropped from the run's items)."""
        if self._appender is not None:
            self._appender.close()
        keep = [record for row_id, record in self.records.items() if row_id in still_failed]
        if not keep:
            self.path.unlink(missing_ok=True)
            return
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=self.path.parent, delete=False,
                                         prefix=self.path.name, suffix=".tmp") as tmp:
            for record in keep:
                tmp.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, self.path)


def _results(process_chunk: Callable, chunk: list, desc: str) -> list:
    """One result per item: a row, None, or the exception that item's processing raised.

    A chunk that raises is redone one item at a time, so that one bad item does not fail its neighbours.
    """
    try:
        results = list(process_chunk(chunk))
    except Exception as error:
        if len(chunk) == 1:
            return [error]
        logger.warning("%s: a chunk of %d rows failed (%s); redoing its rows one at a time.", desc, len(chunk),
                       describe_error(error, 300))
        return [result for item in chunk for result in _results(process_chunk, [item], desc)]
    if len(results) != len(chunk):
        raise ValueError(f"{desc}: process_chunk returned {len(results)} results for {len(chunk)} items; expected "
                         "one per item, in order (a row, None, or an exception).")
    return results


def _too_many_failures(desc: str, streak: int, error, failed_file: Path) -> RuntimeError:
    return RuntimeError(f"{desc}: the last {streak} rows all failed, the last with {describe_error(error, 500)}. "
                        "That points to the endpoint, the model or the setup rather than to single rows, so the run "
                        f"stops. Rows written so far are kept and the failed ones are listed in {failed_file}: fix "
                        "the cause and rerun the same command to retry them (max_consecutive_failures=0: never stop).")


def run_resumable(items: Iterable, out_path, process_chunk: Callable, chunk_size: int = 8,
                  key: Callable = lambda item: item["id"], desc: str = "rows",
                  max_consecutive_failures: int = 32) -> dict:
    """Process `items` in chunks, appending each result row to `out_path`; skip ids already there.

    `process_chunk(list_of_items)` returns one result per item, in order: a row carrying `id` equal to
    `key(item)`, None to drop the item (it is redone on the next run), or an exception instance when that
    item failed. A failed item (also one whose chunk raised when redone alone) goes to `failed_path(out_path)`
    with its error and the run goes on, unless `max_consecutive_failures` rows in a row failed (0: no limit).
    Returns counts: total, skipped_done, written, failed.
    """
    if max_consecutive_failures < 0:
        raise ValueError(f"max_consecutive_failures: expected >= 0 (0 = no limit), found {max_consecutive_failures}.")
    items = list(items)
    done = done_ids(out_path)
    todo = [item for item in items if key(item) not in done]
    failures = FailedRows(out_path)
    logger.info("%s: %d to do (%d of them failed before), %d already in %s", desc, len(todo),
                sum(key(item) in failures.records for item in todo), len(items) - len(todo), out_path)
    written, failed, streak, finished = 0, 0, 0, set()
    try:
        with JsonlAppender(out_path) as out, tqdm(total=len(todo), desc=desc, unit="row") as bar:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                for item, result in zip(chunk, _results(process_chunk, chunk, desc)):
                    if isinstance(result, BaseException):
                        failures.add(key(item), item, result)
                        failed, streak = failed + 1, streak + 1
                        if max_consecutive_failures and streak >= max_consecutive_failures:
                            raise _too_many_failures(desc, streak, result, failures.path)
                        continue
                    streak = 0
                    finished.add(key(item))
                    if result is not None:
                        out.write(result)
                        written += 1
                bar.update(len(chunk))
                if failed:
                    bar.set_postfix(failed=failed)
    finally:
        failures.close({key(item) for item in todo} - finished)
    if failed:
        logger.warning("%s: %d of %d rows failed; their errors are in %s. Rerun the same command to retry them.",
                       desc, failed, len(todo), failures.path)
    return {"total": len(items), "skipped_done": len(items) - len(todo), "written": written, "failed": failed}
