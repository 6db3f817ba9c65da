"""`contsup` command line: thin argument parsing over the library; each command lives in its own file."""

from __future__ import annotations

import argparse
import importlib
import sys

from contsup.errors import ContsupError

# Each entry is a module of this package with `register(subparsers)`; the parser it adds sets `func`.
COMMANDS = ["train", "runs", "data", "profile", "analyze", "reproduce"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default at the end of its help line."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = any(action.default is v for v in (None, False, "", argparse.SUPPRESS)) or not action.option_strings
        if quiet or "default" in text:  # no value to show, or the help already says it
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and its sub-commands' help) shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full `contsup` argument parser with every sub-command registered."""
    parser = Parser(
        prog="contsup",
        description="Greedy local learning with Context Supply (arXiv 2312.07636).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"contsup.cli.{name}").register(sub)
    return parser


def one_line(text: str) -> str:
    """A message on one line: its lines joined with '; '."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `contsup` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ContsupError as err:
        print(f"contsup: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a command may say how to continue (train: --resume)
        print(f"contsup: interrupted{f'; {err}' if str(err) else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
