"""Flags every command spells the same way, and the old spellings that still work for now.

- ``-o/--out``: the file or folder a command writes (``--output`` still works, with a note).
- ``--data`` (the dataset's folder), ``--dataset`` (its name), ``--split`` (train, val or test; default val,
  the held-out part of the training images, which every machine has: pass ``--split test`` for the test
  images).
- ``--device`` (auto, cpu, cuda, cuda:N) and ``--threads`` (torch CPU threads).
- ``--json``: print the result as JSON instead of a table (``--format json`` still works, with a note).
"""

from __future__ import annotations

import argparse
import sys

from .._runtime import resolve_device, set_threads

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "val"


class _Deprecated(argparse.Action):
    """An old spelling of a flag: it still works, and stderr says what to write instead."""

    def __init__(self, option_strings, dest, instead: str, const_value=None, **kwargs):
        self.instead = instead
        self.const_value = const_value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"spikelite {parser.prog.split()[-1]}: {option_string} is deprecated and will be removed; use "
              f"{self.instead}", file=sys.stderr)
        setattr(namespace, self.dest, values if self.const_value is None else self.const_value(values))


def add_out(p: argparse.ArgumentParser, help: str, *, required: bool = False, old_output: bool = False) -> None:
    """``-o/--out``; ``old_output``: also accept the command's former ``--output``."""
    p.add_argument("-o", "--out", required=required and not old_output, default=None, help=help)
    if old_output:
        p.add_argument("--output", dest="out", action=_Deprecated, instead="-o/--out", help=argparse.SUPPRESS)
        if required:
            p.set_defaults(_required_out=True)


def check_out(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``-o/--out`` was required but given under neither spelling."""
    if getattr(args, "_required_out", False) and args.out is None:
        p.error("the following arguments are required: -o/--out")


def add_data(p: argparse.ArgumentParser, *, split: bool = True, data_help: str | None = None,
             split_help: str | None = None) -> None:
    p.add_argument("--data", default=None,
                   help=data_help or "the dataset's folder (default: where the checkpoint was trained)")
    p.add_argument("--dataset", default=None,
                   help="the dataset's name (default: the checkpoint's; e.g. cifar10, tinyimagenet, imagefolder)")
    if split:
        p.add_argument("--split", choices=SPLITS, default=DEFAULT_SPLIT,
                       help=split_help or f"which split (default {DEFAULT_SPLIT}: the checkpoint's held-out "
                                          "validation images; test: the dataset's test images)")


def add_runtime(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def apply_runtime(args: argparse.Namespace):
    """Set the thread count and return the device (None for a command without ``--device``)."""
    set_threads(getattr(args, "threads", None))
    return resolve_device(args.device) if hasattr(args, "device") else None


def add_json(p: argparse.ArgumentParser, help: str = "print the result as JSON", *,
             old_format: tuple[str, ...] | None = None) -> None:
    """``--json``; ``old_format``: the command's former ``--format`` choices, still accepted (``--format json``
    is ``--json``)."""
    p.add_argument("--json", action="store_true", help=help)
    if old_format:
        p.add_argument("--format", dest="json", action=_Deprecated, instead="--json (or nothing, for the table)",
                       choices=old_format, const_value=lambda v: v == "json", help=argparse.SUPPRESS)
