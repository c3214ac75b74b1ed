"""Shared helpers of the processing tests: tiny model folders and small media sets."""

import numpy as np
import soundfile as sf
from PIL import Image

from _tiny_text import save_tiny_llm, save_tiny_translator, save_tiny_whisper


def tiny_models(root):
    """{"llm", "asr", "mt"}: folders of tiny models built from configs (no download)."""
    return {"llm": str(save_tiny_llm(root / "llm")), "asr": str(save_tiny_whisper(root / "asr")),
            "mt": str(save_tiny_translator(root / "mt"))}


def write_clips(folder, n: int, seconds: float = 1.0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        t = np.arange(int(16000 * seconds)) / 16000
        path = folder / f"clip{k}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (200 + 100 * k) * t)).astype(np.float32), 16000)
        paths.append(path)
    return paths


def write_images(folder, n: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.new("RGB", (16, 16), (20 * k % 255, 100, 200)).save(path)
        paths.append(path)
    return paths
