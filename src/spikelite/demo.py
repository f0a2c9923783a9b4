"""``spikelite demo``: a short, offline conversion demo.

It converts torchvision's SqueezeNet 1.1 (random weights, CIFAR-sized input) into a spiking network,
runs one batch through the CNN and the SNN, trains the SNN for a few surrogate-gradient steps on a
fixed batch, and prints what changed: neuron layers, firing rates per layer, and the loss going down.
Needs no data and no network. (The benchmark issue turns this into the full demo grid.)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from .convert import spikify
from .errors import SpikeliteError


def run_demo(T: int = 4, batch: int = 16, steps: int = 5, seed: int = 0, out=print) -> dict:
    import torchvision

    if steps < 0 or batch < 1:
        raise SpikeliteError("demo: --steps must be >= 0 and --batch >= 1")
    torch.manual_seed(seed)
    cnn = torchvision.models.squeezenet1_1(num_classes=10)
    x = torch.randn(batch, 3, 32, 32)
    # Thresholds balanced to the 99th percentile of the CNN's activations on this batch.
    net = spikify(cnn, T=T, balance=99.0, calibration=x)
    y = torch.randint(0, 10, (batch,))
    params = sum(p.numel() for p in cnn.parameters())
    out(f"CNN: torchvision squeezenet1_1, {params / 1e3:.1f}k params, input {tuple(x.shape)}")
    layers = net.spiking_layers()
    out(f"SNN: {len(layers)} LIF layers (T={T}, direct encoding, thresholds balanced); first ones:")
    for path, act in layers[:4]:
        out(f"  {path:<32} replaced {act.source}")

    rates: dict[str, float] = {}
    hooks = [
        act.register_forward_hook(lambda m, i, o, p=path: rates.__setitem__(p, float(o.float().mean())))
        for path, act in layers
    ]
    net.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        cnn.eval()(x)
        t_cnn = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = net(x)
        t_snn = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    mean_rate = sum(rates.values()) / len(rates)
    out(f"inference: CNN {t_cnn * 1e3:.1f} ms, SNN {t_snn * 1e3:.1f} ms; output {tuple(logits.shape)}; "
        f"mean firing rate {mean_rate:.3f}")

    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if losses:
        out("surrogate-gradient steps on one batch, loss: " + " → ".join(f"{v:.3f}" for v in losses))
    return {"layers": len(layers), "mean_rate": mean_rate, "losses": losses}


def register_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the offline demo", description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=4, help="time steps (default 4)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="training steps on one batch (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(T=a.T, batch=a.batch, steps=a.steps, seed=a.seed) and 0)
