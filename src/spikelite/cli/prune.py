"""``spikelite prune``: the command line of :mod:`spikelite.prune`."""

from __future__ import annotations

import argparse
import re
import sys

from ..errors import SpikeliteError
from ..prune import META_STRATEGIES, SCHEDULE_GRAMMAR, PruneConfig, candidate_table, run_pruning

# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t for t in re.split(r"[,\s]+", text) if t]


def _cli(args: argparse.Namespace) -> int:
    strategy = args.strategy
    if strategy is None:
        if args.keep is not None or args.remove is not None:
            strategy = "keep"
        else:
            raise SpikeliteError(f"choose --strategy ({', '.join(META_STRATEGIES)}, or a schedule: "
                                 f"{SCHEDULE_GRAMMAR}), or give --keep / --remove")
    overrides = list(args.set or [])
    for flag, key in (("lr", "optim.lr"), ("batch_size", "batch_size"), ("train_subset", "data.train_subset"),
                      ("warmup_epochs", "optim.warmup_epochs")):
        v = getattr(args, flag)
        if v is not None:
            overrides.append(f"{key}={v}")
    cfg = PruneConfig(strategy=strategy, keep=_names(args.keep), remove=_names(args.remove), max_drop=args.max_drop,
                      energy_budget=args.energy_budget, finetune_epochs=args.finetune_epochs, rank_by=args.rank_by,
                      ablation=not args.no_ablation, candidates_per_step=args.candidates_per_step,
                      calibration_size=args.calibration_size, energy_samples=args.energy_samples,
                      profile=args.profile, overrides=overrides, device=args.device, threads=args.threads,
                      seed=args.seed, val_subset=args.val_subset, quiet=args.quiet)
    result = run_pruning(args.checkpoint, cfg, args.out, data_root=args.data, dataset=args.dataset,
                         overwrite=args.overwrite)
    sys.stdout.write("\n" + candidate_table(result))
    print(f"stop: {result.stop_reason}")
    if result.output:
        print(f"pruned checkpoint: {result.output}")
    print("tables: " + ", ".join(v for k, v in result.files.items() if k != "checkpoint"))
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="remove whole macro modules (fire modules, units, blocks) and fine-tune",
                       description="Module-level structured pruning of a checkpoint's CNN or SNN: an explicit keep "
                                   "set, the paper's SqueezeNet schedules, a one-shot ranked schedule (ablation-25%), "
                                   "or a greedy search under an accuracy-drop or energy budget; every candidate is "
                                   "fine-tuned and measured (docs/pruning.md).")
    p.add_argument("checkpoint", help="a spikelite checkpoint (.pt) of a zoo CNN or SNN")
    p.add_argument("--data", help="dataset folder (default: the one recorded in the checkpoint)")
    p.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    p.add_argument("--strategy", type=str.lower, metavar="STRATEGY",
                   help="keep (with --keep/--remove), paper (all of Table 3's schedules), greedy, importance (report "
                        "only), or one schedule: head-1 ... ref-2, keep:a+b, remove:a+b, ablation-K, ablation-P%%, "
                        "taylor-K, taylor-P%% (docs/pruning.md)")
    p.add_argument("--keep", help="comma-separated modules to keep (e.g. fire4,fire6,fire8,fire9 or F4,F6,F8,F9)")
    p.add_argument("--remove", help="comma-separated modules to remove")
    p.add_argument("--max-drop", type=float, help="greedy: largest accuracy drop in points vs the unpruned model")
    p.add_argument("--energy-budget", help="greedy: stop at this energy: a fraction of the unpruned model's (0.6, "
                                           "60%%) or per image (0.12mJ, 120uJ)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs per candidate (default 1)")
    p.add_argument("--rank-by", choices=("ablation", "taylor"), default="ablation",
                   help="greedy: importance that orders removals (default ablation: exact, one calibration pass "
                        "per module; taylor: one forward+backward pass)")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the exact-ablation importance (one pass per module; greedy still runs it when it "
                        "ranks by ablation)")
    p.add_argument("--candidates-per-step", type=int, default=1,
                   help="greedy: fine-tune the K least important removals per step and keep the most accurate "
                        "within --max-drop (default 1)")
    p.add_argument("--calibration-size", type=int, default=256,
                   help="training images for importance and projection fits (default 256)")
    p.add_argument("--energy-samples", type=int, default=64, help="validation images for energy (default 64)")
    p.add_argument("--profile", default="45nm-fp32", help="energy profile (default 45nm-fp32, the paper's)")
    p.add_argument("--val-subset", type=int, help="evaluate on a stratified subset of N validation images")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate [optim.lr]")
    p.add_argument("--warmup-epochs", type=float, help="fine-tuning warm-up [optim.warmup_epochs]")
    p.add_argument("--batch-size", type=int, help="fine-tuning batch size [batch_size]")
    p.add_argument("--train-subset", type=int, help="fine-tune on a stratified subset of N images [data.train_subset]")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any fine-tuning recipe key (spikelite train), e.g. optim.weight_decay=0 (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of fine-tuning, subsets and spike draws")
    p.add_argument("-o", "--out", required=True, help="the pruned checkpoint to write (tables go next to it)")
    p.add_argument("--overwrite", action="store_true", help="replace fine-tuning runs left by an earlier prune to -o")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=_cli)
