"""Training-step speed and memory: spikelite's LIF vs SpikingJelly's LIFNode vs snnTorch's Leaky.

One CIFAR-sized spiking SqueezeNet 1.1 (spikelite's zoo model, BatchNorm on) is trained with
batch 32 at T=4 on the CPU. The three SNNs share the exact same network and time folding
(spikelite's ``spikify``); only the neuron layer differs:

* ``spikelite``  — :class:`spikelite.snn.LIF` (fused forward/backward over the sequence);
* ``spikingjelly`` — ``spikingjelly.activation_based.neuron.LIFNode(step_mode="m")`` with the same
  τ, threshold, hard reset and sigmoid surrogate, reset after every call (``reset_net``);
* ``snntorch``   — ``snntorch.Leaky(beta=1-1/τ, reset_mechanism="zero")`` stepped over T in a loop
  (snnTorch has no multi-step call).

Each round runs one training step (forward, backward, SGD step) of every model, interleaved, so
machine noise hits all alike; the median step time is reported as a ratio to T × the plain CNN's
median step time. Training memory is the bytes autograd saves for backward in one step (counted
with ``torch.autograd.graph.saved_tensors_hooks``, each storage once) — the part of training memory
that grows with T — plus, for reference, the CNN's figure.

    python benchmarks/train_speed.py --rounds 20 --batch 32 --T 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from spikelite.snn import spikify


class SJLIF(nn.Module):
    """SpikingJelly LIFNode behind spikelite's [T, N, ...] → [T, N, ...] neuron interface."""

    def __init__(self, recipe: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        if recipe:  # spikelite train's neuron (RECIPE_NEURON): no input decay, detached reset, atan
            self.node = neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=False, detach_reset=True,
                                       surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")
        else:
            self.node = neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
                                       surrogate_function=surrogate.Sigmoid(), step_mode="m")

    def forward(self, x_seq):
        out = self.node(x_seq)
        self.node.reset()  # SpikingJelly keeps state between calls: reset like functional.reset_net
        return out

    def config(self):
        return {"kind": "spikingjelly.LIFNode"}


class SnnTorchLeaky(nn.Module):
    """snnTorch Leaky stepped over time (hard reset to zero, beta = 1 - 1/tau)."""

    def __init__(self, recipe: bool = False):
        super().__init__()
        import snntorch as snn
        from snntorch import surrogate

        # Leaky charges U = beta*U + X (no input decay) and detaches its reset; recipe: the atan surrogate
        self.node = snn.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero",
                              spike_grad=surrogate.atan(alpha=2.0) if recipe else surrogate.sigmoid(slope=4))

    def forward(self, x_seq):
        mem = self.node.init_leaky()
        spikes = []
        for x in x_seq:
            spk, mem = self.node(x, mem)
            spikes.append(spk)
        return torch.stack(spikes)

    def config(self):
        return {"kind": "snntorch.Leaky"}


def build_cnn():
    try:
        from spikelite.models import create_model

        return create_model("squeezenet1_1", num_classes=10, image_size=32), "spikelite squeezenet1_1 (BN)"
    except Exception:  # the zoo not present: torchvision's definition at 32x32
        import torchvision

        return torchvision.models.squeezenet1_1(num_classes=10), "torchvision squeezenet1_1"


def saved_bytes(model, x, y, loss_fn, skip_parameters: bool = False) -> int:
    """Bytes autograd keeps for backward in one training step, each storage counted once.

    ``skip_parameters=True`` leaves out the weights themselves (saved by reference, they exist
    anyway), so the figure is activation memory only.

    A spikelite SpikingNet stores spike tensors as booleans through its own saved-tensor hooks;
    since only the innermost hooks run, the net's hooks are switched off here and the library's
    own packing function is applied inside the counting hook instead, so what is counted is
    exactly what spikelite stores.
    """
    from spikelite.snn import SpikingNet
    from spikelite.snn.layers import _pack_saved

    storages: dict[int, int] = {}
    compact = isinstance(model, SpikingNet) and model.compact_spikes
    params = {p.untyped_storage().data_ptr() for p in model.parameters()} if skip_parameters else set()

    def pack(t):
        p = _pack_saved(t) if compact else t
        stored = p[0] if isinstance(p, tuple) else p
        try:
            s = stored.untyped_storage()
            if s.data_ptr() not in params:
                storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        except Exception:
            pass
        return p

    if compact:
        model.compact_spikes = False
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda p: p[0].to(p[1]) if isinstance(p, tuple) else p):
            loss = loss_fn(model(x), y)
        loss.backward()
    finally:
        if compact:
            model.compact_spikes = True
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cnn, label = build_cnn()
    T = args.T
    models = {
        "cnn": copy.deepcopy(cnn),
        "spikelite": spikify(cnn, T=T),
        "spikingjelly": spikify(cnn, T=T, neuron=SJLIF),
        "snntorch": spikify(cnn, T=T, neuron=SnnTorchLeaky),
    }
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()
    for m in models.values():
        m.train()

    # same spikes: all three neurons implement the same dynamics on the same weights
    with torch.no_grad():
        ref = models["spikelite"].eval()(x)
        agree = {k: float((models[k].eval()(x) - ref).abs().max()) for k in ("spikingjelly", "snntorch")}
    for m in models.values():
        m.train()

    mem = {k: saved_bytes(m, x, y, loss_fn) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.warmup + args.rounds):
        for k, m in models.items():
            opt = opts[k]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(m(x), y).backward()
            opt.step()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = T * med["cnn"]
    print(f"network: {label}, batch {args.batch}, T={T}, CPU threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds (median)")
    print("max |logit difference| vs spikelite: " + ", ".join(f"{k} {v:.2e}" for k, v in agree.items()))
    print(f"{'model':<14}{'step ms':>10}{'/ (T x CNN)':>14}{'saved MiB':>12}")
    for k in models:
        ratio = med[k] / base if k != "cnn" else med[k] / med["cnn"] / T
        print(f"{k:<14}{med[k] * 1e3:>10.1f}{ratio:>14.2f}{mem[k] / 2**20:>12.1f}")
    return med, mem


if __name__ == "__main__":
    main()
