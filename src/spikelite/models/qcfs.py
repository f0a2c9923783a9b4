"""QCFS, the activation a CNN is trained with to be converted into an SNN (Bu et al., ICLR 2022).

It lives with the models (``create_model(..., act_levels=L)`` builds it in place of ReLU); its spiking
twin is :class:`spikelite.snn.ConversionIF`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import native
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


class _QCFSNative(torch.autograd.Function):
    """The learned-λ QCFS as one native pass each way (``spikelite_native::qcfs_forward`` / ``qcfs_backward``):
    the same forward arithmetic as the eager formula, bit for bit, and the same straight-through gradients
    (λ's summed in blocks, the blocks in double), without the seven intermediate tensors the eager version allocates and keeps."""

    @staticmethod
    def forward(ctx, x, lam, levels: int):
        if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
            x = x.contiguous()
        lam_value = float(lam)
        ctx.save_for_backward(x)
        ctx.lam, ctx.levels = lam_value, levels
        return native.ops().qcfs_forward(x, lam_value, levels)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if grad.stride() != x.stride() or grad.dtype != x.dtype:
            grad = torch.empty_like(x).copy_(grad)
        gx, glam = native.ops().qcfs_backward(grad, x, ctx.lam, ctx.levels)
        return gx, glam.to(x.dtype), None


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
        if self._native_ok(x):
            return _QCFSNative.apply(x, lam, self.levels)
        return _RoundSTE.apply(torch.clamp(x / lam, 0.0, 1.0), self.levels) * lam

    @staticmethod
    def _native_ok(x: torch.Tensor) -> bool:
        """Whether the native kernel runs this input (:func:`spikelite.native.runs_on`; ``SPIKELITE_NATIVE=0``
        keeps the eager formula)."""
        return native.runs_on(x)

    def extra_repr(self) -> str:
        return f"levels={self.levels}" + ("" if self.lam is None else f", threshold={self.threshold:.4g}")
