"""The built-in, checkable multimodal task: bilingual multi-turn chats about shapes and beeps.

A conversation is first sampled as a plain spec (media attributes, which turn shows which media,
one question per turn), then rendered: media files are written and the row is built in TRL's vision
form (`messages` + `images`, what `processing.rows.to_training_row` gives), plus `qtypes` /
`answers` / `verdicts` (a comparison's one-word verdict inside its explained answer) per assistant
turn for scoring.

Train/test: rows come from a seeded stream (`seed` for train, `seed + 1` for test by default), and
a conversation whose attribute-level signature (media attributes, media order, questions,
language; not pixel positions or beep onsets) hashes to the other split is rejected, so no test
conversation repeats a train conversation whatever the seeds. Single media items (e.g. "two red
circles") do occur in both splits: the answer space is small by design.

Paths in rows are absolute (what `trl sft` needs when it runs from another directory).
"""

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from .jsonl_io import write_jsonl
from .synthetic_media import (SAMPLING_RATE, AudioSpec, ImageSpec, describe_audio, describe_image,
                              draw_image, sample_audio_spec, sample_image_spec, synth_audio)
from .synthetic_questions import DEFAULT_WEIGHTS, QUESTION_TYPES, YES_NO, reference_answer

logger = logging.getLogger(__name__)
SPLITS = ("train", "test")


@dataclass
class TaskConfig:
    """How the task's conversations are drawn and rendered (`mmmmodal data synthetic` takes each field as a flag)."""

    image_size: int = field(default=64, metadata={"help": "side of the square pictures, px (even, >= 16)"})
    clip_seconds: float = field(default=1.5, metadata={"help": "length of every audio clip, s"})
    max_images: int = field(default=3, metadata={"help": "most pictures in one conversation"})
    max_audios: int = field(default=3, metadata={"help": "most audio clips in one conversation"})
    max_turns: int = field(default=4, metadata={"help": "most user/assistant turns in one conversation"})
    languages: tuple[str, ...] = field(default=("en", "ms"), metadata={"help": "languages drawn from, en and/or ms"})
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # question type -> relative weight
    explain_comparisons: bool = field(default=True, metadata={
        "flag": "--one-word-comparisons",
        "help": 'answer comparisons with the verdict alone ("yes") instead of "3, 2: yes"'})
    # Four beeps take 7 x this, plus an onset of up to 0.2 s, within `clip_seconds` (0.1 fits 1 s clips).
    beep_seconds: float = field(default=0.15, metadata={
        "help": "length of each beep and of each gap (four beeps need 7x this plus a 0.2 s onset)"})

    def __post_init__(self):
        self.languages = tuple(self.languages)
        unknown = [language for language in self.languages if language not in YES_NO]
        if unknown or not self.languages:
            raise ValueError(f"Task languages: expected some of {sorted(YES_NO)}, found {list(self.languages)}.")


def _intro_turns(rng, n_media: int, n_turns: int) -> list:
    """Turn at which each media item (in order of appearance) is shown; the first turn shows one."""
    return sorted([0] + [rng.randrange(n_turns) for _ in range(n_media - 1)])


def _pick_question(rng, shown: dict, new: list, weights: dict):
    """A weighted question type over `shown` media ({kind: [indices]}); when the turn shows new
    media, the question is about at least one of them (older ones make it a follow-up)."""
    new_kinds = {kind for kind, _ in new}
    feasible = [q for q in QUESTION_TYPES.values()
                if weights.get(q.name, 0) > 0 and all(len(shown[k]) >= q.refs.count(k) for k in q.refs)
                and (not new or new_kinds & set(q.refs))]
    qtype = rng.choices(feasible, weights=[weights[q.name] for q in feasible])[0]
    while True:
        refs, used = [], {"image": set(), "audio": set()}
        for kind in qtype.refs:
            index = rng.choice([i for i in shown[kind] if i not in used[kind]])
            used[kind].add(index)
            refs.append(index)
        if not new or any((kind, i) in new for kind, i in zip(qtype.refs, refs)):
            return qtype.name, refs


def sample_conversation(rng: random.Random, cfg: TaskConfig) -> dict:
    """A conversation spec: media attributes, order of appearance, and one question per turn."""
    n_images, n_audios = 0, 0
    while n_images + n_audios == 0:
        n_images, n_audios = rng.randint(0, cfg.max_images), rng.randint(0, cfg.max_audios)
    kinds = ["image"] * n_images + ["audio"] * n_audios
    rng.shuffle(kinds)
    n_turns = rng.randint(1, cfg.max_turns)
    intro = _intro_turns(rng, len(kinds), n_turns)
    spec = {"language": rng.choice(list(cfg.languages)),
            "images": [sample_image_spec(rng) for _ in range(n_images)],
            "audios": [sample_audio_spec(rng) for _ in range(n_audios)], "turns": []}
    counters, shown = {"image": 0, "audio": 0}, {"image": [], "audio": []}
    for turn in range(n_turns):
        new = []
        for kind, when in zip(kinds, intro):
            if when == turn:
                new.append((kind, counters[kind]))
                shown[kind].append(counters[kind])
                counters[kind] += 1
        qtype, refs = _pick_question(rng, shown, new, cfg.weights)
        spec["turns"].append({"new": new, "qtype": qtype, "refs": refs})
    return spec


def signature(spec: dict) -> str:
    """Attribute-level identity of a conversation (ignores shape positions and beep onsets)."""
    key = {"language": spec["language"], "turns": spec["turns"],
           "images": [(s.colour, s.shape, s.count) for s in spec["images"]],
           "audios": [(s.count, s.pitch) for s in spec["audios"]]}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def split_of(spec: dict) -> str:
    return SPLITS[int(signature(spec), 16) % 2]


def iter_split(seed: int, split: str, cfg: TaskConfig):
    """An endless, seeded stream of conversation specs of `split` (the other split's are skipped)."""
    if split not in SPLITS:
        raise ValueError(f"Split: expected one of {SPLITS}, found {split!r}.")
    rng = random.Random(seed)
    while True:
        spec = sample_conversation(rng, cfg)
        if split_of(spec) == split:
            yield spec


def sample_split(n: int, seed: int, split: str, cfg: TaskConfig) -> list:
    """`n` conversation specs of `split`, deterministic in `seed` (the first `n` of `iter_split`)."""
    stream = iter_split(seed, split, cfg)
    return [next(stream) for _ in range(n)]


def _write_media(spec: dict, row_id: str, media_dir, cfg: TaskConfig):
    """(images, audio parts' payloads): files under `media_dir` (paths), or objects in memory when it is None
    (PIL images, `{"audio": waveform}`). The same spec and row id give the same pixels and samples either way.
    Paths are absolute; the folder is created when missing."""
    if media_dir is not None:
        media_dir = Path(media_dir).resolve()
        media_dir.mkdir(parents=True, exist_ok=True)
    images, audios = [], []
    for k, image in enumerate(spec["images"]):
        picture = draw_image(image, cfg.image_size)
        if media_dir is None:
            images.append(picture)
            continue
        path = media_dir / f"{row_id}_image{k + 1}.png"
        picture.save(path)
        images.append(str(path))
    for k, audio in enumerate(spec["audios"]):
        name = f"{row_id}_audio{k + 1}.wav"
        noise_seed = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
        wave = synth_audio(audio, cfg.clip_seconds, cfg.beep_seconds, cfg.beep_seconds, seed=noise_seed)
        if media_dir is None:
            audios.append({"audio": wave})
            continue
        sf.write(media_dir / name, wave, SAMPLING_RATE)
        audios.append({"path": str(media_dir / name)})
    return images, audios


def render_row(spec: dict, row_id: str, media_dir, cfg: TaskConfig) -> dict:
    """Build the spec's training row: its media written under `media_dir` (absolute paths in the row), or, with
    `media_dir=None`, kept in memory (PIL images in `images`, 16 kHz float32 waveforms in the audio parts'
    `audio`), for streaming fresh rows into training without touching the disk."""
    image_paths, audio_payloads = _write_media(spec, row_id, media_dir, cfg)
    language, messages, qtypes, answers, verdicts = spec["language"], [], [], [], []
    for turn in spec["turns"]:
        parts = [{"type": "image"} if kind == "image" else {"type": "audio", **audio_payloads[i]}
                 for kind, i in turn["new"]]
        qtype = QUESTION_TYPES[turn["qtype"]]
        media = [spec["images"][i] if kind == "image" else spec["audios"][i] for kind, i in zip(qtype.refs, turn["refs"])]
        numbers = dict(zip("ab", [i + 1 for i in turn["refs"]]))
        parts.append({"type": "text", "text": qtype.templates[language].format(**numbers)})
        answer = reference_answer(qtype, media, language, cfg.explain_comparisons)
        messages += [{"role": "user", "content": parts},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        qtypes.append(qtype.name)
        answers.append(answer)
        verdicts.append(qtype.answer(media, language))
    return {"id": row_id, "messages": messages, "images": image_paths, "qtypes": qtypes, "answers": answers,
            "verdicts": verdicts, "language": language, "media": {"images": [s.to_dict() for s in spec["images"]],
                                             "audios": [s.to_dict() for s in spec["audios"]]}}


def alignment_row(rng: random.Random, row_id: str, media_dir, cfg: TaskConfig) -> dict:
    """A stage-1 pair: one image (caption) or one clip (description), in one language; media written under
    `media_dir`, or kept in memory when it is None (as in `render_row`)."""
    language = rng.choice(list(cfg.languages))
    is_image = rng.random() < 0.5
    spec = {"language": language, "turns": [],
            "images": [sample_image_spec(rng)] if is_image else [],
            "audios": [] if is_image else [sample_audio_spec(rng)]}
    image_paths, audio_payloads = _write_media(spec, row_id, media_dir, cfg)
    part = {"type": "image"} if is_image else {"type": "audio", **audio_payloads[0]}
    text = describe_image(spec["images"][0], language) if is_image else describe_audio(spec["audios"][0], language)
    return {"id": row_id, "messages": [{"role": "user", "content": [part]},
                                       {"role": "assistant", "content": [{"type": "text", "text": text}]}],
            "images": image_paths, "language": language}


def _write_dataset_card(out_dir: Path, with_alignment: bool) -> None:
    """A README.md whose `configs` metadata lets `load_dataset(out_dir)` (and `trl sft --dataset_name out_dir`)
    read the JSONL splits instead of guessing an image/audio folder dataset from `media/`."""
    configs = ["- config_name: default", "  data_files:", "  - split: train", "    path: train.jsonl",
               "  - split: test", "    path: test.jsonl"]
    if with_alignment:
        configs += ["- config_name: alignment", "  data_files:", "  - split: train", "    path: alignment.jsonl"]
    card = ["---", "configs:", *configs, "---", "",
            "# Synthetic shapes-and-beeps task (MMMModal)", "",
            "Written by `mmmmodal data synthetic`. `default`: multi-turn conversations (train / test);",
            "`alignment`: one image or clip with its description (stage 1). Media paths are absolute.", ""]
    (out_dir / "README.md").write_text("\n".join(card), encoding="utf-8")


def write_synthetic(out_dir, n_train: int, n_test: int, seed: int = 0, cfg: TaskConfig | None = None,
                    n_alignment: int = 0) -> dict:
    """Materialise `train.jsonl`, `test.jsonl` (and `alignment.jsonl`) plus media under `out_dir/media`.

    Returns {file name: path}. Train uses `seed`, test `seed + 1`, alignment `seed + 2`.
    """
    cfg, out_dir = cfg or TaskConfig(), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        specs = sample_split(n, split_seed, split, cfg)
        rows = [render_row(spec, f"synthetic-{split}-{seed}-{i:06d}", out_dir / "media" / split, cfg)
                for i, spec in enumerate(tqdm(specs, desc=f"synthetic {split}", unit="row"))]
        write_jsonl(out_dir / f"{split}.jsonl", rows)
        written[split] = str(out_dir / f"{split}.jsonl")
    if n_alignment:
        rng = random.Random(seed + 2)
        rows = [alignment_row(rng, f"synthetic-align-{seed}-{i:06d}", out_dir / "media" / "alignment", cfg)
                for i in tqdm(range(n_alignment), desc="synthetic alignment", unit="row")]
        write_jsonl(out_dir / "alignment.jsonl", rows)
        written["alignment"] = str(out_dir / "alignment.jsonl")
    _write_dataset_card(out_dir, n_alignment > 0)
    logger.info("Synthetic task written to %s: %s", out_dir, written)
    return written


__all__ = ["TaskConfig", "sample_conversation", "iter_split", "sample_split", "render_row",
           "alignment_row", "write_synthetic", "signature", "split_of", "ImageSpec", "AudioSpec"]
