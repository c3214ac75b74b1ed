"""`mmmmodal` console script: one sub-command per module.

Every module listed in `COMMANDS` exposes `register(subparsers)`, which adds its sub-parser and sets
`func` (called with the parsed namespace; its return value is the exit code).

`--log-level` (before or after the sub-command; `info` by default) sets what this package's loggers
(`mmmmodal.*`, `processing.*`) show on stderr; other libraries keep their `warning` default unless a quieter
level is asked.
"""

import argparse
import dataclasses
import importlib
import logging
import sys
import types
import typing

COMMANDS = {
    "build": "mmmmodal.build",
    "demo": "mmmmodal.demo",
    "chat": "mmmmodal.chat",
    "serve": "mmmmodal.serve.cli",
    "publish": "mmmmodal.publish",
    "data": "mmmmodal.data",
    "eval": "mmmmodal.evaluation.cli",
    "lora-for-vllm": "mmmmodal.adapters",
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


def add_dataclass_arguments(parser, cls, group: str | None = None):
    """One flag per field of the dataclass `cls` that a command line can write (int, float, str, bool, a tuple of
    str; optional ones too); other fields keep their defaults.

    The flag is `--field-name` (or `metadata["flag"]`), its help `metadata["help"]`; a field without a default is
    required. A bool flag takes no value and sets the opposite of the field's default; a tuple is written
    comma-separated (`--languages en,ms`). Read the parsed values back with `dataclass_from_args`.
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        if kind is None:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kwargs = {"dest": f.name, "help": f.metadata.get("help")}
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        if kind is bool:
            kwargs["action"] = "store_false" if kwargs.get("default") else "store_true"
        elif kind is tuple:
            kwargs["type"], kwargs["metavar"] = _comma_separated, "A,B"
            kwargs["default"] = ",".join(kwargs.get("default") or ())  # argparse converts a str default with `type`
        else:
            kwargs["type"] = kind
        target.add_argument(flag, **kwargs)


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of `cls` from the flags `add_dataclass_arguments` added, plus `overrides`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**given, **overrides})


def _flag_type(hint):
    """int / float / str / bool / tuple for a field a flag can set (`X | None` reads as X); None otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else None
    if typing.get_origin(hint) is tuple and all(a in (str, Ellipsis) for a in typing.get_args(hint)):
        return tuple
    return hint if hint in (int, float, str, bool) else None


def _comma_separated(text: str) -> tuple:
    return tuple(item.strip() for item in text.split(",") if item.strip())


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
