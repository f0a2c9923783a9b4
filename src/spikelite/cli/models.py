"""``spikelite models``: the command line of :mod:`spikelite.models`."""

from __future__ import annotations

import argparse
import json
import sys

from ..models import (
    PAPER_PARAMS,
    create_model,
    fit_width,
    get_entry,
    list_models,
    macro_modules,
    model_info,
)

# ----------------------------------------------------------------------------------------------
# CLI: spikelite models
# ----------------------------------------------------------------------------------------------

def _fmt_count(n: int, unit: str = "k") -> str:
    if unit == "M":
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:,.1f}k"


def model_table(image_size: int = 32, num_classes: int = 10, in_chans: int = 3, names: list[str] | None = None,
                target_params: bool = False) -> list[dict]:
    """One row per model: name, family, params, MACs, stem_reduction, macro-module count, output map."""
    rows = []
    for name in names or list_models():
        entry = get_entry(name)
        model = create_model(name, num_classes=num_classes, image_size=image_size, in_chans=in_chans)
        info = model_info(model)
        row = {
            "name": name,
            "family": entry.family,
            "params": info.params,
            "macs": info.macs,
            "stem_reduction": model.spikelite_spec["stem_reduction"],
            "macro_modules": len(macro_modules(model)),
        }
        if target_params:
            paper = PAPER_PARAMS.get(entry.family)
            row["paper_params"] = paper
            if entry.has_width and paper:
                w, p = fit_width(name, paper, num_classes=num_classes, in_chans=in_chans)
                row["closest_width"], row["params_at_width"] = w, p
            else:
                row["closest_width"], row["params_at_width"] = None, None
        rows.append(row)
    return rows


def _render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    headers = {
        "name": "model", "family": "family", "params": "params", "macs": "MACs", "stem_reduction": "stem reduction",
        "macro_modules": "macro modules", "paper_params": "paper params (CIFAR-10)",
        "closest_width": "closest width", "params_at_width": "params at that width",
    }
    keys = list(rows[0]) if rows else list(headers)

    def cell(k, v):
        if v is None:
            return "-"
        if k in ("params", "paper_params", "params_at_width"):
            return _fmt_count(v) if fmt != "csv" else str(v)
        if k == "macs":
            return _fmt_count(v, "M") if fmt != "csv" else str(v)
        return str(v)

    table = [[cell(k, r[k]) for k in keys] for r in rows]
    head = [headers[k] for k in keys]
    if fmt == "csv":
        return "\n".join(",".join(line) for line in [keys] + table)
    if fmt == "markdown":
        right = {"params", "macs", "paper_params", "params_at_width", "closest_width", "macro_modules", "stem_reduction"}
        sep = ["---:" if k in right else "---" for k in keys]
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, sep] + table)
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head] + table)


def _cli(args: argparse.Namespace) -> int:
    names = None
    if args.names:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        for n in names:
            get_entry(n)
    rows = model_table(args.image_size, args.num_classes, args.in_chans, names, target_params=args.paper)
    if args.format == "table":
        print(f"# image {args.in_chans}x{args.image_size}x{args.image_size}, {args.num_classes} classes; "
              "MACs: dense Conv2d+Linear per image")
    sys.stdout.write(_render(rows, args.format) + "\n")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo with params and MACs",
                       description="List the spikelite model zoo: parameters and dense MACs at a given image "
                                   "size and class count.")
    p.add_argument("--image-size", type=int, default=32, help="input side in pixels (default 32)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--names", default="", help="comma-separated model names (default: all)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="the same as --format json")
    p.add_argument("--paper", action="store_true",
                   help="add the paper's CIFAR-10 parameter count per family and the width that comes closest")
    p.set_defaults(func=_cli)
