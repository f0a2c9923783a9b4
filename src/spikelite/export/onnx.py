"""ONNX and TorchScript: inference copies whose neurons are plain tensor ops (so they trace), and the
writers :func:`~spikelite.export.export` calls for the ``"onnx"`` and ``"torchscript"`` formats.

The ``onnx`` library is imported by its absolute name (``importlib.import_module("onnx")``), so this
submodule does not hide it.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import SpikeliteError
from ..snn import IF, LIF, SpikingActivation, SpikingNet
from .common import ExportResult, _check_input, _compare, _is_plain_neuron, _require, _trace_input


# ----------------------------------------------------------------------------------------------
# Inference copies: the reference neuron formula as plain tensor ops (traceable, no torch.compile)
# ----------------------------------------------------------------------------------------------


class _StepLIF(nn.Module):
    """Inference-only LIF/IF with exactly :mod:`spikelite.snn.neuron`'s discrete update, as plain ops."""

    def __init__(self, neuron: LIF):
        super().__init__()
        self.kind = "if" if isinstance(neuron, IF) else "lif"
        self.register_buffer("tau", neuron.tau.detach().clone().float().reshape(()))
        self.register_buffer("v_threshold", neuron.v_threshold.detach().clone().float().reshape(()))
        self.v_reset = neuron.v_reset
        self.decay_input = neuron.decay_input

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        tau = self.tau.to(x_seq.dtype)
        th = self.v_threshold.to(x_seq.dtype)
        rest = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x_seq[0], rest)
        out = []
        for t in range(x_seq.shape[0]):
            x = x_seq[t]
            if self.kind == "if":
                h = v + x
            elif self.decay_input:
                h = v + (x - (v - rest)) / tau
            else:
                h = v - (v - rest) / tau + x
            s = (h >= th).to(h.dtype)
            v = h - s * th if self.v_reset is None else s * self.v_reset + (1.0 - s) * h
            out.append(s)
        return torch.stack(out)


def _inference_copy(model: nn.Module) -> nn.Module:
    """A CPU eval copy of ``model`` whose LIF/IF neurons are :class:`_StepLIF` (same outputs)."""
    net = copy.deepcopy(model).cpu().eval()
    if isinstance(net, SpikingNet):
        for m in net.modules():
            if isinstance(m, SpikingActivation) and _is_plain_neuron(m.neuron):
                m.neuron = _StepLIF(m.neuron)
        net._rebuild_eval_body()
    return net


def _reference_copy(model: nn.Module) -> nn.Module:
    """A CPU eval copy that runs spikelite's own neuron code (the checks' reference). Compiled-kernel
    backends are switched to the eager fused path: the same forward, without a torch.compile wait."""
    net = copy.deepcopy(model).cpu().eval()
    for m in net.modules():
        if isinstance(m, LIF) and m.backend in ("auto", "compiled"):
            m.backend = "fused" if m.uses_fused() or m.backend == "compiled" else "torch"
    return net


# ----------------------------------------------------------------------------------------------
# ONNX and TorchScript files
# ----------------------------------------------------------------------------------------------


def _export_onnx(model, tmp: Path, shape, opset, check, check_batch, seed, result: ExportResult) -> None:
    _require("onnx", "ONNX export")
    net = _inference_copy(model)
    x = _trace_input(shape, 2)
    kwargs = dict(input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                                  "logits": {0: "batch"}})
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    errors = []
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if dynamo:
                    kw = {k: v for k, v in kwargs.items() if k != "dynamic_axes"}
                    kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1)}}
                    torch.onnx.export(net, (x,), str(tmp), dynamo=True, **kw)
                else:
                    torch.onnx.export(net, (x,), str(tmp), dynamo=False, **kwargs)
            break
        except SpikeliteError:
            raise
        except Exception as exc:
            errors.append(f"{'dynamo' if dynamo else 'TorchScript-based'} exporter: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    else:
        raise SpikeliteError("torch.onnx.export failed: " + "; ".join(errors))
    if not check:
        return
    ort = _require("onnxruntime", "checking the ONNX file (pass check=False / --no-check to skip)")
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    xc = _check_input(shape, check_batch, seed)
    with torch.no_grad():
        ref = _reference_copy(model)(xc)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: xc.numpy()})[0])
    _compare(result, ref, got, rel=1e-4 if result.kind == "cnn" else 1e-3, batch=check_batch)


def _export_torchscript(model, tmp: Path, shape, check, check_batch, seed, result: ExportResult) -> None:
    net = _inference_copy(model)
    x = _trace_input(shape, 2)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(tmp))
    except SpikeliteError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SpikeliteError(f"torch.jit.trace failed: {type(exc).__name__}: {first}") from None
    if not check:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp))
    xc = _check_input(shape, check_batch, seed)
    with torch.no_grad():
        ref = _reference_copy(model)(xc)
        got = loaded(xc)
    _compare(result, ref, got, rel=1e-5, batch=check_batch)
