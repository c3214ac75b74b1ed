"""What one demo run is given: the command's flags (`DemoArguments`) and the sizes and schedule (`DemoSettings`)."""

from dataclasses import dataclass, field


@dataclass
class DemoArguments:
    """The flags of `mmmmodal demo` (each field is one flag, see `mmmmodal.cli.add_dataclass_arguments`)."""

    out: str = field(metadata={"help": "Folder for the report, the checkpoint and the data."})
    vision: str | None = field(default=None, metadata={
        "help": "SigLIP hub id or folder (default: build a tiny one offline)."})
    audio: str | None = field(default=None, metadata={
        "help": "Whisper hub id or folder (default: build a tiny one offline)."})
    text: str | None = field(default=None, metadata={
        "help": "Causal LM hub id or folder (default: build a tiny one offline)."})
    minutes: float | None = field(default=None, metadata={
        "help": "Wall-clock budget for the whole run (default 10; 2 with --quick)."})
    seed: int = field(default=0, metadata={"help": "Seed of the model, the data and the training order."})
    quick: bool = field(default=False, metadata={"help": "A shortened run (tests, smoke checks): tiny data."})
    threads: int = field(default=1, metadata={
        "help": "torch threads of the training process (default 1: with the one data-collation worker that makes "
                "2 busy cores)."})
    padded: bool = field(default=False, metadata={
        "help": "Train stage 2 on padded, length-grouped batches (the path before packing) instead of packed ones: "
                "for comparing the two."})

    @property
    def budget_minutes(self) -> float:
        return self.minutes if self.minutes is not None else (2.0 if self.quick else 10.0)

    @property
    def settings(self) -> "DemoSettings":
        return DemoSettings.quick() if self.quick else DemoSettings()

    def check(self):
        """Raise a ValueError naming the minimum when `--minutes` leaves stages 1 and 2 too little time."""
        s = self.settings
        minimum = s.minimum_minutes()
        if self.budget_minutes < minimum:
            raise ValueError(
                f"--minutes {self.budget_minutes:g} is too short: the demo needs at least {minimum:.1f} minutes"
                f"{' with --quick' if self.quick else ''} (about {s.setup_seconds:.0f} s to start, build the model "
                f"and write the data, {s.stage0_fraction:.0%} of the rest for stage 0, {s.min_training_seconds:.0f} "
                f"s for stages 1 and 2, {s.reserve_seconds:.0f} s to score, save, reload and report). With less it "
                "would report an untrained model.")


@dataclass
class DemoSettings:
    """Sizes and schedule of one demo run; `quick` shrinks everything for tests."""

    hidden_size: int = 64
    layers: int = 3
    heads: int = 4
    vocab_size: int = 600
    n_test: int = 400  # held-out conversations scored
    n_alignment: int = 600  # stage-1 caption rows
    batch_size: int = 32
    stage0_fraction: float = 0.12  # of the training time
    stage0_max_seconds: float = 75.0
    stage0_pool: int = 768  # media drawn once for stage 0
    stage0_eval: int = 256
    stage1_fraction: float = 0.015  # of the training time; stage 2 gets the rest
    stage1_lr: float = 3e-3
    stage2_lr: float = 2e-3
    curriculum_steps: int = 800  # stage 2 starts on simple conversations, their share falling to 0 over these steps
    caption_share: float = 0.1  # and keeps this share of caption rows all along
    # stage 2's training mix (not the held-out one): the comparisons learn slowest (they need "which picture?"
    # worked out first), so those of two pictures or two clips get 3x their held-out weight and those of a picture
    # and a clip 2x; single-media questions are learned early and keep theirs (seed 1: cross-media 0.801 with 2x
    # on the first four only, 0.892 with this, 0.885 with 4x / 3x; docs/demo.md)
    boost: dict = field(default_factory=lambda: {"image_image_colour": 3.0, "image_image_more": 3.0,
                                                 "audio_audio_pitch": 3.0, "audio_audio_more": 3.0,
                                                 "image_audio_same_count": 2.0, "image_audio_more": 2.0})
    warmup_steps: int = 20
    # after warmup the learning rate holds, then decays over this last share of a stage (1.0: from the end of
    # warmup). The loss falls fastest while it decays, and at 2e-3 held still it barely moves (seed 2: about 0.23
    # from step 260 to 1,760 with 0.6), so the whole stage decays (seed 2: cross-media 0.913 with 0.6, 0.958 with
    # 1.0, back to back in one working copy; seed 1: 0.892 with 0.3, 0.906 with 0.6; docs/demo.md)
    decay_fraction: float = 1.0
    max_steps: int = 1_000_000  # the wall-clock budget stops training first
    reserve_seconds: float = 15.0  # kept for evaluation, saving, reloading, the chat and the report (~8 s here)
    setup_seconds: float = 20.0  # imports, building the model, writing the data (6-15 s here; more on a first run)
    # the least time stages 1 and 2 may get: stage 2's easy-first curriculum alone is ~800 steps (~2 minutes here)
    min_training_seconds: float = 120.0
    log_every: int = 10
    workers: int = 1  # data-collation worker processes
    group_by_length: bool = True  # stage 1: batches of similar length, in random order (less padding per step)

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(hidden_size=32, layers=2, heads=2, n_test=24, n_alignment=24, batch_size=8, stage0_fraction=0.1,
                   stage0_max_seconds=5.0, stage0_pool=32, stage0_eval=32, warmup_steps=1, max_steps=3,
                   reserve_seconds=20.0, min_training_seconds=4.0, log_every=1, workers=0)

    def minimum_minutes(self) -> float:
        """The shortest `--minutes` that leaves stages 1 and 2 `min_training_seconds` (stage 0 takes its share)."""
        training = self.min_training_seconds / (1.0 - self.stage0_fraction)
        return (self.setup_seconds + training + self.reserve_seconds) / 60
