"""The peers' counters on the same batches: SpikingJelly's ``op_counter`` and NeuroBench's metrics.

:class:`_Peers` runs them for ``measure(..., peers=True)``; both are dev dependencies, imported only
when asked for.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpikeliteError
from .batches import _run_model
from .counting import _BN_TYPES, _neuron_types

# ----------------------------------------------------------------------------------------------
# The peers' counters (dev dependencies): SpikingJelly's op_counter and NeuroBench's metrics
# ----------------------------------------------------------------------------------------------


def _version(dist: str, module) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # pragma: no cover - not installed as a distribution
        return str(getattr(module, "__version__", "?"))


class _Peers:
    """Runs SpikingJelly's SynOpCounter / ACCounter / MACCounter and NeuroBench's SynapticOperations
    and ActivationSparsity over the same batches as :func:`measure` (the same per-batch seeds)."""

    def __init__(self, model: nn.Module):
        try:
            import spikingjelly
            from spikingjelly.activation_based.op_counter import (ACCounter, DispatchCounterMode, MACCounter,
                                                                  SynOpCounter)
        except ImportError as exc:
            raise SpikeliteError(f"peer counts need SpikingJelly >= 2.0 (a dev dependency): {exc}") from None
        try:
            import neurobench
            from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
            from neurobench.models import TorchModel
        except ImportError as exc:
            raise SpikeliteError(f"peer counts need NeuroBench >= 2.0 (a dev dependency): {exc}") from None
        self.model = model
        self._mode = DispatchCounterMode
        self.synop = SynOpCounter()
        self.ac = ACCounter()
        self.mac = MACCounter(extra_ignore_modules=list(_BN_TYPES))
        self.mac_bn = MACCounter()
        self.nb = TorchModel(model)
        for t in _neuron_types():
            self.nb.add_activation_module(t)
        self.nb.register_hooks()
        self.nb_synops = SynapticOperations()
        self.nb_sparsity = ActivationSparsity()
        self.sparsity_sum = 0.0
        self.images = 0
        self.versions = {"spikingjelly": _version("spikingjelly", spikingjelly),
                         "neurobench": _version("neurobench", neurobench)}

    def run(self, x: torch.Tensor, y, batch_seed: int) -> None:
        n = int(x.shape[0])
        torch.manual_seed(batch_seed)
        with self._mode([self.synop, self.ac, self.mac, self.mac_bn]):
            _run_model(self.model, x, "model (SpikingJelly counters)")
        torch.manual_seed(batch_seed)
        self.nb.reset_hooks()
        preds = self.nb(x)
        data = (x, y if y is not None else torch.zeros(n))
        self.nb_synops(self.nb, preds, data)
        self.sparsity_sum += float(self.nb_sparsity(self.nb, preds, data)) * n
        self.nb.reset_hooks()
        self.images += n

    def close(self) -> None:
        self.nb.cleanup_hooks()

    def result(self) -> dict:
        n = max(self.images, 1)
        nb = self.nb_synops.compute()
        return {
            "spikingjelly": {
                "version": self.versions["spikingjelly"],
                "synops": self.synop.get_total() / n,
                "mac_counter": self.mac.get_total() / n,
                "mac_counter_with_bn": self.mac_bn.get_total() / n,
                "ac_counter": self.ac.get_total() / n,
            },
            "neurobench": {
                "version": self.versions["neurobench"],
                "effective_acs": float(nb["Effective_ACs"]),
                "effective_macs": float(nb["Effective_MACs"]),
                "dense": float(nb["Dense"]),
                "activation_sparsity": self.sparsity_sum / n,
            },
        }
