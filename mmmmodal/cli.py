"""`mmmmodal` console script: one sub-command per module.

Every module listed in `COMMANDS` exposes `register(subparsers)`, which adds its sub-parser and sets
`func` (called with the parsed namespace; its return value is the exit code).

`--log-level` (before or after the sub-command; `info` by default) sets what this package's loggers
(`mmmmodal.*`, `processing.*`) show on stderr; other libraries keep their `warning` default unless a quieter
level is asked.
"""

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "build": "mmmmodal.build",
    "demo": "mmmmodal.demo",
    "chat": "mmmmodal.chat",
    "serve": "mmmmodal.serve",
    "publish": "mmmmodal.publish",
    "data": "mmmmodal.data",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
OUR_LOGGERS = ("mmmmodal", "processing", "modeling_mmmmodal")
_HANDLER = None


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name):
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    return f"mmmmodal {of('mmmmodal')} (transformers {of('transformers')}, torch {of('torch')})"


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a message comes (tests and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level_name: str):
    """Show this package's messages from `level_name` up on stderr, with the logger's name.

    The handler sits on this package's loggers (messages still propagate, e.g. to pytest's capture); other
    libraries keep their own settings, and follow only a level quieter than `warning`.
    """
    global _HANDLER
    level = getattr(logging, level_name.upper())
    if _HANDLER is None:
        _HANDLER = _StderrHandler()
        _HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
    if level > logging.WARNING:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmmmodal", description="MMMModal: multi-image, multi-audio chat models.")
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="What to show on stderr (default: info).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    for sub in subparsers.choices.values():  # also after the sub-command; SUPPRESS keeps the top-level default
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="As before the command.")
    return parser


def main(argv=None) -> int:
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--version", action="store_true")
    if early.parse_known_args(argv)[0].version:  # answered before the commands (and torch) are imported
        print(version())
        return 0
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
