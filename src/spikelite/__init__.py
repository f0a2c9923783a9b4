"""spikelite: turn lightweight CNNs into spiking neural networks and measure what that buys."""

__version__ = "0.1.0"

from .errors import SpikeliteError  # noqa: E402
from .snn import IF, LIF  # noqa: E402
from .snn import SpikingNet, spikify  # noqa: E402

__all__ = ["__version__", "SpikeliteError", "LIF", "IF", "spikify", "SpikingNet"]
