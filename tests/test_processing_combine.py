"""Combining (paper §4.5): 2-4 sources per row, image share ~0.6, no reuse, reproducible."""

import pytest

from processing.combine import combine
from processing.convert import convert_records


def _sources(kind, n):
    ext, marker = (".png", "<image>") if kind == "image" else (".wav", "<audio>")
    return [{"id": f"{kind}{k}", "filename": [f"/m/{kind}{k}{ext}"], "filename_description": [f"{kind} {k}"],
             "conversations": [{"role": "user", "content": f"{marker}question {kind} {k}"},
                               {"role": "assistant", "content": f"answer {kind} {k}"}]} for k in range(n)]


@pytest.fixture(scope="module")
def big():
    return combine(_sources("image", 20000), _sources("audio", 20000), n_out=4000, seed=7)


def test_rows_have_two_to_four_sources(big):
    rows, stats = big
    counts = [len(r["sources"]) for r in rows]
    assert stats["rows"] == len(rows) == 4000 and stats["fallbacks"] == 0
    assert set(counts) == {2, 3, 4}
    for k in (2, 3, 4):  # k uniform over {2, 3, 4}
        assert abs(counts.count(k) / len(counts) - 1 / 3) < 0.03


def test_image_share_near_point_six(big):
    rows, stats = big
    share = stats["used_images"] / (stats["used_images"] + stats["used_audios"])
    assert abs(share - 0.6) < 0.015  # 12k draws: 4 sigma is ~0.018
    kinds = [s.split(":")[0] for r in rows for s in r["sources"]]
    assert kinds.count("image") == stats["used_images"]


def test_no_reuse_and_concatenation(big):
    rows, _ = big
    sources = [s for r in rows for s in r["sources"]]
    assert len(sources) == len(set(sources))
    row = rows[0]
    ids = [s.split(":")[1] for s in row["sources"]]
    assert row["filename"] == [f"/m/{i}{'.png' if i.startswith('image') else '.wav'}" for i in ids]
    assert [t["content"] for t in row["conversations"][::2]] == [f"<{i.rstrip('0123456789')}>question "
                                                                  f"{i.rstrip('0123456789')} {i.lstrip('imageaudio')}"
                                                                  for i in ids]
    assert len(row["filename_description"]) == len(ids)


def test_reproducible_with_seed():
    images, audios = _sources("image", 200), _sources("audio", 200)
    assert combine(images, audios, seed=3) == combine(images, audios, seed=3)
    assert combine(images, audios, seed=3)[0] != combine(images, audios, seed=4)[0]


def test_runs_until_sources_are_used_and_converts():
    rows, stats = combine(_sources("image", 30), _sources("audio", 20), seed=0)
    assert stats["used_images"] + stats["used_audios"] >= 50 - 4  # stops only when a row can't be filled
    converted, cstats = convert_records(rows, check_files=False)
    assert cstats["skipped"] == 0 and len(converted) == len(rows)


def test_bad_arguments():
    with pytest.raises(ValueError, match="p_image"):
        combine([], [], p_image=1.5)
    with pytest.raises(ValueError, match="conversations"):
        combine([{"filename": ["a.png"]}] * 4, [], n_out=1, p_image=1.0)
