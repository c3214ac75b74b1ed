"""The server's media policy (`mmmmodal.serve.media`): local roots, URL fetches checked per hop, and size caps."""

import base64
import os

import numpy as np
import pytest

from _bad_media import huge_png, png_bytes, silent_flac, wav_bytes
from _media_server import media_server
from mmmmodal.serve.media import MediaError, MediaPolicy, read_bytes, read_media

WHERE = "messages[0].content[0] (image_url)"


def _refused(source, policy, match, modality="image"):
    with pytest.raises(MediaError) as error:
        read_media(modality, source, policy, WHERE)
    assert WHERE in str(error.value) and match in str(error.value), str(error.value)
    return str(error.value)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("policy")
    root, outside = base / "root", base / "outside"
    for folder in (root, outside, root / "sub"):
        folder.mkdir()
    (root / "sub" / "red.png").write_bytes(png_bytes())
    (outside / "secret.png").write_bytes(png_bytes())
    os.symlink(outside / "secret.png", root / "link-out.png")
    os.symlink(root / "sub" / "red.png", root / "link-in.png")
    return root, outside


def test_local_files_are_refused_without_a_root(roots):
    root, _ = roots
    _refused(str(root / "sub" / "red.png"), MediaPolicy(), "does not read local files")


def test_only_files_under_the_root_are_read_and_escapes_look_like_missing_files(roots):
    root, outside = roots
    policy = MediaPolicy(local_root=str(root))
    for inside in (str(root / "sub" / "red.png"), "sub/red.png", "file://sub/red.png",
                   f"file://{root}/sub/red.png", str(root / "link-in.png")):
        assert read_media("image", inside, policy, WHERE).size == (40, 40)
    escapes = [str(outside / "secret.png"), "../outside/secret.png", f"sub/../../outside/secret.png",
               f"file://{outside}/secret.png", str(root / "link-out.png"), "/etc/passwd"]
    for escape in escapes:
        _refused(escape, policy, "is outside the allowed local media path")
    # the answer for a path outside the root says nothing about whether it exists
    existing = _refused(str(outside / "secret.png"), policy, "outside").replace("secret.png", "X")
    missing = _refused(str(outside / "absent.png"), policy, "outside").replace("absent.png", "X")
    assert existing == missing
    _refused(str(root / "sub"), policy, "is not a regular file")
    _refused("sub/absent.png", policy, "cannot be read (No such file or directory)")


def test_sizes_are_capped_for_every_source(roots, tmp_path):
    root, _ = roots
    big = png_bytes((200, 200))
    (root / "big.png").write_bytes(big)
    policy = MediaPolicy(local_root=str(root), max_bytes=len(big) - 1)
    _refused("big.png", policy, f"over the limit of {len(big) - 1}")
    _refused("data:image/png;base64," + base64.b64encode(big).decode(), policy, "over")
    routes = {"/big.png": ("bytes", big), "/unsized": ("unsized", 4)}
    with media_server(routes) as url:
        policy = MediaPolicy(networks=("127.0.0.1/32",), max_bytes=len(big) - 1)
        _refused(f"{url}/big.png", policy, f"it is {len(big)} bytes, over the limit")
        _refused(f"{url}/unsized", policy, "over the limit")  # no Content-Length: counted while reading


def test_urls_to_non_public_addresses_are_refused_unless_their_network_is_allowed():
    with media_server({"/red.png": ("bytes", png_bytes())}) as url:
        port = url.rsplit(":", 1)[1]
        for host, kind in [("127.0.0.1", "loopback"), ("[::ffff:127.0.0.1]", "loopback"), ("localhost", "loopback"),
                           ("10.1.2.3", "private"), ("169.254.169.254", "link-local"), ("224.0.0.1", "multicast"),
                           ("[fe80::1]", "link-local"), ("0.0.0.0", "private")]:
            _refused(f"http://{host}:{port}/red.png", MediaPolicy(timeout_s=2), f"points to a {kind} address")
        assert read_media("image", f"{url}/red.png", MediaPolicy(networks=("127.0.0.1/32",)), WHERE).size == (40, 40)


def test_every_redirect_hop_is_checked_and_their_number_is_bounded():
    routes = {"/red.png": ("bytes", png_bytes()), "/loop": ("redirect", "/loop")}
    with media_server(routes) as url:
        port = url.rsplit(":", 1)[1]
        routes["/to-loopback-2"] = ("redirect", f"http://127.0.0.2:{port}/red.png")
        routes["/to-metadata"] = ("redirect", "http://169.254.169.254/latest/meta-data/")
        routes["/to-file"] = ("redirect", "file:///etc/passwd")
        routes["/ok"] = ("redirect", "/red.png")
        policy = MediaPolicy(networks=("127.0.0.1/32",))
        assert read_media("image", f"{url}/ok", policy, WHERE).size == (40, 40)
        _refused(f"{url}/to-loopback-2", policy, "(redirect 1 to 'http://127.0.0.2")
        _refused(f"{url}/to-loopback-2", policy, "points to a loopback address")
        _refused(f"{url}/to-metadata", policy, "points to a link-local address")
        _refused(f"{url}/to-file", policy, "only http(s) URLs")
        _refused(f"{url}/loop", policy, "more than 3 redirects")
        _refused(f"{url}/ok", MediaPolicy(networks=("127.0.0.1/32",), max_redirects=0), "more than 0 redirects")


def test_domains_schemes_credentials_and_slow_servers():
    routes = {"/red.png": ("bytes", png_bytes()), "/drip": ("drip", 0.2)}
    with media_server(routes) as url:
        port = url.rsplit(":", 1)[1]
        local = ("127.0.0.0/8", "::1/128")
        only = MediaPolicy(domains=("localhost",), networks=local)
        assert read_media("image", f"http://localhost:{port}/red.png", only, WHERE).size == (40, 40)
        _refused(f"{url}/red.png", only, "'127.0.0.1' is not among the allowed media domains")
        _refused(f"http://user:pw@localhost:{port}/red.png", only, "credentials")
        _refused(f"{url}/drip", MediaPolicy(networks=local, timeout_s=1), "took longer than 1 s")
    _refused("ftp://example.com/x.png", MediaPolicy(), "scheme 'ftp' is not supported")
    _refused("http://no-such-host.invalid/x.png", MediaPolicy(), "cannot be resolved")


def test_decoded_pixels_and_seconds_are_capped_before_they_fill_memory():
    policy = MediaPolicy(max_pixels=10_000, max_audio_seconds=5)
    uri = "data:image/png;base64," + base64.b64encode(huge_png(50_000, 50_000)).decode()
    _refused(uri, policy, "over the limit of 10000 pixels")
    _refused("data:image/png;base64," + base64.b64encode(huge_png(200, 100)).decode(), policy,
             "is 200x100 pixels, over the limit of 10000 pixels")
    bomb = silent_flac(3600)  # ~180 KB of FLAC that would decode to an hour
    message = _refused("data:audio/flac;base64," + base64.b64encode(bomb).decode(), policy, "over the limit of 5 s",
                       modality="audio")
    assert "data: URI" in message
    clip = read_media("audio", "data:audio/wav;base64," + base64.b64encode(wav_bytes(1.0, 44100, 2)).decode(),
                      policy, WHERE)
    assert clip.dtype == np.float32 and clip.ndim == 1 and abs(clip.size - 16000) <= 16  # stereo 44.1 kHz -> 16 kHz
    _refused("data:audio/wav;base64," + base64.b64encode(wav_bytes(0.5, subtype="FLOAT", value=np.nan)).decode(),
             policy, "NaN or infinite", modality="audio")


def test_base64_is_strict_and_errors_never_quote_the_bytes():
    secret = b"PRIVATE-KEY-MATERIAL " * 8
    message = _refused("data:image/png;base64," + base64.b64encode(secret).decode(), MediaPolicy(), "Could not read")
    assert "PRIVATE" not in message and "UFJJVkFURS" not in message
    _refused("data:image/png;base64,@@not base64@@", MediaPolicy(), "not valid base64")
    _refused("data:image/png,rawbytes", MediaPolicy(), "data:<type>;base64,<data>")
    data, name = read_bytes(base64.b64encode(png_bytes()).decode(), MediaPolicy(), WHERE)  # bare base64
    assert data == png_bytes() and name.startswith("base64 data")
