"""NIR -> torch: the reader, a NIR graph as a :class:`NIRNet` run step by step.

:func:`nir_to_torch` reads a NIR graph back (through ``nirtorch``) into a runnable module, used by
the checks and the round-trip tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeliteError
from .common import _require
from .nir import DEFAULT_DT, SPIKE_RULE, _pair


# ----------------------------------------------------------------------------------------------
# NIR -> torch (the reader used by the checks and tests)
# ----------------------------------------------------------------------------------------------


def _meta_value(v):
    if isinstance(v, bytes):
        return v.decode("utf8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


class _NIRNeuron(nn.Module):
    """One NIR LIF/IF node as a stateful single-step module (``forward(x, state) -> (spikes, state)``).

    Forward Euler with the graph's ``dt``, evaluated in the same order as spikelite's neurons so a
    graph written by :func:`to_nir` reproduces the SNN exactly.
    """

    def __init__(self, node, dt: float, strict: bool):
        super().__init__()
        import nir

        self.kind = "if" if isinstance(node, nir.IF) else "lif"
        f = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).float().unsqueeze(0)  # noqa: E731
        self.register_buffer("v_threshold", f(node.v_threshold))
        self.register_buffer("v_reset", f(node.v_reset))
        self.strict = strict
        if self.kind == "if":
            scale = dt * np.asarray(node.r, dtype=np.float64)
            self.unit = bool(np.allclose(scale, 1.0, rtol=1e-9, atol=0))
            self.register_buffer("scale", f(scale))
        else:
            tau_steps = np.asarray(node.tau, dtype=np.float64) / dt
            r = np.asarray(node.r, dtype=np.float64)
            self.mode = ("decay" if np.array_equal(r, np.ones_like(r)) else
                         "nodecay" if np.allclose(r, tau_steps, rtol=1e-9, atol=0) else "general")
            self.register_buffer("tau", f(tau_steps))
            self.register_buffer("r", f(r))
            self.register_buffer("v_leak", f(node.v_leak))

    def forward(self, x: torch.Tensor, state=None):
        v = state["v"] if isinstance(state, dict) and state.get("v") is not None else self.v_reset.expand_as(x)
        if self.kind == "if":
            h = v + x if self.unit else v + self.scale * x
        elif self.mode == "decay":
            h = v + (x - (v - self.v_leak)) / self.tau
        elif self.mode == "nodecay":
            h = v - (v - self.v_leak) / self.tau + x
        else:
            h = v + (self.r * x - (v - self.v_leak)) / self.tau
        fired = h > self.v_threshold if self.strict else h >= self.v_threshold
        s = fired.to(h.dtype)
        v = torch.where(fired, self.v_reset.expand_as(h), h)
        return s, {"v": v, "s": s}


class _Scale(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)).unsqueeze(0))

    def forward(self, x):
        return x * self.scale


class _SumPool(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.k, self.s, self.p = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)

    def forward(self, x):
        return F.avg_pool2d(x, self.k, self.s, self.p, count_include_pad=True, divisor_override=1)


def _map_conv2d(node) -> nn.Conv2d:
    w = np.asarray(node.weight, dtype=np.float32)
    groups = int(np.asarray(node.groups).item())
    conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_pair(node.stride),
                     padding=node.padding if isinstance(node.padding, str) else _pair(node.padding),
                     dilation=_pair(node.dilation), groups=groups, bias=True)
    conv.weight.data = torch.from_numpy(w.copy())
    conv.bias.data = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy())
    return conv


def _map_affine(node) -> nn.Linear:
    w = np.asarray(node.weight, dtype=np.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=True)
    lin.weight.data = torch.from_numpy(w.copy())
    lin.bias.data = torch.from_numpy(np.asarray(node.bias, dtype=np.float32).copy())
    return lin


def _map_linear(node) -> nn.Linear:
    w = np.asarray(node.weight, dtype=np.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = torch.from_numpy(w.copy())
    return lin


def _map_flatten(node) -> nn.Flatten:
    # NIR's shapes leave out the batch (nir.Flatten's type inference works on them); torch's include it.
    shift = lambda d: d + 1 if d >= 0 else d  # noqa: E731
    return nn.Flatten(shift(int(node.start_dim)), shift(int(node.end_dim)))


def _map_avgpool(node) -> nn.AvgPool2d:
    return nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding))


class NIRNet(nn.Module):
    """A NIR graph as a PyTorch module, run step by step (built by :func:`nir_to_torch`).

    ``forward_steps(x)`` feeds ``x`` (``[N, ...]``: the same input every step, direct encoding; or
    ``[T, N, ...]``: one input per step) for ``T`` steps from rest and returns ``[T, N, out]``;
    with ``record=True`` it also returns each neuron node's spikes ``{node: [T, N, ...]}``.
    ``forward(x)`` is the mean over the steps, like :class:`~spikelite.snn.SpikingNet`.
    """

    def __init__(self, graph_module: nn.Module, neurons: dict[str, str], input_shape: tuple[int, ...], T: int,
                 metadata: dict, layers: dict[str, list[str]]):
        super().__init__()
        self.graph_module = graph_module
        self.neurons = neurons  # NIR node name -> sanitized module name
        self.input_shape = input_shape
        self.T = T
        self.metadata = metadata
        self.layers = layers  # NIR neuron node -> spikelite spiking-layer paths (from the metadata)

    def forward_steps(self, x: torch.Tensor, T: int | None = None, record: bool = False):
        steps = int(T or self.T)
        per_step = x.dim() == len(self.input_shape) + 2
        if per_step:
            steps = x.shape[0]
        if tuple(x.shape[-len(self.input_shape):]) != self.input_shape:
            raise SpikeliteError(f"input shape {tuple(x.shape)} does not end with the graph's input shape "
                                 f"{self.input_shape}")
        state = {name: None for name in self.graph_module._modules}
        outs, rec = [], {k: [] for k in self.neurons}
        for t in range(steps):
            out, state = self.graph_module(x[t] if per_step else x, state)
            outs.append(out)
            if record:
                for k, mod in self.neurons.items():
                    rec[k].append(state[mod]["s"])
        y = torch.stack(outs)
        if record:
            return y, {k: torch.stack(v) for k, v in rec.items()}
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_steps(x).mean(0)


def _read_nir(path: Path):
    """``nir.read``; for graphs with grouped convolutions, without NIR's type check (nir 1.0.x infers a
    Conv2d's input channels from ``weight.shape[1]``, which is ``C_in / groups`` for a grouped conv)."""
    nir = _require("nir", "reading NIR")
    try:
        return nir.read(path)
    except Exception as exc:
        first = exc
    try:
        graph = nir.read(path, type_check=False)
    except Exception:
        graph = None
    if graph is None or not any(isinstance(n, nir.Conv2d) and int(np.asarray(n.groups)) > 1
                                for n in graph.nodes.values()):
        raise SpikeliteError(f"cannot read NIR file {path}: {type(first).__name__}: {first}") from None
    return graph


def nir_to_torch(graph, dt: float | None = None, T: int | None = None, strict_threshold: bool | None = None) -> NIRNet:
    """Read a NIR graph (a ``nir.NIRGraph`` or a file path) into a runnable :class:`NIRNet`.

    Args:
        dt: the Euler step; default the graph's ``metadata["dt"]`` (written by :func:`to_nir`), else 1e-4.
        T: default time steps; default ``metadata["T"]``, else 1.
        strict_threshold: fire at ``v > v_threshold`` (NIR's text) instead of ``>=``; default: ``>=``
            when the metadata's spike rule says so (graphs from :func:`to_nir`), else ``>``.
    """
    nir = _require("nir", "reading NIR")
    nirtorch = _require("nirtorch", "reading NIR")
    if isinstance(graph, (str, os.PathLike)):
        p = Path(graph)
        if not p.is_file():
            raise SpikeliteError(f"NIR file {p} does not exist")
        graph = _read_nir(p)
    if not isinstance(graph, nir.NIRGraph):
        raise SpikeliteError(f"expected a nir.NIRGraph or a path, got {type(graph).__name__}")
    meta = {k: _meta_value(v) for k, v in (graph.metadata or {}).items()}
    dt = float(dt if dt is not None else meta.get("dt", DEFAULT_DT))
    strict = (meta.get("spike_rule") != SPIKE_RULE) if strict_threshold is None else bool(strict_threshold)
    node_map = {
        nir.Conv2d: _map_conv2d,
        nir.Affine: _map_affine,
        nir.Linear: _map_linear,
        nir.Flatten: _map_flatten,
        nir.AvgPool2d: _map_avgpool,
        nir.SumPool2d: _SumPool,
        nir.Scale: lambda n: _Scale(n.scale),
        nir.LIF: lambda n: _NIRNeuron(n, dt, strict),
        nir.IF: lambda n: _NIRNeuron(n, dt, strict),
    }
    unknown = sorted({type(n).__name__ for n in graph.nodes.values()
                      if type(n) not in node_map and not isinstance(n, (nir.Input, nir.Output))})
    if unknown:
        raise SpikeliteError(f"this reader does not know NIR node type(s) {unknown}")
    inputs = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise SpikeliteError(f"expected one Input node, found {len(inputs)}")
    input_shape = tuple(int(d) for d in np.asarray(inputs[0].input_type["input"]).ravel())
    try:
        gm = nirtorch.nir_to_torch(graph, node_map)
    except Exception as exc:
        raise SpikeliteError(f"nirtorch could not build the graph: {type(exc).__name__}: {exc}") from None
    neurons = {name: name.replace(".", "_") for name, n in graph.nodes.items() if isinstance(n, (nir.LIF, nir.IF))}
    layers = {}
    for name in neurons:
        md = graph.nodes[name].metadata or {}
        v = _meta_value(md.get("spikelite_layers", ""))
        layers[name] = [p for p in str(v).split(",") if p]
    steps = int(T if T is not None else meta.get("T", 1))
    return NIRNet(gm, neurons, input_shape, steps, meta, layers).eval()
