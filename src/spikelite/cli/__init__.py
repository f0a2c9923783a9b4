"""The ``spikelite`` command line: one console script with a subcommand per pipeline stage.

Each module here (one per command, named after the stage it drives) exposes ``register_cli(subparsers)``: it adds its parser and
sets ``func`` (called with the parsed namespace, returning an exit status or None).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..allocator import env_malloc_mode, retain_freed_memory
from ..errors import SpikeliteError

# Stage modules that contribute subcommands, in the order `spikelite --help` lists them.
COMMAND_MODULES = [
    "spikelite.cli.demo",
    "spikelite.cli.models",
    "spikelite.cli.train",
    "spikelite.cli.convert",
    "spikelite.cli.energy",
    "spikelite.cli.export",
    "spikelite.cli.prune",
    "spikelite.cli.bench",
    "spikelite.cli.report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikelite",
        description="Turn lightweight CNNs into spiking neural networks and measure what that buys.",
    )
    parser.add_argument("--version", action="version", version=f"spikelite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        # commands that run networks keep glibc's freed memory (spikelite train: its recipe key malloc)
        if env_malloc_mode() == "retain" and args.command != "train":
            retain_freed_memory()
        status = args.func(args)
    except SpikeliteError as exc:
        print(f"spikelite {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikelite {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
