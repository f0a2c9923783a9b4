"""Evaluation throughput against the evaluation batch size, for one checkpoint on real images.

Runs ``spikelite.train.evaluate`` on a fixed, evenly spaced subset of a split, once per batch size
per round (rounds interleaved, so machine noise hits every size alike), and prints seconds, images
per second (median over rounds) and the accuracy, which must not depend on the batch size.

    python benchmarks/eval_batch.py results/cifar10/squeezenet1_1/snn/best.pt --data DIR --images 500 \\
        --batch 500 100 32 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from spikelite import SpikeliteError
from spikelite import train as T
from spikelite.allocator import MALLOC_MODES, apply_malloc_mode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="dataset folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=500, help="evenly spaced images of the split")
    ap.add_argument("--batch", type=int, nargs="+", default=[500, 100, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--malloc", choices=MALLOC_MODES, default="retain",
                    help="glibc allocator setting (the CLI's default: retain; docs/performance.md)")
    args = ap.parse_args(argv)
    if args.images < 1 or args.rounds < 1 or min(args.batch) < 1 or args.threads < 0:
        ap.error("--images, --rounds and every --batch must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_malloc_mode(args.malloc)
    try:
        model, meta = T.load_model(args.checkpoint)
        data, _ = T.checkpoint_data(meta, args.checkpoint, args.split, data_root=args.data)
    except SpikeliteError as exc:
        sys.exit(f"eval_batch.py: error: {exc}")
    step = max(len(data) // args.images, 1)
    data = data.subset(torch.arange(0, len(data), step)[: args.images])
    times: dict[int, list[float]] = {b: [] for b in args.batch}
    acc: dict[int, float] = {}
    for _ in range(args.rounds):
        for b in args.batch:
            t0 = time.perf_counter()
            acc[b] = T.evaluate(model, data, batch_size=b)["accuracy"]
            times[b].append(time.perf_counter() - t0)
    print(f"{args.checkpoint}: {meta['kind']}, {len(data)} {args.split} images, torch threads "
          f"{torch.get_num_threads()}, malloc {args.malloc}, {args.rounds} interleaved rounds (medians)")
    print(f"{'eval batch':>10}{'seconds':>10}{'images/s':>10}{'accuracy':>10}")
    for b in args.batch:
        s = statistics.median(times[b])
        print(f"{b:>10}{s:>10.1f}{len(data) / s:>10.1f}{acc[b]:>10.4f}")
    return times, acc


if __name__ == "__main__":
    main()
