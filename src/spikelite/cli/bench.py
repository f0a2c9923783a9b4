"""``spikelite bench``: the command line of :mod:`spikelite.bench`."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from .._io import parse_value, read_yaml_mapping, set_dotted
from ..bench import VARIANTS, BenchSpec, build_spec, expand_grid, run_bench
from ..errors import SpikeliteError
from ..report import build_report

# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _csv_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def spec_from_args(args: argparse.Namespace, base: dict | None = None) -> BenchSpec:
    """The spec of a ``spikelite bench`` (or demo) command line: the YAML, then the flags on top."""
    raw: dict = copy.deepcopy(base) if base else {}
    if getattr(args, "spec", None):
        p = Path(args.spec)
        loaded = read_yaml_mapping(p, "spec file")
        raw.update(loaded or {})
    if getattr(args, "models", None):
        entries = []
        for m in raw.get("models") or []:
            if isinstance(m, dict):
                name, width = m.get("name"), m.get("width", 1.0)
                label = m.get("label") or (name if width == 1.0 else f"{name}@{width:g}")
            else:
                name, label = str(m).partition("@")[0], str(m)
            entries.append((m, {str(name), str(label)}))
        picked = []
        for want in _csv_list(args.models):
            match = [m for m, keys in entries if want in keys]
            picked.extend(match or [want])
        raw["models"] = picked
    if getattr(args, "datasets", None):
        entries = []
        for d in raw.get("datasets") or []:
            keys = {str(d.get("name")), str(d.get("label") or d.get("name"))} if isinstance(d, dict) else {str(d)}
            entries.append((d, keys))
        picked = []
        for want in _csv_list(args.datasets):
            match = [d for d, keys in entries if want in keys]
            picked.extend(match or [want])
        raw["datasets"] = picked
    if getattr(args, "variants", None):
        raw["variants"] = _csv_list(args.variants)
    for flag, key in (("T", "T"), ("seeds", "seeds")):
        v = getattr(args, flag, None)
        if v:
            items = _csv_list(v)
            vals = []
            for t in items:
                try:
                    vals.append(int(t))
                except ValueError:
                    vals.append(t)
            raw[key] = vals
    if getattr(args, "out", None):
        raw["out"] = args.out
    if getattr(args, "scratch", False):
        raw["snn_init"] = "scratch"
    if getattr(args, "executor", None):
        raw["executor"] = args.executor
    if getattr(args, "address", None):
        raw["address"] = args.address
        if not getattr(args, "executor", None):
            raw["executor"] = "ray"
    res = dict(raw.get("resources") or {})
    if getattr(args, "cpus_per_cell", None) is not None:
        res["cpus"] = args.cpus_per_cell
    if getattr(args, "gpus_per_cell", None) is not None:
        res["gpus"] = args.gpus_per_cell
    if res:
        raw["resources"] = res
    recipe = dict(raw.get("recipe") or {})
    for flag, key in (("device", "device"), ("threads", "threads")):
        v = getattr(args, flag, None)
        if v is not None:
            recipe[key] = v
    if getattr(args, "epochs", None) is not None:
        recipe["epochs"] = args.epochs
        for v in VARIANTS:
            if isinstance(raw.get(v), dict) and "epochs" in raw[v]:
                raw[v] = {**raw[v], "epochs": args.epochs}
    if recipe:
        raw["recipe"] = recipe
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SpikeliteError(f"--set {item!r} must look like key=value (e.g. eval.energy_samples=64)")
        k, v = item.split("=", 1)
        set_dotted(raw, k.strip(), parse_value(v.strip()), example="eval.energy_samples")
    roots = {}
    for item in getattr(args, "data_root", None) or []:
        if "=" not in item:
            raise SpikeliteError(f"--data-root {item!r} must look like NAME=DIR (e.g. cifar10=/data/cifar10)")
        k, v = item.split("=", 1)
        roots[k.strip()] = v.strip()
    return build_spec(raw, roots=roots)


def _print_cells(spec: BenchSpec, stream) -> None:
    cells = expand_grid(spec)
    print(f"{len(cells)} cells in {spec.out}:", file=stream)
    for c in cells:
        deps = f"  (after {', '.join(c.deps)})" if c.deps else ""
        print(f"  {c.id}{deps}", file=stream)


def _print_summary(summary: dict, stream) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["counts"].items()))
    print(f"cells: {counts}; {summary['seconds']:.0f} s", file=stream)
    res = summary["results"]
    print(f"results: {res['csv']}" + (f", {res['parquet']}" if res.get("parquet") else ""), file=stream)
    if res.get("note"):
        print(f"note: {res['note']}", file=stream)
    if summary.get("report"):
        print(f"report: {summary['report']['html']} (and {summary['report']['markdown']})", file=stream)


def _cli_bench(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.dry_run:
        _print_cells(spec, sys.stdout)
        return 0
    summary = run_bench(spec, quiet=args.quiet)
    summary["report"] = None if args.no_report else build_report(summary["run_dir"])
    if not args.quiet:
        _print_summary(summary, sys.stdout)
    failed = summary["counts"].get("failed", 0) + summary["counts"].get("skipped", 0)
    return 1 if failed else 0


def add_grid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory (default: the spec's out, or runs/<name>)")
    p.add_argument("--models", help="comma-separated models (spec entries by label or name; name@width for new ones)")
    p.add_argument("--datasets", help="comma-separated datasets (spec entries by label or name)")
    p.add_argument("--variants", help="comma-separated variants: cnn, snn, snn-p, cnn-p")
    p.add_argument("--T", help="comma-separated time steps, e.g. 2,4")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--epochs", type=int, help="epochs for every variant (recipe.epochs and each variant's epochs)")
    p.add_argument("--data-root", action="append", metavar="NAME=DIR",
                   help="where a dataset of the spec lives, e.g. cifar10=/data/cifar10 (repeatable)")
    p.add_argument("--scratch", action="store_true", help="train the SNNs from scratch instead of converting the CNN")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any spec key, e.g. recipe.optim.lr=0.05, snn.epochs=3, eval.energy_samples=64 (repeatable)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (recipe.device)")
    p.add_argument("--threads", type=int, help="torch CPU threads per cell (recipe.threads)")
    p.add_argument("--executor", choices=("local", "ray"), help="local (default, in this process) or ray")
    p.add_argument("--address", help="Ray cluster address (implies --executor ray)")
    p.add_argument("--cpus-per-cell", type=float, help="CPUs one cell asks of Ray (resources.cpus)")
    p.add_argument("--gpus-per-cell", type=float, help="GPUs one cell asks of Ray (resources.gpus)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-cell lines")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark grid: models x datasets x variants x T x seeds",
                       description="Run every cell of a benchmark spec (train the CNN, convert and fine-tune the "
                                   "SNN, prune and fine-tune SNN-P; measure accuracy, F1, params, ACs/MACs, energy). "
                                   "Re-running skips finished cells and resumes a half-trained one. See "
                                   "docs/benchmark.md.")
    p.add_argument("spec", help="benchmark spec (YAML), e.g. configs/paper.yaml")
    add_grid_flags(p)
    p.add_argument("--dry-run", action="store_true", help="validate the spec, list the cells and exit")
    p.set_defaults(func=_cli_bench)
