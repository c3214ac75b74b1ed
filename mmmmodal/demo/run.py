"""The demo's pipeline: build, stage 0, stage 1, stage 2, score, save and reload, chat, report (see `run`)."""

import itertools
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import torch
from transformers import set_seed
from transformers.utils import logging as hf_logging

from mmmmodal.build import build
from mmmmodal.loading import load_checkpoint
from mmmmodal.tiny import TinySizes, save_tiny_parts
from mmmmodal.training.collate import MMMModalDataCollator
from processing.synthetic_eval import format_report
from processing.synthetic_media import sample_audio_spec, sample_image_spec
from processing.synthetic_task import render_row, split_of

from .data import label_media, make_data, task_config, tokenizer_corpus, trl_dataset
from .eval import batch_inputs, chat_transcript, evaluate_model
from .report import GOALS, report_json, run_details, write_report
from .settings import DemoArguments, DemoSettings
from .stage0 import pretrain_towers
from .batching import PackingCollator
from .stream import stream_dataset, stream_rows
from .train import estimate_step_seconds, matmul_flops_per_second, train_stage

logger = logging.getLogger(__name__)


def process_start() -> float:
    """When this process started (Linux), so that the budget covers Python's start and the imports too."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Clock:
    """Wall-clock budget shared by all phases; also records how long each phase took."""

    def __init__(self, minutes: float, start: float | None = None):
        self.start = start or time.time()
        self.deadline = self.start + minutes * 60
        self.phases, self._mark = {}, self.start

    def left(self) -> float:
        return self.deadline - time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def say(self, message: str):
        elapsed = int(self.elapsed())
        logger.info(f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}] {message}")

    def lap(self, phase: str):
        now = time.time()
        self.phases[phase] = round(now - self._mark, 2)
        self._mark = now
        self.say(f"{phase} done in {self.phases[phase]:.1f} s")


def build_model(out: Path, settings: DemoSettings, args: DemoArguments):
    """(model, processor, description, built): tiny parts for whatever is not given; hub ids or folders otherwise."""
    window = math.ceil(task_config().clip_seconds)  # one Whisper window holds a whole clip
    sizes = TinySizes(hidden_size=settings.hidden_size, layers=settings.layers, heads=settings.heads,
                      image_size=32, patch_size=16, audio_window_seconds=window, vocab_size=settings.vocab_size)
    tiny = {}
    if not (args.vision and args.audio and args.text):
        tiny = save_tiny_parts(out / "parts", sizes, corpus=tokenizer_corpus(task_config()), seed=args.seed)
    parts = {name: getattr(args, name) or tiny.get(name) for name in ("vision", "audio", "text")}
    # The tiny LLM built here is random, so the mean of its rows is no better a start for the new tokens than
    # random rows; a given LLM gets the mean.
    model, processor = build(parts["vision"], parts["audio"], parts["text"], mean_resizing=bool(args.text))
    built = [name for name in parts if parts[name] == tiny.get(name)]
    description = (f"tiny parts built offline for {', '.join(built) or 'none'} "
                   f"(hidden {sizes.hidden_size}, {sizes.layers} layers, {sizes.heads} heads, 32 px images with "
                   f"16 px patches, {window} s Whisper windows, BPE tokenizer of {len(processor.tokenizer)} tokens "
                   f"trained locally); given: "
                   + (", ".join(f"{k}={v}" for k, v in parts.items() if k not in built) or "none"))
    return model, processor, description, built


def conversation_row(out: Path, seed: int) -> dict:
    """A held-out conversation: two images and two clips over four turns, single- and cross-media questions."""
    rng = random.Random(seed + 7)
    turns = [{"new": [("image", 0), ("image", 1)], "qtype": "image_colour", "refs": [1]},
             {"new": [("audio", 0)], "qtype": "audio_count", "refs": [0]},
             {"new": [("audio", 1)], "qtype": "audio_audio_pitch", "refs": [0, 1]},
             {"new": [], "qtype": "image_audio_same_count", "refs": [0, 1]}]
    while True:
        spec = {"language": "en", "images": [sample_image_spec(rng) for _ in range(2)],
                "audios": [sample_audio_spec(rng) for _ in range(2)], "turns": turns}
        if split_of(spec) == "test":
            break
    return label_media(render_row(spec, "demo-chat", out / "data" / "media" / "chat", task_config()))


def save_and_reload(model, processor, out: Path, rows):
    """Save a remote-code checkpoint, reload it with the checkpoint's own code (`trust_remote_code=True`: the path a
    hub user takes), compare logits on `rows`. Returns (path, reloaded model, its processor, max |difference|)."""
    path = out / "checkpoint"
    model.config.training_stage = None  # a released checkpoint loads with nothing frozen
    model.save_pretrained(path)
    processor.save_pretrained(path)
    reloaded, reloaded_processor = load_checkpoint(str(path), trust_remote_code=True)
    inputs = batch_inputs(reloaded_processor, rows)
    inputs.pop("assistant_masks")
    with torch.no_grad():
        diff = (reloaded(**inputs).logits - model(**inputs).logits).abs().max().item()
    return path, reloaded, reloaded_processor, diff


def run_stage0(model, processor, settings: DemoSettings, seconds: float, seed: int, quick: bool):
    """Stage 0 on the towers built here (None when both were given)."""
    task = task_config()
    return pretrain_towers(model, processor, min(settings.stage0_fraction * seconds, settings.stage0_max_seconds),
                           image_size=task.image_size, clip_seconds=task.clip_seconds, beep_seconds=task.beep_seconds,
                           seed=seed, pool_size=settings.stage0_pool, n_eval=settings.stage0_eval,
                           min_steps=2 if quick else 1)


def warn_if_too_big(model, processor, settings: DemoSettings, seconds: float, seed: int,
                    flops_per_second: float | None = None) -> float:
    """Warn when a given language model cannot take enough stage-2 steps in `seconds` on this machine (fewer than
    the curriculum's); returns the estimated seconds per step (`train.estimate_step_seconds`, on a real batch of
    the stream through the model's own processor, at `flops_per_second`: measured here when not given)."""
    rows = [{"messages": r["messages"], "images": r["images"]}
            for r in itertools.islice(stream_rows(seed, settings.batch_size), settings.batch_size)]
    batch = PackingCollator(MMMModalDataCollator(processor, assistant_only_loss=True), processor)(rows)
    step = estimate_step_seconds(model, batch, flops_per_second or matmul_flops_per_second())
    steps = seconds / step
    if steps < settings.curriculum_steps:
        parameters = sum(p.numel() for p in model.base_model.language_model.parameters())
        logger.warning(
            f"--text: this language model ({parameters / 1e6:,.0f}M parameters) is too big to train in the budget "
            f"on this machine: one stage-2 step of {settings.batch_size} conversations "
            f"({batch['input_ids'].numel():,} tokens) takes at least {step:,.3g} s here (estimated from its weights "
            f"and this CPU's matrix-multiply speed), so the {seconds / 60:.1f} minutes of stage 2 make at most "
            f"{steps:,.0f} steps, where the demo's goals need thousands (its easy-first curriculum alone is "
            f"{settings.curriculum_steps}). Expect an untrained model; give a smaller LLM, or more --minutes.")
    return step


def run(args: DemoArguments, started: float | None = None) -> dict:
    """Run the demo; returns the report dict (also written to `args.out/report.json`).

    `started`: when the budget began (the CLI passes the process's start time); defaults to now.
    """
    args.check()
    clock = Clock(args.budget_minutes, started)
    settings = args.settings
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    clock.say(f"MMMModal demo -> {out} (budget {args.budget_minutes:.1f} min, seed {args.seed})")
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_warning()
    set_seed(args.seed)
    clock.lap("start + imports")

    model, processor, description, built = build_model(out, settings, args)
    clock.lap("build model")
    data = make_data(out / "data", 0, settings.n_test, settings.n_alignment, args.seed)
    clock.lap("write data")
    budget = clock.left() - settings.reserve_seconds
    if args.text:
        step = warn_if_too_big(model, processor, settings, budget * (1 - settings.stage0_fraction), args.seed)
        clock.say(f"stage-2 step estimated at {step:.2f} s or more for the given language model")
    stage0 = None
    if {"vision", "audio"} & set(built):
        clock.say("stage 0: pretraining the tiny towers on media attributes (stand-in for pretrained encoders)")
        stage0 = run_stage0(model, processor, settings, budget, args.seed, args.quick)
    clock.lap("stage 0")
    clock.say("stage 1: projectors only, on captions (TRL SFTTrainer)")
    stage1 = train_stage(model, processor, trl_dataset(data["alignment"], processor.tokenizer), 1, out, settings,
                         settings.stage1_lr, settings.stage1_fraction * budget, args.seed)
    clock.lap("stage 1")
    packed = not args.padded
    clock.say(f"stage 2: projectors + LLM, on a stream of fresh multi-turn chats, easy ones first, "
              f"{'packed' if packed else 'padded'} batches (TRL SFTTrainer)")
    # Packed batches want conversations of mixed lengths (short ones share a row); padded ones similar lengths.
    stream = stream_dataset(args.seed, settings.batch_size, group=1 if packed else 8,
                            curriculum_rows=settings.curriculum_steps * settings.batch_size,
                            caption_share=settings.caption_share, boost=settings.boost)
    stage2 = train_stage(model, processor, stream, 2, out, settings, settings.stage2_lr,
                         clock.left() - settings.reserve_seconds, args.seed, packed=packed)
    clock.lap("stage 2")
    clock.say(f"stage 2: {stage2.throughput()}")

    result = evaluate_model(model, processor, data["test"], batch_size=settings.batch_size * 2)
    logger.info("Held-out accuracy:\n%s", format_report(result))
    clock.lap("evaluate")
    checkpoint, reloaded, reloaded_processor, diff = save_and_reload(model, processor, out, data["test"][:4])
    clock.lap("save + reload")
    transcript = chat_transcript(reloaded, reloaded_processor, conversation_row(out, args.seed))
    for turn in transcript:
        clock.say(f"user: {turn['question']}\n           model: {turn['answer']}  (expected {turn['expected']})")
    clock.lap("chat")

    details = run_details(args, settings, description=description, parameters=sum(p.numel() for p in model.parameters()),
                          load_average=[load_start, os.getloadavg()[0]], stage0=stage0, stage1=stage1, stage2=stage2,
                          checkpoint=checkpoint, reload_diff=diff, transcript=transcript)
    report = report_json(result, clock.elapsed() / 60, details)
    report["seconds"] = clock.phases
    paths = write_report(out, result, report, transcript, stage0.loss if stage0 else [],
                         {"stage 1": stage1.loss, "stage 2": stage2.loss})
    report["seconds"]["report"] = round(clock.elapsed() - sum(clock.phases.values()), 2)
    Path(paths["json"]).write_text(json.dumps(report, indent=2))
    clock.say(f"single-media {report['single_media']:.3f} (goal {GOALS['single_media']}), cross-media "
              f"{report['cross_media']:.3f} (goal {GOALS['cross_media']}), {clock.elapsed() / 60:.2f} min; stage 2 "
              f"{stage2.throughput()}; report: {paths['markdown']}, {paths['png']}")
    return report


__all__ = ["run", "build_model", "save_and_reload", "conversation_row", "Clock", "process_start"]
