"""What CNN→SNN conversion keeps, on digits (offline): naive, thresholds balanced, BN recalibrated.

Trains a small-image SqueezeNet 1.1 CNN on scikit-learn's digits (16×16, 4 epochs), converts it at
T=4 and T=8 without fine-tuning, and prints validation accuracy for: the converted net as is, with
spike-domain threshold balancing (99.9th percentile), and each of those with BatchNorm statistics
re-estimated on the SNN's spikes (``spikelite.snn.recalibrate_bn``).

    python benchmarks/conversion_digits.py
"""

import torch
import torch.nn.functional as F

from spikelite.snn import recalibrate_bn, spikify
from spikelite.data import BatchLoader, load_split
from spikelite.models import create_model


def accuracy(model, data) -> float:
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in BatchLoader(data, 256):
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / n


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = load_split("digits", None, "train", image_size=16)
    val = load_split("digits", None, "val", image_size=16)
    cnn = create_model("squeezenet1_1", num_classes=10, image_size=16)
    opt = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = BatchLoader(train, 64, shuffle=True)
    for epoch in range(4):
        loader.set_epoch(epoch)
        cnn.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(cnn(x), y).backward()
            opt.step()
    print(f"CNN validation accuracy: {accuracy(cnn, val):.4f}")
    cal = torch.cat([x for x, _ in BatchLoader(train, 256)])[:512]
    print(f"{'T':>3} {'thresholds':<12} {'as converted':>13} {'BN recalibrated':>16}")
    for T in (4, 8):
        for name, kw in (("1.0", {}), ("balanced", dict(balance=99.9, calibration=cal))):
            net = spikify(cnn, T=T, **kw)
            before = accuracy(net, val)
            recalibrate_bn(net, cal)
            print(f"{T:>3} {name:<12} {before:>13.4f} {accuracy(net, val):>16.4f}")


if __name__ == "__main__":
    main()
