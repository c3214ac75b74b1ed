"""Resumable runs: a crash (an interrupt, or SIGKILL of a real process) loses at most the rows in
flight; the rerun writes the rest with no duplicates and keeps the rows already written. Rows that
failed (written to OUT.failed.jsonl) survive a SIGKILL too, and the rerun retries them."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processing.jsonl_io import JsonlAppender, done_ids, failed_path, read_jsonl, run_resumable
from processing.visual_qa import visual_qa

REPO = Path(__file__).resolve().parents[1]


class EchoGenerator:
    """Deterministic fake LLM: replies with the last message; optionally interrupted after N calls (Ctrl-C),
    or failing the chats that mention one of `fail_on`."""

    def __init__(self, fail_after=None, delay=0.0, fail_on=()):
        self.calls, self.fail_after, self.delay, self.fail_on = 0, fail_after, delay, fail_on

    def _reply(self, chat):
        if any(f"{text}\n" in m["content"] for m in chat for text in self.fail_on):
            return RuntimeError("simulated failure")
        return f"reply to: {chat[-1]['content'][-20:]}"

    def generate(self, chats, return_exceptions=False):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        time.sleep(self.delay)
        replies = [self._reply(chat) for chat in chats]
        if not return_exceptions and any(isinstance(r, Exception) for r in replies):
            raise next(r for r in replies if isinstance(r, Exception))
        return replies


def _captions(n):
    return [{"filename": [f"/data/img{k}.png"], "caption": f"caption {k}"} for k in range(n)]


def test_crash_then_rerun_no_duplicates_no_loss(tmp_path):
    out, captions = tmp_path / "vqa.jsonl", _captions(10)
    # n_turns=2 -> 4 generate calls per chunk; the crash hits during the third chunk.
    with pytest.raises(KeyboardInterrupt, match="simulated crash"):
        visual_qa(captions, out, EchoGenerator(fail_after=9), n_turns=2, chunk_size=3)
    before = read_jsonl(out)
    assert len(before) == 6  # two whole chunks; the third chunk (in flight) is lost
    stats = visual_qa(captions, out, EchoGenerator(), n_turns=2, chunk_size=3)
    assert stats == {"total": 10, "skipped_done": 6, "written": 4, "failed": 0}
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
visual_qa(_captions(12), {out!r}, EchoGenerator(delay=0.3, fail_on=("caption 1", "caption 2")), n_turns=1,
          chunk_size=2)
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
    assert 4 <= len(partial) < 10
    # Chunk 0 holds captions 0 and 1, chunk 1 captions 2 and 3: both finished before the kill.
    assert [r["item"]["caption"] for r in read_jsonl(failed_path(out))] == ["caption 1", "caption 2"]
    stats = visual_qa(_captions(12), out, EchoGenerator(), n_turns=1, chunk_size=2)
    assert stats == {"total": 12, "skipped_done": len(partial), "written": 12 - len(partial), "failed": 0}
    rows = read_jsonl(out)
    assert rows[:len(partial)] == partial
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert json.dumps(rows)  # every line parses
    assert not failed_path(out).exists()
