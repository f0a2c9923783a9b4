"""spikelite: turn lightweight CNNs into spiking neural networks and measure what that buys.

The public API, one name per job (each stage is also a package of its own, see docs/architecture.md)::

    import spikelite

    cnn = spikelite.create_model("squeezenet1_1", num_classes=10, image_size=32)   # spikelite.list_models()
    snn = spikelite.spikify(cnn, T=4)                  # every activation a LIF layer (surrogate training)
    snn = spikelite.convert(cnn, T=4, calibration=x)   # rate-coded conversion that converges to the CNN
    model, meta = spikelite.load_model("best.pt")     # a checkpoint rebuilt from the file alone
    spikelite.load_checkpoint(model, "best.pt")        # timm's convention: weights into a model
    summary = spikelite.train(spikelite.train.load_config("configs/cnn_cifar10.yaml"))
    report = spikelite.measure_energy(snn, data)       # ACs/MACs from real spikes, energy per profile
    spikelite.export(snn, "net.nir")                   # NIR, ONNX or TorchScript, checked after writing

``spikelite.train`` and ``spikelite.export`` are the stages' packages and are callable as their main
function. Every error the library raises on bad input is a :class:`SpikeliteError`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from .errors import SpikeliteError  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .snn import IF, LIF, ConversionIF, SpikingNet, convert, spikify  # noqa: E402

# Loaded on first use: they pull in the training loop, the energy counters and the exporters.
_LAZY = {
    "measure_energy": ("spikelite.energy", "measure_energy"),
    "train": ("spikelite.train", None),
    "export": ("spikelite.export", None),
}

__all__ = [
    "__version__",
    "SpikeliteError",
    "create_model",
    "list_models",
    "load_model",
    "load_checkpoint",
    "save_checkpoint",
    "spikify",
    "convert",
    "SpikingNet",
    "LIF",
    "IF",
    "ConversionIF",
    "train",
    "measure_energy",
    "export",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'spikelite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
