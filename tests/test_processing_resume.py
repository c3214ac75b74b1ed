"""Resumable runs: a crash (exception, or SIGKILL of a real process) loses at most the rows in
flight; the rerun writes the rest with no duplicates and keeps the rows already written."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processing.jsonl_io import JsonlAppender, done_ids, read_jsonl, run_resumable
from processing.visual_qa import visual_qa

REPO = Path(__file__).resolve().parents[1]


class EchoGenerator:
    """Deterministic fake LLM: replies with the last message; optionally fails after N calls."""

    def __init__(self, fail_after=None, delay=0.0):
        self.calls, self.fail_after, self.delay = 0, fail_after, delay

    def generate(self, chats):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        time.sleep(self.delay)
        return [f"reply to: {chat[-1]['content'][-20:]}" for chat in chats]


def _captions(n):
    return [{"filename": [f"/data/img{k}.png"], "caption": f"caption {k}"} for k in range(n)]


def test_crash_then_rerun_no_duplicates_no_loss(tmp_path):
    out, captions = tmp_path / "vqa.jsonl", _captions(10)
    # n_turns=2 -> 4 generate calls per chunk; the crash hits during the third chunk.
    with pytest.raises(RuntimeError, match="simulated crash"):
        visual_qa(captions, out, EchoGenerator(fail_after=9), n_turns=2, chunk_size=3)
    before = read_jsonl(out)
    assert len(before) == 6  # two whole chunks; the third chunk (in flight) is lost
    stats = visual_qa(captions, out, EchoGenerator(), n_turns=2, chunk_size=3)
    assert stats == {"total": 10, "skipped_done": 6, "written": 4}
    after = read_jsonl(out)
    assert after[:6] == before
    assert len({r["id"] for r in after}) == 10
    assert sorted(r["filename"][0] for r in after) == sorted(c["filename"][0] for c in captions)
    assert visual_qa(captions, out, EchoGenerator(), n_turns=2)["written"] == 0


def test_torn_last_line_is_dropped_and_redone(tmp_path):
    out = tmp_path / "rows.jsonl"
    with JsonlAppender(out) as f:
        f.write({"id": "a"})
    with open(out, "a") as f:
        f.write('{"id": "b", "te')  # a write cut short
    assert done_ids(out) == {"a"}
    stats = run_resumable([{"id": "a"}, {"id": "b"}], out, lambda chunk: [dict(c, ok=1) for c in chunk])
    assert stats["written"] == 1 and [r["id"] for r in read_jsonl(out)] == ["a", "b"]


SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from test_processing_resume import EchoGenerator, _captions
from processing.visual_qa import visual_qa
visual_qa(_captions(12), {out!r}, EchoGenerator(delay=0.3), n_turns=1, chunk_size=2)
"""


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "vqa.jsonl"
    script = SCRIPT.format(tests=str(REPO / "tests"), out=str(out))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    partial = read_jsonl(out)
    assert 4 <= len(partial) < 12
    visual_qa(_captions(12), out, EchoGenerator(), n_turns=1, chunk_size=2)
    rows = read_jsonl(out)
    assert rows[:len(partial)] == partial
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert json.dumps(rows)  # every line parses
