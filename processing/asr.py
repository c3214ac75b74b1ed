"""Pseudo-labelling audio with a Whisper (or any) ASR checkpoint, with an honest quality score.

Transcripts come from `transformers.pipeline("automatic-speech-recognition", model)`. Each is then
scored by the same model, teacher-forced on the same audio features:

- `score`: mean log-probability per token of the transcript (its tokenizer's prefix tokens
  excluded, end-of-text included), i.e. how confident the model is in what it wrote; 0 is certain,
  typical good clips are above about -0.5 nats/token (the default threshold, `min_score`).
- `compression_ratio`: len(text) / len(gzip(text)), Whisper's own repetition heuristic; looping
  hallucinations ("the the the ...") compress well. Clips above `max_compression_ratio` (2.4, as in
  Whisper) are dropped, as are empty transcripts.

Scoring looks at the first 30 s window only (the feature extractor's length); the paper's clips are
short. Audio is decoded with `transformers.audio_utils.load_audio` (no ffmpeg needed for WAV/FLAC).
"""

import gzip
import logging

from .jsonl_io import run_resumable, stable_id

logger = logging.getLogger(__name__)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(gzip.compress(data)) if data else 0.0


class PseudoLabeller:
    """`language` (e.g. "ms", "en") fixes Whisper's language token for transcription and scoring alike;
    without it Whisper detects the language while the score is taken without a language token (an
    approximation: pass the language when it is known)."""

    def __init__(self, model: str, batch_size: int = 8, device: str | None = None, language: str | None = None,
                 generate_kwargs: dict | None = None):
        import torch
        from transformers import pipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe = pipeline("automatic-speech-recognition", model=model, device=device)
        self.batch_size, self.generate_kwargs = batch_size, dict(generate_kwargs or {})
        if language:
            self.generate_kwargs.update(language=language, task="transcribe")
            self.pipe.tokenizer.set_prefix_tokens(language=language, task="transcribe")
        self.sampling_rate = self.pipe.feature_extractor.sampling_rate

    def transcribe(self, audios: list) -> list:
        inputs = [{"raw": a, "sampling_rate": self.sampling_rate} for a in audios]
        kwargs = {"generate_kwargs": self.generate_kwargs} if self.generate_kwargs else {}
        return [out["text"].strip() for out in self.pipe(inputs, batch_size=self.batch_size, **kwargs)]

    def score(self, audio, text: str) -> float:
        """Mean token log-probability of `text` given `audio` (teacher forcing)."""
        import torch

        tokenizer, model = self.pipe.tokenizer, self.pipe.model
        features = self.pipe.feature_extractor(audio, sampling_rate=self.sampling_rate, return_tensors="pt")
        ids = tokenizer(text, return_tensors="pt").input_ids
        n_prefix = len(getattr(tokenizer, "prefix_tokens", []) or [])
        feats = features.input_features.to(model.device, model.dtype)
        with torch.no_grad():
            logits = model(input_features=feats, decoder_input_ids=ids[:, :-1].to(model.device)).logits
        logprobs = torch.log_softmax(logits.float(), -1)[0].gather(-1, ids[0, 1:, None].to(model.device))[:, 0]
        return float(logprobs[max(n_prefix - 1, 0):].mean())

    def label(self, paths: list) -> list:
        from transformers.audio_utils import load_audio

        audios = [load_audio(str(p), sampling_rate=self.sampling_rate) for p in paths]
        texts = self.transcribe(audios)
        rows = []
        for path, audio, text in zip(paths, audios, texts):
            score = self.score(audio, text) if text else float("-inf")
            rows.append({"id": stable_id("asr", str(path)), "filename": [str(path)], "transcript": text,
                         "score": score, "compression_ratio": compression_ratio(text),
                         "duration_s": len(audio) / self.sampling_rate})
        return rows


def keep_transcript(row: dict, min_score: float = -0.5, max_compression_ratio: float = 2.4) -> bool:
    return bool(row["transcript"]) and row["score"] >= min_score and row["compression_ratio"] <= max_compression_ratio


def pseudo_label(paths: list, out_path, labeller: PseudoLabeller, min_score: float = -0.5,
                 max_compression_ratio: float = 2.4, chunk_size: int = 8, max_consecutive_failures: int = 32) -> dict:
    """Transcribe and score every file into `out_path` (resumable); each row gets `keep`.

    A file that fails (unreadable audio, ...) is written down as failed and the others go on."""
    def process(chunk):
        rows = labeller.label(chunk)
        for row in rows:
            row["keep"] = keep_transcript(row, min_score, max_compression_ratio)
        return rows

    stats = run_resumable([str(p) for p in paths], out_path, process, chunk_size,
                          key=lambda p: stable_id("asr", p), desc="asr",
                          max_consecutive_failures=max_consecutive_failures)
    logger.info("ASR pseudo-labels: %s", stats)
    return stats
