"""QCFS, the activation a CNN is trained with to be converted into an SNN (Bu et al., ICLR 2022).

It lives with the models (``create_model(..., act_levels=L)`` builds it in place of ReLU); its spiking
twin is :class:`spikelite.snn.ConversionIF`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SpikeliteError

__all__ = ["QCFS"]


class _QCFSFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels: int):
        ctx.save_for_backward(x)
        return torch.clamp(torch.floor(x * levels + 0.5), 0, levels) / levels

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= 1)).to(grad.dtype), None


class _RoundSTE(torch.autograd.Function):
    """``floor(u·L + 1/2) / L`` forward, the identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, u, levels: int):
        return torch.floor(u * levels + 0.5) / levels

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class QCFS(nn.Module):
    """The CNN-side twin of a soft-reset IF neuron run for ``levels`` steps: quantise, clip, floor, shift.

    Without a threshold (``threshold=None``): ``y = clamp(floor(x·L + 1/2), 0, L) / L`` (forward), with
    the straight-through gradient of ``clamp(x, 0, 1)`` (backward) — the "quantization clip-floor-shift"
    activation of Bu et al. (ICLR 2022) with λ fixed at 1. A CNN trained with it in place of ReLU
    (``create_model(..., act_levels=L)``) converts to an SNN whose first layer is exact at ``T = L``: an
    IF neuron with threshold 1 and soft reset, fed a constant input ``x`` plus ``1/(2T)`` per step,
    fires ``clamp(floor(x·T + 1/2), 0, T)`` times. :func:`spikelite.snn.spikify` adds that half-threshold
    charge (``SpikingActivation.charge_offset``) when it replaces a QCFS.

    With a threshold (``threshold=λ``, a learned parameter ``lam``; ``create_model(..., act_levels=L,
    act_threshold=λ0)``): ``y = λ·floor(clamp(x/λ, 0, 1)·L + 1/2) / L``, the rounding straight-through,
    so λ learns the clipping point per layer (its gradient: ``y/λ - x/λ`` inside, 1 above). This is the
    paper's form; it converts to a :class:`~spikelite.snn.ConversionIF` with threshold λ, ``v_init = 1/2`` and
    amplitude λ (:func:`spikelite.snn.convert`), exactly at the first layer at ``T = L``.
    """

    def __init__(self, levels: int = 4, threshold: float | None = None):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise SpikeliteError(f"QCFS: levels must be an integer >= 1, got {levels!r}")
        self.levels = int(levels)
        if threshold is None:
            self.lam = None
        else:
            if not (float(threshold) > 0) or not math.isfinite(float(threshold)):
                raise SpikeliteError(f"QCFS: threshold must be a positive number, got {threshold!r}")
            self.lam = nn.Parameter(torch.tensor(float(threshold)))

    @property
    def threshold(self) -> float | None:
        """λ as a number (None for the fixed-scale form)."""
        return None if self.lam is None else float(self.lam.detach())

    def set_threshold(self, value: float) -> None:
        if self.lam is None:
            raise SpikeliteError("QCFS: this activation has no threshold (built with threshold=None)")
        if not value > 0 or not math.isfinite(value):
            raise SpikeliteError(f"QCFS: threshold must be a positive finite number, got {value}")
        with torch.no_grad():
            self.lam.fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lam is None:
            return _QCFSFunction.apply(x, self.levels)
        lam = self.lam.to(x.dtype).abs().clamp_min(1e-4)
        return _RoundSTE.apply(torch.clamp(x / lam, 0.0, 1.0), self.levels) * lam

    def extra_repr(self) -> str:
        return f"levels={self.levels}" + ("" if self.lam is None else f", threshold={self.threshold:.4g}")
