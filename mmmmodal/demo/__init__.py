"""`mmmmodal demo --out DIR`: build, train, evaluate, save, reload and chat with a small MMMModal, end to end.

Steps (all offline): build a tiny SigLIP / Whisper / Llama from configs with a locally trained tokenizer (or load
`--vision/--audio/--text` hub ids or folders), write the built-in synthetic task's held-out split and stage-1
captions, pretrain the tiny towers ("stage 0", the stand-in for the paper's pretrained encoders), run the paper's
stage 1 and stage 2 through TRL's `SFTTrainer` (stage 2 on a stream of fresh conversations, easy ones first), score
held-out conversations per question type, save a remote-code checkpoint, reload it with `trust_remote_code=True`,
answer one multi-turn conversation with two images and two audio clips, and write `report.json`, `report.md` and
`report.png` under DIR. Training stops on a wall-clock budget (`--minutes`). docs/demo.md has the figures.

One concern per file: `settings` (the flags and the sizes), `data` (the task's settings, held-out files, the
tokenizer's corpus), `stream` (stage 2's rows), `batching` (stage 1's cached, length-grouped batches), `stage0`,
`train` (stages 1 and 2) with `loss`, `eval`, `report`, and `run`, the pipeline.
"""

import argparse

from mmmmodal.cli import add_dataclass_arguments, dataclass_from_args

from .settings import DemoArguments, DemoSettings

DESCRIPTION = __doc__.split("\n\n")[0]


def register(subparsers):
    parser = subparsers.add_parser("demo", help="Build, train, evaluate, reload and chat with a small MMMModal.",
                                   description=DESCRIPTION)
    add_dataclass_arguments(parser, DemoArguments)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    demo = dataclass_from_args(DemoArguments, args)
    try:
        demo.check()  # before torch, TRL and datasets are imported
    except ValueError as error:
        raise SystemExit(f"mmmmodal demo: {error}") from None
    from .run import process_start, run  # torch, TRL and datasets: only for this command

    run(demo, started=process_start())
    return 0


__all__ = ["register", "DemoArguments", "DemoSettings"]
