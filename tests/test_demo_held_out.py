"""The demo's held-out files stay byte for byte the ones every figure in docs/demo.md was scored on.

Training may change (packing, schedules, curricula); the task, its held-out split and the scoring may not, or the
figures of two runs stop being comparable. The reference digests below were computed from the files that
`mmmmodal.demo.data.make_data` wrote for seeds 0-4 at commit 32c22b2 (main before the demo trained packed), with
the demo's own `n_test`; seed 0's digest is also that of the held-out files of a full `mmmmodal demo --seed 0` run
at that commit. A digest covers `test.jsonl` (with the output folder's path taken out, so the folder does not
matter) and every held-out media file's name and bytes.
"""

import hashlib
import json
from pathlib import Path

import pytest

from mmmmodal.demo.data import make_data
from mmmmodal.demo.settings import DemoSettings

# sha256 of the held-out files for each seed, written by main at 32c22b2 (see the module's doc).
REFERENCE = {
    0: "6c7fbea020269820a74f349d2e9e4d747d5b0daa953a99354047019f303f8b94",
    1: "4b2d1da94ebe7c0758e96adf18fa8e8d76ee3a3f9e1d8280b5c73ca0bf3302f1",
    2: "929e45a59f21fdfd4f7d176277e59436ff79e0c26e84c9f3d35d4eae0ca3ba9b",
    3: "6a8e2810ea0b5af7f06f40ba64dcc0f95f587015bcadd853deb0249e31d657c9",
    4: "2e17e44ab044ccbf82800bef30618bdb328dbae9b38100f6d4745886cde6ba96",
}


def held_out_digest(folder: Path) -> str:
    """One sha256 over `test.jsonl` (the folder's own path replaced by `{out}`) and the held-out media files."""
    digest = hashlib.sha256()
    for path in [folder / "test.jsonl", *sorted((folder / "media" / "test").iterdir())]:
        data = path.read_bytes()
        if path.suffix == ".jsonl":
            data = data.replace(str(folder).encode(), b"{out}")
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The held-out files `make_data` writes today for each seed (no training rows, no captions)."""
    root = tmp_path_factory.mktemp("held_out")
    folders = {}
    for seed in REFERENCE:
        folders[seed] = root / f"seed{seed}"
        make_data(folders[seed], 0, DemoSettings().n_test, 0, seed)
    return folders


@pytest.mark.parametrize("seed", sorted(REFERENCE))
def test_held_out_files_are_byte_identical_to_the_reference(written, seed):
    assert held_out_digest(written[seed]) == REFERENCE[seed]


def test_the_digest_sees_a_changed_row_a_changed_pixel_and_another_folder(written, tmp_path):
    """The check can fail: one answer changed, one media byte changed, one row fewer each change the digest; the
    output folder's path does not."""
    source = written[0]
    copy = tmp_path / "elsewhere" / "data"
    copy.mkdir(parents=True)
    (copy / "media").mkdir()
    (copy / "media" / "test").symlink_to(source / "media" / "test", target_is_directory=True)
    text = (source / "test.jsonl").read_text().replace(str(source), str(copy))
    (copy / "test.jsonl").write_text(text)
    assert held_out_digest(copy) == REFERENCE[0]

    lines = text.splitlines(keepends=True)
    answer = json.loads(lines[0])["answers"][0]
    other = "blue" if answer != "blue" else "red"
    changed = lines[0].replace(f'"answers": ["{answer}"', f'"answers": ["{other}"', 1)
    assert changed != lines[0]
    (copy / "test.jsonl").write_text("".join([changed, *lines[1:]]))
    assert held_out_digest(copy) != REFERENCE[0]
    (copy / "test.jsonl").write_text("".join(lines[:-1]))
    assert held_out_digest(copy) != REFERENCE[0]

    (copy / "test.jsonl").write_text(text)
    (copy / "media" / "test").unlink()
    (copy / "media" / "test").mkdir()
    media = sorted((source / "media" / "test").iterdir())
    for path in media:
        (copy / "media" / "test" / path.name).write_bytes(path.read_bytes())
    assert held_out_digest(copy) == REFERENCE[0]
    last = copy / "media" / "test" / media[-1].name
    data = bytearray(last.read_bytes())
    data[-5] ^= 1
    last.write_bytes(bytes(data))
    assert held_out_digest(copy) != REFERENCE[0]
