"""Combining (paper §4.5): multi-media conversations from single-media records.

For each output row: draw k uniformly in [min_rows, max_rows]; for each of the k slots take an
image row with probability `p_image`, else an audio row; every source row is used at most once
(shuffled pools, popped). Their `filename` lists, `filename_description` lists and `conversations`
are concatenated in draw order, so the n-th marker still takes the n-th file. When the drawn pool
is empty the slot takes the other pool (counted as a fallback and logged); generation stops when
both are empty or fewer than `min_rows` rows are left. Deterministic in `seed`.
"""

import logging
import random

logger = logging.getLogger(__name__)


def _conversation(row: dict, index: int) -> list:
    turns = row.get("conversations", row.get("chat"))
    if turns is None:
        raise ValueError(f"Source row {row.get('id', index)}: expected `conversations` or `chat`, found neither.")
    return turns


def _merge(sources: list, row_id: str) -> dict:
    merged = {"id": row_id, "filename": [], "filename_description": [], "conversations": [], "sources": []}
    for kind, index, row in sources:
        files = row.get("filename") or []
        merged["filename"] += [files] if isinstance(files, str) else list(files)
        merged["filename_description"] += list(row.get("filename_description") or [])
        merged["conversations"] += [dict(t) for t in _conversation(row, index)]
        merged["sources"].append(f"{kind}:{row.get('id', index)}")
    return merged


def combine(image_rows: list, audio_rows: list, n_out: int | None = None, seed: int = 0, p_image: float = 0.6,
            min_rows: int = 2, max_rows: int = 4) -> tuple:
    """Combined rows and stats {"rows", "fallbacks", "used_images", "used_audios"}."""
    if not 0.0 <= p_image <= 1.0 or not 1 <= min_rows <= max_rows:
        raise ValueError(f"Combine: expected 0 <= p_image <= 1 and 1 <= min_rows <= max_rows, found p_image="
                         f"{p_image}, min_rows={min_rows}, max_rows={max_rows}.")
    rng = random.Random(seed)
    pools = {"image": list(enumerate(image_rows)), "audio": list(enumerate(audio_rows))}
    for pool in pools.values():
        rng.shuffle(pool)
    out, fallbacks, used = [], 0, {"image": 0, "audio": 0}
    while n_out is None or len(out) < n_out:
        k = rng.randint(min_rows, max_rows)
        if len(pools["image"]) + len(pools["audio"]) < max(k, min_rows):
            break
        sources = []
        for _ in range(k):
            kind = "image" if rng.random() < p_image else "audio"
            if not pools[kind]:
                kind, fallbacks = ("audio" if kind == "image" else "image"), fallbacks + 1
            index, row = pools[kind].pop()
            used[kind] += 1
            sources.append((kind, index, row))
        out.append(_merge(sources, f"combined-{seed}-{len(out):06d}"))
    if fallbacks:
        logger.warning("Combine: %d slots took the other modality because the drawn pool was empty.", fallbacks)
    if n_out is not None and len(out) < n_out:
        logger.warning("Combine: %d rows asked, %d made before the sources ran out.", n_out, len(out))
    stats = {"rows": len(out), "fallbacks": fallbacks, "used_images": used["image"], "used_audios": used["audio"]}
    return out, stats
