"""Good and malformed media bytes for the media-policy, fuzz and load tests."""

import io
import struct
import zlib

import numpy as np
import soundfile as sf
from PIL import Image


def png_bytes(size=(40, 40), colour=(220, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def wav_bytes(seconds=1.0, rate=16000, channels=1, subtype="PCM_16", value=None) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 800 * t)).astype(np.float32)
    if value is not None:
        wave[len(wave) // 2] = value  # e.g. NaN
    out = io.BytesIO()
    sf.write(out, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate, format="WAV", subtype=subtype)
    return out.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming `width` x `height`, with a 40x40 image's data after it."""
    raw = bytearray(png_bytes())
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[12:29] = chunk
    raw[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(raw)


def silent_flac(seconds: float, rate=16000) -> bytes:
    """Silence as FLAC: a few KB that decode to `seconds` of audio (an audio "decompression bomb")."""
    out = io.BytesIO()
    sf.write(out, np.zeros(int(seconds * rate), np.float32), rate, format="FLAC")
    return out.getvalue()


def mutations(data: bytes, seed: int, count: int) -> list[bytes]:
    """`count` damaged copies of `data`: truncations, flipped bytes, inserted garbage, swapped halves."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        blob = bytearray(data)
        kind = i % 4
        if kind == 0:
            blob = blob[: int(rng.integers(0, len(blob)))]
        elif kind == 1:
            for at in rng.integers(0, len(blob), size=int(rng.integers(1, 16))):
                blob[at] = int(rng.integers(0, 256))
        elif kind == 2:
            at = int(rng.integers(0, len(blob)))
            blob[at:at] = rng.bytes(int(rng.integers(1, 64)))
        else:
            half = len(blob) // 2
            blob = blob[half:] + blob[:half]
        out.append(bytes(blob))
    return out
