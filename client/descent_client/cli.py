"""The ``descent`` command of the client: the commands that talk to a running service.

    descent submit | wait | jobs | show | metrics | cancel | download | export
    descent datasets | weights | study

Other installed distributions add commands to it through the entry point group
``descent.commands``: each entry is a function taking the parser's subcommands (argparse's
``add_subparsers()`` action). The service (the ``descent`` distribution) adds ``serve``,
``migrate``, ``api``, ``worker`` and its admin commands that way, so one ``descent`` command
serves both, and a machine with only the client has the client's commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

EXTENSIONS = "descent.commands"

Extension = Callable[[Any], None]


def installed_extensions() -> list[Extension]:
    """The functions of the ``descent.commands`` entry points, by entry name."""
    found = sorted(entry_points(group=EXTENSIONS), key=lambda e: e.name)
    return [entry.load() for entry in found]


def build_parser(extensions: Iterable[Extension] | None = None) -> argparse.ArgumentParser:
    """The parser: ``extensions`` (default: the installed ones) add their commands first,
    then the client's."""
    parser = argparse.ArgumentParser(
        prog="descent", description="Descent: hosted PyTorch training jobs."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for extend in installed_extensions() if extensions is None else extensions:
        extend(sub)
    from descent_client.commands import add_client_commands

    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None, extensions: Iterable[Extension] | None = None) -> int:
    args = build_parser(extensions).parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
