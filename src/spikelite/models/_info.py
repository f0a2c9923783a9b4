"""Parameter and dense-MAC counts by forward hooks on a dummy input.

MACs are the multiply-accumulates of ``nn.Conv2d`` and ``nn.Linear`` layers for one image: for a
conv ``out_h * out_w * out_channels * (in_channels / groups) * k_h * k_w``, for a linear layer
``out_features * in_features`` per row. Bias additions, BatchNorm, pooling, element-wise ops and
activations are not counted (the energy module counts everything exactly, including spike sparsity).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["count_params", "count_macs", "dummy_forward"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def dummy_forward(model: nn.Module, input_shape: tuple[int, ...], hooks: dict[nn.Module, callable]) -> torch.Tensor:
    """Run ``model`` once in eval mode without gradients on zeros of ``input_shape`` with forward hooks."""
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    handles = [m.register_forward_hook(fn) for m, fn in hooks.items()]
    try:
        with _eval_mode(model), torch.no_grad():
            return model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()


def _layer_macs(m: nn.Module, out: torch.Tensor) -> int:
    batch = out.shape[0]
    if isinstance(m, nn.Conv2d):
        per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        return out.numel() // batch * per_out
    if isinstance(m, nn.Linear):
        return out.numel() // batch * m.in_features
    return 0  # pragma: no cover


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
    """Dense MACs of one forward pass per sample, and the output of that pass."""
    total = [0]

    def hook(m, inputs, out):
        total[0] += _layer_macs(m, out)

    hooks = {m: hook for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    out = dummy_forward(model, input_shape, hooks)
    return total[0], out
