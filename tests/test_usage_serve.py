"""`mmmmodal serve`: the official `openai` client against the server started on loopback."""

import base64
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmmmodal.serve import encode_request, parse_messages
from mmmmodal.tiny import TinySizes, build_tiny_checkpoint

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MAX_POSITIONS = 256
BATCH_WAIT_MS = 400  # wide window, so that two requests sent together surely share a batch on a busy CI machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model, processor, checkpoint = build_tiny_checkpoint(
        root, "tiny-mmmmodal", sizes=TinySizes(text_max_positions=MAX_POSITIONS)
    )
    port = _free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mmmmodal.cli import main; sys.exit(main())", "serve", str(checkpoint),
         "--host", "127.0.0.1", "--port", str(port), "--batch-wait-ms", str(BATCH_WAIT_MS), "--max-new-tokens", "8"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
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
    Image.new("RGB", (40, 40), (30, 60, 220)).save(root / "blue.png")
    wav = io.BytesIO()
    t = np.arange(16_000) / 16_000
    sf.write(wav, (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32), 16_000, format="WAV")
    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000, format="WAV")
    return {
        "image": {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(png.getvalue())}},
        "image_path": {"type": "image_url", "image_url": {"url": str(root / "blue.png")}},
        "audio": {"type": "input_audio", "input_audio": {"data": _b64(wav.getvalue()), "format": "wav"}},
        "empty_audio": {"type": "input_audio", "input_audio": {"data": _b64(empty.getvalue()), "format": "wav"}},
    }


def _text(text):
    return {"type": "text", "text": text}


def local_answer(model, processor, messages, max_new_tokens=8) -> str:
    """What the model answers (greedy) to the same request, computed in this process without the server."""
    parsed, found = parse_messages(messages)
    inputs, budget = encode_request(processor, parsed, found, MAX_POSITIONS, max_new_tokens, max_new_tokens)
    out = model.generate(**inputs, max_new_tokens=budget, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_multi_turn_image_and_audio_answers_like_the_model(served, media):
    client, model, processor, _ = served
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [media["image"], media["audio"], _text("What is in picture 1?")]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": [media["image_path"], _text("And picture 2?")]},
    ]
    completion = client.chat.completions.create(model="tiny-mmmmodal", messages=messages, max_tokens=8)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == local_answer(model, processor, messages)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 2 * 16  # two images of 16 patches each, plus the audio and the text
    assert [m.id for m in client.models.list().data] == ["tiny-mmmmodal"]


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
    client, model, processor, _ = served
    conversations = [
        [{"role": "user", "content": [media["image"], _text("Describe the image.")]}],
        [{"role": "user", "content": "yes or no?"}],
        [{"role": "user", "content": [media["audio"], media["image_path"], _text("Is the sound related to picture 1?")]}],
    ]
    expected = [local_answer(model, processor, messages) for messages in conversations]

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
        ("missing_path", "Could not read the image"),
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


def test_collate_left_pads_and_keeps_media_order():
    from mmmmodal.serve import collate

    items = [
        {"input_ids": torch.tensor([[5, 6, 7]]), "pixel_values": torch.zeros(1, 3, 4, 4)},
        {"input_ids": torch.tensor([[8]])},
        {"input_ids": torch.tensor([[9, 10]]), "pixel_values": torch.ones(2, 3, 4, 4)},
    ]
    batch = collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
