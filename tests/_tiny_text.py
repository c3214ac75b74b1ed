"""Tiny, offline text / speech / translation models for the data-pipeline tests.

Everything is built from configs with a tokenizer trained here with `tokenizers` (no download).
Outputs are gibberish; the tests check record shapes, not quality. Local to the processing tests:
the shared tiny-MMMModal factory lives elsewhere.
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "What is related between picture 1 and picture 2?",
    "The audio says the weather is nice today in Kuala Lumpur.",
    "Apakah kaitan antara gambar 1 dan gambar 2?",
    "A red circle and a blue square on a white background.",
    "Write a question about the transcript. Answer the user.",
    "Terjemah ke bahasa Melayu: hello world, selamat pagi.",
    "user assistant system question answer audio image",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT_SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def whisper_specials() -> list:
    """Whisper's special tokens in Whisper's order (its tokenizer derives language ids from it)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
            + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
               "<|notimestamps|>"])


def train_bpe(specials, vocab_size=300):
    """A byte-level BPE trained on `CORPUS` (byte alphabet included, so any text encodes)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def chat_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(CHAT_SPECIALS), unk_token="<unk>",
                                  pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_llm(path: Path) -> Path:
    """LlamaForCausalLM, hidden 32, 2 layers, with a chat template."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = chat_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def save_tiny_translator(path: Path) -> Path:
    """MarianMTModel (the opus-mt architecture), d_model 32, with the same local tokenizer."""
    from transformers import MarianConfig, MarianMTModel

    tok = chat_tokenizer()
    tok.chat_template = None
    config = MarianConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
                          forced_eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def whisper_tokenizer():
    """A real `WhisperTokenizer` whose vocab/merges come from a BPE trained here.

    Whisper's own vocabulary (50k tokens) cannot be built offline; the class, special tokens and
    decoding logic are the real ones, only the vocabulary is tiny.
    """
    import json

    from transformers import WhisperTokenizer

    bpe = json.loads(train_bpe([]).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    # As in Whisper, the special tokens come after the text tokens: its ASR decoding treats every
    # id above <|notimestamps|> as a timestamp.
    vocab = dict(bpe["vocab"])
    specials = whisper_specials()
    vocab.update({t: len(vocab) + k for k, t in enumerate(specials)})
    tok = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tok


def save_tiny_whisper(path: Path) -> Path:
    """WhisperForConditionalGeneration, d_model 32, 2+2 layers, 16 mel bins, with its processor."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tok = whisper_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in whisper_specials()}
    config = WhisperConfig(vocab_size=len(tok), num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
                           pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
                           eos_token_id=ids["<|endoftext|>"], decoder_start_token_id=ids["<|startoftranscript|>"],
                           begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    # Random weights emit byte fragments that decode to nothing; allow only whole-word tokens so
    # the test transcripts are non-empty (gibberish) text.
    words = {i for t, i in tok.get_vocab().items() if t.lstrip("\u0120").isalpha() and len(t) > 2 and "|" not in t}
    model.generation_config.max_length = 24
    model.generation_config.suppress_tokens = [i for i in range(len(tok)) if i not in words | {ids["<|endoftext|>"]}]
    model.generation_config.begin_suppress_tokens = [ids["<|endoftext|>"]]
    # Multilingual fields, so `generate(language=..., task=...)` works as with real Whisper.
    model.generation_config.is_multilingual = True
    model.generation_config.lang_to_id = {f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES}
    model.generation_config.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.generation_config._from_model_config = False  # else loading rebuilds it from the model config
    model.save_pretrained(path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=16), tokenizer=tok).save_pretrained(path)
    return Path(path)
