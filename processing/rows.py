"""Training rows: any of the three row forms -> TRL's vision form, checked.

A row comes in one of three forms, and `to_training_row` turns each into the one training form
(TRL's vision form: `messages` with bare `{"type": "image"}` parts, audio parts carrying a `path`, plus an
`images` column, `[]` when the row has none):

- transformers' chat-message form: `messages` whose image / audio parts carry `path`, `url` or the object itself;
- TRL's form: already `messages` + `images`, passed through (and checked);
- the paper's form: `conversations` (or `chat`) with `<image>` / `<audio>` markers in `content`, plus a
  `filename` list of the media paths in marker order (a file's kind comes from its extension or `filename_type`).

`prepare_dataset` maps a whole `datasets.Dataset`; the collators in `mmmmodal.training` call `to_training_row` on
each row of a batch.
"""

import logging
import os
from pathlib import Path

from modeling_mmmmodal.processing_mmmmodal import media_source

from .convert import record_to_row
from .markers import split_markers

logger = logging.getLogger(__name__)


def describe_row(row: dict, index: int | None = None) -> str:
    """A short name for a row in error messages: its `id`, else its index, else its first text."""
    if hasattr(row, "get") and row.get("id") is not None:
        return f"row id={row['id']!r}"
    if index is not None:
        return f"row {index}"
    text = _first_text(row)
    return f"row starting {text[:60]!r}" if text else "row (no id)"


def _first_text(row) -> str:
    for message in (row or {}).get("messages") or (row or {}).get("conversations") or (row or {}).get("chat") or []:
        content = message.get("content")
        if isinstance(content, str):
            return content
        for part in content or []:
            if isinstance(part, dict) and part.get("type") == "text" and part.get("text"):
                return part["text"]
    return ""


def _is_remote(path: str) -> bool:
    return str(path).startswith(("http://", "https://", "data:"))


def _resolve(path, name: str, base_dir, check_files: bool):
    """A media path made absolute against `base_dir`; raises if a local file is missing."""
    if not isinstance(path, (str, os.PathLike)) or _is_remote(str(path)):
        return path
    path = Path(path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if check_files and not path.is_file():
        raise ValueError(f"the {name} file {str(path)!r} does not exist. Fix the path or pass `base_dir=` "
                         "(the folder relative paths start from).")
    return str(path)


def _clean_part(part: dict) -> dict:
    return {k: v for k, v in part.items() if v is not None}


def _string_parts(text: str) -> list:
    """String content -> parts; `<image>` / `<audio>` markers become payload-less media parts."""
    return [{"type": "text", "text": v} if k == "text" else {"type": k} for k, v in split_markers(text) if v or k != "text"]


def _from_messages(row: dict, base_dir, check_files: bool) -> dict:
    """Chat-message or TRL form -> TRL form: image payloads move to `images`, audio parts keep a path."""
    given = list(row.get("images") or ([row["image"]] if row.get("image") is not None else []))
    raw = [{"role": m["role"], "content": _string_parts(m["content"]) if isinstance(m.get("content"), str)
            else [_clean_part(p) for p in m.get("content") or []]} for m in row["messages"]]
    if given and not any(p["type"] == "image" for m in raw for p in m["content"]):
        # TRL's convention for string content without markers: the images go before the first user turn's text.
        first_user = next((m for m in raw if m["role"] == "user"), None)
        if first_user is not None:
            first_user["content"] = [{"type": "image"} for _ in given] + first_user["content"]
    images, messages, bare = [], [], 0
    for message in raw:
        parts = []
        for part in message["content"]:
            kind = part.get("type")
            if kind in ("image", "audio"):
                payload = media_source(part)
                if kind == "image":
                    if payload is None:
                        if bare >= len(given):
                            raise ValueError(f"it has more image parts than `images` entries ({len(given)}). "
                                             "Give one image per image part, in order.")
                        payload = given[bare]
                        bare += 1
                    images.append(_resolve(payload, "image", base_dir, check_files))
                    part = {"type": "image"}
                else:
                    if payload is None:
                        raise ValueError("an audio part (or <audio> marker) has no clip. Audio parts must carry "
                                         'their clip, e.g. {"type": "audio", "path": "a.wav"}.')
                    key = "audio" if not isinstance(payload, (str, os.PathLike)) else "path"
                    part = {"type": "audio", key: _resolve(payload, "audio", base_dir, check_files)}
            parts.append(part)
        messages.append({"role": message["role"], "content": parts})
    if bare != len(given):
        raise ValueError(f"`images` holds {len(given)} entries but the messages have {bare} bare image parts. "
                         "Give one image per image part, in order.")
    return {"messages": messages, "images": images}


def to_training_row(row: dict, index: int | None = None, base_dir=None, check_files: bool = True,
                    language: str = "en") -> dict:
    """Any of the three row forms -> TRL's vision form (`messages` + `images`), checked.

    Args:
        row: a chat-message, TRL or paper-format row.
        index: the row's position, used in error messages when it has no `id`.
        base_dir: folder that relative media paths start from (default: as given).
        check_files: raise when a local media file does not exist.
        language: `"en"` reads a paper turn's `content`, `"ms"` its `content_ms` (see `processing.convert`).

    Raises:
        ValueError naming the row: markers and files disagree, a file is missing, no assistant turn.
    """
    try:
        if "messages" in row and row["messages"] is not None:
            out = _from_messages(row, base_dir, check_files)
        elif row.get("conversations") is not None or row.get("chat") is not None:
            out = record_to_row(row, index if index is not None else -1, language, base_dir, check_files)
        else:
            raise ValueError(f"it has none of `messages`, `conversations`, `chat` (keys: {sorted(row)}).")
        if not any(m["role"] == "assistant" for m in out["messages"]):
            raise ValueError("it has no assistant turn, so nothing to train on.")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Bad training {describe_row(row, index)}: {error}") from error
    if row.get("id") is not None:
        out.setdefault("id", row["id"])
    return out


def prepare_dataset(dataset, base_dir=None, skip_bad_rows: bool = False, language: str = "en", num_proc=None):
    """Map a `datasets.Dataset` of any row form to TRL's vision form (what `SFTTrainer` / `trl sft` take).

    A bad row raises a ValueError naming it, or with `skip_bad_rows=True` is dropped and counted in a warning.
    """

    def convert(row, index):
        try:
            return {**to_training_row(row, index, base_dir, language=language), "_bad": ""}
        except ValueError as error:
            if not skip_bad_rows:
                raise
            return {"messages": [], "images": [], "_bad": str(error)}

    keep = {"id"} & set(dataset.column_names)
    converted = dataset.map(convert, with_indices=True, num_proc=num_proc,
                            remove_columns=[c for c in dataset.column_names if c not in keep], desc="Checking rows")
    bad = [reason for reason in converted["_bad"] if reason]
    if bad:
        logger.warning("Skipped %d of %d rows (skip_bad_rows=True); first: %s", len(bad), len(converted), bad[0])
        converted = converted.filter(lambda reason: not reason, input_columns="_bad")
    return converted.remove_columns("_bad")

