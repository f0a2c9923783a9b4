"""Where and how a command runs: one reading of ``device="auto"`` and of a thread count for every stage."""

from __future__ import annotations

import torch

from .errors import SpikeliteError

__all__ = ["resolve_device", "set_threads"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) is CUDA when a GPU is visible, else the CPU; ``cpu``, ``cuda``, ``cuda:N``
    as torch reads them. Asking for CUDA where there is none, or a malformed name, is an error."""
    if isinstance(spec, torch.device):
        device = spec
    else:
        spec = "auto" if spec is None else str(spec)
        if spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError):
            raise SpikeliteError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpikeliteError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
    return device


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch's intra-op work (None: leave torch's default)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise SpikeliteError(f"threads must be an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)
