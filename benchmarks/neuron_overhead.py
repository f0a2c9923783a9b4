"""Per-call cost of one neuron layer against ReLU: where the fixed overhead of small T goes.

At T = 1-2 a spiking training step of a net with many small neuron layers (ShuffleNetV2: 37) stays above
T x the CNN's (docs/performance.md). This script times, in one process and interleaved, for a few map
sizes of ShuffleNetV2 x0.5 at batch 32:

* ``relu``: ``torch.relu`` forward and backward (the CNN's activation);
* ``compiled``: spikelite's LIF layer (the recipe's neuron) forward and backward, as a network calls it,
  on the torch.compile kernels (``backend="compiled"``, what ``auto`` used before the native operator);
* ``native``: the same layer on the native C++ operator (``backend="native"``, what ``auto`` uses on CPU);
* ``kernel fwd`` / ``kernel bwd``: the compiled whole-sequence kernels alone (torch.compile), called
  directly with ready inputs: what is left is the call's own cost plus the element-wise work;
* ``eager ge``: the cheapest eager spike function, ``(x >= th).to(x.dtype)``, for scale;
* ``pack`` / ``unpk bool`` / ``unpk u8``: compact spike storage's copies for the map (a conv's spike input
  saved for backward as bool, then turned back into floats): float -> bool, and bool -> float read as bool
  or, as spikelite does, as uint8 (the same 0/1 bytes).

Medians of ``--rounds`` calls in microseconds, and the native LIF layer's cost over ReLU's. Run it on a quiet
machine; the figures are per call, so the ratios say more than the microseconds.

    python benchmarks/neuron_overhead.py --T 1 2 4 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikelite import native as _native
from spikelite.allocator import apply_malloc_mode
from spikelite.snn import LIF
from spikelite.snn.neuron import _KERNELS
from spikelite.snn.surrogate import SURROGATES, get_surrogate

SHAPES = [(32, 24, 16, 16), (32, 48, 8, 8), (32, 96, 4, 4), (32, 1024, 4, 4)]


def _time_us(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e6 * (time.perf_counter() - t0)


def measure(T: int, shape: tuple[int, ...], rounds: int, warmup: int, surrogate: str = "atan") -> dict[str, float]:
    torch.manual_seed(0)
    compiled = LIF(decay_input=False, detach_reset=True, surrogate=surrogate, backend="compiled")
    native = LIF(decay_input=False, detach_reset=True, surrogate=surrogate, backend="native")
    x = torch.randn(T * shape[0], *shape[1:], requires_grad=True)
    g = torch.randn_like(x)
    seq = (T, shape[0], *shape[1:])
    tau, th, r = torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.0)
    sur = get_surrogate(surrogate)
    fwd = _KERNELS.get("fwd", (False, False, T))
    bwd = _KERNELS.get("bwd", (False, False, True, type(sur).grad_fn, T))
    flat = x.detach().reshape(T, -1).contiguous()
    h, _ = fwd(flat, tau, th, r, T, False, False)
    gflat = g.reshape(T, -1).contiguous()
    spikes = (x.detach() >= 0.5).to(x.dtype)
    packed = spikes.to(torch.bool)

    def lif_compiled():
        compiled(x.view(seq)).flatten(0, 1).backward(g)

    def lif_native():
        native(x.view(seq)).flatten(0, 1).backward(g)

    def relu():
        torch.relu(x).backward(g)

    cases = {
        "relu": relu,
        "compiled": lif_compiled,
        "native": lif_native,
        "kernel fwd": lambda: fwd(flat, tau, th, r, T, False, False),
        "kernel bwd": lambda: bwd(h, gflat, tau, th, r, sur.alpha, T, False, False, True, type(sur).grad_fn),
        "eager ge": lambda: (flat >= th).to(flat.dtype),
        "pack": lambda: spikes.to(torch.bool),
        "unpk bool": lambda: packed.to(spikes.dtype),
        "unpk u8": lambda: packed.view(torch.uint8).to(spikes.dtype),
    }
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved: one call of each per round
        for k, fn in cases.items():
            samples[k].append(_time_us(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--malloc", choices=["retain", "system"], default="retain")
    p.add_argument("--surrogate", choices=sorted(SURROGATES), default="atan",
                   help="the LIF's surrogate (the recipe's: atan; spikify's default and the peers': sigmoid)")
    a = p.parse_args(argv)
    if min(a.T) < 1 or a.rounds < 1 or a.warmup < 0 or (a.threads is not None and a.threads < 1):
        p.error("--T and --rounds must be >= 1, --warmup >= 0, --threads >= 1")
    apply_malloc_mode(a.malloc)
    if a.threads:
        torch.set_num_threads(a.threads)
    if _native.ops() is None:
        p.error(f"the native operator is unavailable here ({_native._STATE.get('error', 'switched off')})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, malloc {a.malloc}, surrogate {a.surrogate}; "
          "medians in us")
    print(f"{'T':>2} {'map [N,C,H,W]':>18} {'elements':>9} {'relu':>8} {'compiled':>9} {'native':>8} "
          f"{'nat-relu':>9} {'nat/relu':>8} {'kern fwd':>9} {'kern bwd':>9} {'eager ge':>9} {'pack':>6} {'unpk bool':>9} "
          f"{'unpk u8':>8}")
    for T in a.T:
        for shape in SHAPES:
            m = measure(T, shape, a.rounds, a.warmup, a.surrogate)
            n = T * shape[0] * shape[1] * shape[2] * shape[3]
            print(f"{T:>2} {str(list(shape)):>18} {n:>9,} {m['relu']:>8.0f} {m['compiled']:>9.0f} {m['native']:>8.0f} "
                  f"{m['native'] - m['relu']:>9.0f} {m['native'] / m['relu']:>8.2f} {m['kernel fwd']:>9.0f} "
                  f"{m['kernel bwd']:>9.0f} {m['eager ge']:>9.0f} {m['pack']:>6.0f} {m['unpk bool']:>9.0f} {m['unpk u8']:>8.0f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
