"""A training step of a converted (ConversionIF) SNN: the native kernel against ConversionIF's Python steps.

Loads an SNN checkpoint made by `spikelite convert`, puts it in train mode and times forward + backward of
one random batch, alternating the two paths round by round (median of each round's two steps).

    python benchmarks/conversion_finetune_step.py results/cifar10/squeezenet1_1/snn-q-pass2/best.pt --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikelite.allocator import retain_freed_memory
from spikelite.checkpoint import load_model
from spikelite.snn.neuron import ConversionIF


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    if not any(isinstance(m, ConversionIF) for m in model.modules()):
        raise SystemExit(f"{args.checkpoint} has no ConversionIF neurons (make one with spikelite convert)")
    model.train()
    spec = meta["model_spec"]
    x = torch.randn(args.batch, spec.get("in_chans", 3), spec["image_size"], spec["image_size"])
    y = torch.randint(0, spec["num_classes"], (args.batch,))
    native_ok = ConversionIF._native_ok

    def step():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    times = {"native": [], "python": []}
    try:
        for _ in range(args.rounds):
            for name in times:
                ConversionIF._native_ok = staticmethod(native_ok if name == "native" else (lambda x: False))
                step()  # warm-up
                t0 = time.perf_counter()
                step()
                step()
                times[name].append((time.perf_counter() - t0) / 2)
    finally:
        ConversionIF._native_ok = staticmethod(native_ok)
    for name, ts in times.items():
        print(f"{name:7s} {1000 * statistics.median(ts):7.0f} ms per step  (rounds: "
              + ", ".join(f"{1000 * t:.0f}" for t in ts) + ")")
    print(f"python / native: {statistics.median(times['python']) / statistics.median(times['native']):.2f}x")


if __name__ == "__main__":
    main()
