"""``spikelite demo``: the benchmark end to end on built-in data, offline, in a few minutes on a laptop CPU.

It runs a small grid with :mod:`spikelite.bench` on scikit-learn's 8x8 handwritten digits (shipped
with scikit-learn: no data folder, no network): SqueezeNet 1.1 and ShuffleNetV2 x0.5, each as a
CNN, as the SNN converted from that CNN and fine-tuned (T = 2 and 4), and as a pruned SNN (SNN-P:
the paper's ``ref-1`` schedule for SqueezeNet, the least important 25 % of ShuffleNet's units),
then writes the report (Markdown and one self-contained HTML file) and prints where it is.

The grid is :data:`DEMO_SPEC`, the same as ``configs/demo.yaml``. ``--quick`` shrinks it to a
smoke run (small subsets, one epoch, T = 2) that finishes well under a minute. Re-running reuses
finished cells (the bench is resumable), so a second ``spikelite demo`` only rewrites the report.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

__all__ = ["DEMO_SPEC", "QUICK_OVERRIDES", "demo_spec", "run_demo", "register_cli"]

# Keep in sync with configs/demo.yaml (a test compares them).
DEMO_SPEC: dict = {
    "name": "demo",
    "out": "runs/demo",
    "models": ["squeezenet1_1", "shufflenetv2_x0_5"],
    "datasets": [{"name": "digits", "image_size": 8}],
    "variants": ["cnn", "snn", "snn-p"],
    "T": [2, 4],
    "seeds": [0],
    "snn_init": "convert",
    "recipe": {
        "epochs": 10,
        "batch_size": 64,
        "threads": 1,
        "optim": {"optimizer": "sgd", "lr": 0.05, "warmup_epochs": 1},
        "snn": {"neuron": {"v_threshold": 0.5, "decay_input": False, "backend": "fused"}},
    },
    "snn": {"epochs": 6, "optim": {"optimizer": "adamw", "lr": 0.005, "weight_decay": 0.01, "warmup_epochs": 0}},
    "snn-p": {"epochs": 4, "optim": {"optimizer": "adamw", "lr": 0.005, "weight_decay": 0.01, "warmup_epochs": 0}},
    "prune": {"schedules": ["ref-1"], "fallback": "taylor-25%", "calibration_size": 256},
    "eval": {"split": "test", "energy_samples": 359, "profiles": ["45nm-fp32", "45nm-fp32-mem"]},
}

# --quick: a smoke run of the same pipeline (every stage runs, on little data).
QUICK_OVERRIDES: dict = {
    "name": "demo-quick",
    "out": "runs/demo-quick",
    "T": [2],
    "recipe.epochs": 1,
    "snn.epochs": 1,
    "snn-p.epochs": 1,
    "datasets": [{"name": "digits", "image_size": 8, "train_subset": 256, "val_subset": 64}],
    "prune.calibration_size": 64,
    "eval.subset": 120,
    "eval.energy_samples": 64,
}


def demo_spec(quick: bool = False, out: str | None = None):
    """The demo's :class:`spikelite.bench.BenchSpec` (``quick``: the smoke-run version)."""
    from .._io import set_dotted
    from ..bench import build_spec

    raw = copy.deepcopy(DEMO_SPEC)
    if quick:
        for k, v in QUICK_OVERRIDES.items():
            set_dotted(raw, k, copy.deepcopy(v))
    if out:
        raw["out"] = out
    return build_spec(raw)


def run_demo(out: str | None = None, quick: bool = False, quiet: bool = False, stream=None) -> dict:
    """Run the demo grid and write its report; returns the bench summary (``report`` holds the paths)."""
    from ..bench import run_bench
    from ..report import build_report
    from .bench import _print_summary

    stream = stream or sys.stdout
    spec = demo_spec(quick=quick, out=out)
    t0 = time.perf_counter()
    if not quiet:
        print(f"spikelite demo{' --quick' if quick else ''}: {', '.join(m.label for m in spec.models)} on digits "
              f"(8x8, built in) as CNN, SNN (T={', '.join(map(str, spec.T))}) and SNN-P; results in {spec.out}",
              file=stream, flush=True)
    summary = run_bench(spec, quiet=quiet, out=stream)
    summary["report"] = build_report(summary["run_dir"])
    summary["wall_seconds"] = time.perf_counter() - t0
    if not quiet:
        _print_summary(summary, stream)
    rep = summary.get("report") or {}
    print(f"open the report: {rep.get('html')}  ({summary['wall_seconds']:.0f} s)", file=stream, flush=True)
    return summary


def _cli(args: argparse.Namespace) -> int:
    summary = run_demo(out=args.out, quick=args.quick, quiet=args.quiet)
    bad = summary["counts"].get("failed", 0) + summary["counts"].get("skipped", 0)
    return 1 if bad else 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the benchmark end to end on built-in digits (offline, a few minutes)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", help="run directory (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke run well under a minute (small subsets, 1 epoch, T=2)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-cell lines")
    p.set_defaults(func=_cli)
