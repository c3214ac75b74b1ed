"""Run the benchmarks and print one table of ratios.

    python -m benchmarks                 # everything, a few minutes on 2 CPU cores
    python -m benchmarks --quick         # smaller sizes and fewer repeats (tens of seconds)
    python -m benchmarks --only merge audio --json out.json
    MMMMODAL_VLLM_PYTHON=.venv-vllm/bin/python python -m benchmarks --only vllm_serve   # vLLM vs mmmmodal serve
    MMMMODAL_LMMS_EVAL_PYTHON=.venv-lmms/bin/python python -m benchmarks --only lmms_eval_batch   # lmms-eval b8 / b1
"""

import argparse
import importlib
import json
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from .common import CLOCK, format_table

BENCHMARKS = ("merge", "generation", "audio", "processor", "training", "packing", "vllm_serve", "demo_loss",
              "lmms_eval_batch")


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({platform.machine()})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch thread(s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and fewer repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for every timed section (1 default: steadiest on a shared 2-core box)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None,
                        help="cpu: process CPU time (default on CPU with 1 thread, immune to other tenants); wall")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (median reported)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--markdown", default=None, help="also write the table (with date and machine) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    CLOCK["name"] = args.clock or ("cpu" if args.threads == 1 and not torch.cuda.is_available() else "wall")

    rows, started = [], time.perf_counter()
    for name in args.only:
        module = importlib.import_module(f".{name}", __package__)
        t0 = time.perf_counter()
        rows += module.main(quick=args.quick, repeats=args.repeats)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"MMMModal benchmarks, {stamp}, {machine()}, {CLOCK['name']} clock, torch {torch.__version__}{' (--quick)' if args.quick else ''}"
    table = format_table(rows)
    print(f"\n{title}\n\n{table}\n\n(total {time.perf_counter() - started:.0f} s)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{title}\n\n{table}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "rows": [vars(r) for r in rows]}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
