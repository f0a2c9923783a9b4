"""Activation checkpointing for training a :class:`~spikelite.convert.SpikingNet` in less memory.

``net.checkpoint_segments = k`` cuts the network's (time-folded) graph into ``k`` consecutive
segments with about the same number of neuron layers each and runs every segment under
:func:`torch.utils.checkpoint.checkpoint` (``use_reentrant=False``). Only the tensors that cross a
segment boundary are kept for backward (spike tensors among them stored as 1-byte booleans when
``compact_spikes`` is on); everything inside a segment is recomputed, one segment at a time, during
backward. That costs about one extra forward pass and gives exactly the gradients of the normal path:

* spikelite's neurons keep no state across calls, so running a segment twice gives the same spikes;
* the random state is restored for the recomputation (dropout masks and rate encoding repeat);
* BatchNorm running statistics are updated once: they are put back after the recomputation (which
  normalises with the batch statistics, as the first pass did).

``k = 0`` switches it off (the default). It applies in training mode with autograd on; eval mode,
``torch.no_grad`` and ``torch.compile`` use the ordinary graph.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint

from .errors import SpikeliteError

__all__ = ["check_segments", "checkpointed_body", "CheckpointSegment"]


def check_segments(value) -> int:
    """Validate a ``checkpoint_segments`` value: an integer ≥ 0 (0 or None: off)."""
    if value is None or value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpikeliteError(f"checkpoint_segments must be an integer >= 0 (0: off), got {value!r}")
    return value


@contextlib.contextmanager
def _bn_stats_kept(bns: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Run training-mode BatchNorms as usual, then put their running statistics back as they were.

    (Switching the update off instead would change which tensors BatchNorm saves for backward,
    which checkpoint's recomputation check rightly refuses.)
    """
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
             for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, values in zip(bns, saved):
                bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for buf, value in zip(bufs, values):
                    buf.copy_(value)


class CheckpointSegment(nn.Module):
    """One segment of a split graph, run under non-reentrant activation checkpointing."""

    def __init__(self, inner: fx.GraphModule):
        super().__init__()
        self.inner = inner
        self.bns = [m for m in inner.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]

    enabled: bool = True  # False: run the segment plainly (used to measure what it saves)

    def forward(self, *args):
        if not self.enabled:
            return self.inner(*args)
        first = [True]

        def run(*a):
            if first[0]:  # the forward pass proper
                first[0] = False
                return self.inner(*a)
            with _bn_stats_kept([m for m in self.bns if m.training]):  # the recomputation in backward
                return self.inner(*a)

        return checkpoint(run, *args, use_reentrant=False)


def _partition(body: fx.GraphModule, k: int) -> dict[fx.Node, int]:
    """Segment index per node: consecutive runs in graph order, ~equal neuron layers per segment.

    A segment ends right after a neuron layer (and the node that tags its spikes for compact
    storage), so the boundary tensors are mostly spikes.
    """
    from .convert import SpikingActivation, mark_spikes

    nodes = list(body.graph.nodes)
    is_neuron = {n: n.op == "call_module" and isinstance(body.get_submodule(n.target), SpikingActivation)
                 for n in nodes}
    total = sum(is_neuron.values())
    k = max(1, min(k, total))
    part: dict[fx.Node, int] = {}
    seen = 0
    for n in nodes:
        if n.op == "call_function" and n.target is mark_spikes and n.args and n.args[0] in part:
            part[n] = part[n.args[0]]
            continue
        part[n] = min(seen * k // max(total, 1), k - 1)
        seen += is_neuron[n]
    return part


def checkpointed_body(body: fx.GraphModule, k: int) -> fx.GraphModule:
    """A graph module computing ``body`` as ``k`` checkpointed segments; shares ``body``'s modules."""
    k = check_segments(k)
    if k < 1:
        raise SpikeliteError("checkpointed_body needs k >= 1 segments")
    part = _partition(body, k)
    split = split_module(body, body, lambda n: part[n], keep_original_order=True)
    for name, sub in list(split.named_children()):
        if name.startswith("submod_"):
            setattr(split, name, CheckpointSegment(sub))
    return split
