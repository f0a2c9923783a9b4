"""SNN recipe ablation on CIFAR-10 (the protocol of docs/recipe.md), every row run with ``spikelite train``.

Every row is one ``spikelite train`` command on the same cheap proxy: ``squeezenet1_1`` (BatchNorm,
``stem_reduction=2``: 16x16 maps after the stem, so an SNN epoch takes minutes on a laptop CPU), a
stratified 10,000-image subset of the 45k training split, 3 epochs (``--epochs`` changes it), batch 128,
T=4, validated on a stratified 2,000-image subset of the 5k validation split. Rows differ only in the
flags listed in ROWS; SNN rows spell out their neuron options, so they keep their meaning whatever
spikelite's defaults are. ``from-*`` rows convert a CNN row's best checkpoint (``--cnn-runs``).

    python benchmarks/recipe_ablation.py --data DATA/cifar10 --runs runs/recipe --rows cnn snn-defaults recipe
    python benchmarks/recipe_ablation.py --data DATA/cifar10 --runs runs/recipe_ft --cnn-runs runs/recipe \
        --epochs 1 --rows from-cnn
    python benchmarks/recipe_ablation.py --data DATA/cifar10 --runs runs/recipe --table   # Markdown table

Each row's run directory is ``<runs>/<row>``; a finished row (summary.json present) is not run again, an
interrupted one resumes (``--resume``). After training, the best checkpoint's firing rate is measured with
``spikelite.energy.measure`` on 256 validation images and stored with the command in ``extra.json``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

PROXY = ["--model", "squeezenet1_1", "--model-opt", "stem_reduction=2", "--dataset", "cifar10",
         "--train-subset", "10000", "--val-subset", "2000", "--epochs", "3", "--batch-size", "128",
         "--T", "4", "--no-tensorboard", "--quiet"]

# The recipe under test; the leave-one-out rows below take one ingredient back to the default.
ADAMW = ["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05"]
RECIPE = [*ADAMW, "--neuron", "decay_input=false", "--neuron", "detach_reset=true", "--neuron", "surrogate=atan",
          "--model-opt", "pool=avg", "--tet"]


def _swap(args: list[str], old: str, new: str) -> list[str]:
    return [new if a == old else a for a in args]


def _drop(args: list[str], *pair: str) -> list[str]:
    out = list(args)
    i = next(k for k in range(len(out) - len(pair) + 1) if out[k:k + len(pair)] == list(pair))
    del out[i:i + len(pair)]
    return out


# SpikingJelly's LIF defaults and no TET, spelled out (spikelite train's own defaults are the recipe's)
SJ_DEFAULTS = ["--neuron", "decay_input=true", "--neuron", "detach_reset=false", "--neuron", "surrogate=sigmoid",
               "--no-tet"]

FROM_CNN = ["--snn", "--init-from", "@cnn", *_swap(_drop(RECIPE, "--model-opt", "pool=avg"), "0.002", "0.001")]

ROWS: dict[str, tuple[str, list[str]]] = {
    "cnn": ("the CNN: SGD + Nesterov, lr 0.1, wd 5e-4, cosine", ["--cnn"]),
    "cnn-adamw": ("the CNN with AdamW (lr 2e-3, wd 0.05)", ["--cnn", *ADAMW]),
    "snn-defaults": ("SNN, SpikingJelly's LIF defaults (tau 2, V_th 1, hard reset, decay_input, sigmoid a=4), "
                     "max-pool, SGD as the CNN", ["--snn", *SJ_DEFAULTS]),
    "snn-adamw": ("LIF defaults, AdamW", ["--snn", *SJ_DEFAULTS, *ADAMW]),
    "adamw-nodecay": ("AdamW, decay_input=false",
                      ["--snn", *_swap(SJ_DEFAULTS, "decay_input=true", "decay_input=false"), *ADAMW]),
    "recipe": ("AdamW, decay_input=false, detach_reset, atan surrogate (a=2), avg-pool, TET", ["--snn", *RECIPE]),
    "recipe-sgd": ("recipe with SGD as the CNN (lr 0.1, wd 5e-4)",
                   ["--snn", *RECIPE[len(ADAMW):]]),
    "recipe-maxpool": ("recipe, but max-pooling spike maps", ["--snn", *_drop(RECIPE, "--model-opt", "pool=avg")]),
    "recipe-no-tet": ("recipe, but mean-output cross-entropy instead of TET", ["--snn", *_swap(RECIPE, "--tet", "--no-tet")]),
    "recipe-sigmoid": ("recipe, but sigmoid surrogate (a=4)", ["--snn", *_swap(RECIPE, "surrogate=atan",
                                                                                "surrogate=sigmoid")]),
    "recipe-no-detach": ("recipe, but the reset is not detached",
                         ["--snn", *_swap(RECIPE, "detach_reset=true", "detach_reset=false")]),
    "recipe-decay-input": ("recipe, but decay_input=true (input divided by tau)",
                           ["--snn", *_swap(RECIPE, "decay_input=false", "decay_input=true")]),
    "from-cnn": ("the trained `cnn` row converted (BN recalibrated on spikes) and fine-tuned: AdamW lr 1e-3, "
                 "decay_input=false, detach_reset, atan, TET (max-pool: the CNN's)",
                 FROM_CNN),
    "from-cnn-defaults": ("the `cnn` row converted (BN recalibrated) and fine-tuned with LIF defaults and SGD (lr 0.01)",
                          ["--snn", "--init-from", "@cnn", *SJ_DEFAULTS, "--lr", "0.01"]),
    "cnn-qcfs": ("the CNN with QCFS activations (4 levels) instead of ReLU", ["--cnn", "--model-opt", "act_levels=4"]),
    "from-qcfs": ("the `cnn-qcfs` row converted to soft-reset IF neurons at T=4 (exact in the first layer), "
                  "fine-tuned: AdamW lr 1e-3, detach_reset, atan, TET",
                  ["--snn", "--init-from", "@cnn-qcfs", *ADAMW[:2], "--lr", "0.001", *ADAMW[4:], "--neuron", "kind=if",
                   "--neuron", "v_reset=null", "--neuron", "detach_reset=true", "--neuron", "surrogate=atan", "--tet"]),
    # one change each to `from-cnn` (the conversion pipeline the study uses): which lever buys what
    "from-cnn-seed1": ("`from-cnn` with training seed 1: the run-to-run noise of the rows below", [*FROM_CNN, "--seed", "1"]),
    "from-cnn-soft": ("`from-cnn` with a soft reset (subtract the threshold)", [*FROM_CNN, "--neuron", "v_reset=null"]),
    "from-cnn-if": ("`from-cnn` with IF neurons (no leak), soft reset",
                    [*_drop(FROM_CNN, "--neuron", "decay_input=false"), "--neuron", "kind=if", "--neuron", "v_reset=null"]),
    "from-cnn-tau4": ("`from-cnn` with tau 4 (a slower leak)", [*FROM_CNN, "--neuron", "tau=4"]),
    "from-cnn-th05": ("`from-cnn` with V_th 0.5", [*FROM_CNN, "--neuron", "v_threshold=0.5"]),
    "from-cnn-plif": ("`from-cnn` with learnable tau and threshold (PLIF)",
                      [*FROM_CNN, "--neuron", "learn_tau=true", "--neuron", "learn_threshold=true"]),
    "from-cnn-lr3e-3": ("`from-cnn` with AdamW lr 3e-3", [*_swap(FROM_CNN, "0.001", "0.003")]),
    "from-cnn-tbn": ("`from-cnn` with time-aware BatchNorm (per-step statistics and affine parameters)",
                     [*FROM_CNN, "--time-bn", "per-step"]),
    "from-cnn-kd": ("`from-cnn` distilled from the CNN it was converted from (weight 0.5, temperature 2)",
                    [*FROM_CNN, "--distill-from", "@cnn", "--distill-weight", "0.5", "--distill-temperature", "2"]),
    "from-cnn-kd09": ("`from-cnn` distilled from its CNN, weight 0.9, temperature 4",
                      [*FROM_CNN, "--distill-from", "@cnn", "--distill-weight", "0.9", "--distill-temperature", "4"]),
    "from-cnn-no-tet": ("`from-cnn` with mean-output cross-entropy instead of TET", _swap(FROM_CNN, "--tet", "--no-tet")),
    "from-cnn-t2": ("`from-cnn` trained at T=2 (evaluate it at T=4 with `spikelite eval --T 4`)",
                    [*FROM_CNN, "--T", "2"]),
    "from-cnn-t2x2": ("`from-cnn-t2` for 2 epochs: about the compute of one epoch at T=4 (evaluate at T=4 as above)",
                      [*FROM_CNN, "--T", "2", "--epochs", "2"]),
    # session 11: the surrogate's shape and width, the detached reset, weight decay on PLIF's parameters, a lower lr
    "from-cnn-sigmoid": ("`from-cnn` with the sigmoid surrogate (alpha 4, SpikingJelly's default) instead of atan",
                         _swap(FROM_CNN, "surrogate=atan", "surrogate=sigmoid")),
    "from-cnn-atan1": ("`from-cnn` with a wider atan surrogate (alpha 1)", [*FROM_CNN, "--neuron", "surrogate_alpha=1"]),
    "from-cnn-atan4": ("`from-cnn` with a narrower atan surrogate (alpha 4)", [*FROM_CNN, "--neuron", "surrogate_alpha=4"]),
    "from-cnn-no-detach": ("`from-cnn` with the reset not detached",
                           _swap(FROM_CNN, "detach_reset=true", "detach_reset=false")),
    "from-cnn-plif-wd": ("`from-cnn-plif` with weight decay 1.0 on the neurons' tau and threshold",
                         [*FROM_CNN, "--neuron", "learn_tau=true", "--neuron", "learn_threshold=true",
                          "--neuron-weight-decay", "1.0"]),
    "from-cnn-lr3e-4": ("`from-cnn` with AdamW lr 3e-4", [*_swap(FROM_CNN, "0.001", "0.0003")]),
    "recipe-th05": ("recipe with V_th 0.5", ["--snn", *RECIPE, "--neuron", "v_threshold=0.5"]),
    "recipe-plif": ("recipe with learnable tau and threshold (PLIF)",
                    ["--snn", *RECIPE, "--neuron", "learn_tau=true", "--neuron", "learn_threshold=true"]),
}


def command(row: str, data: str, runs: Path, threads: int | None, epochs: int = 3,
            model: str = "squeezenet1_1", cnn_runs: str = "") -> list[str]:
    cmd = ["spikelite", "train", *PROXY, "--data", data, "--out", str(runs / row), *ROWS[row][1]]
    cmd = [str(Path(cnn_runs) / a[1:] / "best.pt") if a.startswith("@") else a for a in cmd]
    if model != "squeezenet1_1":
        cmd[cmd.index("--model") + 1] = model
        if model.startswith("shufflenet"):  # no max-pool to swap after its stem: the pool option is SqueezeNet's
            while "pool=avg" in cmd:
                i = cmd.index("pool=avg")
                del cmd[i - 1:i + 1]
    if epochs != 3:
        cmd[cmd.index("--epochs") + 1] = str(epochs)
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def firing_rate(ckpt: Path) -> float | None:
    from spikelite.data import load_split
    from spikelite.energy import measure
    from spikelite.checkpoint import load_model

    model, meta = load_model(ckpt)
    if meta.get("kind") != "snn":
        return None
    d = meta["data"]
    val = load_split(d["dataset"], d["root"], "val", val_size=d.get("val_size"), seed=d.get("split_seed", 0))
    rep = measure(model, val, samples=256, profiles=["45nm-fp32"])
    return rep.firing_rate


def table(runs: Path, rows: list[str]) -> str:
    out = ["| row | what changes | val acc per epoch | best | s/epoch | firing rate |", "|---|---|---|---:|---:|---:|"]
    for row in rows:
        s = runs / row / "summary.json"
        if not s.exists():
            continue
        summ = json.loads(s.read_text())
        import csv

        hist = list(csv.DictReader(open(runs / row / "log.csv")))
        accs = " / ".join(f"{100 * float(h['val_acc']):.1f}" for h in hist if h.get("val_acc") and h["epoch"] != "0")
        secs = [float(h["epoch_seconds"]) for h in hist if h.get("epoch_seconds")]
        extra = json.loads((runs / row / "extra.json").read_text()) if (runs / row / "extra.json").exists() else {}
        fr = extra.get("firing_rate")
        out.append(f"| `{row}` | {ROWS[row][0]} | {accs} | **{100 * summ['best']['val_acc']:.1f}%** | "
                   f"{sum(secs) / max(len(secs), 1):.0f} | {'—' if fr is None else f'{100 * fr:.1f}%'} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-10 root (train/<class>/*.jpg or cifar-10-batches-py/)")
    p.add_argument("--runs", default="runs/recipe", help="run directories go here (default runs/recipe)")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cnn-runs", default=None,
                   help="where the CNN rows that from-* rows convert live (default: --runs)")
    p.add_argument("--model", default="squeezenet1_1", help="zoo model (default squeezenet1_1)")
    p.add_argument("--epochs", type=int, default=3, help="3: the protocol; 1: the quick screen (cosine over 1 epoch)")
    p.add_argument("--table", action="store_true", help="only print the table of finished rows")
    a = p.parse_args()
    runs = Path(a.runs)
    if not a.table:
        for row in a.rows:
            cmd = command(row, a.data, runs, a.threads, a.epochs, a.model,
                          a.cnn_runs or str(runs))
            t0 = time.time()
            if not (runs / row / "summary.json").exists():
                if (runs / row / "last.pt").exists():
                    cmd.append("--resume")
                print("$", shlex.join(cmd), flush=True)
                rc = subprocess.call(cmd)
                print(f"# {row}: exit {rc}, {time.time() - t0:.0f} s", flush=True)
                if rc != 0:
                    continue
            elif (runs / row / "extra.json").exists():
                continue
            summ = json.loads((runs / row / "summary.json").read_text())
            fr = firing_rate(Path(summ["best_checkpoint"]))
            (runs / row / "extra.json").write_text(json.dumps({"firing_rate": fr, "command": shlex.join(cmd),
                                                               "wall_seconds": time.time() - t0}) + "\n")
    print(table(runs, a.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
