"""``spikelite export``: the command line of :mod:`spikelite.export`."""

from __future__ import annotations

import argparse
import json
import sys

from ..export import DEFAULT_DT, export_checkpoint
from ._flags import add_json, add_out, add_runtime, apply_runtime, check_out


def _cli(args: argparse.Namespace) -> int:
    apply_runtime(args)
    result = export_checkpoint(args.checkpoint, args.out, args.format, T=args.T, image_size=args.image_size,
                               dt=args.dt, opset=args.opset, check=not args.no_check, check_batch=args.check_batch)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint as NIR (SNNs), ONNX or TorchScript",
        description="Export a spikelite checkpoint: NIR for spiking networks (neuromorphic hardware and "
                    "NIR-reading simulators), ONNX or TorchScript for CNNs and SNNs. The written file is read "
                    "back and checked against PyTorch on random inputs before it is moved into place. "
                    "See docs/export.md.")
    p.add_argument("checkpoint", help="a spikelite checkpoint (.pt)")
    add_out(p, "the file to write", required=True, old_output=True)
    p.add_argument("--format", default=None, help="nir, onnx or torchscript (default: from the output's suffix: "
                                                  ".nir, .onnx, .pt)")
    p.add_argument("--T", type=int, default=None, help="SNN time steps (default: the checkpoint's)")
    p.add_argument("--dt", type=float, default=DEFAULT_DT,
                   help=f"NIR: the Euler step the time constants are written for (default {DEFAULT_DT:g}, what "
                        "snnTorch and SpikingJelly assume)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    p.add_argument("--check-batch", type=int, default=3, help="random inputs the check runs (default 3)")
    p.add_argument("--no-check", action="store_true", help="do not read the file back and compare")
    add_runtime(p, device=False)
    add_json(p)
    p.set_defaults(func=lambda args: check_out(p, args) or _cli(args))
