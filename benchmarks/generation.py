"""Benchmark 2: generation speed with and without the KV cache, and the cost of turn k of a multi-turn chat.

- 256 new tokens (forced: `min_new_tokens`) after a prompt with 2 images and 2 audio clips, `use_cache` on vs off.
  Without the cache, `generate` feeds the media again at every step, so each step re-encodes them and recomputes
  the whole prompt: that is the cost the cache saves.
- Turn k of a chat with `mmmmodal.chat.ChatSession` (KV cache kept across turns, only the new turn's media
  encoded) vs the same turn in a fresh session loaded with the k-1 earlier turns (every earlier image and clip
  encoded again, the whole conversation prefilled). Encoder work is counted with forward hooks on the towers.
"""

import tempfile
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from .common import Row, Size, build_model, build_processor, time_side_by_side

SIZE = Size("gen", hidden=256, layers=4, heads=4, audio_window_s=3)


def media_files(folder: Path, count: int, size: Size) -> tuple[list[str], list[str]]:
    """`count` random PNG images and 2 s WAV clips written under `folder`."""
    rng = np.random.default_rng(0)
    images, clips = [], []
    for i in range(count):
        image = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 255, (size.image_size, size.image_size, 3), dtype=np.uint8)).save(image)
        audio = folder / f"clip{i}.wav"
        soundfile.write(audio, (rng.standard_normal(32000) * 0.1).astype(np.float32), 16000)
        images.append(str(image))
        clips.append(str(audio))
    return images, clips


def cache_rows(model, processor, images, clips, new_tokens: int) -> list[Row]:
    text = "<image><image><audio><audio>Compare picture 1 with picture 2, and audio 1 with audio 2."
    inputs = processor(text=text, images=images[:2], audio=clips[:2], return_tensors="pt")

    def generate(use_cache: bool, n: int):
        def call():
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=use_cache)
            assert out.shape[1] == inputs["input_ids"].shape[1] + n
        return call

    time_side_by_side({"on": generate(True, 8), "off": generate(False, 8)}, repeats=0)  # warm-up
    times = time_side_by_side({"on": generate(True, new_tokens), "off": generate(False, new_tokens)}, repeats=1,
                              warmup=0)
    speedup = times["off"] / times["on"]
    prompt = inputs["input_ids"].shape[1]
    return [Row("generation", f"{new_tokens} new tokens, prompt {prompt} tok (2 img + 2 clips): cache on vs off",
                f"{new_tokens / times['on']:.0f} vs {new_tokens / times['off']:.1f} tok/s", speedup, ">= 5",
                speedup >= 5)]


class EncoderCounter:
    """Counts images and audio windows that go through the towers."""

    def __init__(self, model):
        self.counts = {"image": 0, "audio": 0}
        for name, tower in (("image", model.model.vision_tower), ("audio", model.model.audio_tower)):
            tower.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += args[0].shape[0]
        return hook

    def reset(self):
        self.counts = {"image": 0, "audio": 0}


def chat_rows(model, processor, images, clips, turns: int, answer_tokens: int, folder: Path) -> list[Row]:
    from mmmmodal.chat import ChatSession

    kwargs = {"max_new_tokens": answer_tokens, "min_new_tokens": answer_tokens}
    counter = EncoderCounter(model)
    session = ChatSession(model, processor, **kwargs)
    for k in range(turns - 1):
        session.attach("image", images[k])
        session.attach("audio", clips[k])
        session.ask(f"Turn {k + 1}: what is in picture {k + 1} and audio {k + 1}?")
    history = folder / "history.json"
    session.save(history)
    last = f"Turn {turns}: compare picture {turns} with picture 1."

    def with_cache():
        probe = session.fork()  # the state after turn k-1, cache included
        probe.attach("image", images[turns - 1])
        probe.attach("audio", clips[turns - 1])
        return lambda: probe.ask(last)

    def reencode():
        fresh = ChatSession(model, processor, **kwargs)
        fresh.load(history)
        fresh.attach("image", images[turns - 1])
        fresh.attach("audio", clips[turns - 1])
        return lambda: fresh.ask(last)

    encoded, times = {}, {}
    for name, make in (("cache", with_cache), ("reencode", reencode)) * 3:  # fresh state each time, in turns
        call = make()
        counter.reset()
        t = time_side_by_side({name: call}, repeats=1, warmup=0)[name]
        times.setdefault(name, []).append(t)
        encoded[name] = dict(counter.counts)
    times = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    speedup = times["reencode"] / times["cache"]
    reused = encoded["cache"] == {"image": 1, "audio": 1}
    return [
        Row("generation", f"chat turn {turns} ({answer_tokens}-token answers): cache reuse vs re-encode",
            f"{times['cache'] * 1e3:.0f} vs {times['reencode'] * 1e3:.0f} ms", speedup, "(faster x)"),
        Row("generation", f"chat turn {turns}: media encoded (reuse / re-encode)",
            f"{encoded['cache']['image']} img + {encoded['cache']['audio']} win / "
            f"{encoded['reencode']['image']} img + {encoded['reencode']['audio']} win",
            goal="only the new turn's", met=reused),
    ]


def run(size: Size = SIZE, new_tokens: int = 256, turns: int = 4, answer_tokens: int = 16) -> list[Row]:
    processor = build_processor(size)
    model = build_model(size, processor=processor)
    model.generation_config.eos_token_id = None  # random weights: never stop early, every run makes `n` tokens
    with tempfile.TemporaryDirectory() as tmp:
        images, clips = media_files(Path(tmp), max(turns, 2), size)
        rows = cache_rows(model, processor, images, clips, new_tokens)
        rows += chat_rows(model, processor, images, clips, turns, answer_tokens, Path(tmp))
    return rows


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    return run(new_tokens=64 if quick else 256, turns=3 if quick else 4)
