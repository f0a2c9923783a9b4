"""What every format shares: :class:`ExportResult` (what :func:`~spikelite.export.export` wrote and how
the file compared with PyTorch), the parts of the read-back check (seeded inputs, the tolerance, the
comparison), the import of the optional dependencies, and the test for spikelite's own LIF/IF neurons
(the formula NIR, ONNX and TorchScript reproduce).
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
from torch import nn

from ..errors import SpikeliteError
from ..snn import IF, LIF


# ----------------------------------------------------------------------------------------------
# Optional dependencies
# ----------------------------------------------------------------------------------------------


def _require(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SpikeliteError(f"{what} needs the {module!r} package, which is not installed ({exc}); "
                             "install the export extra: pip install 'spikelite[export]'") from None


# ----------------------------------------------------------------------------------------------
# Neurons: spikelite's own LIF and IF, whose update every format writes out
# ----------------------------------------------------------------------------------------------


def _is_plain_neuron(neuron: nn.Module) -> bool:
    return type(neuron) in (LIF, IF)


# ----------------------------------------------------------------------------------------------
# Writing files, checking them
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExportResult:
    """What :func:`export` wrote and how the written file compared with the PyTorch model."""

    path: str
    format: str
    kind: str  # "cnn" | "snn"
    input_shape: tuple[int, ...]
    bytes: int
    T: int | None = None
    dt: float | None = None
    nodes: dict[str, int] | None = None  # NIR node types and counts
    checked: bool = False
    check_batch: int = 0
    max_abs_diff: float | None = None
    tolerance: float | None = None
    spike_mismatch: float | None = None  # NIR: fraction of neuron outputs that differ from the SNN's
    spikes_compared: int | None = None  # NIR: neuron outputs compared (layers x neurons x T x batch)
    firing_rate: float | None = None  # NIR: the SNN's mean firing rate on the check inputs
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.format}, {self.kind}, {self.bytes:,} bytes; input "
                 f"{'x'.join(map(str, self.input_shape))}" + (f", T={self.T}" if self.T else "") +
                 (f", dt={self.dt:g}" if self.dt else "") + ")"]
        if self.nodes:
            lines.append("NIR nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.nodes.items())))
        if self.checked:
            line = (f"check: read back and ran on {self.check_batch} random inputs: max |output - PyTorch| = "
                    f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
            if self.spike_mismatch is not None:
                line += (f"; spikes differing: {self.spike_mismatch:.3%} of {self.spikes_compared:,} "
                         f"(firing rate {self.firing_rate:.1%})")
            lines.append(line)
        else:
            lines.append("check: skipped")
        lines.extend(self.notes)
        return "\n".join(lines)


def _check_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _tolerance(ref: torch.Tensor, rel: float) -> float:
    return rel * (1.0 + float(ref.abs().max()))


def _compare(result: ExportResult, ref: torch.Tensor, got: torch.Tensor, rel: float, batch: int) -> None:
    got = torch.as_tensor(got, dtype=ref.dtype).reshape(ref.shape)
    diff = float((got - ref).abs().max())
    tol = _tolerance(ref, rel)
    result.checked, result.check_batch, result.max_abs_diff, result.tolerance = True, batch, diff, tol
    if not diff <= tol:
        raise SpikeliteError(f"the exported {result.format} model's outputs differ from PyTorch's by up to "
                             f"{diff:.3g} (tolerance {tol:.3g}) on {batch} random inputs; nothing was written")


def _trace_input(shape, batch: int) -> torch.Tensor:
    return _check_input(shape, batch, 12345)
