"""``spikelite energy``: the command line of :mod:`spikelite.energy`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .._io import atomic_write
from ..checkpoint import checkpoint_data, load_model
from ..energy import measure, resolve_profiles
from ..errors import SpikeliteError
from ._flags import add_data, add_json, add_out, add_runtime, apply_runtime

# ----------------------------------------------------------------------------------------------
# CLI: spikelite energy CKPT --data DIR
# ----------------------------------------------------------------------------------------------


def _load_eval_data(meta: dict, args):
    """The checkpoint's own split (:func:`~spikelite.checkpoint.checkpoint_data`), ``--samples`` of it drawn
    with ``--seed``."""
    if args.data is not None and not Path(args.data).exists():
        raise SpikeliteError(f"--data {args.data!r} does not exist")
    data, _ = checkpoint_data(meta, args.checkpoint, args.split, data_root=args.data, dataset=args.dataset)
    n = len(data)
    if args.samples is not None and args.samples < n:
        g = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(n, generator=g)[:args.samples].sort().values
        data = data.subset(idx)
    return data


def _cli(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise SpikeliteError(f"--samples must be >= 1, got {args.samples}")
    device = apply_runtime(args)
    profs = resolve_profiles(args.profile or None)
    model, meta = load_model(args.checkpoint, device=device)
    if args.T is not None:
        if not hasattr(model, "T"):
            raise SpikeliteError("--T applies to SNN checkpoints only")
        model.T = args.T
    data = _load_eval_data(meta, args)
    cnn = None
    cnn_note = ""
    if args.cnn:
        cnn, _ = load_model(args.cnn, device=device)
    elif meta.get("kind") == "snn":
        src = meta.get("source_checkpoint") or {}
        path = src.get("path")
        if path and src.get("kind") == "cnn":
            if Path(path).is_file():
                cnn, _ = load_model(path, device=device)
                cnn_note = f"CNN: the SNN's source checkpoint {path}"
            else:
                cnn_note = (f"the SNN's source checkpoint {path} is not there: the CNN line uses the SNN's own "
                            "layers (pass --cnn to run the CNN)")
    report = measure(model, data, profiles=profs, cnn=cnn, accuracy=args.accuracy, cnn_accuracy=args.cnn_accuracy,
                     batch_size=args.batch_size, seed=args.seed, peers=args.peers)
    if cnn_note:
        report.notes.append(cnn_note)
    report.notes.append(f"data: {data.name} {args.split} split, {report.samples} images")
    text = report.to_json() if args.json else report.table(layers=args.layers)
    if args.out:
        atomic_write(Path(args.out), report.to_json() + "\n")
    sys.stdout.write(text + "\n")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "energy", help="count ACs/MACs from real spikes and estimate energy per image",
        description="Measure a checkpoint on real images: exact ACs (from the spikes), MACs (non-binary inputs), "
                    "neuron updates, firing rates, and energy per image under 45 nm profiles (Horowitz 2014) "
                    "or custom YAML profiles. See docs/energy.md.")
    p.add_argument("checkpoint", help="a spikelite checkpoint (SNN or CNN)")
    add_data(p)
    p.add_argument("--samples", type=int, default=1000, help="images to measure, a seeded random subset "
                                                             "(default 1000)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--profile", action="append", default=[],
                   help="energy profile name or YAML file; repeat for several (default: every built-in, "
                        "45nm-fp32 first)")
    p.add_argument("--cnn", default=None, help="the SNN's CNN checkpoint to compare with (default: the SNN's "
                                               "source checkpoint when it exists)")
    p.add_argument("--accuracy", type=float, default=None, help="SNN accuracy to report instead of the measured one")
    p.add_argument("--cnn-accuracy", type=float, default=None, help="CNN accuracy to report")
    p.add_argument("--T", type=int, default=None, help="run the SNN with this many time steps")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample choice and rate encoding")
    add_json(p, "print the report as JSON instead of the table", old_format=("table", "json"))
    p.add_argument("--layers", action="store_true", help="per-layer and per-neuron-layer rows in the table")
    p.add_argument("--peers", action="store_true",
                   help="also run SpikingJelly's op_counter and NeuroBench's SynapticOperations on the same batches "
                        "(dev dependencies) and print their figures beside ours")
    add_out(p, "also write the JSON report here (atomically)", old_output=True)
    add_runtime(p)
    p.set_defaults(func=_cli)
