"""Shared fixtures: a tiny MMMModal built offline once per test session, plus media files on disk."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmmmodal.build import build_tiny

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model, processor) of a tiny MMMModal with both towers; eval mode, fixed seed."""
    model, processor = build_tiny(tmp_path_factory.mktemp("tiny_mmmmodal"), seed=0)
    return model.eval(), processor


@pytest.fixture(scope="session")
def lmms_python(tmp_path_factory):
    """The python of a venv with lmms-eval 0.7.3 and this checkout (`MMMMODAL_LMMS_EVAL_PYTHON` names one already
    built), for test_lmms_eval and test_vllm's lmms-eval client runs; built once per session."""
    from benchmarks.lmms_eval_batch import LMMS_EVAL_REQUIREMENTS, NOT_WANTED, lmms_eval_python
    from tests._venvs import REPO, create_venvs

    given, _ = lmms_eval_python()
    if given is not None:
        return given
    return create_venvs(tmp_path_factory.mktemp("lmms_eval_venv"),
                        {"lmms_eval": [*LMMS_EVAL_REQUIREMENTS, f"-e {REPO}"]}, uninstall={"lmms_eval": NOT_WANTED})["lmms_eval"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory):
    """The tiny model saved as a remote-code checkpoint folder."""
    model, processor = tiny
    path = tmp_path_factory.mktemp("tiny_checkpoint")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def random_image(seed: int, size: int = 40) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


def random_audio(seed: int, seconds: float, rate: int = 16000) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(seconds * rate)) * 0.1).astype("float32")


@pytest.fixture(scope="session")
def media_files(tmp_path_factory):
    """Two PNG images and two WAV clips (1.5 s at 16 kHz, 2 s at 22.05 kHz) on disk."""
    folder = tmp_path_factory.mktemp("media")
    paths = {}
    for i in range(2):
        paths[f"image{i}"] = str(folder / f"image{i}.png")
        random_image(i).save(paths[f"image{i}"])
    paths["audio0"] = str(folder / "audio0.wav")
    sf.write(paths["audio0"], random_audio(0, 1.5), 16000)
    paths["audio1"] = str(folder / "audio1.wav")
    sf.write(paths["audio1"], random_audio(1, 2.0, 22050), 22050)
    return paths
