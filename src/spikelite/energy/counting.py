"""Exact synaptic-operation counts of one layer call, and which modules are neurons.

:func:`is_binary` and :func:`spike_events` (is an input spikes, and how many events each element
carries), :func:`conv_fanout` (the real fan-out of every nonzero input element of a conv, padding
modes, stride, dilation and groups included) and :func:`synaptic_ops` (effective and dense
operations of one conv/linear call). ``_neuron_types`` lists the neuron classes a model is
searched for (spikelite's, and SpikingJelly's and snnTorch's when installed).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SpikeliteError
from ..snn import LIF, ConversionIF

__all__ = ["SYNAPTIC_TYPES", "is_binary", "spike_events", "conv_fanout", "synaptic_ops"]

# ----------------------------------------------------------------------------------------------
# Exact synaptic-operation counts
# ----------------------------------------------------------------------------------------------

SYNAPTIC_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                    nn.ConvTranspose3d, nn.Linear)
_BN_TYPES: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def is_binary(x: torch.Tensor) -> bool:
    """True when every value of ``x`` is 0 or 1 (bool tensors always; an empty tensor too)."""
    if x.dtype == torch.bool:
        return True
    if x.is_complex():
        return False
    return bool(torch.logical_or(x == 0, x == 1).all())


def spike_events(x: torch.Tensor, amplitudes=(), channel_dim: int = 1) -> torch.Tensor | None:
    """How many spike events each element of ``x`` carries, or None when ``x`` is not spikes.

    Binary ``x``: one event per nonzero element. Otherwise ``x`` is spikes when every channel's nonzero
    values are whole multiples (of either sign) of one of ``amplitudes`` — the thresholds of the
    ConversionIF layers that ran: their spikes carry the threshold ±θ, a burst of k spikes is ±kθ, and a
    concatenation of two layers' spikes has one θ per channel group. The amplitude folds into the next
    layer's weights (per input channel), so each event costs one AC per synapse: a negative spike is one
    event, a burst of k is k events."""
    if x.dtype == torch.bool or is_binary(x):
        return x != 0
    if not amplitudes or x.is_complex() or not x.is_floating_point() or x.dim() <= channel_dim:
        return None
    moved = x.detach().abs().movedim(channel_dim, 0)
    a = moved.reshape(moved.shape[0], -1).double()
    smallest = torch.where(a > 0, a, torch.full_like(a, math.inf)).amin(dim=1)  # [C]
    known = torch.tensor(sorted(set(amplitudes), reverse=True), dtype=torch.float64, device=a.device)
    ratio = smallest[:, None] / known[None, :]
    whole = ratio.round()
    fits = (whole >= 1) & ((ratio - whole).abs() <= 1e-4 * whole.clamp_min(1))
    empty = torch.isinf(smallest)
    if not bool((fits.any(dim=1) | empty).all()):
        return None
    amp = known[fits.to(torch.int8).argmax(dim=1)]  # the largest amplitude that fits
    amp = torch.where(empty, torch.ones_like(amp), amp)
    k = a / amp[:, None]
    kr = k.round()
    if not bool(((k - kr).abs() <= 1e-4 * kr.clamp_min(1)).all()):
        return None
    return kr.to(torch.int64).reshape(moved.shape).movedim(0, channel_dim)


def _pad_index(idx: torch.Tensor, length: int, mode: str) -> torch.Tensor:
    """Map indices into the padded axis (already shifted so 0 is the first real element) to the real
    element they read, or -1 for a zero pad."""
    if mode == "zeros":
        return torch.where((idx >= 0) & (idx < length), idx, torch.full_like(idx, -1))
    if mode == "replicate":
        return idx.clamp(0, length - 1)
    if mode == "circular":
        return torch.remainder(idx, length)
    if mode == "reflect":
        if length == 1:
            return torch.zeros_like(idx)
        period = 2 * (length - 1)
        r = torch.remainder(idx, period)
        return torch.where(r < length, r, period - r)
    raise SpikeliteError(f"unsupported padding_mode {mode!r}")


def _conv_padding(m: nn.modules.conv._ConvNd, nd: int) -> tuple[list[int], list[int]]:
    """(left, right) zero/mode padding per spatial dim, as the module's forward applies it."""
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return [0] * nd, [0] * nd
        # 'same': torch pads total = dilation*(k-1), the left half rounded down, the rest on the right
        lo, hi = [], []
        for d, k in zip(m.dilation, m.kernel_size):
            total = d * (k - 1)
            lo.append(total // 2)
            hi.append(total - total // 2)
        return lo, hi
    return list(m.padding), list(m.padding)


def _axis_fanout(length: int, kernel: int, stride: int, dilation: int, pad_lo: int, pad_hi: int, mode: str,
                 device) -> torch.Tensor:
    """For a regular conv along one axis: how many (output position, kernel tap) pairs read each of
    the ``length`` real input positions (int64 [length])."""
    out_len = (length + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1
    if out_len <= 0:
        return torch.zeros(length, dtype=torch.int64, device=device)
    o = torch.arange(out_len, device=device).view(-1, 1)
    j = torch.arange(kernel, device=device).view(1, -1)
    src = _pad_index((o * stride + j * dilation - pad_lo).flatten(), length, mode)
    src = src[src >= 0]
    return torch.bincount(src, minlength=length)


def _axis_fanout_transposed(length: int, out_len: int, kernel: int, stride: int, dilation: int, pad: int,
                            device) -> torch.Tensor:
    """For a transposed conv along one axis: how many kernel taps of input position i land inside the
    output (int64 [length])."""
    i = torch.arange(length, device=device).view(-1, 1)
    j = torch.arange(kernel, device=device).view(1, -1)
    pos = i * stride - pad + j * dilation
    return ((pos >= 0) & (pos < out_len)).sum(1)


def conv_fanout(m: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None,
                events: torch.Tensor | None = None) -> int:
    """Exact number of (nonzero input element, weight) products of one call of conv ``m`` on ``x``.

    Every nonzero input element at spatial position ``p`` of a channel in group ``g`` is multiplied by
    ``out_channels/groups`` filters at each kernel tap whose output position exists; zero padding
    adds nothing, reflect/replicate/circular padding re-reads real elements. The count factorises
    over the spatial axes (the padding of each axis is independent), so it is
    ``out_channels/groups x sum_p nnz(p) x prod_axes fanout_axis(p_axis)`` in exact integer
    arithmetic, where ``nnz(p)`` counts the nonzero elements at ``p`` over batch and channels. It
    equals ``sum(conv(nonzero_mask(x), all-ones kernel of the same geometry))`` (tested against that
    and against a brute-force loop). ``out`` is needed for transposed convs (their output size).
    ``events``: events per input element (a burst of k spikes is k) in place of the nonzero mask.
    """
    nd = x.dim() - 2
    spatial = x.shape[2:]
    nz = (x != 0 if events is None else events).sum(dim=(0, 1))  # int64 [*spatial]
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    weight = nz
    for axis in range(nd):
        if transposed:
            if out is None:
                raise SpikeliteError("conv_fanout needs the output of a transposed conv")
            f = _axis_fanout_transposed(spatial[axis], out.shape[2 + axis], m.kernel_size[axis], m.stride[axis],
                                        m.dilation[axis], m.padding[axis], nz.device)
        else:
            lo, hi = _conv_padding(m, nd)
            f = _axis_fanout(spatial[axis], m.kernel_size[axis], m.stride[axis], m.dilation[axis], lo[axis],
                             hi[axis], m.padding_mode, nz.device)
        shape = [1] * nd
        shape[axis] = -1
        weight = weight * f.view(shape)
    return int(weight.sum()) * (m.out_channels // m.groups)


def _dense_macs(m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    kernel = math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return x.numel() * (m.out_channels // m.groups) * kernel
    return out.numel() * (m.in_channels // m.groups) * kernel


def synaptic_ops(m: nn.Module, x: torch.Tensor, out: torch.Tensor,
                 events: torch.Tensor | None = None) -> tuple[int, int]:
    """``(effective, dense)`` operations of one call of a synaptic layer: effective = nonzero input
    elements (or ``events``: spike events per element) times their real fan-out (the ACs when ``x`` is
    spikes), dense = MACs with every input element used (``out_elements x in_channels/groups x kernel``
    for convs)."""
    if isinstance(m, nn.Linear):
        eff = int((x != 0).sum() if events is None else events.sum()) * m.out_features
    else:
        eff = conv_fanout(m, x, out, events)
    return eff, _dense_macs(m, x, out)


# ----------------------------------------------------------------------------------------------
# Neurons
# ----------------------------------------------------------------------------------------------


def _neuron_types() -> tuple[type, ...]:
    types: list[type] = [LIF, ConversionIF]
    try:  # peers' neurons, when those (dev) packages are installed
        from spikingjelly.activation_based.neuron import BaseNode

        types.append(BaseNode)
    except Exception:  # pragma: no cover - optional
        pass
    try:
        import snntorch

        types.append(snntorch.SpikingNeuron)
    except Exception:  # pragma: no cover - optional
        pass
    return tuple(types)


def _first_tensor(obj) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj:
        return _first_tensor(obj[0])
    return None
