"""Export trained models: NIR (spiking networks, for neuromorphic hardware), ONNX and TorchScript.

``export(model, "net.nir")`` writes a :class:`~spikelite.snn.SpikingNet` as a NIR graph (the
Neuromorphic Intermediate Representation read by Lava/Loihi, SpiNNaker2, Sinabs/Rockpool, snnTorch,
Norse and SpikingJelly); ``"net.onnx"`` and ``"net.pt"`` write ONNX and TorchScript for CNNs and SNNs.
Every file is written to a temporary file in the target directory, read back and run on a check batch
against the PyTorch model, and only then moved into place (``os.replace``): a failed export never
leaves a partial or unchecked file.

The submodules, lowest first:

- :mod:`.common` — what every format shares: :class:`ExportResult` (what was written and how it
  compared), the parts of the read-back check (seeded check inputs, the tolerance, the comparison),
  ``_require`` (the import of the optional dependencies ``nir``, ``nirtorch``, ``onnx``,
  ``onnxruntime``) and ``_is_plain_neuron`` (spikelite's own LIF/IF, the formula every format writes).
- :mod:`.nir` — SNN → NIR: :func:`to_nir`, the symbolic values and the graph builder, ``DEFAULT_DT``
  and the spike rule written into the graph's metadata. The module docstring sums up the mapping.
- :mod:`.nir_torch` — NIR → torch: :func:`nir_to_torch` and :class:`NIRNet`, the reader the checks and
  the tests run.
- :mod:`.onnx` — ONNX and TorchScript writing, and the inference copies they trace (the reference neuron
  formula as plain tensor ops).
- :mod:`.files` — :func:`export` (format from the suffix, temporary file, check, ``os.replace``), the NIR
  check, and :func:`export_checkpoint`.

Imports flow one way: common → nir → nir_torch → onnx → files (a submodule imports only ones before it).
Outside the package, export imports ``snn``, ``errors`` and ``checkpoint`` (inside
:func:`export_checkpoint`). The submodule :mod:`.onnx` does not hide the ``onnx`` library: it is imported
by its absolute name (``importlib.import_module("onnx")``).

``spikelite.export`` is this package and also callable: ``spikelite.export(model, path)`` is
``spikelite.export.export(model, path)``.
"""

import sys
import types


from .common import ExportResult
from .files import FORMATS, export, export_checkpoint
from .nir import DEFAULT_DT, to_nir
from .nir_torch import NIRNet, nir_to_torch

__all__ = [
    "FORMATS",
    "ExportResult",
    "export",
    "to_nir",
    "nir_to_torch",
    "NIRNet",
    "export_checkpoint",
    "DEFAULT_DT",
]


class _CallableModule(types.ModuleType):
    """``spikelite.export(model, path, ...)`` runs :func:`export`: the stage's package is its entry point."""

    def __call__(self, model, path, format=None, **kwargs):
        return export(model, path, format, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
