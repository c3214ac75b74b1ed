"""Media of the built-in synthetic task: coloured shapes (Pillow) and beep sequences (numpy).

Everything is a pure function of its spec (and, for audio, a seed), so a test can re-derive the
attributes from pixels and waveforms. Shapes are fixed-size and sit in the cells of a 2x2 grid,
so with an image size of 32 or 64 px and 16-px patches every shape fills whole patches.
"""

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

SAMPLING_RATE = 16_000
BACKGROUND = (255, 255, 255)
# name -> (RGB, Malay name)
COLOURS = {
    "red": ((220, 30, 30), "merah"),
    "green": ((30, 170, 60), "hijau"),
    "blue": ((30, 60, 220), "biru"),
    "yellow": ((230, 200, 20), "kuning"),
    "purple": ((140, 40, 180), "ungu"),
    "black": ((0, 0, 0), "hitam"),
}
SHAPES = {"circle": "bulatan", "square": "segiempat", "triangle": "segitiga", "diamond": "wajik"}
# name -> (frequency in Hz, Malay name)
PITCHES = {"low": (300.0, "rendah"), "mid": (800.0, "sederhana"), "high": (2000.0, "tinggi")}
COUNTS = (1, 2, 3, 4)
GRID_CELLS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (column, row) of the 2x2 grid, reading order


@dataclass(frozen=True)
class ImageSpec:
    colour: str
    shape: str
    count: int
    cells: tuple  # indices into GRID_CELLS, one per shape

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AudioSpec:
    count: int
    pitch: str
    start_s: float  # onset of the first beep

    def to_dict(self) -> dict:
        return asdict(self)


def sample_image_spec(rng) -> ImageSpec:
    count = rng.choice(COUNTS)
    cells = tuple(sorted(rng.sample(range(len(GRID_CELLS)), count)))
    return ImageSpec(rng.choice(sorted(COLOURS)), rng.choice(sorted(SHAPES)), count, cells)


def sample_audio_spec(rng, max_start_s: float = 0.2) -> AudioSpec:
    start = round(rng.uniform(0.0, max_start_s), 3)
    return AudioSpec(rng.choice(COUNTS), rng.choice(sorted(PITCHES)), start)


def _shape_polygon(kind: str, box):
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    raise ValueError(f"Unknown shape kind: expected one of {sorted(SHAPES)}, found {kind!r}.")


def draw_image(spec: ImageSpec, size: int = 64) -> Image.Image:
    """Draw `spec.count` identical shapes, one per chosen grid cell, on a white square of `size` px."""
    if size < 16 or size % 2:
        raise ValueError(f"Image size: expected an even number >= 16, found {size}. Fix: pass e.g. 32, 48 or 64.")
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell, margin = size // 2, max(2, size // 16)
    rgb = COLOURS[spec.colour][0]
    for index in spec.cells:
        col, row = GRID_CELLS[index]
        box = (col * cell + margin, row * cell + margin, (col + 1) * cell - margin - 1, (row + 1) * cell - margin - 1)
        if spec.shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif spec.shape == "square":
            draw.rectangle(box, fill=rgb)
        else:
            draw.polygon(_shape_polygon(spec.shape, box), fill=rgb)
    return image


def synth_audio(spec: AudioSpec, seconds: float = 1.5, beep_s: float = 0.15, gap_s: float = 0.15,
                noise: float = 0.005, seed: int = 0) -> np.ndarray:
    """`spec.count` fixed-length sine beeps at the pitch's frequency, float32 mono at 16 kHz."""
    needed = spec.start_s + spec.count * beep_s + (spec.count - 1) * gap_s
    if needed > seconds:
        raise ValueError(f"Clip length: expected >= {needed:.2f} s for {spec.count} beeps, found {seconds} s. "
                         "Fix: raise `seconds` or shorten `beep_s` / `gap_s`.")
    n = int(round(seconds * SAMPLING_RATE))
    wave = np.random.default_rng(seed).normal(0.0, noise, n).astype(np.float32)
    beep_n = int(round(beep_s * SAMPLING_RATE))
    t = np.arange(beep_n) / SAMPLING_RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades avoid clicks
    tone = (0.5 * ramp * np.sin(2 * np.pi * PITCHES[spec.pitch][0] * t)).astype(np.float32)
    for k in range(spec.count):
        start = int(round((spec.start_s + k * (beep_s + gap_s)) * SAMPLING_RATE))
        wave[start:start + beep_n] += tone
    return wave


def describe_image(spec: ImageSpec, language: str) -> str:
    """Caption: "two red circles" / "dua bulatan merah"."""
    if language == "ms":
        return f"{NUMBER_WORDS['ms'][spec.count]} {SHAPES[spec.shape]} {COLOURS[spec.colour][1]}"
    noun = spec.shape + ("s" if spec.count > 1 else "")
    return f"{NUMBER_WORDS['en'][spec.count]} {spec.colour} {noun}"


def describe_audio(spec: AudioSpec, language: str) -> str:
    """Description: "three high beeps" / "tiga bip tinggi"."""
    if language == "ms":
        return f"{NUMBER_WORDS['ms'][spec.count]} bip {PITCHES[spec.pitch][1]}"
    return f"{NUMBER_WORDS['en'][spec.count]} {spec.pitch} beep" + ("s" if spec.count > 1 else "")


NUMBER_WORDS = {
    "en": {1: "one", 2: "two", 3: "three", 4: "four"},
    "ms": {1: "satu", 2: "dua", 3: "tiga", 4: "empat"},
}
