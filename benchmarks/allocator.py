"""Does the memory allocator slow SNN training on the CPU? glibc malloc vs tuned glibc vs jemalloc vs tcmalloc.

Training the CIFAR SqueezeNet SNN on this project's 2-core VM spends a large share of its CPU time in
the kernel (e.g. the SNN-P fine-tuning epoch of results/cifar10: 26 min 37 s user, 16 min 18 s
system). The activations of a T×batch-folded network are tens of MB each; glibc serves every block
above its mmap threshold (at most 32 MiB, grown dynamically from 128 KiB) with a fresh ``mmap`` and
returns it with ``munmap`` on free, so each step faults in and zeroes the same memory again.

The allocator is chosen when a process starts, so each variant runs in its own child process
(``LD_PRELOAD`` or ``MALLOC_*`` environment variables); rounds interleave the variants so machine
noise hits all alike, and every figure is reported as a ratio to the glibc-default child of the
same round:

* ``glibc``          — the default;
* ``glibc-nommap``   — ``MALLOC_MMAP_MAX_=0`` (never mmap: large blocks come from the heap) and a
  trim threshold of 16 GiB (freed memory stays with the process);
* ``spikelite``      — the same settings applied in-process by ``spikelite.allocator.retain_freed_memory``
  (``mallopt``; what ``spikelite train`` does by default);
* ``jemalloc``       — ``LD_PRELOAD=libjemalloc.so.2`` (Debian ``libjemalloc2``), default settings;
* ``tcmalloc``       — ``LD_PRELOAD=libtcmalloc_minimal.so.4`` (Debian ``libtcmalloc-minimal4``).

A child builds spikelite's CIFAR-sized SqueezeNet 1.1 (BatchNorm, average pooling), converts it
(``spikify``, LIF, T) or keeps the CNN (``--mode cnn``), runs ``--warmup`` training steps (forward,
backward, AdamW step) on a fixed random batch and then times ``--steps`` steps; it reports the median
step time, and the user/system CPU seconds, minor page faults and peak resident memory of the timed
steps (``resource.getrusage``).

    python benchmarks/allocator.py --rounds 3 --steps 6 --batch 64 --T 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def _find(lib: str) -> str | None:
    for d in LIBDIRS:
        p = Path(d) / lib
        if p.exists():
            return str(p)
    return None


def variants() -> dict[str, dict | None]:
    """Variant name -> extra environment (None when the library is not installed)."""
    je, tc = _find("libjemalloc.so.2"), _find("libtcmalloc_minimal.so.4")
    return {
        "glibc": {},
        "glibc-nommap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)},
        "spikelite": {"SPIKELITE_BENCH_RETAIN": "1"},  # spikelite.allocator.retain_freed_memory(), in-process
        "jemalloc": None if je is None else {"LD_PRELOAD": je},
        "tcmalloc": None if tc is None else {"LD_PRELOAD": tc},
    }


def child(args) -> dict:
    import resource
    import time

    import torch

    from spikelite.snn import spikify
    from spikelite.models import create_model

    if os.environ.get("SPIKELITE_BENCH_RETAIN") == "1":
        from spikelite.allocator import retain_freed_memory

        assert retain_freed_memory(), "glibc's mallopt was not applied"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10, image_size=32, pool="avg")
    if args.mode == "snn":
        model = spikify(model, T=args.T)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"step_s": statistics.median(times), "user_s": (r1.ru_utime - r0.ru_utime) / args.steps,
            "sys_s": (r1.ru_stime - r0.ru_stime) / args.steps, "minflt": (r1.ru_minflt - r0.ru_minflt) / args.steps,
            "maxrss_mib": r1.ru_maxrss / 1024}


def run_child(name: str, extra: dict, args) -> dict:
    env = dict(os.environ, **extra, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", "--mode", args.mode, "--T", str(args.T), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"allocator.py: the {name} child failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["snn", "cnn"], default="snn")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per child")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel compilation, allocator warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every variant once, interleaved")
    p.add_argument("--variants", default="", help="comma-separated subset (default: all installed)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for k in ("T", "batch", "steps", "threads", "rounds"):
        if getattr(args, k) < 1:
            p.error(f"--{k} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    allv = variants()
    want = [v.strip() for v in args.variants.split(",") if v.strip()] or list(allv)
    bad = [v for v in want if v not in allv]
    if bad:
        p.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(allv)}")
    if "glibc" not in want:
        want.insert(0, "glibc")  # the baseline of every ratio
    missing = [v for v in want if allv[v] is None]
    for v in missing:
        print(f"{v}: library not installed, skipped (Debian: libjemalloc2 / libtcmalloc-minimal4)")
    run = [v for v in want if allv[v] is not None]
    print(f"{args.mode.upper()} squeezenet1_1 (CIFAR, BN, avg pool){f', T={args.T}' if args.mode == 'snn' else ''}, "
          f"batch {args.batch}, {args.threads} threads, {args.steps} timed steps after {args.warmup} per child, "
          f"{args.rounds} rounds")
    res: dict[str, list[dict]] = {v: [] for v in run}
    for r in range(args.rounds):
        for v in (run if r % 2 == 0 else list(reversed(run))):
            res[v].append(run_child(v, allv[v], args))
    base = res["glibc"]
    print(f"\n{'variant':<14}{'step s':>8}{'vs glibc':>10}{'user s':>9}{'sys s':>8}{'faults/step':>13}{'peak RSS MiB':>14}")
    for v in run:
        ratio = statistics.median(a["step_s"] / b["step_s"] for a, b in zip(res[v], base))
        med = {k: statistics.median(x[k] for x in res[v]) for k in res[v][0]}
        print(f"{v:<14}{med['step_s']:>8.3f}{ratio:>9.2f}x{med['user_s']:>9.3f}{med['sys_s']:>8.3f}"
              f"{med['minflt']:>13,.0f}{med['maxrss_mib']:>14,.0f}")
    print("\nstep s, user s, sys s, faults: per timed step, median over rounds; vs glibc: median over rounds of the "
          "ratio to that round's glibc child (< 1 is faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
