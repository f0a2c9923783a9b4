"""Inference copies: eval-only, no autograd state, BatchNorm folded into the conv before it.

:func:`spikelite.snn.inference_model` (also :meth:`spikelite.snn.SpikingNet.inference`) returns a new
module that computes what ``net.eval()`` computes, only cheaper; this module holds the parts that do not
depend on :class:`~spikelite.snn.SpikingNet` (BatchNorm folding, the eval-only mixin, the CNN copy):

* a deep copy, parameters frozen (``requires_grad=False``), always in eval mode — ``.train()`` is an
  error rather than a silent switch back to batch statistics;
* every call runs under :func:`torch.inference_mode` (no autograd graph, no version counters);
* every BatchNorm whose input is the output of a convolution read by nothing else is folded into
  that convolution (``W' = W·γ/σ``, ``b' = (b − μ)·γ/σ + β``, computed in float64 and cast back to the
  weight's dtype) — exact up to rounding; a BatchNorm that normalises spikes, a shared conv output,
  a Linear output or a BatchNorm subclass with its own forward (timm's ``BatchNormAct2d``) is kept;
* ``channels_last=True`` stores 4-D convolution weights and 4-D inputs in NHWC order, which lets
  oneDNN (CPU) and cuDNN (tensor cores) pick faster kernels for many networks; it changes no value.

Works for a :class:`~spikelite.snn.SpikingNet` (its eval graph is used) and for plain CNNs
(traced with ``torch.fx`` in eval mode, e.g. :func:`spikelite.models.create_model` models).
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import SpikeliteError
from .layers import _trace

__all__ = ["fold_batchnorm", "InferenceModel"]

_BN_FOR_CONV: dict[type, type] = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}


# --------------------------------------------------------------------------------------------
# BatchNorm folding on an fx graph
# --------------------------------------------------------------------------------------------


def _fold_into_conv(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv``'s weight and bias, in place (float64 maths)."""
    def f64(t):
        return None if t is None else t.detach().double()

    dtype = conv.weight.dtype
    w, b = fuse_conv_bn_weights(f64(conv.weight), f64(conv.bias), f64(bn.running_mean), f64(bn.running_var),
                                bn.eps, f64(bn.weight), f64(bn.bias))
    conv.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(b.detach().to(dtype), requires_grad=False)


def _foldable(gm: fx.GraphModule, node: fx.Node, calls: Counter) -> nn.Module | None:
    """The conv that BatchNorm node ``node`` can be folded into exactly, or None."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    bn = gm.get_submodule(node.target)
    src = node.args[0]
    if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
        return None
    conv = gm.get_submodule(src.target)
    if type(bn) is not _BN_FOR_CONV.get(type(conv)):  # exact types: subclasses may override forward
        return None
    if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
        return None
    if calls[node.target] != 1 or calls[src.target] != 1:  # a module called twice would change elsewhere
        return None
    return conv


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every exactly-foldable conv → BatchNorm pair of ``gm`` (eval semantics), in place.

    Returns the number of BatchNorm layers removed from the graph. The modules are changed in
    place, so call it on a copy.
    """
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        conv = _foldable(gm, node, calls)
        if conv is None:
            continue
        _fold_into_conv(conv, gm.get_submodule(node.target))
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        folded += 1
    if folded:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return folded


# --------------------------------------------------------------------------------------------
# Inference modules
# --------------------------------------------------------------------------------------------


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class _EvalOnly:
    """Mixin: ``train(True)`` is an error, ``train(False)``/``eval()`` are no-ops."""

    def train(self, mode: bool = True):
        if mode:
            raise SpikeliteError(
                f"{type(self).__name__} is an inference copy (BatchNorm folded, no autograd): it cannot train; "
                "train the original network and call inference_model() again"
            )
        return super().train(False)


class InferenceModel(_EvalOnly, nn.Module):
    """Eval-only copy of a plain CNN (see :func:`inference_model`): a folded fx graph of it."""

    def __init__(self, body: fx.GraphModule, channels_last: bool, folded_bn: int):
        super().__init__()
        self.body = body
        self.channels_last = bool(channels_last)
        self.folded_bn = int(folded_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.channels_last and isinstance(x, torch.Tensor):
                x = _to_channels_last(x)
            return self.body(x)


def _cnn_copy(model: nn.Module) -> InferenceModel:
    work = copy.deepcopy(model)
    graph = _trace(work, False)
    body = fx.GraphModule(work, graph, class_name=type(model).__name__)
    body.delete_all_unused_submodules()
    new = InferenceModel(body, False, 0)
    if hasattr(model, "spikelite_spec"):
        new.spikelite_spec = copy.deepcopy(model.spikelite_spec)
    return new
