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
import time

import torch

from spikelite import train as T
from spikelite.data import load_split


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="dataset folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=500, help="evenly spaced images of the split")
    ap.add_argument("--batch", type=int, nargs="+", default=[500, 100, 32])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = T.load_checkpoint(args.checkpoint)
    info = meta.get("data") or {}
    cfg_data = (meta.get("config") or {}).get("data") or {}
    data = load_split(info.get("dataset") or cfg_data.get("dataset"), args.data, args.split,
                      val_size=cfg_data.get("val_size"), seed=int(cfg_data.get("split_seed") or 0))
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
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds (medians)")
    print(f"{'eval batch':>10}{'seconds':>10}{'images/s':>10}{'accuracy':>10}")
    for b in args.batch:
        s = statistics.median(times[b])
        print(f"{b:>10}{s:>10.1f}{len(data) / s:>10.1f}{acc[b]:>10.4f}")
    return times, acc


if __name__ == "__main__":
    main()
