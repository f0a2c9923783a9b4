"""Speed and memory: spikelite vs SpikingJelly's LIFNode vs snnTorch's Leaky, on spikified zoo networks.

Every SNN is the same ``spikify``'d network (spikelite's zoo models at 32x32, BatchNorm on); only the
neuron layer differs (the peer wrappers come from ``train_speed.py``). For every model and every T:

* training step (forward, backward, SGD step): the plain CNN, spikelite (its LIF on the native C++
  operator on CPU), spikelite with the torch.compile kernels instead (``-compiled``: what ``auto`` ran
  before the native operator existed), spikelite without compact spike storage (``-loose``: spike maps
  saved for backward as floats, no bool copies), both with NHWC weights
  (``+nhwc``: what ``spikelite train --channels-last`` does), spikelite with its BatchNorm → neuron
  pairs recomputed in backward (``+recompute``: ``--recompute-neurons``), spikelite with activation
  checkpointing (``checkpoint_segments``), SpikingJelly, snnTorch;
* inference (one batch): the CNN and its ``inference_model`` copy, spikelite in eval mode under
  ``torch.no_grad`` (native and ``-compiled``) and its ``inference()`` copy (BatchNorm folded, inference
  mode), SpikingJelly and
  snnTorch in eval mode under ``torch.no_grad``.

The variants of one (model, T) configuration run interleaved in one process (round-robin: one call of
each per round, after warm-up rounds), so machine noise hits all alike; medians are reported, as a ratio
to T x the plain CNN's median for the same task. Each configuration gets a fresh process of its own
(``--one-process``: all configurations interleaved in this one, as before; their models and the retained
heap then share the machine's memory). Memory is the activation bytes autograd saves for backward in one step
(weights left out), in total and per time step; for checkpointing, also the estimated peak during
backward (boundary tensors + the largest segment recomputed).

    python benchmarks/speed.py --rounds 20 --T 1 2 4 8 --models squeezenet1_1 shufflenetv2_x0_5 --batch 32

``--neuron recipe`` times the neuron ``spikelite train`` trains with (no input decay, detached reset,
atan surrogate) instead of spikify's default (input decay, sigmoid), SpikingJelly's and snnTorch's
neurons set to the same dynamics and surrogate.

Run it on a quiet machine: figures taken while other jobs share the CPU are not results.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from spikelite.allocator import MALLOC_MODES, apply_malloc_mode
from spikelite.snn.recompute import CheckpointSegment
from spikelite.snn import SpikingNet, inference_model, spikify
from spikelite.snn.layers import _pack_saved
from spikelite.models import create_model
from spikelite.snn import LIF
from spikelite.train import RECIPE_NEURON
from train_speed import SJLIF, SnnTorchLeaky, saved_bytes

TRAIN = ("cnn", "cnn+nhwc", "spikelite", "spikelite-compiled", "spikelite-loose", "spikelite+nhwc",
         "spikelite+recompute", "spikelite+ckpt", "spikingjelly", "snntorch")
INFER = ("cnn", "cnn-folded", "spikelite", "spikelite-compiled", "spikelite-inference", "spikingjelly", "snntorch")


def recompute_peak_bytes(net: SpikingNet, x: torch.Tensor) -> int:
    """Activation bytes the largest checkpointed segment saves when run plainly (what backward holds
    while it recomputes that segment), each storage counted once, weights left out."""
    segments = [m for m in net._training_body().modules() if isinstance(m, CheckpointSegment)]
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    per: dict[int, dict[int, int]] = {i: {} for i in range(len(segments))}
    current: list[int | None] = [None]

    def pack(t):
        p = _pack_saved(t)
        s = (p[0] if isinstance(p, tuple) else p).untyped_storage()
        if current[0] is not None and s.data_ptr() not in params:
            per[current[0]][s.data_ptr()] = s.nbytes()
        return p

    hooks = []
    for i, seg in enumerate(segments):
        seg.enabled = False
        hooks.append(seg.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        hooks.append(seg.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    compact, net.compact_spikes = net.compact_spikes, False
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda p: p[0].to(p[1]) if isinstance(p, tuple) else p):
            net(x)
    finally:
        net.compact_spikes = compact
        for h in hooks:
            h.remove()
        for seg in segments:
            seg.enabled = True
    return max((sum(v.values()) for v in per.values()), default=0)


def with_backend(net: nn.Module, backend: str) -> nn.Module:
    """A copy of ``net`` whose LIF layers use ``backend`` (same weights, same spikes)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, LIF):
            m.backend = backend
    return net


def build(name: str, T: int, segments: int, neuron: str = "default") -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Training and inference variants of one zoo network at T steps (same weights everywhere).
    ``neuron``: ``"default"`` (spikify's LIF: input decay, sigmoid surrogate) or ``"recipe"`` (spikelite
    train's: no input decay, detached reset, atan), the peers' neurons configured alike."""
    torch.manual_seed(0)
    recipe = neuron == "recipe"
    cnn = create_model(name, num_classes=10, image_size=32)
    snn = spikify(cnn, T=T, neuron=dict(RECIPE_NEURON) if recipe else None)
    ckpt = copy.deepcopy(snn)
    ckpt.checkpoint_segments = segments
    recompute = copy.deepcopy(snn)
    recompute.recompute_neurons = True
    loose = copy.deepcopy(snn)
    loose.compact_spikes = False  # spike maps saved for backward as floats: no bool copies, 4x their bytes
    train = {
        "cnn": copy.deepcopy(cnn).train(),
        "cnn+nhwc": copy.deepcopy(cnn).to(memory_format=torch.channels_last).train(),  # train --channels-last
        "spikelite": snn.train(),
        "spikelite-compiled": with_backend(snn, "compiled").train(),
        "spikelite-loose": loose.train(),
        "spikelite+nhwc": copy.deepcopy(snn).to(memory_format=torch.channels_last).train(),
        "spikelite+recompute": recompute.train(),
        "spikelite+ckpt": ckpt.train(),
        "spikingjelly": spikify(cnn, T=T, neuron=functools.partial(SJLIF, recipe=recipe)).train(),
        "snntorch": spikify(cnn, T=T, neuron=functools.partial(SnnTorchLeaky, recipe=recipe)).train(),
    }
    cnn_eval = copy.deepcopy(cnn).eval()
    snn_eval = copy.deepcopy(snn).eval()
    infer = {
        "cnn": cnn_eval,
        "cnn-folded": inference_model(cnn_eval),
        "spikelite": snn_eval,
        "spikelite-compiled": with_backend(snn_eval, "compiled"),
        "spikelite-inference": snn_eval.inference(),
        "spikingjelly": copy.deepcopy(train["spikingjelly"]).eval(),
        "snntorch": copy.deepcopy(train["snntorch"]).eval(),
    }
    return train, infer


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x, y, loss_fn) -> None:
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()


def _infer(model: nn.Module, x) -> None:
    with torch.no_grad():
        model(x)


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _memory(train: dict[str, nn.Module], x, y, loss_fn) -> dict[str, int]:
    mem = {k: saved_bytes(m, x, y, loss_fn, skip_parameters=True) for k, m in train.items()}
    mem["spikelite+ckpt peak"] = mem["spikelite+ckpt"] + recompute_peak_bytes(train["spikelite+ckpt"], x)
    return mem


def _report(name: str, T: int, args, times: dict, mem: dict[str, int]) -> None:
    med = {key: statistics.median(v) for key, v in times.items()}
    mib = 2 ** 20
    print(f"\n## {name}, T={T}, batch {args.batch}")
    print(f"{'training step':<22}{'ms':>9}{'/ (T x CNN)':>13}{'saved MiB':>11}{'MiB per T':>11}")
    base = med[("train", "cnn")]
    for k in TRAIN:
        ratio = med[("train", k)] / (T * base)
        per_t = f"{mem[k] / mib / T:>11.2f}" if not k.startswith("cnn") else f"{'':>11}"
        print(f"{k:<22}{med[('train', k)] * 1e3:>9.1f}{ratio:>13.2f}{mem[k] / mib:>11.2f}{per_t}")
    peak = mem["spikelite+ckpt peak"]
    print(f"{'  ckpt peak (backward)':<22}{'':>9}{'':>13}{peak / mib:>11.2f}{peak / mib / T:>11.2f}")
    print(f"{'inference':<22}{'ms':>9}{'/ (T x CNN)':>13}{'images/s':>11}")
    base = med[("infer", "cnn")]
    for k in INFER:
        t = med[("infer", k)]
        print(f"{k:<22}{t * 1e3:>9.1f}{t / (T * base):>13.2f}{args.batch / t:>11.0f}")


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded CIFAR-sized batch every measurement uses."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def run(args) -> dict:
    """Build every (model, T) configuration, time them round-robin, print one table per configuration."""
    configs = []
    loss_fn = nn.CrossEntropyLoss()
    x, y = _batch(args.batch)
    for name in args.models:
        for T in args.T:
            train, infer = build(name, T, args.segments, args.neuron)
            opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in train.items()}
            with torch.no_grad():  # the three neuron implementations agree on the same weights
                ref = infer["spikelite"](x)
                agree = {k: float((infer[k](x) - ref).abs().max())
                         for k in ("spikelite-compiled", "spikelite-inference", "spikingjelly", "snntorch")}
            configs.append(dict(name=name, T=T, train=train, infer=infer, opts=opts, agree=agree,
                                mem=_memory(train, x, y, loss_fn), times={}))
    for r in range(args.warmup + args.rounds):
        for c in configs:
            for k, m in c["train"].items():
                dt = _timed(lambda: _train_step(m, c["opts"][k], x, y, loss_fn))
                if r >= args.warmup:
                    c["times"].setdefault(("train", k), []).append(dt)
            for k, m in c["infer"].items():
                dt = _timed(lambda: _infer(m, x))
                if r >= args.warmup:
                    c["times"].setdefault(("infer", k), []).append(dt)
    print(f"spikelite speed benchmark: CPU threads {torch.get_num_threads()}, {args.rounds} interleaved rounds "
          f"after {args.warmup} warm-up (medians), checkpoint_segments={args.segments}, neuron={args.neuron}")
    for c in configs:
        _report(c["name"], c["T"], args, c["times"], c["mem"])
        print("max |logit difference| vs spikelite (eval): "
              + ", ".join(f"{k} {v:.2e}" for k, v in c["agree"].items()))
    return {(c["name"], c["T"]): c for c in configs}


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and their values."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a.split("=", 1)[0] in options
        if not skip:
            out.append(a)
    return out


def run_isolated(args, argv: list[str]) -> list[tuple[str, int]]:
    """Run each (model, T) configuration in a fresh Python process of its own, one after another.

    The ratios compare variants within one configuration, so nothing is lost by not interleaving across
    configurations, and each is timed without the others' models and retained heap in memory: with all of
    them in one process (``--one-process``) a sweep up to T = 8 held 21.6 GiB on a 24 GB machine, and the
    largest configurations were timed under memory pressure (docs/performance.md). Returns the
    configurations run; the first that fails ends the sweep with an error."""
    base = _without(argv, ("--models", "--T", "--one-process"))
    done = []
    for name in args.models:
        for T in args.T:
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--models", name, "--T", str(T)]
            sys.stdout.flush()
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                raise SystemExit(f"speed.py: the configuration {name}, T={T} failed (exit status {rc})")
            done.append((name, T))
    return done


def memory_table(args) -> dict:
    """Saved-for-backward activation memory (MiB) of every training variant against T, one table per model."""
    loss_fn = nn.CrossEntropyLoss()
    x, y = _batch(args.batch)
    mib = 2 ** 20
    out = {}
    for name in args.models:
        rows = {T: _memory(build(name, T, args.segments, args.neuron)[0], x, y, loss_fn) for T in args.T}
        out[name] = rows
        leaner = {T: min(m["spikingjelly"], m["snntorch"]) for T, m in rows.items()}
        print(f"\n## {name}, batch {args.batch}: MiB saved for backward (activations, weights excluded)")
        print("| variant | " + " | ".join(f"T={T}" for T in args.T) + " |")
        print("|---|" + "---:|" * len(args.T))
        for k in (*TRAIN, "spikelite+ckpt peak"):
            print(f"| {k} | " + " | ".join(f"{rows[T][k] / mib:.1f}" for T in args.T) + " |")
        for k in ("spikelite", "spikelite+recompute", "spikelite+ckpt"):
            print(f"| {k} / leaner peer | " + " | ".join(f"{rows[T][k] / leaner[T]:.2f}" for T in args.T) + " |")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds (after --warmup rounds)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--T", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--models", nargs="+", default=["squeezenet1_1", "shufflenetv2_x0_5"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--neuron", choices=("default", "recipe"), default="default",
                    help="default: spikify's LIF (input decay, sigmoid surrogate); recipe: spikelite train's "
                         "(RECIPE_NEURON: no input decay, detached reset, atan); the peers' neurons alike")
    ap.add_argument("--segments", type=int, default=4, help="checkpoint_segments of the +ckpt variant")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--malloc", choices=MALLOC_MODES, default="retain",
                    help="glibc allocator setting for the whole process, every variant alike (spikelite train's "
                         "default: retain; docs/performance.md)")
    ap.add_argument("--one-process", action="store_true",
                    help="time every (model, T) configuration in this one process, all interleaved (default: each "
                         "configuration in a fresh process of its own, one after another)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the saved-for-backward memory of every training variant, per model and T (no timing: "
                         "the figures do not depend on machine load)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.batch < 1 or args.segments < 1 or min(args.T) < 1:
        ap.error("--rounds, --batch, --segments and every --T must be >= 1, --warmup >= 0")
    if args.memory_only:
        return memory_table(args)
    if not args.one_process and len(args.models) * len(args.T) > 1:
        return run_isolated(args, sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"malloc: {args.malloc} ({'applied' if apply_malloc_mode(args.malloc) else 'glibc default'})")
    return run(args)


if __name__ == "__main__":
    main()
