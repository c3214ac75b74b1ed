"""lmms-eval's `generate_until` on MMMModal: samples/s at `--batch_size 8` vs `1` on a mixed-media task.

    MMMMODAL_LMMS_EVAL_PYTHON=.venv-lmms/bin/python python -m benchmarks --only lmms_eval_batch

lmms-eval lives in a venv of its own (its pins clash with ours), with this package installed in it (`-e .`), which
is how lmms-eval finds `--model mmmmodal`; `MMMMODAL_LMMS_EVAL_PYTHON` names its python (README, "Evaluating").
Without it this benchmark reports that it was skipped, and why. Both runs go through lmms-eval's real CLI on the
same tiny checkpoint and the same docs (image-only, audio-only, both, text-only, interleaved); the rate is docs per
second of the whole `generate_until` phase as lmms-eval times it, and the answers of the two runs must be equal.
The helpers here (the task folder, one CLI run read back from its samples file and log) serve the tests too.
"""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from .common import Row

LMMS_EVAL_PYTHON_ENV = "MMMMODAL_LMMS_EVAL_PYTHON"
LMMS_EVAL = "lmms-eval==0.7.3"
# lmms-eval's venv: torch 2.13.0 (held, or pip takes a CUDA 2.14), the stack's transformers, torchcodec for
# datasets' Audio feature, filelock 3 (lmms-eval's evaluator patches `filelock._api`, gone in filelock 4), and this
# package, editable. torchvision comes with lmms-eval as a CUDA build whose ops
# fail to load on a CPU torch ("operator torchvision::nms does not exist", which breaks transformers' processors):
# it is removed after the install (nothing MMMModal runs needs it), and timm with it: timm cannot import without
# torchvision, and the `accelerate` command imports timm whenever it is installed (`accelerate launch` fails).
LMMS_EVAL_REQUIREMENTS = ["torch==2.13.0", LMMS_EVAL, "transformers", "torchcodec==0.13.*", "filelock<4"]
NOT_WANTED = ["torchvision", "timm"]
MIXED_TASK = "mmmmodal_mixed"

# (text, media) of the mixed task's docs: placeholders in the text fix where each image / clip goes; a text without
# them gets its media first. `history` turns go before the question in the chat interface only.
MIXED_DOCS = [
    ("<image>What colour is this?", [("image", 0)]),
    ("What do you hear?", [("audio", 0)]),
    ("Does <audio> match <image>?", [("audio", 1), ("image", 1)]),
    ("Say a word in Malay.", []),
    ("Compare the two pictures.", [("image", 0), ("image", 1)]),
    ("<image> and <audio>, then <image> and <audio>: which pair agrees?", [("image", 1), ("audio", 0), ("image", 0), ("audio", 1)]),
    ("Is this loud?", [("audio", 1)]),
    ("Describe it.", [("image", 1)]),
]
MIXED_HISTORY = {2: [("user", "Hello."), ("assistant", "Hi, what can I do?")], 5: [("user", "Two pairs follow."), ("assistant", "Ready.")]}

TASK_UTILS = '''"""Doc functions of the mixed-media test task (written by benchmarks/lmms_eval_batch.py)."""

import re

import soundfile as sf
from PIL import Image


def _load(kind, path):
    if kind == "video":  # what video tasks hand over: the file's path
        return path
    if kind == "image":
        with Image.open(path) as image:
            return image.convert("RGB")
    array, rate = sf.read(path, dtype="float32")
    return {"path": path, "array": array, "sampling_rate": rate}  # what datasets' Audio feature decoded to before 4.0


def doc_to_visual(doc):
    if doc.get("visual_paths"):  # what tasks that hand file paths give (the serving-route test)
        return [path for _, path in doc["media"]]
    return [_load(kind, path) for kind, path in doc["media"]]


def doc_to_text(doc):
    return doc["text"]


def doc_to_messages(doc):
    """The history turns, then the question with its media: objects, or paths for the docs that say so."""
    messages = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in doc["history"]]
    media = iter((kind, path if doc["as_paths"] else _load(kind, path)) for kind, path in doc["media"])
    pieces = re.split("(<image>|<audio>)", doc["text"])
    if len(pieces) == 1:
        content = [{"type": kind, "url": item} for kind, item in media] + [{"type": "text", "text": doc["text"]}]
    else:
        content = []
        for i, piece in enumerate(pieces):
            if i % 2:
                kind, item = next(media)
                content.append({"type": kind, "url": item})
            elif piece:
                content.append({"type": "text", "text": piece})
    return messages + [{"role": "user", "content": content}]


def doc_to_text_rounds(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None,
                       previous_round_info=None):
    """Three rounds in lmms-eval's multi-round protocol (as its ovo_forward task): round 0 is the doc's question;
    round 1 quotes the last answer, with the doc's first medium; round 2 is text only; then the task is done. It
    refuses round results or round info that the model did not hand back."""
    if round_idx is None:
        return doc["text"]
    if len(previous_output) != round_idx or previous_round_info != ({"round": round_idx - 1} if round_idx > 1 else None):
        raise ValueError(f"round {round_idx}: got {previous_output!r} and round info {previous_round_info!r}")
    if round_idx == 3:
        return None, None, True, previous_output, None
    if round_idx == 1:
        visuals, text = doc_to_visual(doc)[:1], f"You said {previous_output[-1]!r}. Once more?"
    else:
        visuals, text = [], f"That makes {len(previous_output)} answers. Anything else?"
    return visuals, text, False, previous_output, {"round": round_idx}


def process_rounds(doc, results):
    return {"rounds_answered": float(len(results[0]))}


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_target(doc):
    return doc["gold"]
'''


def task_yaml(name: str, data_file: Path, output_type: str = "generate_until", messages: bool = True,
              max_new_tokens: int = 8, until: list | None = None, extra: str = "") -> str:
    """A task YAML over `data_file`; `generate_until_multi_round` takes its rounds from `doc_to_text_rounds`."""
    rounds = output_type == "generate_until_multi_round"
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {json.dumps(str(data_file))}",
             "test_split: test", f"output_type: {output_type}", "doc_to_visual: !function utils.doc_to_visual",
             f"doc_to_text: !function utils.doc_to_text{'_rounds' if rounds else ''}"]
    if messages:
        lines.append("doc_to_messages: !function utils.doc_to_messages")
    if output_type == "multiple_choice":  # the choices are whole answers: no delimiter before them
        lines += ["doc_to_choice: !function utils.doc_to_choice", "doc_to_target: !function utils.doc_to_target",
                  "target_delimiter: \"\"",
                  "metric_list:", "  - metric: acc", "    aggregation: mean", "    higher_is_better: true"]
    else:
        lines += ["doc_to_target: \"\"", "generation_kwargs:", f"  max_new_tokens: {max_new_tokens}", "  temperature: 0",
                  "  do_sample: false", f"  until: {json.dumps(until or [])}", "metric_list:",
                  f"  - metric: {'rounds_answered' if rounds else 'exact_match'}", "    aggregation: mean",
                  "    higher_is_better: true"]
        if rounds:
            lines.append("process_results: !function utils.process_rounds")
    return "\n".join(lines + [extra, "metadata:", "  version: 1.0", ""])


def write_media(folder: Path) -> dict:
    """Two PNG pictures and two WAV clips (1.5 s at 16 kHz, 2 s at 22.05 kHz: resampled on the way in)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    media = {}
    for i in range(2):
        rng = np.random.RandomState(i)
        media["image", i] = str(folder / f"image{i}.png")
        Image.fromarray((rng.rand(40, 40, 3) * 255).astype("uint8")).save(media["image", i])
        rate, seconds = (16000, 1.5) if i == 0 else (22050, 2.0)
        media["audio", i] = str(folder / f"audio{i}.wav")
        sf.write(media["audio", i], (rng.randn(int(rate * seconds)) * 0.1).astype("float32"), rate, subtype="FLOAT")
    return media


def mixed_docs(media: dict, copies: int = 1) -> list[dict]:
    docs = []
    for copy in range(copies):
        for i, (text, items) in enumerate(MIXED_DOCS):
            docs.append({"id": len(docs), "text": text if copy == 0 else f"{text} ({copy})",
                         "media": [[kind, media[kind, k]] for kind, k in items],
                         "history": [list(turn) for turn in MIXED_HISTORY.get(i, [])], "as_paths": i % 4 == 3,
                         "choices": [], "gold": 0})
    return docs


def write_task(folder: Path, docs: list[dict], name: str = MIXED_TASK, **yaml_kwargs) -> Path:
    """A task folder for `--include_path`: the docs as JSON lines, the doc functions, one YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "utils.py").write_text(TASK_UTILS)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (folder / f"{name}.yaml").write_text(task_yaml(name, data, **yaml_kwargs))
    return folder


@dataclass
class LmmsRun:
    """One `python -m lmms_eval` run, read back: never trust its exit status alone (it is 0 after errors too)."""

    returncode: int
    log: str
    seconds: float
    samples: dict = field(default_factory=dict)  # task -> its samples (JSON lines of --log_samples), by doc_id
    results: dict | None = None  # the results JSON, if lmms-eval wrote one

    def answers(self, task: str) -> list:
        """Each doc's answer (or its choices' (loss, greedy) pairs), in doc order, as lmms-eval scored it."""
        answers = []
        for sample in self.samples[task]:
            answer = sample["filtered_resps"]
            answers.append(answer[0] if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)
                           else answer)
        return answers

    def check(self, *tasks: str) -> "LmmsRun":
        """`self` if it wrote samples for every task and results; else `AssertionError` with the log's end."""
        missing = [task for task in tasks if task not in self.samples]
        if missing or self.results is None:
            raise AssertionError(f"lmms-eval (exit {self.returncode}) wrote no samples for {missing or 'some task'} "
                                 f"or no results:\n{self.log[-6000:]}")
        return self


def run_lmms_eval(python, model_args: str, tasks: list[str], include_path: Path, out: Path, batch_size: int = 1,
                  limit: int | None = None, force_simple: bool = False, extra=(), timeout_s: float = 900,
                  launcher=(), model: str = "mmmmodal") -> LmmsRun:
    """lmms-eval's CLI (`python -m lmms_eval`, or under `launcher`, e.g. accelerate) with `--log_samples`; `model`
    is lmms-eval's `--model` (ours by default; `openai` drives a server)."""
    command = [*(launcher or [str(python)]), "-m", "lmms_eval", "--model", model, "--model_args", model_args,
               "--tasks", ",".join(tasks), "--include_path", str(include_path), "--batch_size", str(batch_size),
               "--output_path", str(out), "--log_samples", "--verbosity", "INFO", *extra]
    if limit is not None:
        command += ["--limit", str(limit)]
    if force_simple:
        command.append("--force_simple")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(out / "hf_datasets_cache")}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    run = LmmsRun(done.returncode, done.stdout + done.stderr, time.perf_counter() - started)
    for task in tasks:
        found = sorted(out.rglob(f"*_samples_{task}.jsonl"), key=lambda p: p.stat().st_mtime)
        if found:
            rows = [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]
            run.samples[task] = sorted(rows, key=lambda row: int(row["doc_id"]))
    found = sorted(out.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    run.results = json.loads(found[-1].read_text()) if found else None
    return run


def lmms_eval_python() -> tuple[Path | None, str]:
    """(lmms-eval's venv python, "") or (None, why not)."""
    given = os.environ.get(LMMS_EVAL_PYTHON_ENV)
    if not given:
        return None, f"no lmms-eval venv: set {LMMS_EVAL_PYTHON_ENV} to its python (README, 'Evaluating')"
    if not Path(given).is_file():
        return None, f"{LMMS_EVAL_PYTHON_ENV}={given} is not a file"
    return Path(given), ""


def generate_seconds(run: LmmsRun) -> float:
    """Seconds the model spent in `generate_until`, from lmms-eval's throughput summary (which the model class logs)."""
    return float(run.results["throughput"]["total_elapsed_time"])


def main(quick: bool = False, repeats=None) -> list[Row]:
    python, why = lmms_eval_python()
    if python is None:
        return [Row("lmms_eval_batch", "generate_until samples/s, batch 8 / 1", f"skipped: {why}")]
    import tempfile

    from .vllm_serve import build_checkpoint

    copies = 1 if quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, _, checkpoint = build_checkpoint(tmp / "checkpoint")
        task = write_task(tmp / "task", mixed_docs(write_media(tmp / "media"), copies), max_new_tokens=16)
        rates, answers = {}, {}
        for batch_size in (1, 8):
            run = run_lmms_eval(python, f"pretrained={checkpoint},device=cpu,dtype=float32", [MIXED_TASK], task,
                                tmp / f"out{batch_size}", batch_size=batch_size).check(MIXED_TASK)
            answers[batch_size] = run.answers(MIXED_TASK)
            rates[batch_size] = len(answers[batch_size]) / generate_seconds(run)
    same = answers[1] == answers[8]
    ratio = rates[8] / rates[1]
    value = f"{rates[8]:.2f} vs {rates[1]:.2f} samples/s ({len(answers[1])} mixed docs); outputs identical: {same}"
    return [Row("lmms_eval_batch", "lmms-eval generate_until samples/s, batch 8 / 1", value, ratio, "> 1, same outputs",
                ratio > 1 and same, extra={"samples_per_s": rates, "identical": same})]


if __name__ == "__main__":
    for row in main(quick="--quick" in sys.argv):
        print(row)
