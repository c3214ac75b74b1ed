"""Small training rows with images and audio, for the training tests (TRL's vision form, absolute paths)."""

from pathlib import Path

from processing.jsonl_io import write_jsonl


def image_row(image: str, answer: str = "A red circle.", row_id=None) -> dict:
    row = {"messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in picture 1?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}], "images": [image]}
    return {**row, "id": row_id} if row_id else row


def audio_row(audio: str, answer: str = "Three.", row_id=None) -> dict:
    row = {"messages": [
        {"role": "user", "content": [{"type": "audio", "path": audio}, {"type": "text", "text": "How many beeps?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}], "images": []}
    return {**row, "id": row_id} if row_id else row


def mixed_row(image: str, audio: str, row_id=None) -> dict:
    row = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "audio", "path": audio},
                                     {"type": "text", "text": "What is related between picture 1 and audio 1?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Both show the number two."}]}],
        "images": [image]}
    return {**row, "id": row_id} if row_id else row


def mixed_rows(media: dict, n: int = 8) -> list:
    """Image-only, audio-only and image+audio rows in turn."""
    makers = [lambda k: image_row(media[f"image{k % 2}"]), lambda k: audio_row(media[f"audio{k % 2}"]),
              lambda k: mixed_row(media[f"image{k % 2}"], media[f"audio{(k + 1) % 2}"])]
    return [makers[k % 3](k) for k in range(n)]


def write_dataset(folder, rows: list) -> Path:
    """A local dataset folder (`train.jsonl`) that `load_dataset(folder)` and `trl sft --dataset_name` read."""
    return write_jsonl(Path(folder) / "train.jsonl", rows).parent
