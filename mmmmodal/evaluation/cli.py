"""`mmmmodal eval`: score a checkpoint on the built-in synthetic task with lmms-eval.

    mmmmodal data synthetic --out data/shapes --train 0 --test 200
    mmmmodal eval ./my-checkpoint --data data/shapes --output eval-out --batch-size 8

It writes the task YAML (including the one this package ships, with the data folder filled in), runs
`python -m lmms_eval --model mmmmodal --tasks mmmmodal_synthetic --include_path ... --log_samples` in this Python
(lmms-eval and this package installed together), prints the scores, and exits non-zero when lmms-eval wrote no
results: its CLI logs a failed run and still exits 0. `--task-dir-only` prints the task folder for an lmms-eval
command of your own; `--lmms-eval-args="..."` passes more flags to lmms-eval as they are.
"""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import SYNTHETIC_TASK, TASKS_DIR

TEMPLATE = TASKS_DIR / SYNTHETIC_TASK / f"_{SYNTHETIC_TASK}_yaml"


def write_task_dir(data: str, folder: Path, split: str = "test", label_media: bool = False) -> Path:
    """Write the synthetic task's YAML for the folder `data` (written by `mmmmodal data synthetic`) into `folder`;
    `label_media`: media introduced by "Picture k:" / "Audio k:", as `mmmmodal demo` trains and scores."""
    data_file = Path(data).resolve() / f"{split}.jsonl"
    if not data_file.is_file():
        raise SystemExit(f"mmmmodal eval: {data_file} does not exist; write it with `mmmmodal data synthetic --out {data}`.")
    folder.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid YAML scalars: paths with spaces or colons stay intact.
    labelled = "process_docs: !function mmmmodal.evaluation.synthetic_task.process_docs_labelled\n" if label_media else ""
    (folder / f"{SYNTHETIC_TASK}.yaml").write_text(
        f"include: {json.dumps(str(TEMPLATE))}\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_file))}\n"
        + labelled
    )
    return folder


def lmms_eval_command(args, task_dir: Path, extra: list[str]) -> list[str]:
    model_args = [f"pretrained={args.checkpoint}", f"dtype={args.dtype}"]
    if args.device:
        model_args.append(f"device={args.device}")
    if args.trust_remote_code:
        model_args.append("trust_remote_code=True")
    command = [sys.executable, "-m", "lmms_eval", "--model", "mmmmodal", "--model_args", ",".join(model_args),
               "--tasks", SYNTHETIC_TASK, "--include_path", str(task_dir), "--batch_size", str(args.batch_size),
               "--output_path", str(args.output), "--log_samples"]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    return command + extra


def newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.rglob(pattern), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def register(subparsers):
    parser = subparsers.add_parser("eval", help="Score a checkpoint on the synthetic task with lmms-eval.",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="A folder written by save_pretrained, or a hub repository id.")
    parser.add_argument("--data", required=True, help="A folder written by `mmmmodal data synthetic`.")
    parser.add_argument("--split", default="test", help="Which split of --data to score (default: test).")
    parser.add_argument("--output", default="eval-out", help="lmms-eval's --output_path (results and samples).")
    parser.add_argument("--batch-size", type=int, default=8, help="Requests per generate call.")
    parser.add_argument("--limit", type=float, default=None, help="Score only the first N docs (lmms-eval's --limit).")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA when there is one).")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Run the checkpoint's own code files instead of the installed mmmmodal classes.")
    parser.add_argument("--label-media", action="store_true",
                        help='Introduce every media item with "Picture k:" / "Audio k:", as `mmmmodal demo` trains and '
                             "scores: use it for demo checkpoints.")
    parser.add_argument("--task-dir-only", action="store_true",
                        help="Only write the task folder (under --output) and print it, for --include_path.")
    parser.add_argument("--compare", action="store_true",
                        help="Also score the same checkpoint and rows with the project's own evaluator (ChatSession "
                             "answers, and the demo's teacher-forced scoring) and print the three side by side.")
    parser.add_argument("--lmms-eval-args", default="", metavar='="FLAGS"',
                        help='More lmms-eval flags, as one string: --lmms-eval-args="--verbosity DEBUG".')
    parser.set_defaults(func=_main)


def _main(args) -> int:
    extra = shlex.split(args.lmms_eval_args)
    task_dir = write_task_dir(args.data, Path(args.output) / "task", args.split, args.label_media)
    if args.task_dir_only:
        print(task_dir.resolve())
        return 0
    if not args.checkpoint:
        raise SystemExit("mmmmodal eval: give the checkpoint to score (or --task-dir-only).")
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is None:
        raise SystemExit(f"mmmmodal eval: lmms-eval is not installed in {sys.executable}. Install it with this package in "
                         "a venv of its own (docs/evaluation.md) and run that venv's `mmmmodal eval`.")
    started = time.time()
    returncode = subprocess.call(lmms_eval_command(args, task_dir, extra))
    results = newest(Path(args.output), "*_results.json")
    if returncode != 0 or results is None or results.stat().st_mtime < started:
        print(f"mmmmodal eval: lmms-eval wrote no results under {args.output} (see its log above).", file=sys.stderr)
        return returncode or 1
    scores = json.loads(results.read_text())["results"][SYNTHETIC_TASK]
    print(f"{'metric':<26}{'accuracy':>10}")
    for name, value in scores.items():
        if name.endswith(",none") and "stderr" not in name:
            print(f"{name[: -len(',none')]:<26}{value:>10.3f}")
    print(f"results: {results}")
    if args.compare:
        samples = newest(Path(args.output), f"*_samples_{SYNTHETIC_TASK}.jsonl")
        return compare(args, scores, [json.loads(line) for line in samples.read_text().splitlines() if line.strip()])
    return 0


def compare(args, scores: dict, samples: list[dict]) -> int:
    """Score the rows lmms-eval scored with `processing.synthetic_eval.evaluate` (answers from `ChatSession`) and the
    demo's teacher-forced evaluator; 1 if any score or answer differs from lmms-eval's."""
    import torch

    from processing.synthetic_eval import evaluate

    from ..demo.eval import evaluate_model
    from ..loading import load_checkpoint
    from .synthetic_task import GROUPS, chat_answer_fn

    if args.limit is not None:
        raise SystemExit("mmmmodal eval --compare scores whole conversations: leave out --limit.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_checkpoint(args.checkpoint, device, args.dtype, args.trust_remote_code)
    rows = [json.loads(line) for line in (Path(args.data) / f"{args.split}.jsonl").read_text().splitlines() if line]
    if args.label_media:
        from ..demo.data import label_media

        rows = [label_media(row) for row in rows]
    answer = chat_answer_fn(model, processor)
    ours = [answer(row["messages"][:i], row["images"]) for row in rows
            for i, message in enumerate(row["messages"]) if message["role"] == "assistant"]
    theirs = [sample["filtered_resps"] for sample in sorted(samples, key=lambda sample: int(sample["doc_id"]))]
    theirs = [answer[0] if isinstance(answer, list) else answer for answer in theirs]
    different = sum(a.strip() != b.strip() for a, b in zip(ours, theirs)) + abs(len(ours) - len(theirs))
    chat = evaluate(rows, predictions=_per_row(rows, ours))
    forced = evaluate_model(model, processor, rows)
    print(f"\n{'metric':<26}{'lmms-eval':>10}{'evaluate':>10}{'demo eval':>11}   (demo eval: teacher-forced argmax)")
    same = different == 0
    for name in [*chat["per_type"], *GROUPS]:
        pick = lambda result: (result[name] if name in GROUPS else result["per_type"].get(name) or {}).get("accuracy")
        lmms = scores.get(f"{name},none")
        same &= lmms is not None and abs(lmms - pick(chat)) < 1e-9
        print(f"{name:<26}{lmms:>10.3f}{pick(chat):>10.3f}{(pick(forced) or float('nan')):>11.3f}")
    print(f"answers that differ between lmms-eval and ChatSession: {different} of {len(ours)}")
    return 0 if same else 1


def _per_row(rows: list[dict], answers: list[str]) -> list[list[str]]:
    answers, out = iter(answers), []
    for row in rows:
        out.append([next(answers) for _ in row["answers"]])
    return out
