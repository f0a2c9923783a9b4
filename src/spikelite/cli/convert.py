"""``spikelite convert``: a trained CNN checkpoint → an SNN checkpoint, with no training.

The SNN is :func:`spikelite.snn.convert`'s: ConversionIF neurons (soft reset, half-threshold initial
potential, spikes that carry the threshold, signed spikes), thresholds from the CNN's QCFS λ or from the
percentile of each activation on calibration images of the checkpoint's own training split, BatchNorm as
trained. The output is an ordinary SNN checkpoint (eval, energy, prune, export, ``train --init-from``).
With ``--check N`` it also measures the CNN and the SNN on N validation images at each ``--check-T``, and
the per-layer error of the time-averaged spikes against the CNN's activations. Those passes (and the bias
correction) run the SNN in windows of time steps when T x images is large (``--time-chunk``, default auto), so
their memory does not grow with T.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..data import BatchLoader, stratified_split
from ..errors import SpikeliteError
from ..snn import convert, correct_bias, layer_errors

__all__ = ["convert_checkpoint", "register_cli"]


def _images(data) -> torch.Tensor:
    """All of ``data`` as one normalised float batch (the training loader's normalisation)."""
    return next(iter(BatchLoader(data, len(data), shuffle=False, augment=None)))[0]


def convert_checkpoint(path: str, out: str, *, T: int = 4, data_root: str | None = None, dataset: str | None = None,
                       calibration_size: int = 256, percentile: float = 99.9, signed: bool = True,
                       v_init: float = 0.5, burst: int = 1, rate: int = 1, bias_correction: bool = False, seed: int = 0, check: int = 0, check_T: tuple[int, ...] = (),
                       force: bool = False, time_chunk="auto", log=print) -> dict:
    """Convert the CNN checkpoint at ``path`` and write the SNN checkpoint ``out``; returns a summary dict
    (``{"checkpoint", "source", "T", "thresholds", "check": {...}}``). ``time_chunk``: how the bias correction
    and the check run the SNN's time steps (:attr:`spikelite.snn.SpikingNet.time_chunk`: ``"auto"``, K steps
    per window, or None for one pass)."""
    from ..checkpoint import checkpoint_data, load_model, save_checkpoint
    from ..train import evaluate

    out_path = Path(out)
    if out_path.exists() and not force:
        raise SpikeliteError(f"{out_path} exists; pass --force to replace it")
    if out_path.exists() and out_path.is_dir():
        raise SpikeliteError(f"{out_path} is a directory; --out names the SNN checkpoint file to write")
    if calibration_size < 1:
        raise SpikeliteError(f"--calibration-size must be >= 1, got {calibration_size}")
    if check < 0:
        raise SpikeliteError(f"--check must be >= 0, got {check}")
    cnn, meta = load_model(path)
    if meta.get("kind") != "cnn":
        raise SpikeliteError(f"{path} is an {meta.get('kind', '?').upper()} checkpoint; convert takes a CNN checkpoint")
    train_data, root = checkpoint_data(meta, path, "train", data_root=data_root, dataset=dataset)
    n_cal = min(calibration_size, len(train_data))
    _, idx = stratified_split(train_data.labels, n_cal, seed) if n_cal < len(train_data) else (None, torch.arange(len(train_data)))
    calibration = _images(train_data.subset(idx))
    t0 = time.perf_counter()
    snn = convert(cnn, T=T, calibration=calibration, percentile=percentile, signed=signed, v_init=v_init, burst=burst,
                  rate=rate)
    snn.time_chunk = time_chunk  # checked here, before any long pass (not saved: a runtime setting)
    corrected = 0
    if bias_correction:  # on another draw of training images: on the thresholds' own images it corrected less
        _, bidx = stratified_split(train_data.labels, n_cal, seed + 1) if n_cal < len(train_data) else (None, idx)
        corrected = correct_bias(snn, cnn, _images(train_data.subset(bidx)))
    seconds = time.perf_counter() - t0
    thresholds = {p: float(a.neuron.v_threshold) for p, a in snn.spiking_layers()}
    src = str(Path(path).resolve())
    save_meta = {k: v for k, v in meta.items() if k in ("data", "config", "prune", "best", "epoch")}
    save_meta["metrics"] = None
    save_meta["source_checkpoint"] = {"path": src, "kind": "cnn", "metrics": meta.get("metrics")}
    save_meta["conversion"] = {"method": "convert", "T": T, "percentile": percentile, "signed": signed,
                               "v_init": v_init, "burst": burst, "rate": rate, "bias_corrected_layers": corrected, "calibration_images": n_cal, "calibration_seed": seed,
                               "thresholds": thresholds}
    summary = {"checkpoint": str(out_path), "source": src, "T": T, "seconds": seconds, "thresholds": thresholds}
    if check:
        val, _ = checkpoint_data(meta, path, "val", data_root=root, dataset=dataset)
        n = min(check, len(val))
        _, vidx = stratified_split(val.labels, n, seed) if n < len(val) else (None, torch.arange(len(val)))
        val = val.subset(vidx)
        res = {"images": n, "cnn": evaluate(cnn, val, batch_size=200)["accuracy"], "snn": {}}
        log(f"CNN: {100 * res['cnn']:.2f}% on {n} validation images")
        for t in check_T or (T,):
            snn.T = t
            t1 = time.perf_counter()
            res["snn"][str(t)] = acc = evaluate(snn, val, batch_size=max(8, 1600 // t))["accuracy"]
            log(f"SNN T={t}: {100 * acc:.2f}% ({100 * (acc - res['cnn']):+.2f} points, {time.perf_counter() - t1:.0f} s)")
        snn.T = T
        res["layers"] = layer_errors(cnn, snn, _images(val.subset(torch.arange(min(n, 200)))))
        summary["check"] = res
        save_meta["conversion"]["check"] = {k: v for k, v in res.items() if k != "layers"}
    save_checkpoint(out_path, snn, meta=save_meta)
    log(f"wrote {out_path}: SNN T={T}, {len(thresholds)} ConversionIF layers (converted in {seconds:.1f} s)")
    return summary


def _time_chunk(text: str):
    """``--time-chunk``: ``auto``, ``off`` (one pass) or a positive number of time steps per window."""
    word = text.strip().lower()
    if word == "auto":
        return "auto"
    if word in ("off", "none"):
        return None
    try:
        k = int(word)
    except ValueError:
        k = 0
    if k < 1:
        raise SpikeliteError(f"--time-chunk must be auto, off or a positive number of time steps, got {text!r}")
    return k


def _cli(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise SpikeliteError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    check_T = tuple(int(t) for t in args.check_T.split(",")) if args.check_T else ()
    if any(t < 1 for t in check_T):
        raise SpikeliteError(f"--check-T must be positive integers, got {args.check_T}")
    quiet = args.json
    time_chunk = _time_chunk(args.time_chunk)
    summary = convert_checkpoint(
        args.checkpoint, args.out, T=args.T, data_root=args.data, dataset=args.dataset,
        calibration_size=args.calibration_size, percentile=args.percentile, signed=not args.unsigned,
        v_init=args.v_init, burst=args.burst, rate=args.rate, bias_correction=args.bias_correction, seed=args.seed, check=args.check, check_T=check_T, force=args.force,
        time_chunk=time_chunk, log=(lambda *a: None) if quiet else print)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    elif args.check and args.layers:
        print("per-layer error at T=%d (mean |SNN rate x amplitude - CNN| / mean |CNN|, 200 images):" % args.T)
        for row in summary["check"]["layers"]:
            print(f"  {row['layer']:<44} {row['error']:.3f}")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a trained CNN checkpoint to an SNN checkpoint (no training)",
                       description="Convert a CNN checkpoint into a rate-coded SNN that converges to it as T grows: "
                                   "ConversionIF neurons with thresholds from the CNN (QCFS λ or activation "
                                   "percentiles on calibration images), BatchNorm kept (docs/conversion.md).")
    p.add_argument("checkpoint", help="a spikelite CNN checkpoint (.pt)")
    p.add_argument("--out", "-o", required=True, help="the SNN checkpoint file to write")
    p.add_argument("--T", type=int, default=4, help="time steps recorded in the SNN checkpoint (default 4)")
    p.add_argument("--data", help="dataset folder (default: the one recorded in the checkpoint)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--calibration-size", type=int, default=256,
                   help="training images whose activations set the thresholds (default 256)")
    p.add_argument("--percentile", type=float, default=99.9,
                   help="threshold = this percentile of each activation's output (default 99.9); QCFS λ wins")
    p.add_argument("--unsigned", action="store_true", help="no negative spikes (plain soft-reset IF)")
    p.add_argument("--v-init", type=float, default=0.5, help="initial membrane potential, a fraction of the "
                                                             "threshold (default 0.5)")
    p.add_argument("--burst", type=int, default=1, help="spikes per step at most (default 1; with --burst >= T a "
                                                       "QCFS CNN with T levels converts exactly)")
    p.add_argument("--rate", type=int, default=1,
                   help="spikes per step on average at most (default 1; thresholds divided by it, needs --burst >= "
                        "rate): with --rate r and --burst >= r*T a QCFS CNN with r*T levels converts exactly at T")
    p.add_argument("--bias-correction", action="store_true",
                   help="after converting, shift each neuron's input so its mean output per channel matches the "
                        "CNN's on the calibration images, at --T (SNN calibration)")
    p.add_argument("--seed", type=int, default=0, help="which calibration / check images (default 0)")
    p.add_argument("--check", type=int, default=0, metavar="N",
                   help="also measure CNN and SNN on N validation images, and the per-layer error")
    p.add_argument("--check-T", help="comma-separated T values for --check (default: --T)")
    p.add_argument("--layers", action="store_true", help="with --check: print the per-layer error")
    p.add_argument("--time-chunk", default="auto", metavar="K|auto|off",
                   help="run the SNN of --check and --bias-correction in windows of at most K time steps, so memory "
                        "does not grow with T (default auto: when T x images is large; off: all steps at once)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cli)
