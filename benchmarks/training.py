"""Benchmark 5: samples/s of a tiny stage-2 training run, one process vs two processes under DeepSpeed ZeRO-2.

Each run is `benchmarks._train_worker` (Trainer + `mmmmodal.training.collate.MMMModalDataCollator`, stage 2 of the tiny
model) in a subprocess; the ZeRO-2 run goes through `accelerate launch` with the repository's
`examples/deepspeed/zero2_offload.json` (optimizer offloaded to CPU, as in the paper), 2 processes, gloo on CPU.
Wall clock (the two processes share the machine's cores), steady state: the first two steps are not counted.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import Row

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_YAML = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: {config}
num_machines: 1
num_processes: 2
use_cpu: true
"""


def launch(command: list[str], out: Path, timeout: int = 300) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def run(steps: int = 10, batch: int = 4) -> list[Row]:
    worker = ["-m", "benchmarks._train_worker", "--steps", str(steps), "--batch", str(batch)]
    with tempfile.TemporaryDirectory() as tmp:
        single = launch([sys.executable, *worker, "--out", f"{tmp}/single.json"], Path(tmp) / "single.json")
        config = ROOT / "examples" / "deepspeed" / "zero2_offload.json"
        yaml = Path(tmp) / "accelerate.yaml"
        yaml.write_text(ACCELERATE_YAML.format(config=config))
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(yaml), *worker,
                   "--out", f"{tmp}/zero2.json"]
        zero2 = launch(command, Path(tmp) / "zero2.json")
    ratio = zero2["samples_per_s"] / single["samples_per_s"]
    return [Row("training", f"tiny stage 2, {batch}/device, {steps - 2} timed steps: ZeRO-2 x2 vs 1 process",
                f"{zero2['samples_per_s']:.1f} vs {single['samples_per_s']:.1f} samples/s", ratio,
                "(2 procs on 2 cores)")]


def main(quick: bool = False, repeats: int | None = None) -> list[Row]:
    return run(steps=6 if quick else 12)
