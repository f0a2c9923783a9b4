"""The real training loop: `spikelite train` recipes timed side by side, as ratios to T x the CNN.

Each recipe is one epoch of the real command (its YAML recipe, optimiser, loss, augmentation and
data path) over the same stratified subset of the training images, run as a fresh process. One
round runs every recipe once, in a rotated order, so machine noise hits all alike; the training
time of an epoch (``epoch_seconds`` in its log.csv: data and compute, not the set-up, the
conversion or the evaluation) gives images per second. Each SNN recipe is reported as the median
over rounds of (SNN seconds per image) / (T x the CNN's seconds per image in the same round).

Recipes (``--recipes``, comma-separated):

* ``cnn``     configs/cnn_cifar10.yaml with ``--cnn-args`` (default --model-opt pool=avg --channels-last: the
  study's CNN runs);
* ``snn``     configs/snn_finetune_cifar10.yaml from ``--cnn`` (the CNN converted), T = ``--T``;
* ``snn-kd``  the same, distilled from ``--cnn`` (--distill-from);
* ``cnn-p``   the CNN recipe from ``--cnn-p`` (a pruned CNN checkpoint);
* ``snn-p``   the SNN recipe from ``--cnn-p``, distilled from it, its ratio taken to T x ``cnn-p``.

Evaluation (``--eval``): the evaluation `spikelite eval` runs (``train.metrics.evaluate``), of the CNN and of its
SNN (`spikelite convert`, the default method) over the same
validation images, the SNN's images per second as a fraction of the CNN's.

    python benchmarks/train_loop.py --data DIR --images 2560 --rounds 3 --threads 2

Extra arguments after ``--`` go to every `spikelite train` command (e.g. ``-- --set key=value``);
``--snn-args`` only to the SNN recipes (e.g. ``--snn-args="--channels-last"``); ``--variant ARGS`` adds, for
each SNN recipe, a copy ``NAME*`` run with ARGS as well, in the same rounds (an A/B of one setting).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "results/cifar10/squeezenet1_1/cnn-20ep/best.pt"
CNN_P = ROOT / "results/cifar10/squeezenet1_1/cnn-p/best.pt"


RECIPES = ("cnn", "snn", "snn-kd", "cnn-p", "snn-p")


def _spikelite() -> list[str]:
    return [sys.executable, "-m", "spikelite"]


def recipe_command(name: str, args, out: Path) -> list[str]:
    if name.endswith("*"):
        return recipe_command(name[:-1], args, out) + shlex.split(args.variant)
    common = (["--data", args.data] if args.data else []) + ["--out", str(out), "--epochs", "1", "--train-subset", str(args.images),
              "--val-subset", str(args.val_images), "--threads", str(args.threads), "--no-tensorboard", "--quiet"]
    cnn_recipe = ["train", "-c", str(ROOT / "configs/cnn_cifar10.yaml")] + shlex.split(args.cnn_args)
    snn_recipe = ["train", "-c", str(ROOT / "configs/snn_finetune_cifar10.yaml"), "--T", str(args.T)]
    snn_extra = shlex.split(args.snn_args)
    if name == "cnn":
        cmd = cnn_recipe
    elif name == "cnn-p":
        cmd = cnn_recipe + ["--cnn", "--init-from", args.cnn_p]
    elif name == "snn":
        cmd = snn_recipe + ["--init-from", args.cnn] + snn_extra
    elif name == "snn-kd":
        cmd = snn_recipe + ["--init-from", args.cnn, "--distill-from", args.cnn] + snn_extra
    elif name == "snn-p":
        cmd = snn_recipe + ["--init-from", args.cnn_p, "--distill-from", args.cnn_p] + snn_extra
    else:
        raise SystemExit(f"unknown recipe {name!r}: choose from cnn, cnn-p, snn, snn-kd, snn-p")
    return _spikelite() + cmd + common + list(args.extra)


def run_recipe(name: str, args, work: Path, round_: int) -> dict:
    out = work / f"{name}-r{round_}"
    cmd = recipe_command(name, args, out)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"recipe {name} failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    row = rows[-1]
    seconds = float(row["epoch_seconds"])
    return {"recipe": name, "round": round_, "epoch_seconds": seconds, "images": args.images,
            "images_per_second": args.images / seconds, "data_seconds": float(row["data_seconds"]),
            "wall_seconds": wall}


def eval_rate(checkpoint: str, args) -> float:
    """Images per second of `spikelite eval`'s evaluation (the model and data loaded, not timed)."""
    import torch

    from spikelite.allocator import retain_freed_memory
    from spikelite.checkpoint import checkpoint_data, load_model
    from spikelite.train.metrics import evaluate

    retain_freed_memory()  # as `spikelite eval` does (malloc: retain)
    torch.set_num_threads(args.threads)
    model, meta = load_model(checkpoint, device="cpu")
    data, _ = checkpoint_data(meta, checkpoint, "val", data_root=args.data or None)
    data = data.subset(torch.arange(min(args.eval_images, len(data))))
    evaluate(model, data.subset(torch.arange(min(args.eval_batch, len(data)))), batch_size=args.eval_batch,
             fast=args.fast)  # warm-up: kernels chosen, memory reserved
    t0 = time.perf_counter()
    evaluate(model, data, batch_size=args.eval_batch, fast=args.fast)
    return len(data) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder (train/<class>/*.jpg); none for a dataset that "
                                                  "needs no folder (e.g. -- --dataset digits)")
    ap.add_argument("--cnn", default=str(CNN), help="the CNN checkpoint the SNN recipes convert [%(default)s]")
    ap.add_argument("--cnn-p", default=str(CNN_P), help="a pruned CNN checkpoint for cnn-p / snn-p")
    ap.add_argument("--recipes", default="cnn,snn,snn-kd", help="comma-separated: cnn, snn, snn-kd, cnn-p, snn-p")
    ap.add_argument("--images", type=int, default=2560, help="training images per epoch (a stratified subset)")
    ap.add_argument("--val-images", type=int, default=100, help="validation images (its time is not counted)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cnn-args", default="--model-opt pool=avg --channels-last",
                    help="extra arguments for the CNN recipes [%(default)s: the study's SqueezeNet CNN runs]")
    ap.add_argument("--snn-args", default="", help="extra arguments for the SNN recipes only")
    ap.add_argument("--variant", default=None, help="also run each SNN recipe with these extra arguments (NAME*)")
    ap.add_argument("--eval", action="store_true", help="also time `spikelite eval` of the CNN and its SNN")
    ap.add_argument("--eval-only", action="store_true", help="time the evaluation only (no training recipes)")
    ap.add_argument("--snn", default=None, help="with --eval: this SNN checkpoint instead of --cnn converted")
    ap.add_argument("--fast", action="store_true", help="with --eval: evaluate inference copies (spikelite eval --fast)")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--eval-batch", type=int, default=500, help="evaluation batch size (the recipes' default)")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the raw rows and the summary here")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for every train command")
    args = ap.parse_args(argv)
    args.extra = [a for a in args.extra if a != "--"]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {', '.join(unknown)}: choose from {', '.join(RECIPES)}")
    if "cnn" not in recipes:
        recipes.insert(0, "cnn")
    if "snn-p" in recipes and "cnn-p" not in recipes:
        recipes.insert(recipes.index("snn-p"), "cnn-p")
    if args.variant:
        recipes += [r + "*" for r in recipes if r.startswith("snn")]

    rows = []
    if args.eval_only:
        args.eval, args.rounds, recipes = True, max(args.rounds, 1), []
    with tempfile.TemporaryDirectory(prefix="train_loop_") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for r in range(args.rounds if recipes else 0):
            order = recipes[r % len(recipes):] + recipes[:r % len(recipes)]
            for name in order:
                row = run_recipe(name, args, work, r)
                rows.append(row)
                print(f"round {r + 1}/{args.rounds}  {name:7s} {row['images_per_second']:7.1f} images/s  "
                      f"({row['epoch_seconds']:.1f} s, data {row['data_seconds']:.2f} s)", flush=True)

    def rate(name, r):
        return next(x["images_per_second"] for x in rows if x["recipe"] == name and x["round"] == r)

    summary = {}
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, "
          f"{args.images} images, T = {args.T}, {args.rounds} rounds; median over rounds")
    for name in recipes:
        med = statistics.median(x["images_per_second"] for x in rows if x["recipe"] == name)
        line = f"{name:7s} {med:7.1f} images/s"
        if name.endswith("*"):
            line += f"  (+ {args.variant})"
        if name.startswith("snn"):
            base = "cnn-p" if name.startswith("snn-p") else "cnn"
            ratios = [rate(base, r) / rate(name, r) / args.T for r in range(args.rounds)]
            summary[name] = {"images_per_second": med, "ratio_to_T_cnn": statistics.median(ratios),
                             "ratios": ratios, "baseline": base}
            line += f"   {statistics.median(ratios):.2f} x (T x {base})  [rounds: " + \
                ", ".join(f"{x:.2f}" for x in ratios) + "]"
        else:
            summary[name] = {"images_per_second": med}
        print(line)
    if args.eval:
        with tempfile.TemporaryDirectory(prefix="train_loop_eval_") as tmp:
            snn = Path(args.snn) if args.snn else Path(tmp) / "snn.pt"
            if not args.snn:  # the CNN converted by spikelite convert's default method
                convert = _spikelite() + ["convert", args.cnn, "--T", str(args.T), "--out", str(snn),
                                          "--threads", str(args.threads)] + (["--data", args.data] if args.data else [])
                conv = subprocess.run(convert, capture_output=True, text=True, check=False)
                if conv.returncode != 0:
                    raise SystemExit(f"convert failed:\n{conv.stderr[-3000:]}")
            pairs = []
            for _ in range(args.rounds):
                c = eval_rate(args.cnn, args)
                s = eval_rate(str(snn), args)
                pairs.append((c, s))
            frac = statistics.median(s / c for c, s in pairs)
            summary["eval"] = {"cnn_images_per_second": statistics.median(c for c, _ in pairs),
                               "snn_images_per_second": statistics.median(s for _, s in pairs),
                               "snn_fraction_of_cnn": frac}
            print(f"eval    CNN {summary['eval']['cnn_images_per_second']:.0f} images/s, SNN (T = {args.T}) "
                  f"{summary['eval']['snn_images_per_second']:.0f} images/s: {frac:.2f} x the CNN's")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
