"""Activation checkpointing for training a :class:`~spikelite.snn.SpikingNet` in less memory.

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

A cheaper, finer cut: ``net.recompute_neurons = True`` recomputes only the BatchNorm → neuron pairs
(:func:`recomputed_body`). Normally a pair keeps two full-size float tensors for backward — the
BatchNorm's input and the neuron's membrane potentials; recomputed, it keeps only the BatchNorm's
input (and its per-channel statistics), and backward re-runs the BatchNorm and the neuron — element-wise
work, no convolution — before going through them. Same exactness as the segments above.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import fx, nn
from torch.fx.passes.split_module import split_module
from torch.utils.checkpoint import checkpoint

from ..errors import SpikeliteError

__all__ = ["check_segments", "checkpointed_body", "CheckpointSegment", "recomputed_body", "RecomputedNeuron"]


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
    from .layers import SpikingActivation, mark_spikes

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


class _Recompute(torch.autograd.Function):
    """``pair(z)`` run without a graph; backward re-runs it with one and differentiates it.

    Only ``z`` is saved (through ``save_for_backward``, so saved-tensor hooks see it like any other).
    """

    @staticmethod
    def forward(ctx, z, pair, *params):
        ctx.pair = pair
        dev = z.device.type
        # backward re-runs the pair under the same autocast setting as this forward (mixed precision)
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.save_for_backward(z)
        with torch.no_grad():
            return pair.run(z)

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        pair = ctx.pair
        params = [p for p in pair.parameters() if p.requires_grad]
        with torch.enable_grad():
            z_ = z.detach().requires_grad_(ctx.needs_input_grad[0])
            inputs = ([z_] if ctx.needs_input_grad[0] else []) + params
            # the running statistics are put back only after the backward through the recomputation
            # (BatchNorm's graph holds them and checks they are unchanged)
            dev, enabled, dtype = ctx.autocast
            with _bn_stats_kept([pair.bn] if pair.bn.training and pair.bn.track_running_stats else []):
                with torch.autocast(dev, dtype=dtype, enabled=enabled):
                    out = pair.run(z_)
                grads = list(torch.autograd.grad(out, inputs, grad_out, allow_unused=True)) if inputs else []
        gz = grads.pop(0) if ctx.needs_input_grad[0] else None
        return (gz, None, *grads)


class RecomputedNeuron(nn.Module):
    """A BatchNorm and the neuron layer it feeds, recomputed in backward instead of stored.

    Holds references to the network's own two modules (no copies, no new parameters).
    """

    def __init__(self, bn: nn.Module, neuron: nn.Module):
        super().__init__()
        self.bn = bn
        self.neuron = neuron

    def run(self, z: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.bn(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.run(z)
        params = [p for p in self.parameters() if p.requires_grad]
        if not (z.requires_grad or params):
            return self.run(z)
        out = self._native(z)
        if out is not None:
            return out
        return _Recompute.apply(z, self, *params)

    def _native(self, z: torch.Tensor) -> torch.Tensor | None:
        """The pair as one native operator (``spikelite_native::bn_lif``: ATen's BatchNorm and the native
        LIF, the BatchNorm's output recomputed in C++ in backward), or None where it does not apply: a
        neuron other than spikelite's LIF/IF on the native operator, a QCFS charge offset, a BatchNorm
        without affine parameters, autocast, or hooks on these modules (the operator calls none)."""
        from .layers import SpikingActivation
        from .neuron import LIF

        act, bn = self.neuron, self.bn
        lif = getattr(act, "neuron", None)
        if not (isinstance(act, SpikingActivation) and isinstance(lif, LIF) and not act.charge_offset
                and type(bn) in _BN_TYPES and bn.affine and not torch.is_autocast_enabled(z.device.type)
                and not any(_hooked(m) for m in (bn, act, lif))):
            return None
        args = lif.native_args(z)
        if args is None:
            return None
        bn._check_input_dim(z)
        if not act.broadcast and z.shape[0] % act.T:
            return None  # SpikingActivation names the error
        # nn.BatchNorm's own bookkeeping, as its forward does it
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        keep = not bn.training or bn.track_running_stats
        from .. import native as _native

        return _native.ops().bn_lif(z, bn.weight, bn.bias, bn.running_mean if keep else None,
                                    bn.running_var if keep else None, use_batch, momentum, bn.eps, act.T,
                                    act.broadcast, *args)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
                or nn.modules.module._global_backward_hooks or nn.modules.module._global_backward_pre_hooks)


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def recomputed_body(body: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``body``'s graph in which every BatchNorm → neuron pair runs as a :class:`RecomputedNeuron`.

    A pair qualifies when the BatchNorm (a plain ``BatchNorm1d/2d/3d``: a subclass may compute something
    else) feeds one neuron layer and nothing else. The copy shares ``body``'s modules.
    """
    from .layers import SpikingActivation

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(body.graph, env)
    graph.output(out)
    gm = fx.GraphModule(body, graph)
    pairs = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), SpikingActivation):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and len(src.args) == 1 and not src.kwargs and type(gm.get_submodule(src.target)) in _BN_TYPES):
            continue
        name = f"recomputed_{pairs}"
        gm.add_submodule(name, RecomputedNeuron(gm.get_submodule(src.target), gm.get_submodule(node.target)))
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (src.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        gm.graph.erase_node(src)
        pairs += 1
    gm.graph.lint()
    gm.recompile()
    return gm
