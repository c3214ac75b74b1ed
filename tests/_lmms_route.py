"""The serving route's lmms-eval docs (each media kind as an object and as a path, and one text with placeholders),
and the loader the reference answers read media with; for the route tests against `mmmmodal serve`
(tests/test_lmms_eval.py) and `vllm serve` (tests/test_vllm.py)."""

import soundfile as sf
from PIL import Image

# (text, media as (kind, index), as paths)
ROUTE_DOCS = [("What colour is this?", [("image", 0)], False), ("Describe it.", [("image", 1)], True),
              ("What do you hear?", [("audio", 0)], False), ("Is this loud?", [("audio", 1)], True),
              ("Does <audio> match <image>?", [("audio", 1), ("image", 1)], False)]


def route_docs(media: dict, route=ROUTE_DOCS) -> list[dict]:
    """The docs of `route` over `media` (`benchmarks.lmms_eval_batch.write_media`), for `write_task`."""
    return [{"id": i, "text": text, "media": [[kind, media[kind, k]] for kind, k in items], "history": [],
             "as_paths": as_paths, "visual_paths": as_paths, "choices": [], "gold": 0}
            for i, (text, items, as_paths) in enumerate(route)]


def load_media(kind: str, path: str):
    """An image as an RGB PIL image, a clip as a `{"array", "sampling_rate"}` dict: what the reference is given."""
    if kind == "image":
        with Image.open(path) as image:
            return image.convert("RGB")
    array, rate = sf.read(path, dtype="float32")
    return {"array": array, "sampling_rate": rate}
