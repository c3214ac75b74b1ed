"""The processor and the server under malformed media (a fuzz test), and the server under a bounded load."""

import base64

import numpy as np
import pytest

from _bad_media import huge_png, mutations, png_bytes, silent_flac, wav_bytes
from _media_server import media_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from benchmarks.serve_load import API_KEY, MODEL, run_load, serve_args, server_process  # noqa: E402
from mmmmodal.build import build_tiny_checkpoint  # noqa: E402
from mmmmodal.tiny import TinySizes  # noqa: E402

RNG = np.random.default_rng(16)
BROKEN_IMAGES = {"random bytes": RNG.bytes(700), "truncated": png_bytes()[:60], "zero length": b"",
                 "huge dimensions": huge_png(60_000, 60_000), "text": b"<svg xmlns='http://www.w3.org/2000/svg'/>"}
BROKEN_AUDIO = {"random bytes": RNG.bytes(700), "truncated": wav_bytes()[:40], "zero length": b"",
                "NaN samples": wav_bytes(0.5, subtype="FLOAT", value=np.nan),
                "infinite samples": wav_bytes(0.5, subtype="FLOAT", value=np.inf)}


# ------------------------------------------------------------------------------------------------ the processor
@pytest.mark.parametrize("kind, name", [("image", n) for n in sorted(BROKEN_IMAGES)] +
                         [("audio", n) for n in sorted(BROKEN_AUDIO)])
def test_the_processor_refuses_a_broken_media_file_naming_it(tiny, tmp_path, kind, name):
    _, processor = tiny
    path = tmp_path / f"broken.{'png' if kind == 'image' else 'wav'}"
    path.write_bytes((BROKEN_IMAGES if kind == "image" else BROKEN_AUDIO)[name])
    with pytest.raises(ValueError, match=rf"{kind} 0 of sample 0") as error:
        processor(text=f"<{kind}> hi", **{"images" if kind == "image" else "audio": [str(path)]})
    assert str(path) in str(error.value)


def test_the_processor_refuses_bad_arrays_and_bad_base64(tiny):
    _, processor = tiny
    for clip, reason in [(np.array([0.1, np.nan], np.float32), "NaN"), (np.zeros(0, np.float32), "empty"),
                         (np.full(10, np.inf, np.float32), "infinite")]:
        with pytest.raises(ValueError, match=rf"audio 0 of sample 0.*{reason}"):
            processor(text="<audio> hi", audio=[clip])
    with pytest.raises(ValueError, match="image 0 of sample 0"):
        processor(text="<image> hi", images=["data:image/png;base64,@@not base64@@"])


def test_the_processor_never_fails_otherwise_on_damaged_files(tiny, tmp_path):
    _, processor = tiny
    damaged = [("image", data) for data in mutations(png_bytes(), seed=1, count=24)]
    damaged += [("audio", data) for data in mutations(wav_bytes(0.5), seed=2, count=24)]
    outcomes = {"read": 0, "refused": 0}
    for i, (kind, data) in enumerate(damaged):
        path = tmp_path / f"{i}.{'png' if kind == 'image' else 'wav'}"
        path.write_bytes(data)
        try:
            processor(text=f"<{kind}> hi", **{"images" if kind == "image" else "audio": [str(path)]})
            outcomes["read"] += 1
        except ValueError as error:
            assert f"{kind} 0 of sample 0" in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == len(damaged)


# ------------------------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    checkpoint = build_tiny_checkpoint(root, MODEL, sizes=TinySizes(text_max_positions=256))[2]
    media_root = root / "media"
    media_root.mkdir()
    (media_root / "red.png").write_bytes(png_bytes())
    (root / "secret.png").write_bytes(png_bytes())
    args = [*serve_args(media_root), "--allowed-media-networks", "127.0.0.1/32", "--media-max-audio-seconds", "5",
            "--media-max-pixels", "1000000"]
    with server_process(checkpoint, *args, log_path=root / "server.log") as (process, url):
        yield process, url, root


def _post(url, content, **fields):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=120)


def _image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def _audio(data: bytes):
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def _uri(data: bytes, kind="image/png"):
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _assert_refused(response, *reasons):
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "messages[0].content[0]" in message, message  # names the part
    for reason in reasons:
        assert reason in message, message
    return message


def _assert_serving(url):
    answer = _post(url, "hi")
    assert answer.status_code == 200 and isinstance(answer.json()["choices"][0]["message"]["content"], str)


def test_the_server_refuses_each_malformed_media_with_400_and_goes_on(server):
    _, url, root = server
    reasons = {"random bytes": "Could not read the image", "truncated": "Could not read the image",
               "zero length": "is empty", "huge dimensions": "over the limit of 1000000 pixels",
               "text": "Could not read the image"}
    for name, data in BROKEN_IMAGES.items():
        _assert_refused(_post(url, [_image(_uri(data)), {"type": "text", "text": "?"}]), reasons[name])
    reasons = {"random bytes": "Could not read the audio", "truncated": "Could not read the audio",
               "zero length": "is empty", "NaN samples": "NaN or infinite", "infinite samples": "NaN or infinite"}
    for name, data in BROKEN_AUDIO.items():
        _assert_refused(_post(url, [_audio(data)]), reasons[name])
    _assert_refused(_post(url, [_audio(wav_bytes(6.0))]), "over the limit of 5 s")
    _assert_refused(_post(url, [_audio(silent_flac(3600))]), "over the limit of 5 s")
    _assert_refused(_post(url, [_image("data:image/png;base64,@@@")]), "not valid base64")
    bad_b64 = {"type": "input_audio", "input_audio": {"data": "%%%% not base64", "format": "wav"}}
    _assert_refused(_post(url, [bad_b64]), "not valid base64")
    _assert_serving(url)


def test_the_server_refuses_paths_outside_the_root_and_unsafe_urls(server):
    _, url, root = server
    assert _post(url, [_image("red.png")]).status_code == 200  # under the allowed root
    for path in (str(root / "secret.png"), "../secret.png", f"file://{root}/secret.png", "/etc/passwd",
                 str(root / "no-such.png")):
        _assert_refused(_post(url, [_image(path)]), "is outside the allowed local media path")
    routes = {"/red.png": ("bytes", png_bytes()), "/loop": ("redirect", "/loop")}
    with media_server(routes) as media:
        port = media.rsplit(":", 1)[1]
        routes["/to-loopback"] = ("redirect", f"http://127.0.0.2:{port}/red.png")
        routes["/to-localhost-v6"] = ("redirect", f"http://[::1]:{port}/red.png")
        assert _post(url, [_image(f"{media}/red.png")]).status_code == 200  # 127.0.0.1/32 is allowed
        _assert_refused(_post(url, [_image(f"{media}/to-loopback")]), "redirect 1", "points to a loopback address")
        _assert_refused(_post(url, [_image(f"{media}/to-localhost-v6")]), "redirect 1", "loopback")
        _assert_refused(_post(url, [_image(f"{media}/loop")]), "more than 3 redirects")
    _assert_refused(_post(url, [_image("http://10.0.0.1/x.png")]), "private address")
    _assert_refused(_post(url, [_image("gopher://example.com/x")]), "scheme 'gopher' is not supported")
    _assert_serving(url)


def test_damaged_media_get_200_or_400_never_a_server_error(server):
    _, url, _ = server
    parts = [_image(_uri(data)) for data in mutations(png_bytes(), seed=3, count=30)]
    parts += [_audio(data) for data in mutations(wav_bytes(0.5), seed=4, count=30)]
    statuses = []
    for part in parts:
        response = _post(url, [part, {"type": "text", "text": "?"}])
        statuses.append(response.status_code)
        if response.status_code == 400:
            _assert_refused(response)
    assert set(statuses) <= {200, 400} and 400 in statuses
    _assert_serving(url)


def test_a_bounded_load_of_mixed_requests_is_served_without_errors(server):
    process, url, _ = server
    figures = run_load(url, process.pid, clients=16, requests=20, max_tokens=4, deadline_s=300)
    print(figures)  # the figures, for the record (pytest -s)
    assert figures["requests"] == 320 and figures["errors"] == 0, figures["first_errors"]
    good = sum(figures["by_kind"][k] for k in ("text", "image", "audio", "stream_both", "n2"))
    assert figures["answered_good"] == good
    assert figures["server"]["running"] == 0 and figures["server"]["queued"] == 0
    assert figures["server"]["cancelled"] > 0  # the hang-ups cancelled their generations
    memory = figures["rss_mib"]
    assert memory["high_water"] - memory["after_warmup"] < 256, memory  # bounded: no per-request growth
    _assert_serving(url)
