"""Reading a request's media under the server's policy: where bytes may come from, how many, and how big decoded.

`mmmmodal serve` never hands a client's string to a library that opens files or URLs by itself. Each media source
goes through `read_media`: the bytes are fetched here under a `MediaPolicy` (modelled on vLLM's
`--allowed-local-media-path` and `--allowed-media-domains`), then decoded here with caps on pixels and seconds, and
only decoded objects (a PIL image, a 16 kHz waveform) reach the processor.

- Local files are refused unless the policy has a root; then only files whose real path (symlinks resolved, `..`
  collapsed) lies under it are read. A path outside the root gets the same answer whether it exists or not.
- URLs are `http`/`https` only. Every hop (the first request and each redirect, at most `max_redirects`) is
  checked: the host against `domains` if given, and every address it resolves to must be public (not loopback,
  private, link-local, multicast or reserved) unless it lies in one of `networks`. The connection goes to the
  address that was checked, so a second DNS answer cannot swap it. Environment proxies are not used.
- At most `max_bytes` are read from any source; images over `max_pixels` are refused before their pixels are
  decoded; audio over `max_audio_seconds` is refused while it is decoded.

Every refusal is a `MediaError` (a `ValueError`) whose message names the request part (`where`) and the reason,
and never quotes the bytes it read.
"""

import base64
import binascii
import http.client
import io
import ipaddress
import os
import socket
import ssl
import stat
import time
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # decoders PIL runs here; no EPS (Ghostscript) etc.
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")  # what libsndfile decodes here (ogg: Vorbis or Opus), and so the
# `input_audio` formats a request may name
REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 1 << 16


class MediaError(ValueError):
    """A media source the policy refuses, or bytes that do not decode; the server answers 400 with the message."""


@dataclass(frozen=True)
class MediaPolicy:
    """What `read_media` may read, and how much.

    Args:
        local_root (`str`, *optional*): the only folder local files may be read from; `None` refuses local files.
        domains (`tuple[str]`): if not empty, the only hosts URLs (and their redirects) may name.
        networks (`tuple[str]`): non-public networks (CIDR, e.g. `"10.0.0.0/8"`) URLs may reach anyway.
        max_bytes (`int`): most bytes read from one source.
        max_redirects (`int`): most redirects followed per URL (0: none).
        timeout_s (`float`): longest time one URL fetch may take, connection and transfer together.
        max_pixels (`int`): most pixels (width x height) of one image.
        max_audio_seconds (`float`): longest audio clip.
    """

    local_root: str | None = None
    domains: tuple = ()
    networks: tuple = ()
    max_bytes: int = 25 * 2**20
    max_redirects: int = 3
    timeout_s: float = 20.0
    max_pixels: int = 25_000_000
    max_audio_seconds: float = 300.0

    def __post_init__(self):
        if self.local_root is not None:
            root = os.path.realpath(self.local_root)
            if not os.path.isdir(root):
                raise ValueError(f"The allowed local media path {self.local_root!r} is not a folder.")
            object.__setattr__(self, "local_root", root)
        object.__setattr__(self, "domains", tuple(d.lower().rstrip(".") for d in self.domains))
        try:
            object.__setattr__(self, "networks", tuple(ipaddress.ip_network(n, strict=False) for n in self.networks))
        except ValueError as error:
            raise ValueError(f"Allowed media networks must be CIDR networks like 10.0.0.0/8: {error}") from None
        for name in ("max_bytes", "max_pixels", "max_audio_seconds", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"The media policy's {name} must be positive, got {getattr(self, name)!r}.")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be 0 or more, got {self.max_redirects}.")


def read_media(modality: str, source: str, policy: MediaPolicy, where: str, sampling_rate: int = 16000):
    """The decoded image (RGB PIL image) or waveform (mono float32 at `sampling_rate`) that `source` names."""
    data, name = read_bytes(source, policy, where)
    if modality == "image":
        return decode_image(data, policy, f"{name} ({where})")
    return decode_audio(data, policy, f"{name} ({where})", sampling_rate)


# ------------------------------------------------------------------------------------------------ bytes
def read_bytes(source: str, policy: MediaPolicy, what: str) -> tuple[bytes, str]:
    """(bytes, a short name for messages) of a `data:` URI, an http(s) URL, a local path or bare base64."""
    if not isinstance(source, str):
        raise MediaError(f"{what}: expected a URL, data: URI, base64 string or path, got {type(source).__name__}.")
    if not source:
        raise MediaError(f"{what}: the source is empty.")
    scheme = source.split(":", 1)[0].lower() if ":" in source[:16] else ""
    if scheme == "data":
        return _data_uri(source, policy, what), f"data: URI ({len(source)} characters)"
    if scheme in ("http", "https"):
        return _fetch(source, policy, what), _short(source)
    if scheme == "file":  # file:///abs/path, or file://rel/path (under the allowed root)
        return _local(unquote(source[len("file://") :]), policy, what), _short(source)
    if "://" in source[:16]:
        raise MediaError(f"{what}: the URL scheme {scheme!r} is not supported; use http(s), data: or file://.")
    if len(source) >= 64 and (data := _strict_b64(source)) is not None:  # OpenAI's input_audio sends bare base64
        if len(data) > policy.max_bytes:
            raise MediaError(f"{what}: its base64 data holds {len(data)} bytes, over the limit of {policy.max_bytes}.")
        return data, f"base64 data ({len(source)} characters)"
    return _local(source, policy, what), _short(source)


def _short(text: str) -> str:
    return repr(text if len(text) <= 120 else text[:120] + "...")


def _strict_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _data_uri(source: str, policy: MediaPolicy, what: str) -> bytes:
    header, comma, payload = source.partition(",")
    if not comma or not header.endswith(";base64"):
        raise MediaError(f"{what}: a data: URI must look like data:<type>;base64,<data>.")
    if len(payload) > 4 * (policy.max_bytes // 3 + 1) + 16:
        raise MediaError(f"{what}: its data: URI holds over {policy.max_bytes} bytes, the limit.")
    data = _strict_b64(payload)
    if data is None:
        raise MediaError(f"{what}: the data: URI's payload is not valid base64.")
    if len(data) > policy.max_bytes:
        raise MediaError(f"{what}: its data: URI holds {len(data)} bytes, over the limit of {policy.max_bytes}.")
    return data


def _local(path: str, policy: MediaPolicy, what: str) -> bytes:
    if policy.local_root is None:
        raise MediaError(
            f"{what}: this server does not read local files. Send the media as a data: URI or base64, or start "
            "the server with --allowed-local-media-path DIR."
        )
    real = os.path.realpath(os.path.join(policy.local_root, path))
    if os.path.commonpath([real, policy.local_root]) != policy.local_root:  # same answer whether it exists or not
        raise MediaError(f"{what}: {_short(path)} is outside the allowed local media path.")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise MediaError(f"{what}: {_short(path)} cannot be read ({error.strerror}).") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{what}: {_short(path)} is not a regular file.")
        if info.st_size > policy.max_bytes:
            raise MediaError(f"{what}: {_short(path)} holds {info.st_size} bytes, over the limit of {policy.max_bytes}.")
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(policy.max_bytes + 1)[: policy.max_bytes]
    except OSError as error:
        raise MediaError(f"{what}: {_short(path)} cannot be read ({error.strerror}).") from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ URLs
class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to `ip`, whatever `host` resolves to now (the checked address is the one used)."""

    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self.ip = ip

    def connect(self):
        self.sock = self.raw_sock = socket.create_connection((self.ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.ip = ip

    def connect(self):
        sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock = self.raw_sock = self._context.wrap_socket(sock, server_hostname=self.host)  # the host's certificate


def _fetch(url: str, policy: MediaPolicy, what: str) -> bytes:
    deadline = time.monotonic() + policy.timeout_s
    for hop in range(policy.max_redirects + 1):
        label = "" if hop == 0 else f" (redirect {hop} to {_short(url)})"
        connection, target = _connect(url, policy, what, label, max(0.01, deadline - time.monotonic()))
        try:
            connection.request("GET", target, headers={"User-Agent": "mmmmodal-serve", "Accept": "*/*"})
            response = connection.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise MediaError(f"{what}{label}: HTTP {response.status} without a Location header.")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise MediaError(f"{what}{label}: the server answered HTTP {response.status}.")
            return _read_body(connection, response, policy, what, label, deadline)
        except (OSError, http.client.HTTPException) as error:
            raise MediaError(f"{what}{label}: the fetch failed ({type(error).__name__}: {error}).") from None
        finally:
            connection.close()
    raise MediaError(f"{what}: more than {policy.max_redirects} redirects.")


def _connect(url: str, policy: MediaPolicy, what: str, label: str, timeout: float):
    """A connection pinned to a checked address of `url`'s host, and the request target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError(f"{what}{label}: only http(s) URLs with a host are fetched, got {_short(url)}.")
    if parts.username or parts.password:
        raise MediaError(f"{what}{label}: URLs with credentials are not fetched.")
    host = parts.hostname.rstrip(".")
    if policy.domains and host not in policy.domains:
        raise MediaError(f"{what}{label}: the host {host!r} is not among the allowed media domains.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as error:
        raise MediaError(f"{what}{label}: the host {host!r} cannot be resolved ({error}).") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:  # every answer must pass, so that no retry of the lookup can land elsewhere
        refused = _refusal(address, policy)
        if refused:
            raise MediaError(
                f"{what}{label}: {host!r} points to a {refused} address; this server fetches only public addresses "
                "unless --allowed-media-networks includes it."
            )
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return kind(host, port, str(addresses[0]), timeout), target


def _refusal(address, policy: MediaPolicy) -> str | None:
    """Why `address` may not be fetched (`"loopback"`, `"private"`, ...), or None."""
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address.version == net.version and address in net for net in policy.networks):
        return None
    for kind in ("loopback", "link_local", "multicast", "private", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def _read_body(connection, response, policy: MediaPolicy, what: str, label: str, deadline: float) -> bytes:
    """The body, read one system call at a time so that a server dripping bytes still meets the deadline."""
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise MediaError(f"{what}{label}: it is {length} bytes, over the limit of {policy.max_bytes}.")
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MediaError(f"{what}{label}: the fetch took longer than {policy.timeout_s:g} s.")
        connection.raw_sock.settimeout(left)  # `sock` is None once the response owns a closing connection
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError:
            raise MediaError(f"{what}{label}: the fetch took longer than {policy.timeout_s:g} s.") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > policy.max_bytes:
            raise MediaError(f"{what}{label}: it is over the limit of {policy.max_bytes} bytes.")
        chunks.append(chunk)


# ------------------------------------------------------------------------------------------------ decoding
def decode_image(data: bytes, policy: MediaPolicy, name: str):
    """An RGB PIL image from encoded bytes; its size is checked before its pixels are decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise MediaError(f"The image {name} is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise MediaError(f"Could not read the image {name}: not a {', '.join(IMAGE_FORMATS)} image.") from None
    except Image.DecompressionBombError as error:  # PIL's own, far higher, limit: refused before our check
        raise MediaError(f"The image {name} is over the limit of {policy.max_pixels} pixels ({error})") from None
    except Exception as error:  # PIL raises many kinds (DecompressionBombError, SyntaxError, OSError, ...)
        raise MediaError(f"Could not read the image {name}: {error}") from None
    width, height = image.size
    if width * height == 0:
        raise MediaError(f"The image {name} is empty ({width}x{height} pixels).")
    if width * height > policy.max_pixels:
        raise MediaError(
            f"The image {name} is {width}x{height} pixels, over the limit of {policy.max_pixels} pixels "
            "(--media-max-pixels). Send a smaller image."
        )
    try:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as error:
        raise MediaError(f"Could not read the image {name}: {error}") from None


def decode_audio(data: bytes, policy: MediaPolicy, name: str, sampling_rate: int) -> np.ndarray:
    """A mono float32 waveform at `sampling_rate`, decoded block by block so that an over-long clip stops early."""
    import soundfile as sf
    import soxr

    if not data:
        raise MediaError(f"The audio {name} is empty (0 bytes).")
    try:
        file = sf.SoundFile(io.BytesIO(data))
    except Exception:
        kinds = ", ".join(kind.upper() for kind in AUDIO_FORMATS)
        raise MediaError(f"Could not read the audio {name}: not a {kinds} file libsndfile can decode.") from None
    with file:
        rate, limit = file.samplerate, policy.max_audio_seconds
        if not 0 < rate <= 384_000:
            raise MediaError(f"Could not read the audio {name}: its sample rate {rate} Hz is not in 1..384000.")
        if file.frames > 0 and file.frames / rate > limit:
            raise MediaError(f"The audio {name} lasts {file.frames / rate:.1f} s, over the limit of {limit:g} s.")
        stream = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32") if rate != sampling_rate else None
        pieces, frames, block = [], 0, max(1024, (1 << 20) // max(1, file.channels))
        try:
            while True:
                samples = file.read(block, dtype="float32", always_2d=True)
                frames += len(samples)
                if frames / rate > limit:
                    raise MediaError(f"The audio {name} lasts over the limit of {limit:g} s.")
                mono = samples.mean(axis=1, dtype=np.float32)
                if not np.isfinite(mono).all():
                    raise MediaError(f"The audio {name} holds NaN or infinite samples.")
                last = len(samples) < block
                pieces.append(stream.resample_chunk(mono, last=last) if stream else mono)
                if last:
                    break
        except MediaError:
            raise
        except Exception as error:
            raise MediaError(f"Could not read the audio {name}: {error}") from None
    waveform = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if frames == 0 or waveform.size == 0:
        raise MediaError(f"The audio {name} is empty (no samples).")
    return waveform
