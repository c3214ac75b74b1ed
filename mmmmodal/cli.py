"""`mmmmodal` console script: one sub-command per module.

Every module listed in `COMMANDS` exposes `register(subparsers)`, which adds its sub-parser and sets
`func` (called with the parsed namespace; its return value is the exit code).
"""

import argparse
import importlib
import sys

COMMANDS = {
    "build": "mmmmodal.build",
    "demo": "mmmmodal.demo",
    "chat": "mmmmodal.chat",
    "serve": "mmmmodal.serve",
    "publish": "mmmmodal.publish",
    "data": "mmmmodal.data",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mmmmodal", description="MMMModal: multi-image, multi-audio chat models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
