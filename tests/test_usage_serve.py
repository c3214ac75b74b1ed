"""`mmmmodal serve`: the official `openai` client against the server started on loopback."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from benchmarks.serve_load import free_port
from mmmmodal.build import build_tiny_checkpoint
from mmmmodal.serve.media import MediaPolicy
from mmmmodal.serve.request import Sampling, encode_request, parse_request
from mmmmodal.tiny import TinySizes

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MAX_POSITIONS = 256
API_KEY = "test-key-16"
BATCH_WAIT_MS = 400  # wide window, so that two requests sent together surely share a batch on a busy CI machine


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model, processor, checkpoint = build_tiny_checkpoint(
        root, "tiny-mmmmodal", sizes=TinySizes(text_max_positions=MAX_POSITIONS)
    )
    (root / "media").mkdir()
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mmmmodal.cli import main; sys.exit(main())", "serve", str(checkpoint),
         "--host", "127.0.0.1", "--port", str(port), "--batch-wait-ms", str(BATCH_WAIT_MS), "--max-new-tokens", "8",
         "--allowed-local-media-path", str(root / "media")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1", "MMMMODAL_API_KEY": API_KEY},
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    deadline = time.time() + 180
    while True:
        try:
            client.models.list()
            break
        except openai.APIConnectionError:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield client, model, processor, root
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def media(served):
    root = served[3]
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(png, format="PNG")
    Image.new("RGB", (40, 40), (30, 60, 220)).save(root / "media" / "blue.png")
    Image.new("RGB", (40, 40), (30, 60, 220)).save(root / "outside.png")
    wav = io.BytesIO()
    t = np.arange(16_000) / 16_000
    sf.write(wav, (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32), 16_000, format="WAV")
    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000, format="WAV")
    return {
        "image": {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(png.getvalue())}},
        "image_path": {"type": "image_url", "image_url": {"url": str(root / "media" / "blue.png")}},
        "image_file_url": {"type": "image_url", "image_url": {"url": "file://blue.png"}},  # relative to the root
        "outside_path": {"type": "image_url", "image_url": {"url": str(root / "outside.png")}},
        "escape_path": {"type": "image_url", "image_url": {"url": str(root / "media" / ".." / "outside.png")}},
        "audio": {"type": "input_audio", "input_audio": {"data": _b64(wav.getvalue()), "format": "wav"}},
        "empty_audio": {"type": "input_audio", "input_audio": {"data": _b64(empty.getvalue()), "format": "wav"}},
    }


def _text(text):
    return {"type": "text", "text": text}


def local_answer(model, processor, messages, max_new_tokens=8, root=None) -> str:
    """What the model answers (greedy) to the same request, computed in this process without the server."""
    request = parse_request({"messages": messages, "max_tokens": max_new_tokens}, "tiny-mmmmodal", Sampling(), 32)
    policy = MediaPolicy(local_root=str(root / "media") if root else None)
    inputs, budget = encode_request(processor, request, policy, MAX_POSITIONS, max_new_tokens)
    out = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_multi_turn_image_and_audio_answers_like_the_model(served, media):
    client, model, processor, root = served
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [media["image"], media["audio"], _text("What is in picture 1?")]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": [media["image_path"], _text("And picture 2?")]},
    ]
    completion = client.chat.completions.create(model="tiny-mmmmodal", messages=messages, max_tokens=8)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == local_answer(model, processor, messages, root=root)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 2 * 16  # two images of 16 patches each, plus the audio and the text
    assert [m.id for m in client.models.list().data] == ["tiny-mmmmodal"]
    assert client.models.retrieve("tiny-mmmmodal").id == "tiny-mmmmodal"
    relative = [messages[0], {"role": "user", "content": [media["image_file_url"], _text("And picture 2?")]}]
    again = client.chat.completions.create(model="tiny-mmmmodal", messages=relative, max_tokens=8)
    assert again.choices[0].message.content == local_answer(model, processor, relative, root=root)


def test_streaming_gives_the_same_answer_in_pieces(served, media):
    client, model, processor, _ = served
    messages = [{"role": "user", "content": [media["audio"], _text("How many beeps are in audio 1?")]}]
    stream = client.chat.completions.create(model="tiny-mmmmodal", messages=messages, max_tokens=8, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(pieces) == local_answer(model, processor, messages)


def test_requests_sent_together_share_one_batch(served, media):
    client, model, processor, root = served
    conversations = [
        [{"role": "user", "content": [media["image"], _text("Describe the image.")]}],
        [{"role": "user", "content": "yes or no?"}],
        [{"role": "user", "content": [media["audio"], media["image_path"], _text("Is the sound related to picture 1?")]}],
    ]
    expected = [local_answer(model, processor, messages, root=root) for messages in conversations]

    def ask(messages):
        raw = client.chat.completions.with_raw_response.create(model="tiny-mmmmodal", messages=messages, max_tokens=8)
        return raw.headers["x-batch-size"], raw.parse().choices[0].message.content

    with ThreadPoolExecutor(len(conversations)) as pool:
        results = list(pool.map(ask, conversations))
    assert [size for size, _ in results] == [str(len(conversations))] * len(conversations)
    assert [answer for _, answer in results] == expected


@pytest.mark.parametrize(
    "case, reason",
    [
        ("corrupt_image", "Could not read the image"),
        ("missing_path", "'/no/such/picture.png' is outside the allowed local media path"),
        ("outside_path", "outside.png' is outside the allowed local media path"),
        ("escape_path", "outside.png' is outside the allowed local media path"),
        ("missing_inside", "cannot be read (No such file or directory)"),
        ("empty_audio", "empty"),
        ("corrupt_audio", "Could not read the audio"),
        ("unknown_type", "unknown content type 'video_url'"),
        ("too_much_media", "does not fit the model's context"),
        ("bad_role", "role 'robot' is not supported"),
    ],
)
def test_bad_requests_get_400_with_a_reason_and_the_server_goes_on(served, media, case, reason):
    client, *_ = served
    bad_part = {
        "corrupt_image": {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(b"not a png")}},
        "missing_path": {"type": "image_url", "image_url": {"url": "/no/such/picture.png"}},
        "missing_inside": {"type": "image_url", "image_url": {"url": "file://nothing-here.png"}},
        "outside_path": media["outside_path"],
        "escape_path": media["escape_path"],
        "empty_audio": media["empty_audio"],
        "corrupt_audio": {"type": "input_audio", "input_audio": {"data": _b64(b"RIFF....WAVEjunk"), "format": "wav"}},
        "unknown_type": {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
    }
    role = "user"
    if case == "too_much_media":
        content = [media["image"]] * 16 + [_text("What are all these?")]  # 16 x 18 tokens > 256 positions
    elif case == "bad_role":
        content, role = "hi", "robot"
    else:
        content = [bad_part[case], _text("What is this?")]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-mmmmodal", messages=[{"role": role, "content": content}], max_tokens=4)
    assert error.value.status_code == 400
    assert reason in str(error.value)
    ok = client.chat.completions.create(model="tiny-mmmmodal", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


@pytest.mark.parametrize("token", ["<image>", "</audio>", "<|image_pad|>"])
@pytest.mark.parametrize("with_media", [False, True])
def test_media_tokens_typed_into_text_get_400_naming_the_token(served, media, token, with_media):
    """Typed into a message, they would reach the model as placeholders or span tokens; vLLM refuses them alike
    (tests/test_vllm.py)."""
    client, *_ = served
    for content in ([media["image"]] if with_media else []) + [_text(f"What does {token} mean?")], f"Is {token} ok?":
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model="tiny-mmmmodal", messages=[{"role": "user", "content": content}],
                                           max_tokens=2)
        assert error.value.status_code == 400 and repr(token) in error.value.message, error.value.message
    ok = client.chat.completions.create(model="tiny-mmmmodal", max_tokens=2,
                                        messages=[{"role": "user", "content": "What does < image> mean?"}])
    assert ok.choices[0].message.content is not None


def test_requests_are_left_padded_with_media_in_order():
    from mmmmodal.training.padding import pad_batch

    rows = [
        {"input_ids": torch.tensor([5, 6, 7]), "pixel_values": torch.zeros(1, 3, 4, 4)},
        {"input_ids": torch.tensor([8])},
        {"input_ids": torch.tensor([9, 10]), "pixel_values": torch.ones(2, 3, 4, 4)},
    ]
    batch = pad_batch(rows, pad_token_id=0, padding_side="left")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
    right = pad_batch([{**row, "labels": row["input_ids"]} for row in rows], pad_token_id=0)
    assert right["labels"].tolist() == [[5, 6, 7], [8, -100, -100], [9, 10, -100]]


# ------------------------------------------------------------------------------------------------ protocol
def _chat(client, content="hi", **kwargs):
    return client.chat.completions.create(model="tiny-mmmmodal", messages=[{"role": "user", "content": content}],
                                          **{"max_tokens": 8, **kwargs})


def test_a_wrong_or_missing_api_key_gets_401_in_openai_shape(served):
    client, *_ = served
    for key in ("wrong", ""):
        stranger = client.with_options(api_key=key or "-")
        with pytest.raises(openai.AuthenticationError) as error:
            stranger.models.list()
        assert error.value.status_code == 401 and error.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            _chat(stranger)
    health = httpx.get(str(client.base_url).replace("/v1/", "/health"), timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"  # the probe needs no key


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("DELETE", "/v1/models", 405),
                                                  ("GET", "/v1/chat/completions", 405), ("GET", "/nothing", 404)])
def test_routing_errors_are_openai_errors(served, method, path, status):
    client, *_ = served
    root = str(client.base_url).removesuffix("/v1/")
    response = httpx.request(method, root + path, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert path in error["message"]


def test_an_unknown_model_is_404_model_not_found(served):
    client, *_ = served
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert error.value.code == "model_not_found" and "gpt-4o" in str(error.value)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_unimplemented_and_unknown_fields_are_refused_by_name(served):
    client, *_ = served
    with pytest.raises(openai.BadRequestError) as error:
        _chat(client, logprobs=True, tools=[{"type": "function", "function": {"name": "f"}}],
              extra_body={"top_k": 5, "frobnicate": 1})
    message = str(error.value)
    for name in ("'logprobs'", "'tools'", "'top_k'", "'frobnicate'"):
        assert name in message
    # values that ask for nothing are fine: they change nothing
    plain = _chat(client).choices[0].message.content
    assert _chat(client, frequency_penalty=0, presence_penalty=0, logprobs=False).choices[0].message.content == plain
    with pytest.raises(openai.BadRequestError, match="'presence_penalty'"):
        _chat(client, presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match="disagree"):
        _chat(client, max_tokens=4, max_completion_tokens=5)


def test_max_completion_tokens_and_usage(served):
    client, *_ = served
    completion = _chat(client, max_tokens=None, max_completion_tokens=3)
    assert completion.usage.completion_tokens <= 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    chunks = list(_chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert all(chunk.usage is None for chunk in _chat(client, stream=True))  # not asked: not sent
    with pytest.raises(openai.BadRequestError, match="only allowed with `stream: true`"):
        _chat(client, stream_options={"include_usage": True})


def test_stop_cuts_the_answer_before_the_stop_string(served):
    client, *_ = served
    full = _chat(client, "Tell me a long story.", max_tokens=12).choices[0].message.content
    assert len(full) >= 6, full
    stop = full[3:5]
    expected = full[: full.find(stop)]
    cut = _chat(client, "Tell me a long story.", max_tokens=12, stop=[stop, "never-there"]).choices[0]
    assert (cut.message.content, cut.finish_reason) == (expected, "stop")
    streamed = _chat(client, "Tell me a long story.", max_tokens=12, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_gives_the_same_sample_alone_or_in_a_batch(served, media):
    client, *_ = served
    sampled = {"temperature": 1.0, "max_tokens": 8}
    alone = _chat(client, "yes or no?", seed=7, **sampled).choices[0].message.content
    assert _chat(client, "yes or no?", seed=7, **sampled).choices[0].message.content == alone

    def ask(args):
        content, seed = args
        raw = client.chat.completions.with_raw_response.create(
            model="tiny-mmmmodal", messages=[{"role": "user", "content": content}], seed=seed, **sampled)
        return raw.headers["x-batch-size"], raw.parse().choices[0].message.content

    together = [("yes or no?", 7), ([media["image"], _text("Describe the image.")], 1), ("yes or no?", 8)]
    with ThreadPoolExecutor(len(together)) as pool:
        results = list(pool.map(ask, together))
    assert [size for size, _ in results] == ["3"] * 3  # the three shared one generate call
    assert results[0][1] == alone
    answers = {_chat(client, "yes or no?", seed=seed, **sampled).choices[0].message.content for seed in range(4)}
    assert len(answers) > 1  # the seed does change the sample


def test_n_answers_several_choices(served):
    client, *_ = served
    greedy = _chat(client, n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    sampled = _chat(client, n=3, temperature=1.0, seed=11)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert sampled.choices[0].message.content == _chat(client, temperature=1.0, seed=11).choices[0].message.content
    assert sampled.usage.completion_tokens == sum(
        _chat(client, temperature=1.0, seed=11 + i).usage.completion_tokens for i in range(3))
    chunks = list(_chat(client, n=2, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}
    with pytest.raises(openai.BadRequestError, match="`n` must be between 1 and 8"):
        _chat(client, n=9)


def _health(client) -> dict:
    return httpx.get(str(client.base_url).replace("/v1/", "/health"), timeout=30).json()


def _wait_for(predicate, client, seconds=60):
    deadline = time.time() + seconds
    while not predicate(state := _health(client)):
        assert time.time() < deadline, json.dumps(state)
        time.sleep(0.01)
    return state


def test_a_client_that_goes_away_cancels_its_generation(served):
    client, *_ = served
    url, headers = str(client.base_url) + "chat/completions", {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "tiny-mmmmodal", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 200}
    assert _chat(client, "Tell me a long story.", max_tokens=200).usage.completion_tokens == 200  # no early end
    before = _health(client)
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=60) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # one piece of the answer arrived: generation is running; now hang up
    state = _wait_for(lambda s: s["cancelled"] > before["cancelled"] and s["running"] == 0, client)
    assert state["generated_tokens"] - before["generated_tokens"] < 200

    # a plain (non-streamed) request whose client hangs up while it is generating. Nothing arrives before the whole
    # answer, and on a quiet machine the tiny model makes its 200 tokens within a few polls of /health: send it again
    # until a poll sees it running, then hang up.
    port = client.base_url.port
    payload = json.dumps(body).encode()
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}"
                         f"\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                         + payload)
            seen = _wait_for(lambda s: s["running"] > 0 or s["batches"] > state["batches"], client)
            if seen["running"] > 0:
                break
        state = _wait_for(lambda s: s["running"] == 0 and s["queued"] == 0, client)  # it ran whole: again
    else:
        pytest.fail("no poll of /health saw the request running in 30 tries")
    after = _wait_for(lambda s: s["cancelled"] > state["cancelled"] and s["running"] == 0 and s["queued"] == 0, client)
    assert after["generated_tokens"] - state["generated_tokens"] < 200
    assert _chat(client).choices[0].message.content is not None  # and the next request is served
