"""``spikelite train``: the command line of :mod:`spikelite.train`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from .._io import parse_value
from ..checkpoint import read_checkpoint
from ..data import DATASETS
from ..errors import SpikeliteError
from ._flags import add_data, add_json, add_runtime, apply_runtime
from ..train import MODES, evaluate_checkpoint, load_config, train
from ..train.runtime import is_main_process

# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

# (flag, dotted key, type, help). Flags override the YAML recipe; --set reaches every other key.
_FLAGS = [
    ("--out", "out", str, "run directory (checkpoints, log.csv, summary.json)"),
    ("--model", "model.name", str, "zoo model name (spikelite models)"),
    ("--width", "model.width", float, "width multiplier"),
    ("--dataset", "data.dataset", str, f"dataset: {', '.join(DATASETS)}"),
    ("--data", "data.root", str, "dataset folder"),
    ("--val-size", "data.val_size", parse_value, "validation split: a count or a fraction"),
    ("--image-size", "data.image_size", int, "resize images to this size"),
    ("--augment", "data.augment", str, "auto, none, standard, or e.g. flip+crop4+cutout16"),
    ("--train-subset", "data.train_subset", int, "train on a stratified subset of N images"),
    ("--val-subset", "data.val_subset", int, "evaluate on a stratified subset of N validation images"),
    ("--epochs", "epochs", int, "training epochs (0 with --init-from: convert and evaluate only)"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--optimizer", "optim.optimizer", str, "sgd (Nesterov momentum) or adamw"),
    ("--lr", "optim.lr", float, "peak learning rate"),
    ("--momentum", "optim.momentum", float, "SGD momentum"),
    ("--weight-decay", "optim.weight_decay", float, "weight decay (not on BN, biases, neuron parameters)"),
    ("--neuron-weight-decay", "optim.neuron_weight_decay", float, "weight decay on learnable neuron parameters "
     "(PLIF τ, thresholds; default 0)"),
    ("--warmup-epochs", "optim.warmup_epochs", float, "linear warm-up length in epochs"),
    ("--min-lr", "optim.min_lr", float, "learning rate at the end of the cosine"),
    ("--schedule", "optim.schedule", str, "cosine or constant"),
    ("--label-smoothing", "optim.label_smoothing", float, "label smoothing"),
    ("--grad-clip", "optim.grad_clip", float, "clip the gradient norm"),
    ("--init-from", "init_from", str, "start from this checkpoint (a CNN checkpoint is converted to an SNN)"),
    ("--distill-from", "distill.teacher", str, "distil from this trained checkpoint (CNN or SNN), or 'source': the CNN "
     "the --init-from checkpoint descends from"),
    ("--distill-weight", "distill.weight", float, "weight of the distillation term (the task loss gets 1 - it)"),
    ("--distill-temperature", "distill.temperature", float, "softmax temperature of the distillation term"),
    ("--T", "snn.T", int, "SNN time steps"),
    ("--eval-T", "snn.eval_T", int, "validate the SNN (and record its checkpoints) at this many time steps; train at --T"),
    ("--encoding", "snn.encoding", str, "direct or rate"),
    ("--time-bn", "snn.time_bn", str, "shared (one set of BatchNorm statistics for all steps) or per-step"),
    ("--surrogate", "snn.neuron.surrogate", str, "surrogate gradient (sigmoid, atan, fast_sigmoid, ...)"),
    ("--balance", "snn.balance", float, "threshold balancing percentile when converting (e.g. 99.9)"),
    ("--balance-mode", "snn.balance_mode", str, "snn or cnn"),
    ("--calibration-size", "snn.calibration_size", int, "training images used for balancing"),
    ("--seed", "seed", int, "training seed"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N"),
    ("--amp", "amp", str, "mixed precision on CUDA: auto, bf16, fp16, off"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--malloc", "malloc", str, "retain (glibc keeps freed memory: no page faults per step; docs/performance.md) "
                                "or system"),
    ("--save-every-steps", "save_every_steps", int, "also write last.pt every N steps"),
    ("--state-dtype", "state_dtype", str, "optimizer state in last.pt: float32, or bfloat16 (a third smaller; a "
                                          "resume rounds once)"),
    ("--eval-every", "eval_every", int, "validate every N epochs"),
]


def _overrides_from_args(args: argparse.Namespace) -> dict:
    ov: dict = {}
    for flag, key, _, _ in _FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            ov[key] = value
    if args.mode:
        ov["mode"] = args.mode
    elif args.snn:
        ov["mode"] = "snn"
    elif args.cnn:
        ov["mode"] = "cnn"
    elif args.init_from:
        ov["mode"] = "snn"  # --init-from CNN.ckpt: the conversion pipeline unless --cnn says otherwise
    if args.tet:
        ov["snn.tet"] = True
    if args.no_tet:
        ov["snn.tet"] = False
    if args.channels_last:
        ov["channels_last"] = True
    if args.no_channels_last:
        ov["channels_last"] = False
    if args.recompute_neurons:
        ov["recompute_neurons"] = True
    if args.no_recompute_neurons:
        ov["recompute_neurons"] = False
    if args.no_compact_spikes:
        ov["compact_spikes"] = False
    if args.spike_inputs:
        ov["snn.spike_inputs"] = True
    if args.no_nesterov:
        ov["optim.nesterov"] = False
    if args.quiet:
        ov["quiet"] = True
    if args.no_tensorboard:
        ov["tensorboard"] = False
    for item, prefix in [(x, "snn.neuron.") for x in args.neuron or []] + \
                        [(x, "model.options.") for x in args.model_opt or []] + [(x, "") for x in args.set or []]:
        if "=" not in item:
            raise SpikeliteError(f"{item!r} must look like key=value")
        k, v = item.split("=", 1)
        ov[prefix + k.strip()] = parse_value(v.strip())
    return ov


_DATA_KEYS_FROM_SOURCE = ("dataset", "root", "val_size", "split_seed", "image_size", "channels")


def _base_from_checkpoint(path: str) -> dict:
    """Recipe defaults taken from a source checkpoint: its data settings and its architecture."""
    ckpt = read_checkpoint(path)
    base: dict = {}
    src_data = (ckpt.get("config") or {}).get("data")
    if isinstance(src_data, dict):
        base["data"] = {k: src_data[k] for k in _DATA_KEYS_FROM_SOURCE if k in src_data}
    elif isinstance(ckpt.get("data"), dict):
        info = ckpt["data"]
        base["data"] = {"dataset": info.get("dataset"), "root": info.get("root"), "val_size": info.get("val_size"),
                        "split_seed": info.get("split_seed", 0), "image_size": info.get("image_size")}
    spec = dict(ckpt["model_spec"])
    base["model"] = {"name": spec.pop("name"), "width": spec.pop("width", 1.0),
                     "options": {k: v for k, v in spec.items() if k not in ("num_classes", "image_size", "in_chans")}}
    return base


def _cli_train(args: argparse.Namespace) -> int:
    overrides = _overrides_from_args(args)
    cfg = load_config(args.config, overrides)
    last = Path(cfg.out) / "last.pt"
    if args.resume and last.exists():
        stored = read_checkpoint(last).get("config")
        if not isinstance(stored, dict):
            raise SpikeliteError(f"{last} does not record its recipe; cannot resume")
        # the stored recipe, with this command line's YAML and flags on top (train() refuses changes)
        cfg = load_config(args.config, overrides, base=stored)
    elif cfg.init_from:
        # Start from the source checkpoint's data (same dataset, split and image size: the SNN must not
        # train on the CNN's validation images) and architecture; the YAML and flags still win.
        cfg = load_config(args.config, overrides, base=_base_from_checkpoint(cfg.init_from))
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    summary = train(cfg, resume=args.resume)
    if is_main_process() and not cfg.quiet:
        final = summary.get("final") or {}
        if final.get("val_acc") is not None:
            print(f"done: val acc {100 * final['val_acc']:.2f}%, macro-F1 {final['val_f1']:.4f}; "
                  f"checkpoint {summary['checkpoint']}")
    return 0


def _cli_eval(args: argparse.Namespace) -> int:
    device = apply_runtime(args)
    res = evaluate_checkpoint(args.checkpoint, data_root=args.data, dataset=args.dataset, split=args.split,
                              batch_size=args.batch_size, device=device, T=args.T, fast=args.fast)
    if args.json:
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
        return 0
    what = f"{res['kind'].upper()} {res['model']}" + (f", T={res['T']}" if res["T"] else "")
    print(f"checkpoint: {res['checkpoint']} ({what}" + (f", epoch {res['epoch']}" if res["epoch"] is not None else "")
          + ")")
    where = f" ({res['root']})" if res["root"] else ""
    print(f"data: {res['dataset']} {res['split']} split, {res['n']} images{where}")
    print(f"accuracy {100 * res['accuracy']:.2f}%  macro-F1 {res['macro_f1']:.4f}  loss {res['loss']:.4f}  "
          f"({res['seconds']:.1f} s)")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN or SNN from a recipe (YAML and/or flags)",
                       description="Train a zoo CNN, or its spiking version, from one recipe. Flags override the "
                                   "YAML recipe; --set KEY=VALUE reaches any recipe key (see docs/training.md).")
    p.add_argument("--config", "-c", help="YAML recipe file")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (start fresh when there is none)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--snn", action="store_true", help="train the spiking network (mode snn)")
    mode.add_argument("--cnn", action="store_true", help="train the CNN (mode cnn)")
    mode.add_argument("--mode", choices=MODES, help="cnn or snn")
    for flag, key, tp, help_text in _FLAGS:
        p.add_argument(flag, type=tp, default=None, help=f"{help_text} [{key}]")
    nhwc = p.add_mutually_exclusive_group()
    nhwc.add_argument("--channels-last", action="store_true",
                      help="NHWC memory format for conv weights and activations (default auto: on the CPU, off on "
                           "CUDA) [channels_last]")
    nhwc.add_argument("--no-channels-last", action="store_true", help="keep the default NCHW memory format")
    recompute = p.add_mutually_exclusive_group()
    recompute.add_argument("--recompute-neurons", action="store_true",
                           help="SNN: keep only each BatchNorm -> neuron pair's input for backward and recompute the "
                                "pair (less memory, same gradients; default auto: on for CPU runs) [recompute_neurons]")
    recompute.add_argument("--no-recompute-neurons", action="store_true",
                           help="SNN: keep every tensor backward needs (more memory)")
    p.add_argument("--no-compact-spikes", action="store_true",
                   help="SNN: keep spike maps for backward as floats instead of 1-byte booleans (about a third more "
                        "activation memory, 5-9%% less time per step at T = 1-2 on a 2-core CPU; same gradients) [compact_spikes]")
    p.add_argument("--spike-inputs", action="store_true",
                   help="SNN: a neuron layer before every conv that would read non-spikes (residual streams, "
                        "linear bottlenecks), so every conv but the stem reads spikes [snn.spike_inputs]")
    tet = p.add_mutually_exclusive_group()
    tet.add_argument("--tet", action="store_true", help="TET loss: cross-entropy at every time step [snn.tet]")
    tet.add_argument("--no-tet", action="store_true", help="cross-entropy of the time-averaged output [snn.tet]")
    p.add_argument("--no-nesterov", action="store_true", help="plain momentum SGD [optim.nesterov]")
    p.add_argument("--neuron", action="append", metavar="KEY=VALUE",
                   help="neuron option, e.g. tau=2.0, v_threshold=0.5, kind=if (repeatable) [snn.neuron]")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="create_model option, e.g. pool=avg (repeatable) [model.options]")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any recipe key, e.g. optim.betas=[0.9,0.99] (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    p.set_defaults(func=_cli_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: accuracy and macro-F1",
                       description="Rebuild a checkpoint's model from the file alone and report top-1 accuracy, "
                                   "macro-F1 and loss on a split of its dataset.")
    e.add_argument("checkpoint", help="a spikelite checkpoint (.pt)")
    add_data(e)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--T", type=int, default=None, help="evaluate an SNN with this many time steps")
    e.add_argument("--fast", action="store_true",
                   help="evaluate an inference copy (BatchNorm folded, NHWC on the CPU): about 1.3x faster, the same "
                        "network up to float rounding (an SNN may fire a few spikes differently)")
    add_runtime(e)
    add_json(e, "print the metrics (and confusion matrix) as JSON")
    e.set_defaults(func=_cli_eval)
