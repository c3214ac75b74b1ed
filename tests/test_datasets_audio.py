"""Rows whose audio is a `datasets` `Audio` feature: datasets 5 decodes them to torchcodec `AudioDecoder`s."""

import json
import sys
from pathlib import Path

import soundfile as sf
import pytest
import torch
from datasets import Audio, Dataset, Features, Image, List, Value

from tests._weights import changed_parts
from tests.test_training_distributed import run_bounded

REPO = Path(__file__).resolve().parents[1]


def _torchcodec_reason() -> str | None:
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:
        return (f"torchcodec cannot load ({str(error).splitlines()[0][:120]}): it needs Debian's FFmpeg libraries, "
                "see .ci/install_system_packages.sh")
    return None


pytestmark = pytest.mark.skipif(_torchcodec_reason() is not None, reason=str(_torchcodec_reason()))

PART = {"type": Value("string"), "text": Value("string"), "audio": Audio()}
FEATURES = Features({"messages": List({"role": Value("string"), "content": List(PART)}), "images": List(Image())})


def audio_rows(media: dict, n: int) -> list[dict]:
    """TRL's vision form, with the clip in the audio part itself (a typed `Audio()` column once in `datasets`)."""
    rows = []
    for k in range(n):
        content = [{"type": "audio", "text": None, "audio": media[f"audio{k % 2}"]},
                   {"type": "text", "text": "How many beeps?", "audio": None}]
        rows.append({"messages": [{"role": "user", "content": content},
                                  {"role": "assistant", "content": [{"type": "text", "text": "Three.", "audio": None}]}],
                     "images": []})
    return rows


def test_processor_reads_audio_decoders_like_arrays(tiny, media_files):
    _, processor = tiny
    dataset = Dataset.from_list(audio_rows(media_files, 2), features=FEATURES)
    decoded = dataset[1]["messages"]  # audio1: 2 s at 22.05 kHz
    assert type(decoded[0]["content"][0]["audio"]).__name__ == "AudioDecoder"
    from_decoder = processor.apply_chat_template(decoded, tokenize=True, return_dict=True, return_tensors="pt")
    samples, rate = sf.read(media_files["audio1"], dtype="float32")
    as_array = [{"role": "user", "content": [{"type": "audio", "audio": {"array": samples, "sampling_rate": rate}},
                                             {"type": "text", "text": "How many beeps?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Three."}]}]
    from_array = processor.apply_chat_template(as_array, tokenize=True, return_dict=True, return_tensors="pt")
    assert torch.equal(from_decoder["input_ids"], from_array["input_ids"])
    assert int(from_decoder["input_features_mask"].sum()) == 200  # resampled to 16 kHz: 2 s of mel frames
    torch.testing.assert_close(from_decoder["input_features"], from_array["input_features"])


def test_trl_sft_trains_on_audio_feature_rows(tiny_checkpoint, media_files, tmp_path):
    """`trl sft --dataset_name` on a parquet folder whose audio parts are typed `Audio()`."""
    data = tmp_path / "data"
    Dataset.from_list(audio_rows(media_files, 4), features=FEATURES).to_parquet(str(data / "train.parquet"))
    out = tmp_path / "out"
    trl = Path(sys.executable).with_name("trl")
    code, output = run_bounded(
        [str(trl), "sft", "--model_name_or_path", str(tiny_checkpoint), "--trust_remote_code",
         "--dataset_name", str(data), "--model_init_kwargs", '{"training_stage": 1}', "--assistant_only_loss", "true",
         "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
         "--save_strategy", "no", "--report_to", "none", "--bf16", "false", "--use_cpu", "true"],
        300, tmp_path / "log.txt", cwd=REPO)
    assert code == 0, output[-4000:]
    token_rows = json.loads((Path(tiny_checkpoint) / "config.json").read_text())["train_token_ids"]
    # only audio rows: the image projector rests; ChatML's new turn tokens train their rows
    assert changed_parts(tiny_checkpoint, out, token_rows) == {"audio_projector", "token rows"}
