"""``spikelite report``: the command line of :mod:`spikelite.report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import build_report


def _cli(args: argparse.Namespace) -> int:
    paths = build_report(args.run_dir, out=args.out)
    print(f"report: {paths['html']}")
    print(f"markdown: {paths['markdown']}" + (f" (figures in {Path(paths['markdown']).parent / 'figures'})"
                                            if paths["figures"] else ""))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the Markdown and self-contained HTML report of a bench run",
                       description="Write report.md (with figures/*.png) and report.html (one self-contained file, "
                                   "images embedded) for a run directory of spikelite bench.")
    p.add_argument("run_dir", help="the bench run directory (holds cells/ and results.csv)")
    p.add_argument("--out", help="where to write the report (default: the run directory)")
    p.set_defaults(func=_cli)
