"""The paper's §6.2 hazard: two ranks, rank 0 sees only images, rank 1 only audio.

Each run (torchrun, 2 processes, gloo on CPU) must finish within a bounded time (a hang is killed and fails),
leave the parameters identical on both ranks, and match a single-process reference that averages the two
ranks' losses: identical parameters alone do not prove the gradients were right (ZeRO-2 all-gathers its
parameters after every step, so mixed-up gradient buckets still leave the ranks in agreement).

The packed runs (DDP and ZeRO-2) put each rank's two conversations in one padding-free row
(`mmmmodal.training.packing.MMMModalPackingCollator`) and must match the same unpacked reference: packing changes
neither the loss nor the gradients.

No run compiles anything inside its timer: DeepSpeed's C++ ops are built first (a fresh machine has none), and
each run must load no other op (ZeRO-3 used to JIT-build FusedAdam there, which timed out on a fresh machine).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from mmmmodal.training.collate import MMMModalDataCollator
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


def _jit_builders() -> list:
    """The DeepSpeed C++ ops the timed runs load: CPU Adam (ZeRO-2's offload) and the shm comm op, which every
    `deepspeed.init_distributed` on CPU loads. Each is compiled on first use (one to several minutes on 2 cores)."""
    from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder

    return [CPUAdamBuilder(), ShareMemCommBuilder()]


def _lock_holders(lock: Path) -> list:
    """Processes that hold `lock` open (torch's build lock is held open by the building process until released)."""
    holders = []
    for process in psutil.process_iter():
        try:
            if any(f.path == str(lock) for f in process.open_files()):
                holders.append(process.pid)
        except (psutil.Error, OSError):
            continue
    return holders


def _check_no_stale_lock(name: str):
    """Fail, instead of waiting forever, on a build lock left by a killed build.

    torch guards each extension build with a `lock` file that only the builder removes; a build killed midway (a
    timeout, Ctrl-C, OOM) leaves it behind, and every later load of that op waits on it with no end
    (torch.utils.file_baton.FileBaton.wait). A live build holds the file open; a stale lock has no holder.
    """
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    for _ in range(2):  # twice, a second apart: a finishing build closes the file just before removing it
        if not lock.exists() or _lock_holders(lock):
            return
        time.sleep(1)
    if lock.exists():
        pytest.fail(f"{lock}: a stale build lock (no process holds it; a build of {name} was killed). Every load of "
                    f"that op would wait on it forever. Fix: rm {lock}")


@pytest.fixture(scope="module")
def cpu_adam_built():
    """Compile DeepSpeed's C++ ops before the timed runs, so that no run compiles inside its hang timeout.

    On a fresh machine (no ~/.cache/torch_extensions, or an empty TORCH_EXTENSIONS_DIR) these builds take minutes;
    each run then checks that it loaded no op beyond these. Returns the op names."""
    builders = _jit_builders()
    for builder in builders:
        _check_no_stale_lock(builder.name)
        builder.load()
    return {builder.name for builder in builders}


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


def run_two_ranks(mode, checkpoint, rows_path, out, packed: bool = False):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(REPO / "tests" / "_dist_train.py"), "--checkpoint", str(checkpoint), "--rows", str(rows_path),
               "--mode", mode, "--out", str(out)] + (["--packed"] if packed else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    code, output = run_bounded(command, TIMEOUT_S, Path(out).with_suffix(".log"), cwd=REPO, env=env)
    if code is None:
        pytest.fail(f"{mode}: two ranks with one modality each did not finish {STEPS} steps in {TIMEOUT_S} s "
                    f"(hang); log tail:\n{output[-2000:]}")
    assert code == 0, output[-4000:]
    return json.loads(Path(out).read_text())


def check_no_build_in_run(result: dict, prebuilt: set):
    """A run that compiles a C++ op inside its timer passes on a warm machine and times out on a fresh one."""
    built_inside = sorted(set(result["jit_ops"]) - prebuilt)
    assert not built_inside, (f"{result['mode']}: the run loaded DeepSpeed op(s) {built_inside}, which a fresh "
                              "machine compiles inside the timed run: build them in the cpu_adam_built fixture, or "
                              "configure the run not to need them.")


@pytest.mark.parametrize("mode, packed", [("ddp", False), ("zero2", False), ("zero3", False), ("ddp", True),
                                          ("zero2", True)], ids=["ddp", "zero2", "zero3", "ddp-packed", "zero2-packed"])
def test_one_modality_per_rank_trains_in_step(mode, packed, tiny_checkpoint, rank_rows, reference, cpu_adam_built,
                                              tmp_path):
    result = run_two_ranks(mode, tiny_checkpoint, rank_rows[0], tmp_path / "out.json", packed)
    check_no_build_in_run(result, cpu_adam_built)
    rank0, rank1 = result["ranks"]
    assert rank0["seen"] == [["pixel_values"]] * STEPS and rank1["seen"] == [["input_features"]] * STEPS
    # packed: each rank's two conversations share one row; unpacked: one row each
    assert rank0["shapes"] == rank1["shapes"] == [[1, 2] if packed else [2, 2]] * STEPS
    assert set(rank0["params"]) == set(reference)  # towers frozen: projectors + LLM
    for name, expected in reference.items():
        assert rank0["params"][name] == rank1["params"][name], f"{mode}: {name} differs between ranks"
        # The reference computes the same sums in another order (and DeepSpeed's CPU Adam is its own kernel).
        torch.testing.assert_close(torch.tensor(rank0["params"][name]), expected, atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{mode}: {name} is off the single-process reference: {m}")
