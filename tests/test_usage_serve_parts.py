"""The server's parts in this process: request checks, incremental decoding, stop strings, the batcher, errors."""

import asyncio
import time

import pytest
import torch
from transformers import GenerationConfig

from mmmmodal.serve.batching import Batcher, IncrementalDecoder, Job, RowSampler, StopText
from mmmmodal.serve.request import RequestError, Sampling, parse_request, sampling_defaults

pytest.importorskip("fastapi")


def _body(**fields):
    return {"messages": [{"role": "user", "content": "hi"}], **fields}


def test_sampling_defaults_come_from_the_generation_config():
    assert sampling_defaults(GenerationConfig()) == Sampling()  # do_sample false: greedy
    config = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, top_k=20)
    defaults = sampling_defaults(config)
    assert defaults == Sampling(0.6, 0.9, 20)
    assert parse_request(_body(), "m", defaults, 8).sampling == Sampling(0.6, 0.9, 20)
    assert parse_request(_body(temperature=1.2), "m", defaults, 8).sampling == Sampling(1.2, 0.9, 20)
    assert parse_request(_body(temperature=0), "m", defaults, 8).sampling.greedy
    assert parse_request(_body(top_p=0.5), "m", defaults, 8).sampling == Sampling(0.6, 0.5, 20)


@pytest.mark.parametrize("fields, named", [
    ({"stop": ""}, "`stop`"), ({"stop": ["a"] * 5}, "`stop`"), ({"n": 0}, "`n`"), ({"seed": "7"}, "`seed`"),
    ({"temperature": 3}, "`temperature`"), ({"top_p": 0}, "`top_p`"), ({"stream": "yes"}, "`stream`"),
    ({"max_tokens": 0}, "`max_tokens`"), ({"max_completion_tokens": True}, "`max_completion_tokens`"),
    ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "`stream_options`"),
    ({"response_format": {"type": "json_object"}, "logit_bias": {"5": 1}}, "'response_format', 'logit_bias'"),
    ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "['name']"),
    ({"messages": [{"role": "tool", "content": "1"}]}, "role 'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "high"}}]}]},
     "`detail` 'high'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}]},
     "['cache_control']"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "aac"}}]}]},
     "'aac'"),
])
def test_bad_fields_are_refused_naming_the_field(fields, named):
    with pytest.raises(RequestError) as error:
        parse_request(_body(**fields), "m", Sampling(), 8)
    assert error.value.status == 400 and named in str(error.value)


def test_developer_messages_are_system_messages_and_media_are_counted():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"}}
    request = parse_request({"messages": [{"role": "developer", "content": "Be brief."},
                                          {"role": "user", "content": [image, image]}]}, "m", Sampling(), 8)
    assert request.messages[0]["role"] == "system"
    assert [where for _, _, where in request.media] == ["messages[1].content[0] (image_url)",
                                                        "messages[1].content[1] (image_url)"]
    with pytest.raises(RequestError, match="at most 1 per request"):
        parse_request({"messages": [{"role": "user", "content": [image, image]}]}, "m", Sampling(), 1)


class CountingTokenizer:
    """A tokenizer whose `decode` records how many ids it was given each time."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def decode(self, ids, **kwargs):
        self.lengths.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_incremental_decoding_matches_a_full_decode_and_reads_a_short_window(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    text = "Ini model apa? " * 20 + "naïve café, 東京 — done."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(tokenizer)
    decoder = IncrementalDecoder(counting)
    pieces = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) > 100 and max(counting.lengths) <= 8  # a window, not the whole answer, at every step


def test_stop_text_holds_back_a_possible_stop_and_cuts_at_it():
    text = StopText(("END", "xyz"))
    assert text.add("abc E") == ("abc ", False)  # "E" may begin "END"
    assert text.add("N") == ("", False)
    assert text.add("D and more") == ("", True)
    other = StopText(("END",))
    assert other.add("aE") == ("a", False) and other.add("x") == ("Ex", False)
    assert other.add("tail E", final=True) == ("tail E", False)  # the end: nothing more can complete a stop


def test_row_sampler_draws_from_each_rows_own_generator():
    loop = asyncio.new_event_loop()
    try:
        def job(seed, index=0, temperature=1.0):
            return Job({}, 4, loop, asyncio.Queue(), Sampling(temperature), seed=seed, index=index)

        scores = torch.randn(1, 50)
        alone = [RowSampler([job(3)])(None, scores.clone()).argmax(-1).item() for _ in range(3)]
        assert len(set(alone)) == 1
        batch = torch.cat([torch.randn(1, 50), scores, torch.randn(1, 50)])
        together = RowSampler([job(9), job(3), job(None, temperature=0)])(None, batch.clone())
        assert together[1].argmax().item() == alone[0]
        assert torch.equal(together[2], batch[2])  # a greedy row is left as it is
        assert torch.isinf(together[1]).sum() == 49  # a sampled row keeps only the drawn token
    finally:
        loop.close()


def _text_inputs(processor, text):
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": text}]}],
                                             tokenize=False, add_generation_prompt=True)
    return dict(processor(text=rendered, return_tensors="pt"))


def test_a_cancelled_job_stops_generating_and_frees_the_batcher(tiny):
    model, processor = tiny
    batcher = Batcher(model, processor, max_batch_size=1, wait_s=0.0)
    batcher.eos_ids = set()
    inputs = _text_inputs(processor, "Tell me a long story.")

    async def scenario():
        loop = asyncio.get_running_loop()
        long_job = Job(inputs, 400, loop, asyncio.Queue())
        waiting, later = (Job(inputs, 400, loop, asyncio.Queue()) for _ in range(2))
        short_job = Job(inputs, 3, loop, asyncio.Queue())
        for job in (long_job, waiting, later):
            batcher.submit(job)
        batcher.cancel([waiting])  # cancelled while it waits: never enters a batch
        event = await long_job.events.get()
        assert event[0] == "text"
        batcher.cancel([long_job, later])
        batcher.submit(short_job)
        events = []
        while not events or events[-1][0] != "done":
            events.append(await asyncio.wait_for(short_job.events.get(), timeout=120))
        return events, [long_job.events.get_nowait() for _ in range(long_job.events.qsize())]

    start = time.monotonic()
    events, long_events = asyncio.run(scenario())
    assert all(kind == "text" for kind, *_ in long_events)  # the long job ended by its cancellation, not by itself
    assert events[-1][2:] == ("length", 3)
    assert batcher.batches == 2  # the long job's and the short one's: the two cancelled while waiting never ran
    assert batcher.tokens < 400 and time.monotonic() - start < 60


@pytest.fixture
def app_client(tiny):
    from fastapi.testclient import TestClient

    from mmmmodal.serve.app import build_app

    model, processor = tiny
    app = build_app(model, processor, "tiny", Batcher(model, processor))
    return app, TestClient(app, raise_server_exceptions=False)


def test_a_crash_is_a_500_and_a_validation_error_a_422_in_openai_shape(app_client, monkeypatch):
    import mmmmodal.serve.app as serve

    app, client = app_client

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serve, "encode_request", broken)
    response = client.post("/v1/chat/completions", json=_body())
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "The server failed on this request (RuntimeError).",
                                         "type": "server_error", "param": None, "code": None}}

    @app.get("/typed")
    async def typed(count: int):
        return {"count": count}

    response = client.get("/typed", params={"count": "many"})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error" and "count" in response.json()["error"]["message"]


def test_an_oversized_or_malformed_body_is_refused(tiny):
    from fastapi.testclient import TestClient

    from mmmmodal.serve.app import build_app

    model, processor = tiny
    client = TestClient(build_app(model, processor, "tiny", Batcher(model, processor), max_body_bytes=1000))
    response = client.post("/v1/chat/completions", json=_body(messages=[{"role": "user", "content": "x" * 2000}]))
    assert response.status_code == 413 and "over this server's limit of 1000 bytes" in response.json()["error"]["message"]
    response = client.post("/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
