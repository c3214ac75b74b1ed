"""A failed row does not stop a data run: it is written down with its error, counted, and retried by a rerun.

The endpoint is a real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions wire format and fails the
requests a test picks (500: retried by the `openai` client; 400: not retried), reached through `OpenAIGenerator`
and the `mmmmodal data` CLI. A local transformers LLM with one failing prompt checks the local path.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from _tiny_text import save_tiny_llm
from processing.generators import OpenAIGenerator, TransformersGenerator
from processing.jsonl_io import failed_path, read_jsonl
from processing.relationship import relationship
from processing.visual_qa import visual_qa


class ChatServer(ThreadingHTTPServer):
    """`POST /v1/chat/completions`; `fail(request) -> (status, message) | None` picks the requests that fail."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.fail = lambda request: None
        self.requests, self.lock = [], threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def texts(self) -> list:
        """Every request so far, as the text of all its messages joined."""
        with self.lock:
            return ["\n".join(m["content"] for m in r["messages"]) for r in self.requests]


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(request)
        failure = self.server.fail(request)
        if failure is not None:
            status, message = failure
            return self._send(status, {"error": {"message": message, "type": "server_error", "code": status}})
        reply = "reply to: " + request["messages"][-1]["content"]  # carries the row's own text along
        self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": request["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": reply}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def server():
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def generator(server, **kwargs) -> OpenAIGenerator:
    return OpenAIGenerator(server.base_url, "tiny", max_workers=4, timeout=10, max_retries=1, **kwargs)


def captions(n: int, start: int = 0) -> list:
    return [{"filename": [f"/data/img{k}.png"], "caption": f"caption {k}"} for k in range(start, start + n)]


def fails_on(*captions_to_fail, status=500):
    """Fail every request of the rows with these captions (each prompt has a newline after the caption)."""
    def fail(request):
        text = "\n".join(m["content"] for m in request["messages"])
        return (status, f"simulated failure ({status})") if any(f"{c}\n" in text for c in captions_to_fail) else None
    return fail


def test_failed_rows_are_written_down_and_the_run_goes_on(server, tmp_path):
    out = tmp_path / "vqa.jsonl"
    server.fail = fails_on("caption 1", "caption 4")
    stats = visual_qa(captions(6), out, generator(server), n_turns=2, chunk_size=3)
    assert stats == {"total": 6, "skipped_done": 0, "written": 4, "failed": 2}
    rows = read_jsonl(out)
    assert sorted(r["filename_description"][0] for r in rows) == ["caption 0", "caption 2", "caption 3", "caption 5"]
    assert all(len(r["conversations"]) == 4 for r in rows)  # the good rows of a chunk with a failure are whole
    failed = {r["item"]["caption"]: r for r in read_jsonl(failed_path(out))}
    assert set(failed) == {"caption 1", "caption 4"}
    for record in failed.values():
        assert record["attempts"] == 1 and "InternalServerError" in record["error"]
        assert "simulated failure (500)" in record["error"] and record["id"] not in {r["id"] for r in rows}
    # "After its retries": the client sent each failing first question twice (max_retries=1), then gave up,
    # and that row asked nothing more.
    texts = server.texts()
    assert sum("caption 1\n" in t for t in texts) == 2 and sum("caption 4\n" in t for t in texts) == 2


def test_bad_request_is_not_retried_and_fails_mid_dialogue(server, tmp_path):
    """A 400 on the second answer of one row: one request, no retry; the row has no partial record."""
    out = tmp_path / "vqa.jsonl"

    def fail(request):
        system = request["messages"][0]["content"]
        if "caption 2" in system and system.startswith("You are a helpful assistant") and len(request["messages"]) > 2:
            return 400, "context too long"
        return None

    server.fail = fail
    stats = visual_qa(captions(4), out, generator(server), n_turns=2)
    assert stats["written"] == 3 and stats["failed"] == 1
    [record] = read_jsonl(failed_path(out))
    assert record["item"]["caption"] == "caption 2" and record["error"].startswith("BadRequestError")
    assert sum(fail(r) is not None for r in server.requests) == 1
    # Requests for caption 2: question, answer 1, next question, the failing answer 2; nothing after it.
    assert sum("caption 2" in t for t in server.texts()) == 4


def test_rerun_retries_only_failed_and_missing_rows(server, tmp_path):
    out = tmp_path / "vqa.jsonl"
    server.fail = fails_on("caption 0", "caption 3")
    assert visual_qa(captions(5), out, generator(server), n_turns=1)["failed"] == 2
    before = read_jsonl(out)
    server.fail, server.requests = (lambda request: None), []
    stats = visual_qa(captions(5) + captions(2, start=5), out, generator(server), n_turns=1)
    assert stats == {"total": 7, "skipped_done": 3, "written": 4, "failed": 0}
    # Only the two failed rows and the two new ones were asked for: a question and an answer each.
    asked = {c for t in server.texts() for c in (f"caption {k}" for k in range(7)) if f"{c}\n" in t}
    assert asked == {"caption 0", "caption 3", "caption 5", "caption 6"} and len(server.requests) == 8
    after = read_jsonl(out)
    assert after[:3] == before and len({r["id"] for r in after}) == 7
    assert not failed_path(out).exists()  # nothing failed any more


def test_a_row_failing_again_counts_its_attempts(server, tmp_path):
    out = tmp_path / "vqa.jsonl"
    server.fail = fails_on("caption 1", status=400)
    for attempt in (1, 2, 3):
        stats = visual_qa(captions(3), out, generator(server), n_turns=1)
        assert stats["failed"] == 1 and stats["written"] == (2 if attempt == 1 else 0)
        [record] = read_jsonl(failed_path(out))  # one line per failed row, however many runs
        assert record["attempts"] == attempt


def test_a_dead_endpoint_stops_the_run(server, tmp_path):
    out = tmp_path / "vqa.jsonl"
    server.fail = lambda request: (503, "overloaded")
    with pytest.raises(RuntimeError, match="the last 3 rows all failed, the last with InternalServerError"):
        visual_qa(captions(10), out, generator(server), n_turns=1, chunk_size=2, max_consecutive_failures=3)
    assert len(read_jsonl(failed_path(out))) == 3 and len(server.requests) < 10 * 2  # it stopped early
    server.fail = lambda request: None
    assert visual_qa(captions(10), out, generator(server), n_turns=1, chunk_size=2)["written"] == 10
    assert not failed_path(out).exists()
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        visual_qa(captions(1), out, generator(server), max_consecutive_failures=-1)


def test_relationship_with_llm_translation_fails_only_the_rows_whose_translation_failed(server, tmp_path):
    from processing.generators import LLMTranslator

    images = [{"filename": [f"/data/img{k}.png"], "caption": f"picture {k}"} for k in range(3)]
    out = tmp_path / "rel.jsonl"
    gen = generator(server)

    def fail(request):  # translating an answer about picture 2 (the echoed answer quotes the pair's texts)
        system, text = request["messages"][0]["content"], request["messages"][-1]["content"]
        return (500, "translator down") if system.startswith("Translate") and "picture 2\n" in text else None

    server.fail = fail
    stats = relationship(images, [], out, gen, kinds=["image-image"], n_per_kind=3, translator=LLMTranslator(gen))
    rows, failed = read_jsonl(out), read_jsonl(failed_path(out))
    # 3 distinct ordered pairs of 3 pictures: at least one holds picture 2.
    assert stats["written"] == len(rows) and stats["failed"] == len(failed) >= 1 and len(rows) + len(failed) == 3
    assert all("picture 2" in [i["text"] for i in f["item"]["items"]] for f in failed)
    assert all("picture 2" not in r["filename_description"] and r["answer_ms"] for r in rows)


def test_cli_exit_status_and_summary(server, tmp_path, capsys):
    from mmmmodal.cli import main

    table = tmp_path / "captions.jsonl"
    table.write_text("".join(json.dumps(c) + "\n" for c in captions(4)))
    out = tmp_path / "vqa.jsonl"
    argv = ["data", "visual-qa", "--captions", str(table), "--openai-base-url", server.base_url, "--openai-model",
            "tiny", "--max-retries", "0", "--timeout", "10", "--turns", "1", "--out", str(out)]
    server.fail = fails_on("caption 2")
    assert main(argv) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"total": 4, "skipped_done": 0, "written": 3, "failed": 1}
    assert [r["item"]["caption"] for r in read_jsonl(failed_path(out))] == ["caption 2"]
    server.fail = lambda request: None
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"total": 4, "skipped_done": 3, "written": 1, "failed": 0}
    assert len(read_jsonl(out)) == 4 and not failed_path(out).exists()


class FaultyLLM(TransformersGenerator):
    """A real tiny local LLM whose batches fail when they hold a chosen prompt (an OOM, a bad input)."""

    bad = "caption 1"

    def _generate_batch(self, chats):
        if any(self.bad in m["content"] for chat in chats for m in chat):
            raise RuntimeError("simulated generation failure")
        return super()._generate_batch(chats)


def test_local_generator_fails_only_the_bad_chat(tmp_path):
    llm = FaultyLLM(str(save_tiny_llm(tmp_path / "llm")), max_new_tokens=3, batch_size=4)
    chats = [[{"role": "user", "content": f"caption {k}"}] for k in range(4)]
    replies = llm.generate(chats, return_exceptions=True)
    assert isinstance(replies[1], RuntimeError) and all(isinstance(replies[k], str) for k in (0, 2, 3))
    with pytest.raises(RuntimeError, match="simulated"):
        llm.generate(chats)
    out = tmp_path / "vqa.jsonl"
    assert visual_qa(captions(4), out, llm, n_turns=1) == {"total": 4, "skipped_done": 0, "written": 3, "failed": 1}
    assert read_jsonl(failed_path(out))[0]["error"] == "RuntimeError: simulated generation failure"
