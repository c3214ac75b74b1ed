"""The paper's §6.2 hazard: two ranks, rank 0 sees only images, rank 1 only audio.

Each run (torchrun, 2 processes, gloo on CPU) must finish within a bounded time (a hang is killed and fails),
leave the parameters identical on both ranks, and match a single-process reference that averages the two
ranks' losses: identical parameters alone do not prove the gradients were right (ZeRO-2 all-gathers its
parameters after every step, so mixed-up gradient buckets still leave the ranks in agreement).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from processing.collate import MMMModalDataCollator
from tests._training_rows import audio_row, image_row

REPO = Path(__file__).resolve().parents[1]
STEPS, TIMEOUT_S = 3, 240


@pytest.fixture(scope="module")
def rank_rows(media_files, tmp_path_factory):
    """Batches of 2 rows: rank 0 image-only, rank 1 audio-only."""
    answers = ["A red circle.", "Two blue squares.", "Nothing."]
    rows = {"0": [[image_row(media_files[f"image{k}"], answers[s]) for k in range(2)] for s in range(STEPS)],
            "1": [[audio_row(media_files[f"audio{k}"], answers[s]) for k in range(2)] for s in range(STEPS)]}
    path = tmp_path_factory.mktemp("rank_rows") / "rows.json"
    path.write_text(json.dumps(rows))
    return path, rows


@pytest.fixture(scope="module")
def cpu_adam_built():
    """DeepSpeed compiles its CPU Adam on first use (minutes on 2 cores); do it outside the hang timeout."""
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder

    CPUAdamBuilder().load()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, rank_rows):
    """Single process: the mean of the two ranks' losses, AdamW, the same steps; returns trainable params."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests._dist_train import LR

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    collator = MMMModalDataCollator(processor)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint, trust_remote_code=True, training_stage=2)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    _, rows = rank_rows
    for images, audio in zip(rows["0"], rows["1"]):
        loss = (model(**collator(images)).loss + model(**collator(audio)).loss) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach().flatten() for n, p in model.named_parameters() if p.requires_grad}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_bounded(command, timeout_s: int, log_path: Path, **kwargs) -> tuple:
    """Run `command`; on timeout kill it and every process it started (torchrun's workers are session leaders)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            family = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
            for member in family:
                member.kill()
            process.wait()
            return None, log_path.read_text()
    return process.returncode, log_path.read_text()


def run_two_ranks(mode, checkpoint, rows_path, out):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(REPO / "tests" / "_dist_train.py"), "--checkpoint", str(checkpoint), "--rows", str(rows_path),
               "--mode", mode, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    code, output = run_bounded(command, TIMEOUT_S, Path(out).with_suffix(".log"), cwd=REPO, env=env)
    if code is None:
        pytest.fail(f"{mode}: two ranks with one modality each did not finish {STEPS} steps in {TIMEOUT_S} s "
                    f"(hang); log tail:\n{output[-2000:]}")
    assert code == 0, output[-4000:]
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("mode", ["ddp", "zero2", "zero3"])
def test_one_modality_per_rank_trains_in_step(mode, tiny_checkpoint, rank_rows, reference, cpu_adam_built, tmp_path):
    result = run_two_ranks(mode, tiny_checkpoint, rank_rows[0], tmp_path / "out.json")
    rank0, rank1 = result["ranks"]
    assert rank0["seen"] == [["pixel_values"]] * STEPS and rank1["seen"] == [["input_features"]] * STEPS
    assert set(rank0["params"]) == set(reference)  # towers frozen: projectors + LLM
    for name, expected in reference.items():
        assert rank0["params"][name] == rank1["params"][name], f"{mode}: {name} differs between ranks"
        # The reference computes the same sums in another order (and DeepSpeed's CPU Adam is its own kernel).
        torch.testing.assert_close(torch.tensor(rank0["params"][name]), expected, atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{mode}: {name} is off the single-process reference: {m}")
