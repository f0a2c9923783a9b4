"""Peak memory and time of SNN inference at large T, in one pass against windows of time steps (time_chunk).

Every variant runs in its own child process (peak resident memory is per process): it builds the zoo's
SqueezeNet 1.1 (10 classes, 32x32, seeded weights), converts it (``spikelite.snn.convert``, ConversionIF
neurons, thresholds from 16 random calibration images; ``--neuron lif``: ``spikify`` with LIF neurons,
the native C++ kernel in one pass, the Python state hand-over in windows), and runs inference on
``--batch`` random images at ``--T``: ``--warmup`` calls (default 1), then ``--repeat`` timed calls. It reports the
resident memory before the first call and the peak (``ru_maxrss``), the wall and CPU seconds per call
(medians; CPU seconds are what a shared machine distorts least), and whether the logits equal those of
the first variant. Rounds interleave the variants.

    python benchmarks/large_t_memory.py --T 128 --batch 64 --chunks 16 --warmup 0
    python benchmarks/large_t_memory.py --T 64 --batch 16 --chunks none,16 --repeat 3 --rounds 3 --neuron lif
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def child(args) -> None:
    import torch

    from spikelite.allocator import apply_malloc_mode
    from spikelite.models import create_model
    from spikelite.snn import convert, spikify

    apply_malloc_mode(args.malloc)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=32).eval()
    x = torch.randn(args.batch, 3, 32, 32)
    if args.neuron == "conversion_if":
        net = convert(cnn, T=args.T, calibration=x[:16])
    else:
        net = spikify(cnn, T=args.T, neuron={"kind": "lif", "v_threshold": 0.5})
    net = net.eval()
    chunk = {"none": None, "auto": "auto"}.get(args.chunk, None if args.chunk == "none" else args.chunk)
    if chunk not in (None, "auto"):
        chunk = int(chunk)
    net.time_chunk = chunk
    before = _rss_mib()
    walls, cpus = [], []
    with torch.no_grad():
        for _ in range(args.warmup):  # the native operator loads, the allocator settles
            net(x)
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            out = net(x)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(out, args.out)
    print(json.dumps({"before_mib": before, "peak_mib": peak, "wall_s": statistics.median(walls),
                      "cpu_s": statistics.median(cpus)}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunks", default="none,16,auto", help="comma-separated: none, auto, or steps per window")
    ap.add_argument("--neuron", choices=["conversion_if", "lif"], default="conversion_if")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per child before the timed ones")
    ap.add_argument("--repeat", type=int, default=1, help="timed calls per child")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--malloc", choices=["retain", "system"], default="retain",
                    help="glibc allocator setting (retain: the CLI's default, docs/performance.md)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if min(args.T, args.batch, args.repeat, args.rounds, args.threads) < 1 or args.warmup < 0:
        ap.error("--T, --batch, --repeat, --rounds and --threads must be >= 1, --warmup >= 0")
    variants = [c.strip() for c in args.chunks.split(",") if c.strip()]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for _ in range(args.rounds):
            for v in variants:
                path = os.path.join(tmp, f"{v}.pt")
                cmd = [sys.executable, __file__, "--child", "--chunk", v, "--out", path, "--T", str(args.T),
                       "--batch", str(args.batch), "--neuron", args.neuron, "--repeat", str(args.repeat),
                       "--warmup", str(args.warmup),
                       "--threads", str(args.threads), "--malloc", args.malloc]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"large_t_memory.py: variant {v} failed:\n{proc.stderr[-2000:]}")
                results[v].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                outs[v] = torch.load(path)
        ref = outs[variants[0]]
        print(f"SqueezeNet 1.1 SNN ({args.neuron}), 32x32, 10 classes, T={args.T}, {args.batch} random images, "
              f"{args.threads} thread(s), malloc {args.malloc}, {args.rounds} round(s) x {args.warmup} warm-up + "
              f"{args.repeat} timed call(s) (medians)")
        print(f"{'time_chunk':>10}{'RSS before MiB':>16}{'peak RSS MiB':>14}{'wall s':>9}{'CPU s':>9}"
              f"{'vs first':>10}  logits vs {variants[0]}")
        base_cpu = statistics.median(r["cpu_s"] for r in results[variants[0]])
        for v in variants:
            rs = results[v]
            cpu = statistics.median(r["cpu_s"] for r in rs)
            diff = float((outs[v] - ref).abs().max())
            same = "identical" if diff == 0 else f"max |diff| {diff:.2e}"
            print(f"{v:>10}{statistics.median(r['before_mib'] for r in rs):>16,.0f}"
                  f"{max(r['peak_mib'] for r in rs):>14,.0f}{statistics.median(r['wall_s'] for r in rs):>9.2f}"
                  f"{cpu:>9.2f}{cpu / base_cpu:>9.2f}x  {same}")


if __name__ == "__main__":
    main()
