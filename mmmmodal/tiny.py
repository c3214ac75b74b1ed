"""Tiny pretrained-style parts, built offline: a SigLIP vision tower, a Whisper model and a Llama LM.

Each part is saved as a local folder laid out like its hub checkpoint (weights, config, image processor /
feature extractor / tokenizer), so that `mmmmodal.build` composes a model from them through exactly the code path
it uses for hub ids (`build_tiny` there). The tokenizer is trained locally with `tokenizers`: nothing is downloaded.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

DEFAULT_CORPUS = [
    "What is in picture 1? A red circle. Apa dalam gambar 1? Bulatan merah.",
    "How many beeps are in audio 1? Three. Berapa bunyi dalam audio 1? Tiga.",
    "What is related between picture 1 and audio 2? Both show the number two.",
    "Apakah kaitan antara gambar 1 dan audio 2? Kedua-duanya menunjukkan nombor dua.",
    "Describe the image. Terangkan gambar ini. The sound is high pitched. Bunyi itu nyaring.",
    "yes no ya tidak one two three four satu dua tiga empat blue green yellow biru hijau kuning",
    "square triangle circle segi empat segi tiga bulatan low mid high rendah sederhana tinggi",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


@dataclass
class TinySizes:
    """Sizes of the tiny parts. Defaults keep a forward pass in milliseconds on a CPU."""

    hidden_size: int = 32
    layers: int = 2
    heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    audio_window_seconds: int = 3
    num_mel_bins: int = 80
    vocab_size: int = 400
    text_max_positions: int = 2048


def train_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` (English + Malay by default)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_parts(out_dir, sizes: TinySizes | None = None, corpus: list[str] | None = None, seed: int = 0) -> dict:
    """Write `vision/`, `audio/` and `text/` checkpoints under `out_dir`; returns their paths by part name."""
    sizes = sizes or TinySizes()
    out = Path(out_dir)
    torch.manual_seed(seed)
    common = dict(hidden_size=sizes.hidden_size, num_attention_heads=sizes.heads, intermediate_size=sizes.hidden_size * 2)

    vision_config = SiglipVisionConfig(
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        num_hidden_layers=sizes.layers,
        vision_use_head=False,
        **common,
    )
    SiglipVisionModel(vision_config).save_pretrained(out / "vision")
    SiglipImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size}).save_pretrained(out / "vision")

    window_frames = sizes.audio_window_seconds * 100  # Whisper: 100 mel frames per second
    audio_config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=sizes.num_mel_bins,
        d_model=sizes.hidden_size,
        encoder_layers=sizes.layers,
        decoder_layers=1,
        encoder_attention_heads=sizes.heads,
        decoder_attention_heads=sizes.heads,
        encoder_ffn_dim=sizes.hidden_size * 2,
        decoder_ffn_dim=sizes.hidden_size * 2,
        max_source_positions=window_frames // 2,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    WhisperModel(audio_config).save_pretrained(out / "audio")
    WhisperFeatureExtractor(feature_size=sizes.num_mel_bins, chunk_length=sizes.audio_window_seconds).save_pretrained(
        out / "audio"
    )

    tokenizer = train_tokenizer(corpus, sizes.vocab_size)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=sizes.layers,
        num_key_value_heads=sizes.heads,
        max_position_embeddings=sizes.text_max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **common,
    )
    LlamaForCausalLM(text_config).save_pretrained(out / "text")
    tokenizer.save_pretrained(out / "text")
    return {"vision": str(out / "vision"), "audio": str(out / "audio"), "text": str(out / "text")}
