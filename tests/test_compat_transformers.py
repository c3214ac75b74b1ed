"""The compatibility lane: a checkpoint at the oldest and the newest supported transformers, in clean venvs.

Each venv holds torch 2.13.0, one transformers release, trl and what it needs, and not this package. A tiny
checkpoint saved by the project's venv must load there with remote code only, render a multi-turn chat with images
and audio, generate the same tokens, mark the same assistant tokens, follow transformers' model and processor
conventions, and save again. `trl sft` must train it at the lowest and highest release training supports (TRL's
assistant-only loss on vision data needs transformers >= 5.18). A release outside the supported range is refused
when the checkpoint loads, with the range named. The newest Python (3.13) gets README's plain install of this
package (torch 2.13.0 is PyPI's CUDA build there, the only one for 3.13), the quick demo and the same remote-code
load; it is skipped, with the reason, on a machine without a Python 3.13.
"""

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import random_audio, random_image

from tests._training_rows import mixed_rows, write_dataset
from tests._venvs import CONSTRAINTS, NEWEST_PYTHON, REPO, create_venvs, find_python
from tests._weights import changed_parts

# The ends of the supported ranges (setup.py, README "Supported versions"), and one release below them.
FLOOR, TRAINING_FLOOR, NEWEST, UNSUPPORTED = "5.16.1", "5.18.0", "5.24.0", "4.57.6"
PROBE = Path(__file__).with_name("_compat_probe.py")
# What a user has to run a checkpoint: the audio decoders transformers falls back on without torchcodec.
LOAD_STACK = ["pillow", "soundfile", "librosa"]
TRAIN_STACK = ["trl", "accelerate", "datasets"]


@pytest.fixture(scope="session")
def venvs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat_venvs")
    specs = {
        "floor": [f"transformers=={FLOOR}", *LOAD_STACK],
        "training_floor": [f"transformers=={TRAINING_FLOOR}", *LOAD_STACK, *TRAIN_STACK],
        "newest": [f"transformers=={NEWEST}", *LOAD_STACK, *TRAIN_STACK],
        "unsupported": [f"transformers=={UNSUPPORTED}"],
    }
    newest_python = find_python(NEWEST_PYTHON)
    if newest_python:  # README's first command there, in parallel with the others (its downloads wait on the network)
        specs["newest_python"] = [f"-e {REPO}", f"-c {CONSTRAINTS}"]
    return create_venvs(root, specs, interpreters={"newest_python": newest_python} if newest_python else None)


@pytest.fixture
def newest_python(venvs):
    """The newest Python's venv, removed after its one test: its CUDA torch is about 5 GB that no later test needs,
    and CI's disk is shared with the vLLM and lmms-eval venvs built after it (with it kept, vLLM's install ran out
    of space)."""
    if "newest_python" not in venvs:
        pytest.skip(f"no Python {NEWEST_PYTHON} here (MMMMODAL_PYTHON_{NEWEST_PYTHON.replace('.', '_')}, "
                    f"python{NEWEST_PYTHON} on PATH, or pyenv's versions/{NEWEST_PYTHON}.*)")
    python = venvs["newest_python"]
    yield python
    shutil.rmtree(python.parents[1])  # a later request gets a missing venv and fails, not a false skip


@pytest.fixture(scope="session")
def compat_media(tmp_path_factory) -> Path:
    """Two images and two clips of 16 kHz float WAV: every audio decoder reads them to the same samples."""
    folder = tmp_path_factory.mktemp("compat_media")
    media = {}
    for i in range(2):
        media[f"image{i}"] = str(folder / f"image{i}.png")
        random_image(10 + i).save(media[f"image{i}"])
        media[f"audio{i}"] = str(folder / f"audio{i}.wav")
        sf.write(media[f"audio{i}"], random_audio(10 + i, 1.0 + i), 16000, subtype="FLOAT")
    (folder / "media.json").write_text(json.dumps(media))
    return folder / "media.json"


def probe(python, checkpoint, media_file, out: Path) -> dict:
    result = subprocess.run([str(python), str(PROBE), str(checkpoint), str(media_file), str(out)],
                            cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def project_report(tiny_checkpoint, compat_media, tmp_path_factory) -> dict:
    return probe(sys.executable, tiny_checkpoint, compat_media, tmp_path_factory.mktemp("probe") / "project.json")


def assert_runs_like_the_project(report: dict, project_report: dict):
    """The checkpoint ran through remote code and gave the project's ids, logits, greedy tokens and masks."""
    assert report["model_module"].startswith("transformers_modules")
    first, ours = report["first"], project_report["first"]
    assert first["input_ids"] == ours["input_ids"]
    torch.testing.assert_close(torch.tensor(first["logits"]), torch.tensor(ours["logits"]), atol=1e-5, rtol=1e-5)
    assert first["tokens"] == ours["tokens"]  # greedy, with the KV cache
    assert report["masks"] == project_report["masks"]


@pytest.mark.parametrize("lane, version", [("floor", FLOOR), ("newest", NEWEST)])
def test_remote_code_checkpoint_behaves_alike(lane, version, venvs, tiny_checkpoint, compat_media, project_report,
                                              tmp_path):
    report = probe(venvs[lane], tiny_checkpoint, compat_media, tmp_path / "report.json")
    assert report["transformers"] == version
    assert (report["config_class"], report["model_class"]) == ("MMMModalConfig", "MMMModalForConditionalGeneration")
    assert_runs_like_the_project(report, project_report)
    ours = project_report["first"]["tokens"]
    assert report["image_text_to_text"] == ours
    assert report["resaved"] == ours  # saved again by this release, loaded again
    conventions = report["conventions"]
    assert conventions == project_report["conventions"]
    assert {conventions[k] for k in ("model_tuple", "base_tuple", "image_features_tuple",
                                     "audio_features_tuple")} == {"tuple"}
    assert conventions["logits_in_tuple"] and conventions["processor_round_trip"]
    assert conventions["processor_auto_map"] == {"AutoProcessor": "processing_mmmmodal.MMMModalProcessor"}


def test_the_newest_python_installs_runs_the_quick_demo_and_a_remote_code_checkpoint(newest_python, tiny_checkpoint,
                                                                                   compat_media, project_report,
                                                                                   tmp_path):
    version = subprocess.run([str(newest_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == NEWEST_PYTHON, version.stderr
    report = probe(newest_python, tiny_checkpoint, compat_media, tmp_path / "report.json")
    assert report["transformers"] == project_report["transformers"]  # constraints.txt's pin, as in this venv
    assert_runs_like_the_project(report, project_report)
    demo = subprocess.run([str(newest_python.with_name("mmmmodal")), "demo", "--quick", "--out",
                           str(tmp_path / "demo")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-4000:]
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["quick"] is True


def test_the_masks_mark_assistant_text_only(project_report, tiny):
    """The reference the lanes are held to: assistant answers and their end of turn, nothing else."""
    _, processor = tiny
    ids, masks = project_report["masks"]["input_ids"], project_report["masks"]["assistant_masks"]
    marked = [processor.tokenizer.decode([t for t, m in zip(row, mask) if m]) for row, mask in zip(ids, masks)]
    assert marked == ["A red circle and three beeps.<|im_end|>Two beeps, a blue square.<|im_end|>The first.<|im_end|>",
                      "Hello.<|im_end|>"]


@pytest.mark.parametrize("lane", ["training_floor", "newest"])
def test_trl_sft_trains_the_checkpoint(lane, venvs, tiny_checkpoint, media_files, tmp_path):
    data = write_dataset(tmp_path / "data", mixed_rows(media_files, 6))
    out = tmp_path / "out"
    trl = venvs[lane].with_name("trl")
    result = subprocess.run(
        [str(trl), "sft", "--model_name_or_path", str(tiny_checkpoint), "--trust_remote_code",
         "--dataset_name", str(data), "--model_init_kwargs", '{"training_stage": 2}', "--assistant_only_loss", "true",
         "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
         "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--bf16", "false",
         "--use_cpu", "true"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    losses = [float(v) for v in re.findall(r"'loss': '?([0-9.eE+-]+|nan|inf)", result.stdout + result.stderr)]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses), losses
    assert changed_parts(tiny_checkpoint, out) == {"multi_modal_projector", "audio_projector", "language_model",
                                                   "lm_head"}


def test_a_release_outside_the_range_is_refused_at_load(venvs, tiny_checkpoint):
    script = ("import sys; sys.modules['modeling_mmmmodal'] = None\n"
              "from transformers import AutoConfig\n"
              f"AutoConfig.from_pretrained({str(tiny_checkpoint)!r}, trust_remote_code=True)\n")
    result = subprocess.run([str(venvs["unsupported"]), "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("ImportError:") and UNSUPPORTED in last[0] and ">=5.16.1,<6" in last[0], last
