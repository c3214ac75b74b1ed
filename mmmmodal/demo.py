"""`mmmmodal demo --out DIR`: build, train, evaluate, save, reload and chat with a small MMMModal, end to end.

Steps (all offline): build a tiny SigLIP / Whisper / Llama from configs with a locally trained tokenizer (or load
`--vision/--audio/--text` hub ids or folders), write the built-in synthetic task's held-out split and stage-1
captions, pretrain the tiny towers ("stage 0", the stand-in for the paper's pretrained encoders), run the paper's
stage 1 and stage 2 through TRL's `SFTTrainer` (stage 2 on a stream of fresh conversations, easy ones first: see
`mmmmodal.demo_data.stream_dataset`), score held-out conversations per question type, save a remote-code
checkpoint, reload it with `trust_remote_code=True`, answer one multi-turn conversation with two images and two audio clips, and write
`report.json`, `report.md` and `report.png` under DIR. Training stops on a wall-clock budget (`--minutes`).
"""

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DESCRIPTION = __doc__.split("\n\n")[0]


@dataclass
class DemoSettings:
    """Sizes and schedule of one demo run; `quick` shrinks everything for tests."""

    hidden_size: int = 64
    layers: int = 3
    heads: int = 4
    vocab_size: int = 600
    n_test: int = 400
    n_alignment: int = 600
    batch_size: int = 32
    stage0_fraction: float = 0.12
    stage0_max_seconds: float = 75.0
    stage0_pool: int = 768
    stage0_eval: int = 256
    stage1_fraction: float = 0.015
    stage1_lr: float = 3e-3
    stage2_lr: float = 2e-3
    curriculum_steps: int = 800  # stage 2 starts on simple conversations, their share falling to 0 over these steps
    caption_share: float = 0.1  # and keeps this share of caption rows all along
    text_share: float = 0.0  # share of conversations given as text only (media replaced by their descriptions)
    # Both off: measured in one run each with seed 1 and on a clean clone with seed 0, neither helped (notes/demo.md,
    # round 5). Share of stage-2 rows that are text-only verdict practice (demo_verdicts), and share of stage-2
    # "same ...?" questions asked about two equal items (the held-out split: none forced).
    verdict_share: float = 0.0
    equal_pairs: float = 0.0
    warmup_steps: int = 20
    # The learning rate holds after warmup and decays linearly over this last share of each stage's time: 0.3
    # against 1.0 (decay from the start) gave 0.958 / 0.902 cross-media against 0.780 / 0.853 (seeds 2 / 1; round 6)
    decay_fraction: float = 0.3
    max_steps: int = 1_000_000  # the wall-clock budget stops training first
    reserve_seconds: float = 25.0  # kept for evaluation, saving, reloading, the chat and the report
    log_every: int = 10
    workers: int = 1
    group_by_length: bool = True  # batches of similar length, in random order: ~25% less padding compute per step
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(hidden_size=32, layers=2, heads=2, n_test=24, n_alignment=24, batch_size=8,
                   stage0_fraction=0.1, stage0_max_seconds=5.0, stage0_pool=32, stage0_eval=32, warmup_steps=1, max_steps=3, reserve_seconds=20.0,
                   log_every=1, workers=0)


def _process_start() -> float:
    """When this process started (Linux), so that the budget covers Python's start and the imports too."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class _Clock:
    """Wall-clock budget shared by all phases; also records how long each phase took."""

    def __init__(self, minutes: float, start: float | None = None):
        self.start = start or time.time()
        self.deadline = self.start + minutes * 60
        self.phases, self._mark = {}, self.start

    def left(self) -> float:
        return self.deadline - time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def lap(self, phase: str):
        now = time.time()
        self.phases[phase] = round(now - self._mark, 2)
        self._mark = now
        _say(self, f"{phase} done in {self.phases[phase]:.1f} s")


def _say(clock, message: str):
    elapsed = clock.elapsed() if clock else 0.0
    print(f"[demo {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {message}", flush=True)


def register(subparsers):
    parser = subparsers.add_parser("demo", help="Build, train, evaluate, reload and chat with a small MMMModal.",
                                   description=DESCRIPTION)
    parser.add_argument("--out", required=True, help="Folder for the report, the checkpoint and the data.")
    parser.add_argument("--vision", help="SigLIP hub id or folder (default: build a tiny one offline).")
    parser.add_argument("--audio", help="Whisper hub id or folder (default: build a tiny one offline).")
    parser.add_argument("--text", help="Causal LM hub id or folder (default: build a tiny one offline).")
    parser.add_argument("--minutes", type=float, default=None,
                        help="Wall-clock budget for the whole run (default 10; 2 with --quick).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="A shortened run (tests, smoke checks): tiny data.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (default 1: with the one data-collation worker "
                             "that makes 2 busy cores; see notes/demo.md for why not 2).")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    run(args.out, args.vision, args.audio, args.text, args.minutes, args.seed, args.quick, args.threads,
        started=_process_start())
    return 0


def _build(out: Path, settings: DemoSettings, vision, audio, text, seed: int):
    """(model, processor, description): tiny parts for whatever is not given; hub ids or folders otherwise."""
    from mmmmodal.demo_data import task_config, tokenizer_corpus
    from mmmmodal.tiny import TinySizes, save_tiny_parts
    from modeling_mmmmodal import MMMModalForConditionalGeneration, MMMModalProcessor

    task = task_config()
    window = math.ceil(task.clip_seconds)  # one Whisper window holds a whole clip
    sizes = TinySizes(hidden_size=settings.hidden_size, layers=settings.layers, heads=settings.heads,
                      image_size=32, patch_size=16, audio_window_seconds=window, vocab_size=settings.vocab_size)
    tiny = {}
    if not (vision and audio and text):
        tiny = save_tiny_parts(out / "parts", sizes, corpus=tokenizer_corpus(task), seed=seed)
    parts = {"vision": vision or tiny.get("vision"), "audio": audio or tiny.get("audio"), "text": text or tiny.get("text")}
    processor = MMMModalProcessor.from_parts(parts["vision"], parts["audio"], parts["text"])
    # The tiny LLM built here is random, so the mean of its rows is no better a start for the new tokens than random
    # rows (which the demo's figures were measured with); a given LLM gets the mean.
    model = MMMModalForConditionalGeneration.from_parts(parts["vision"], parts["audio"], parts["text"],
                                                        processor=processor, mean_resizing=bool(text))
    built = [name for name in parts if parts[name] == tiny.get(name)]
    description = (f"tiny parts built offline for {', '.join(built) or 'none'} "
                   f"(hidden {sizes.hidden_size}, {sizes.layers} layers, {sizes.heads} heads, 32 px images with "
                   f"16 px patches, {window} s Whisper windows, BPE tokenizer of {len(processor.tokenizer)} tokens trained "
                   f"locally); given: {', '.join(f'{k}={v}' for k, v in parts.items() if k not in built) or 'none'}")
    return model, processor, description, built


def lr_factor(step: int, progress: float, warmup_steps: int, decay_fraction: float = 1.0,
              floor: float = 0.05) -> float:
    """The learning rate's multiplier: linear warmup over `warmup_steps` steps, then constant, then a linear decay
    to `floor` over the last `decay_fraction` of the stage, by `progress` (the share of its wall-clock time spent)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decayed = max(progress - (1.0 - decay_fraction), 0.0) / decay_fraction
    return max(floor, 1.0 - decayed)


def _train_stage(model, processor, dataset, stage: int, out: Path, settings: DemoSettings, lr: float,
                 seconds: float, seed: int):
    """One paper stage through TRL's SFTTrainer, stopped by the wall clock; returns [(step, loss)]."""
    import torch
    from datasets import IterableDataset
    from tqdm.auto import tqdm
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mmmmodal.demo_collate import CachingCollator, ShuffledLengthBatches, VerdictOnlyLabels, project_collator
    from mmmmodal.demo_loss import labelled_loss

    model.set_training_stage(stage)
    start = time.time()
    end = start + max(seconds, 1.0)

    class StopAtDeadline(TrainerCallback):
        """Stops training on the wall clock; its progress bar counts seconds of the budget, not steps."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=round(end - start), unit="s", desc=f"stage {stage}",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}")

        def on_step_end(self, args, state, control, **kwargs):
            now = time.time()
            self.bar.n = min(round(now - start), self.bar.total)
            self.bar.set_postfix(step=state.global_step, loss=self.loss)
            if now >= end:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = f"{float(logs['loss']):.3f}"

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

        loss = "-"

    def factor(step):
        return lr_factor(step, (time.time() - start) / (end - start), settings.warmup_steps, settings.decay_fraction)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    config = SFTConfig(
        output_dir=str(out / "trainer" / f"stage{stage}"),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.max_steps,
        logging_steps=settings.log_every,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        assistant_only_loss=True,
        gradient_checkpointing=False,
        max_length=None,
        dataloader_num_workers=settings.workers,
        dataloader_persistent_workers=settings.workers > 0,  # the collator's cache lives in the worker
        remove_unused_columns=False,  # keeps the `length` column for the sampler; the collator reads only its keys
        seed=seed,
        disable_tqdm=True,  # a step-count bar means nothing when the clock stops training; ours counts seconds
    )
    streamed = isinstance(dataset, IterableDataset)  # fresh rows: nothing to cache, already length-grouped
    collator = project_collator(processor)
    if streamed:
        collator = VerdictOnlyLabels(collator)
    else:
        collator = CachingCollator(collator, processor.tokenizer.pad_token_id)

    class Trainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if streamed or not settings.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return ShuffledLengthBatches(dataset["length"], settings.batch_size, seed=seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # TRL's fused head scores every position off Triton devices: ~1.35x as slow as the labelled ones alone
            loss, correct, count = labelled_loss(model, inputs, num_items_in_batch)
            self._metrics["train"]["mean_token_accuracy"].append(correct / max(count, 1))
            return (loss, None) if return_outputs else loss

    trainer = Trainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                         data_collator=collator, optimizers=(optimizer, scheduler), callbacks=[StopAtDeadline()])
    trainer.remove_callback(PrinterCallback)  # the seconds bar shows step and loss instead of a dict per log
    trainer.train()
    model.eval()
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return losses, trainer.state.global_step


def _conversation_row(out: Path, seed: int) -> dict:
    """A held-out conversation: two images and two clips over four turns, single- and cross-media questions."""
    from mmmmodal.demo_data import label_media, task_config
    from processing.synthetic_media import sample_audio_spec, sample_image_spec
    from processing.synthetic_task import render_row, split_of

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


def _save_and_reload(model, processor, out: Path, rows):
    """Save a remote-code checkpoint, reload it with trust_remote_code=True, compare logits."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmmmodal.demo_eval import _batch_inputs

    path = out / "checkpoint"
    model.config.training_stage = None  # a released checkpoint loads with nothing frozen
    model.save_pretrained(path)
    processor.save_pretrained(path)
    reloaded = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    reloaded_processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    inputs = _batch_inputs(reloaded_processor, rows)
    inputs.pop("assistant_masks")
    with torch.no_grad():
        diff = (reloaded(**inputs).logits - model(**inputs).logits).abs().max().item()
    return path, reloaded, reloaded_processor, diff


def run(out, vision=None, audio=None, text=None, minutes=None, seed: int = 0, quick: bool = False,
        threads: int = 1, started: float | None = None) -> dict:
    """Run the demo; returns the report dict (also written to `out/report.json`).

    `started`: when the budget began (the CLI passes the process's start time); defaults to now.
    """
    clock = _Clock(minutes if minutes is not None else (2.0 if quick else 10.0), started)
    settings = DemoSettings.quick() if quick else DemoSettings()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    _say(clock, f"MMMModal demo -> {out} (budget {(clock.deadline - clock.start) / 60:.1f} min, seed {seed})")

    import torch
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from mmmmodal.demo_data import make_data, stream_dataset, task_config, to_dataset
    from mmmmodal.demo_eval import chat, evaluate_model
    from mmmmodal.demo_report import report_json, write_report
    from mmmmodal.demo_stage0 import pretrain_towers
    from processing.synthetic_eval import format_report

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_warning()
    set_seed(seed)
    clock.lap("start + imports")

    model, processor, description, built = _build(out, settings, vision, audio, text, seed)
    clock.lap("build model")
    data = make_data(out / "data", 0, settings.n_test, settings.n_alignment, seed)
    clock.lap("write data")

    budget = clock.left() - settings.reserve_seconds
    stage0 = None
    if {"vision", "audio"} & set(built):
        _say(clock, "stage 0: pretraining the tiny towers on media attributes (stand-in for pretrained encoders)")
        task = task_config()
        stage0 = pretrain_towers(model, processor, min(settings.stage0_fraction * budget, settings.stage0_max_seconds),
                                 image_size=task.image_size, clip_seconds=task.clip_seconds,
                                 beep_seconds=task.beep_seconds, seed=seed, pool_size=settings.stage0_pool,
                                 n_eval=settings.stage0_eval, min_steps=2 if quick else 1)
        _say(clock, f"stage 0: {stage0.steps} steps, held-out accuracy "
                    + ", ".join(f"{k} {v:.2f}" for k, v in stage0.accuracy.items()))
    clock.lap("stage 0")

    _say(clock, "stage 1: projectors only, on captions (TRL SFTTrainer)")
    stage1, steps1 = _train_stage(model, processor, to_dataset(data["alignment"], processor.tokenizer), 1, out, settings, settings.stage1_lr,
                          settings.stage1_fraction * budget, seed)
    clock.lap("stage 1")
    _say(clock, "stage 2: projectors + LLM, on a stream of fresh multi-turn chats, easy ones first (TRL SFTTrainer)")
    stream = stream_dataset(seed, settings.batch_size, curriculum_rows=settings.curriculum_steps * settings.batch_size,
                            caption_share=settings.caption_share, text_share=settings.text_share,
                            equal_pairs=settings.equal_pairs, verdict_share=settings.verdict_share)
    stage2, steps2 = _train_stage(model, processor, stream, 2, out, settings, settings.stage2_lr,
                                  clock.left() - settings.reserve_seconds, seed)
    clock.lap("stage 2")

    result = evaluate_model(model, processor, data["test"], batch_size=settings.batch_size * 2)
    print(format_report(result), flush=True)
    clock.lap("evaluate")
    checkpoint, reloaded, reloaded_processor, diff = _save_and_reload(model, processor, out, data["test"][:4])
    clock.lap("save + reload")
    transcript = chat(reloaded, reloaded_processor, _conversation_row(out, seed))
    for turn in transcript:
        _say(clock, f"user: {turn['question']}\n           model: {turn['answer']}  (expected {turn['expected']})")
    clock.lap("chat")

    minutes_used = clock.elapsed() / 60
    weights = {k: v for k, v in task_config().weights.items() if v}
    parameters = sum(p.numel() for p in model.parameters())
    stage0_summary = "skipped: pretrained towers were given"
    if stage0 is not None:
        stage0_summary = (f"{stage0.steps} steps in {stage0.seconds:.0f} s, held-out attribute accuracy "
                          + ", ".join(f"{k} {v:.2f}" for k, v in stage0.accuracy.items()))
    extra = {
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_average": [load_start, os.getloadavg()[0]],
        "seed": seed,
        "quick": quick,
        "checkpoint": str(checkpoint),
        "reload_max_abs_diff": diff,
        "model": {"description": description, "parameters": parameters},
        "stage0": {"summary": stage0_summary, **({"accuracy": stage0.accuracy, "steps": stage0.steps} if stage0 else {})},
        "stage1": {"summary": _stage_summary(stage1, steps1, settings, settings.stage1_lr), "loss": stage1},
        "stage2": {"summary": _stage_summary(stage2, steps2, settings, settings.stage2_lr), "loss": stage2},
        "data": {"summary": (f"stage 2 trained on a stream of fresh conversations ({steps2 * settings.batch_size:,} "
                             f"seen, none twice), scored on {settings.n_test} held-out ones "
                             f"(English and Malay, 1-4 turns, 0-3 images and 0-3 clips each), "
                             f"{settings.n_alignment} caption pairs for stage 1; {settings.text_share:.0%} of the "
                             "stage-2 conversations given as text only (every media item replaced by its "
                             f"description); in {settings.equal_pairs:.0%} of the stage-2 \"same ...?\" "
                             "questions the two items were made equal (the held-out split draws every item "
                             f"independently); {settings.verdict_share:.0%} of the stage-2 rows text-only comparison "
                             "questions answered with random values, trained on the verdict alone (\"red, red:\" -> "
                             "\"yes\": the step a pretrained LLM would bring; mmmmodal/demo_verdicts.py); "
                             "comparisons answered with both items' attribute and the verdict "
                             "(\"3, 2: yes\"); media labelled "
                             "'Picture k:' / 'Audio k:'; question mix (relative weights of the question types, "
                             "the same for train and held-out): "
                             + ", ".join(f"{k} {v:g}" for k, v in weights.items())),
                 "n_train_seen": steps2 * settings.batch_size, "n_test": settings.n_test, "n_alignment": settings.n_alignment,
                 "question_weights": weights},
        "scoring": ("teacher-forced greedy decoding of every assistant turn of the held-out conversations, exact "
                    "match against the reference (processing/synthetic_eval.py); chance is a uniform guess over "
                    "each question type's answers"),
        "conversation": transcript,
        "settings": asdict(settings),
    }
    report = report_json(result, minutes_used, extra)
    report["seconds"] = clock.phases
    paths = write_report(out, result, report, transcript, stage0.loss if stage0 else [],
                         {"stage 1": stage1, "stage 2": stage2})
    report["seconds"]["report"] = round(clock.elapsed() - sum(clock.phases.values()), 2)
    Path(paths["json"]).write_text(json.dumps(report, indent=2))
    _say(clock, f"single-media {report['single_media']:.3f} (goal 0.9), cross-media {report['cross_media']:.3f} "
                f"(goal 0.8), {clock.elapsed() / 60:.2f} min; report: {paths['markdown']}, {paths['png']}")
    return report


def _stage_summary(losses, steps: int, settings: DemoSettings, lr: float) -> str:
    if not losses:
        return f"{steps} steps, no logged loss"
    decay = ("then linear decay on the wall clock" if settings.decay_fraction >= 1 else
             f"constant, then linear decay over the last {settings.decay_fraction:.0%} of the stage's wall-clock time")
    return (f"{steps} steps of batch {settings.batch_size}, AdamW lr {lr:g} ({settings.warmup_steps} warmup steps, "
            f"{decay}; loss on the labelled positions only), loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}")


__all__ = ["run", "register", "DemoSettings", "lr_factor"]
