"""Shared pieces of the benchmarks: model builders from configs, a side-by-side timer, and the result table.

Everything is built from configs with random weights (nothing is downloaded). Timings are taken side by side in
one process: the contenders of a benchmark run in turns (A, B, C, A, B, C, ...) after a warm-up, and each gets
the median of its repeats, so a noisy shared machine shifts all of them alike and the ratios stay meaningful.
"""

import statistics
import time
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, SiglipVisionConfig, WhisperConfig

from modeling_mmmmodal import MMMModalConfig, MMMModalForConditionalGeneration

# Token ids of the span format, placed at the top of the vocabulary (the processor-free benchmarks need no tokenizer).
VOCAB = 512
IDS = {
    "image_start_token_id": VOCAB - 6,
    "image_token_id": VOCAB - 5,
    "image_end_token_id": VOCAB - 4,
    "audio_start_token_id": VOCAB - 3,
    "audio_token_id": VOCAB - 2,
    "audio_end_token_id": VOCAB - 1,
}
PAD_ID = 0


@dataclass
class Size:
    """One model size: LLM, vision tower and audio tower widths (the towers stay small: they are frozen here)."""

    name: str
    hidden: int
    layers: int
    heads: int
    vision_hidden: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8
    audio_hidden: int = 32
    audio_layers: int = 2
    audio_window_s: int = 30  # real Whisper windows: 3000 mel frames -> 1500 encoder frames
    intermediate: int | None = None

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES = {
    "tiny": Size("tiny", hidden=32, layers=2, heads=2, audio_window_s=3),
    "small": Size("small", hidden=512, layers=8, heads=8, vision_hidden=128, vision_layers=2, image_size=64, patch_size=16),
    # TinyLlama 1.1B's shape (GPU only): hidden 2048, 22 layers, 32 heads (4 KV heads), MLP 5632.
    "tinyllama": Size("tinyllama", hidden=2048, layers=22, heads=32, vision_hidden=768, vision_layers=12,
                      image_size=384, patch_size=16, audio_hidden=768, audio_layers=12, intermediate=5632),
}


def vision_config(size: Size) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=size.vision_hidden, intermediate_size=size.vision_hidden * 4, num_hidden_layers=size.vision_layers,
        num_attention_heads=max(size.vision_hidden // 64, 2), image_size=size.image_size, patch_size=size.patch_size,
        vision_use_head=False,
    )


def audio_config(size: Size) -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=80, d_model=size.audio_hidden, encoder_layers=size.audio_layers, decoder_layers=1,
        encoder_attention_heads=max(size.audio_hidden // 64, 2), decoder_attention_heads=2,
        encoder_ffn_dim=size.audio_hidden * 4, decoder_ffn_dim=64, max_source_positions=size.audio_window_s * 50,
        vocab_size=64, max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )


def text_config(size: Size, vocab: int = VOCAB) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=size.hidden, intermediate_size=size.intermediate or size.hidden * 8 // 3,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=4 if size.name == "tinyllama" else size.heads,
        max_position_embeddings=8192, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )


def build_model(size: Size, vision=True, audio=True, seed=0, processor=None, **config_kwargs):
    """A random-weight MMMModal of the given size, in eval mode; token ids from `processor` if given."""
    torch.manual_seed(seed)
    ids, vocab = IDS, VOCAB
    if processor is not None:
        ids = {name: getattr(processor, name) for name in IDS}
        vocab = len(processor.tokenizer)
    config = MMMModalConfig(
        vision_config=vision_config(size) if vision else None,
        audio_config=audio_config(size) if audio else None,
        text_config=text_config(size, vocab),
        **ids,
        **config_kwargs,
    )
    model = MMMModalForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD_ID
    return model


def build_processor(size: Size):
    """An MMMModalProcessor matching `size` (SigLIP image size, Whisper window), with a locally trained tokenizer."""
    from transformers import SiglipImageProcessor, WhisperFeatureExtractor

    from mmmmodal.compose import compose_tokenizer
    from mmmmodal.tiny import train_tokenizer
    from modeling_mmmmodal import MMMModalProcessor

    tokenizer = train_tokenizer()
    chat_template = compose_tokenizer(tokenizer, "the benchmark's tiny tokenizer")
    return MMMModalProcessor(
        SiglipImageProcessor(size={"height": size.image_size, "width": size.image_size}),
        WhisperFeatureExtractor(feature_size=80, chunk_length=size.audio_window_s),
        tokenizer,
        chat_template=chat_template,
        patch_size=size.patch_size,
        audio_kernel_size=40,
        audio_stride=3,
    )


# ------------------------------------------------------------------------------------------------------- timing
# The clock of every timed section. "cpu" (process CPU time) is the default on a CPU with one torch thread: time
# stolen by other tenants of a shared machine is not counted, so the ratios stay steady. "wall" for GPUs and
# multi-process runs (set by `python -m benchmarks --clock`).
CLOCK = {"name": "cpu"}


def now() -> float:
    if CLOCK["name"] == "wall":
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def time_side_by_side(contenders: dict, repeats: int = 3, warmup: int = 1) -> dict:
    """Run each callable `warmup` times, then `repeats` rounds in turns; return name -> median seconds."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = now()
            fn()
            samples[name].append(now() - start)
    return {name: statistics.median(values) for name, values in samples.items() if values}


# -------------------------------------------------------------------------------------------------------- table
@dataclass
class Row:
    """One line of the result table: what was measured, the numbers, and the ratio that a goal reads."""

    bench: str
    case: str
    value: str
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    extra: dict = field(default_factory=dict)


def format_table(rows: list[Row]) -> str:
    header = ("benchmark", "case", "measured", "ratio", "goal", "met")
    lines = [
        (r.bench, r.case, r.value, "" if r.ratio is None else f"{r.ratio:.2f}", r.goal,
         "" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)
