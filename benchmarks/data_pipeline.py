"""Data-pipeline cost per epoch on real CIFAR-10, next to the model's cost per epoch.

Measures, for the CIFAR-10 training images as an ImageFolder (``<root>/train/<class>/*.jpg``, the
shared ``cifar10-jpeg-train.tar.gz`` unpacked outside the repository):

1. first load: list + stat the 50,000 files, decode them, compute statistics, write the disk cache
   (into a fresh temporary cache folder unless ``--cache-dir`` is given);
2. cached load: the same ``load_split`` in a fresh state (memory cache cleared), served from disk;
3. per-epoch batching + augmentation: one pass of ``BatchLoader`` over the 45,000-image train split
   at batch 128 (shuffled; no augmentation, flip+crop4, flip+crop4+cutout16), median of ``--epochs``;
4. for scale, the model's training-step time at the same batch (a spikelite zoo CNN and its
   spiking version at T=4, forward + backward + SGD), extrapolated to an epoch;
5. optionally (``--compare-threads``) the standard epoch with the batch ops on all intra-op threads
   instead of BatchLoader's single-thread scope;
6. optionally (``--torchvision-baseline``) the usual torchvision pipeline — ``ImageFolder`` + PIL
   ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` through a
   ``DataLoader`` with ``--workers`` processes — over the same 45,000 images for one epoch.

    python benchmarks/data_pipeline.py --root /work/data/cifar10 --epochs 3 --torchvision-baseline --compare-threads
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time

import torch

from spikelite import data as D


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def epoch_time(loader: D.BatchLoader, epoch: int) -> float:
    loader.set_epoch(epoch)
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        n += y.numel()
    if loader.device.type == "cuda":
        torch.cuda.synchronize()
    assert n == loader.num_samples
    return time.perf_counter() - t0


def model_step_time(model_name: str, T: int | None, batch: int, steps: int, device: str) -> float:
    from torch import nn

    from spikelite.snn import spikify
    from spikelite.models import create_model

    torch.manual_seed(0)
    net = create_model(model_name, num_classes=10, image_size=32)
    if T:
        net = spikify(net, T=T)
    net = net.to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torchvision_epoch(root: str, train_idx: torch.Tensor, batch: int, workers: int, mean, std) -> float:
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    folder = torchvision.datasets.ImageFolder(f"{root}/train", transform=tf)
    subset = torch.utils.data.Subset(folder, train_idx.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
    t0 = time.perf_counter()
    n = 0
    for x, y in loader:
        n += y.numel()
    assert n == len(train_idx)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/work/data/cifar10", help="folder holding train/<class>/*.jpg")
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder, removed afterwards")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="squeezenet1_1", help="zoo model timed for scale ('' to skip)")
    parser.add_argument("--T", type=int, default=4, help="time steps of the spiking version (0 to skip)")
    parser.add_argument("--model-steps", type=int, default=3)
    parser.add_argument("--torchvision-baseline", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--compare-threads", action="store_true",
                        help="also time an epoch with the batch ops multi-threaded (CPU only)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.mkdtemp(prefix="spikelite-bench-cache-")
        cache_dir = tmp
    res: dict = {"threads": torch.get_num_threads(), "device": args.device, "batch_size": args.batch_size}
    try:
        D.clear_memory_cache()
        load = lambda split: D.load_split("cifar10", args.root, split, cache_dir=cache_dir)  # noqa: E731
        train, res["first_load_s"] = timed(lambda: load("train"))
        D.clear_memory_cache()
        _, res["cached_load_s"] = timed(lambda: load("train"))
        val, res["val_from_memory_s"] = timed(lambda: load("val"))
        res["train_images"], res["val_images"] = len(train), len(val)
        print(f"CIFAR-10 ImageFolder at {args.root}: train {len(train)}, val {len(val)} "
              f"({train.in_chans}x{train.image_size}x{train.image_size}), torch threads {res['threads']}")
        print(f"  first load (list, decode 50k JPEGs, stats, write cache): {res['first_load_s']:7.2f} s")
        print(f"  cached load (list + stat, read cache, split):             {res['cached_load_s']:7.2f} s")
        print(f"  val split from the in-memory cache:                       {res['val_from_memory_s']:7.2f} s")

        res["epoch_s"] = {}
        for aug in ("none", "standard", "standard+cutout16"):
            loader = D.BatchLoader(train, args.batch_size, shuffle=True, augment=D.Augment.from_name(aug),
                                   device=args.device, seed=0)
            times = [epoch_time(loader, e) for e in range(args.epochs)]
            res["epoch_s"][aug] = statistics.median(times)
            print(f"  one epoch, {len(loader)} batches of {args.batch_size}, augment={aug:<18} "
                  f"{res['epoch_s'][aug]:7.3f} s  (median of {args.epochs}; {min(times):.3f}-{max(times):.3f})")
        batches = len(D.BatchLoader(train, args.batch_size))

        if args.compare_threads and args.device == "cpu":
            # The same epoch with the batch ops spread over torch's intra-op threads (the single-thread
            # scope that BatchLoader uses on the CPU switched off).
            loader = D.BatchLoader(train, args.batch_size, shuffle=True, augment=D.Augment(), seed=0)
            scope = D._single_cpu_thread
            D._single_cpu_thread = lambda active: scope(False)
            try:
                times = [epoch_time(loader, e) for e in range(args.epochs)]
            finally:
                D._single_cpu_thread = scope
            res["epoch_s_all_threads"] = statistics.median(times)
            print(f"  same epoch (standard) with the batch ops on all {res['threads']} threads:      "
                  f"{res['epoch_s_all_threads']:7.3f} s  (median of {args.epochs}; {min(times):.3f}-{max(times):.3f})")

        if args.model:
            res["model"] = {}
            for T in ([0, args.T] if args.T else [0]):
                step = model_step_time(args.model, T, args.batch_size, args.model_steps, args.device)
                label = f"{args.model} CNN" if not T else f"{args.model} SNN T={T}"
                res["model"][label] = {"step_s": step, "epoch_s": step * batches}
                share = res["epoch_s"]["standard"] / (res["epoch_s"]["standard"] + step * batches)
                print(f"  {label:<28} train step {step:6.3f} s -> epoch ~{step * batches:7.1f} s; "
                      f"data pipeline (standard aug) = {100 * share:.2g} % of an epoch")

        if args.torchvision_baseline:
            # The same 45,000 images as load_split's train split (same file order, same seeded split).
            train_idx, _ = D.stratified_split(torch.tensor(_folder_labels(args.root)), None, 0)
            t = torchvision_epoch(args.root, train_idx, args.batch_size, args.workers, train.mean, train.std)
            res["torchvision_epoch_s"] = t
            print(f"  torchvision ImageFolder + PIL transforms, DataLoader({args.workers} workers), one epoch: "
                  f"{t:7.2f} s")
    finally:
        D.clear_memory_cache()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


def _folder_labels(root: str) -> list[int]:
    """Labels of torchvision's ImageFolder order (sorted classes, sorted files) — the order load_split uses."""
    import torchvision

    return [label for _, label in torchvision.datasets.ImageFolder(f"{root}/train").samples]


if __name__ == "__main__":
    raise SystemExit(main())
