"""`<image>` / `<audio>` text markers of the paper's records, and media kinds of files.

A literal `<image></image>` (or `<audio></audio>`) pair counts as one marker.
A file's kind comes from its extension; a record may override it with a `filename_type` list
("image" / "audio", one per filename), for files without a telling extension.
"""

import mimetypes
import re
from pathlib import Path

MARKER = re.compile(r"<(image|audio)>(?:\s*</\1>)?")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".webm"}


def media_kind(path: str) -> str | None:
    """"image", "audio", or None when neither the extension nor its MIME type tells."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    guessed = mimetypes.guess_type(str(path))[0] or ""
    return guessed.split("/")[0] if guessed.startswith(("image/", "audio/")) else None


def split_markers(text: str) -> list:
    """Text and markers in order: [("text", "..."), ("image", None), ("audio", None), ...]."""
    pieces, last = [], 0
    for match in MARKER.finditer(text):
        if match.start() > last:
            pieces.append(("text", text[last:match.start()]))
        pieces.append((match.group(1), None))
        last = match.end()
    if last < len(text):
        pieces.append(("text", text[last:]))
    return pieces


def count_markers(text: str) -> int:
    return len(MARKER.findall(text or ""))


def split_leading_markers(text: str) -> tuple:
    """("<image><audio>", "rest of the text") for a text that starts with markers (and spaces)."""
    end = 0
    for match in MARKER.finditer(text):
        if text[end:match.start()].strip():
            break
        end = match.end()
    return text[:end], text[end:]


def marker(kind: str) -> str:
    return f"<{kind}>"
