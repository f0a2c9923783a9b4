"""Feeding a model for :func:`~spikelite.energy.measure`: batches, device, seeds, one clear error.

``_batches`` turns a tensor, an :class:`~spikelite.data.ImageData` or an iterable of batches into
``(x, y)`` pairs; ``_inference`` runs in eval mode without gradients and gives the caller's modes and
RNG state back; ``_batch_seed`` gives batch k its own seed (ours and the peers' runs draw the same
spikes); ``_run_model`` turns a model's failure into a :class:`~spikelite.errors.SpikeliteError`.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from ..errors import SpikeliteError

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _batches(data, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    from ..data import BatchLoader, ImageData

    if isinstance(data, torch.Tensor):
        if data.dim() < 2:
            raise SpikeliteError(f"data tensor must be a batch [N, C, ...], got shape {tuple(data.shape)}")
        for i in range(0, data.shape[0], batch_size):
            yield data[i:i + batch_size], None
        return
    if isinstance(data, ImageData):
        yield from BatchLoader(data, batch_size, shuffle=False, augment=None)
        return
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise SpikeliteError(f"data must be a tensor [N, C, H, W], an ImageData or an iterable of (x, y) batches; "
                             f"got {type(data).__name__}")
    for k, item in enumerate(data):
        if isinstance(item, torch.Tensor):
            x, y = item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
            x = item[0]
            y = item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None
        else:
            raise SpikeliteError(f"data batch {k} is a {type(item).__name__}; expected a tensor x or a tuple (x, y)")
        if x.dim() < 2:
            raise SpikeliteError(f"data batch {k} has shape {tuple(x.shape)}; expected [N, C, ...]")
        yield x, y


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _model_name(model: nn.Module) -> str:
    from ..snn import SpikingNet

    spec = getattr(model, "spikelite_spec", None)
    if not isinstance(spec, dict) and isinstance(model, SpikingNet):
        spec = getattr(model.body, "spikelite_spec", None)
    base = spec.get("name") if isinstance(spec, dict) and spec.get("name") else type(model).__name__
    if isinstance(model, SpikingNet):
        return f"{base} SNN (T={model.T}, {model.encoding})"
    return base


@contextlib.contextmanager
def _inference(models: list[nn.Module], device: torch.device):
    """Eval mode and no gradients for the run; the caller's modes and RNG state come back after."""
    modes = [{m: m.training for m in model.modules()} for model in models]
    for model in models:
        model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        for mode in modes:
            for m, training in mode.items():
                m.training = training


def _batch_seed(seed: int, k: int) -> int:
    """Batch k runs under its own seed, so that every run over the same batches (ours, the peers')
    draws the same rate-encoded spikes."""
    return (int(seed) * 1_000_003 + k) % (2 ** 63)


def _run_model(model: nn.Module, x: torch.Tensor, what: str):
    try:
        return model(x.to(_model_device(model)))
    except SpikeliteError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SpikeliteError(f"the {what} failed on a data batch of shape {tuple(x.shape)}: "
                             f"{type(exc).__name__}: {exc}") from None
