"""Paper records -> training rows (TRL's vision form; processing/rows.py, and docs/data.md, "Training rows").

Paper record: `{"id"?, "filename": [...], "filename_description"?: [...], "conversations" or "chat":
[{"role", "content", "content_ms"?}], "filename_type"?: [...]}` with `<image>` / `<audio>` markers in
`content`. Rules:
- The n-th marker of a record (across turns, in order) takes the n-th filename; the marker's kind
  must match the file's kind. A file's kind comes from its extension (see `markers.py`), or from
  `filename_type` ("image" / "audio" per file) when the record has it.
- Relative filenames resolve against `media_root` (the CLI defaults it to the input file's folder);
  output paths are absolute, so `trl sft` finds them from any working directory.
- Malay rows read `content_ms`. When a Malay turn has no markers but its English turn has, the
  English turn's markers are put in front of the Malay text (translations often drop them).
- Roles `user`/`human`, `assistant`/`gpt`/`bot`/`model`, `system`.
A bad record raises ValueError naming its id (or index); with `skip_bad_rows` it is skipped with a
warning and counted.
"""

import json
import logging
from pathlib import Path

from .jsonl_io import read_jsonl
from .markers import count_markers, marker, media_kind, split_markers, MARKER

logger = logging.getLogger(__name__)
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


def load_records(path) -> list:
    """Records from a .jsonl file, or a .json file holding a list."""
    if str(path).endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return read_jsonl(path)


def _bad(row_name, message: str) -> ValueError:
    return ValueError(f"Record {row_name}: {message}")


def _files(record: dict, row_name, media_root, check_files: bool) -> list:
    names = record.get("filename") or []
    names = [names] if isinstance(names, str) else list(names)
    types = record.get("filename_type")
    if types is not None and len(types) != len(names):
        raise _bad(row_name, f"expected one `filename_type` per filename ({len(names)}), found {len(types)}.")
    files = []
    for k, name in enumerate(names):
        path = Path(name) if Path(name).is_absolute() or media_root is None else Path(media_root) / name
        kind = types[k] if types is not None else media_kind(name)
        if kind not in ("image", "audio"):
            raise _bad(row_name, f"file {name!r}: expected an image or audio extension or a `filename_type`, "
                                 f"found {kind!r}. Fix: add `filename_type` to the record.")
        if check_files and not path.exists():
            raise _bad(row_name, f"file {name!r} not found (looked at {path}). Fix: pass the right media root "
                                 "or use skip_bad_rows.")
        files.append((kind, str(path.resolve()) if check_files else str(path)))
    return files


def _turn_text(turn: dict, language: str, row_name, number: int) -> str:
    text = turn.get("content") if language == "en" else turn.get("content_ms")
    if text is None:
        key = "content" if language == "en" else "content_ms"
        raise _bad(row_name, f"turn {number} has no `{key}`. Fix: translate it or convert language 'en' only.")
    english = turn.get("content") or ""
    if language != "en" and count_markers(english) and not count_markers(text):
        text = "".join(marker(m.group(1)) for m in MARKER.finditer(english)) + text
    return text


def record_to_row(record: dict, index: int, language: str = "en", media_root=None, check_files: bool = True) -> dict:
    """One training row (docs/data.md, "Training rows") from one paper record, in `language` ("en" or "ms")."""
    row_name = record.get("id", f"#{index}")
    turns = record.get("conversations", record.get("chat"))
    if not isinstance(turns, list) or not turns:
        raise _bad(row_name, "expected a non-empty `conversations` (or `chat`) list.")
    files, used, messages, images = _files(record, row_name, media_root, check_files), 0, [], []
    for number, turn in enumerate(turns):
        role = ROLES.get(str(turn.get("role", "")).lower())
        if role is None:
            raise _bad(row_name, f"turn {number}: expected role in {sorted(ROLES)}, found {turn.get('role')!r}.")
        parts = []
        for kind, text in split_markers(_turn_text(turn, language, row_name, number)):
            if kind == "text":
                if text.strip():
                    parts.append({"type": "text", "text": text.strip()})
                continue
            if used >= len(files):
                raise _bad(row_name, f"more markers than files: marker {used + 1} has no file "
                                     f"({len(files)} filename(s)). Fix: each marker needs its file, in order.")
            file_kind, path = files[used]
            if file_kind != kind:
                raise _bad(row_name, f"marker {used + 1} is <{kind}> but its file {path} is {file_kind}.")
            used += 1
            parts.append({"type": "image"} if kind == "image" else {"type": "audio", "path": path})
            if kind == "image":
                images.append(path)
        messages.append({"role": role, "content": parts})
    if used != len(files):
        raise _bad(row_name, f"expected one marker per file ({len(files)} filename(s)), found {used} marker(s).")
    return {"id": f"{row_name}:{language}", "messages": messages, "images": images}


def convert_records(records, languages=("en",), media_root=None, check_files: bool = True,
                    skip_bad_rows: bool = False) -> tuple:
    """Training rows for every record and language, and stats {"records", "rows", "skipped"}."""
    rows, skipped, records = [], 0, list(records)
    for index, record in enumerate(records):
        try:
            rows += [record_to_row(record, index, lang, media_root, check_files) for lang in languages]
        except ValueError as error:
            if not skip_bad_rows:
                raise
            skipped += 1
            logger.warning("Skipping bad record (%d skipped so far): %s", skipped, error)
    if skipped:
        logger.warning("Convert: skipped %d of %d records.", skipped, len(records))
    return rows, {"records": len(records), "rows": len(rows), "skipped": skipped}

