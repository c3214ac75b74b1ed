"""A vLLM media connector that decodes audio as `mmmmodal serve` does: `VLLM_MEDIA_CONNECTOR=mmmmodal`.

vLLM's own connector hands a clip libsndfile cannot decode (a truncated WAV, say) up as an uncaught
`LibsndfileError`, which the server answers with HTTP 500 (and the official `openai` client retries twice). This one
decodes audio with `mmmmodal.serve.media.decode_audio`, the decoder of `mmmmodal serve`: libsndfile, mono, resampled to
Whisper's 16 kHz with soxr, over-long clips stopped while they decode. Every failure is a `ValueError` naming the
reason, which vLLM answers with 400. Fetching (data URLs, http(s) under `--allowed-media-domains`, files under
`--allowed-local-media-path`) and images stay vLLM's.
"""

from pathlib import Path

import vllm.envs as envs
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.audio import AudioMediaIO

from mmmmodal.serve.media import MediaPolicy, decode_audio

NAME = "mmmmodal"
WHISPER_SAMPLING_RATE = 16000  # the only rate a Whisper feature extractor takes


class MMMModalAudioIO(AudioMediaIO):
    def load_bytes(self, data: bytes) -> tuple:
        self._validate_encoded_size(len(data))
        # The model's own cap (`max_audio_seconds`) is checked by its processor; this one only bounds decoding.
        policy = MediaPolicy(max_bytes=self.get_max_bytes(), max_audio_seconds=envs.VLLM_MAX_AUDIO_DECODE_DURATION_S)
        return decode_audio(data, policy, "in the request", WHISPER_SAMPLING_RATE), WHISPER_SAMPLING_RATE

    def load_file(self, filepath: Path) -> tuple:
        self._validate_encoded_size(filepath.stat().st_size)
        return self.load_bytes(filepath.read_bytes())


@MEDIA_CONNECTOR_REGISTRY.register(NAME)
class MMMModalMediaConnector(MediaConnector):
    def _audio_io(self) -> MMMModalAudioIO:
        return MMMModalAudioIO(**self.media_io_kwargs.get("audio", {}))

    def fetch_audio(self, audio_url: str) -> tuple:
        return self.load_from_url(audio_url, self._audio_io(), fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)

    async def fetch_audio_async(self, audio_url: str) -> tuple:
        return await self.load_from_url_async(audio_url, self._audio_io(), fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)
