"""Writing files: :func:`export` (the format, a temporary file beside the target, the read-back check,
then ``os.replace``), the NIR check, and :func:`export_checkpoint` for a checkpoint file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .._io import file_mode
from ..errors import SpikeliteError
from ..snn import SpikingNet
from .common import ExportResult, _check_input, _compare, _require
from .nir import DEFAULT_DT, _input_shape, to_nir
from .nir_torch import nir_to_torch
from .onnx import _export_onnx, _export_torchscript, _reference_copy

FORMATS = ("nir", "onnx", "torchscript")
_SUFFIXES = {
    ".nir": "nir", ".h5": "nir", ".hdf5": "nir",
    ".onnx": "onnx",
    ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript",
}


# ----------------------------------------------------------------------------------------------
# Writing files, checking them
# ----------------------------------------------------------------------------------------------


def _resolve_format(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise SpikeliteError(f"cannot tell the export format from {path.name!r}; pass format= one of "
                                 f"{', '.join(FORMATS)} (or use a .nir, .onnx or .pt file name)")
        return fmt
    f = str(fmt).lower()
    if f not in FORMATS:
        raise SpikeliteError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    return f


@contextlib.contextmanager
def _output_folder(path: Path):
    """Check that ``path`` can be written, creating its missing parent folders; if the block fails, the
    folders this created are removed again (when still empty): a failed export leaves nothing behind."""
    if path.is_dir():
        raise SpikeliteError(f"output {path} is a directory")
    missing, d = [], path.parent.absolute()
    while not d.exists() and d.parent != d:
        missing.append(d)  # deepest first: the order to remove them in
        d = d.parent

    def remove_created():
        for folder in missing:
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpikeliteError(f"cannot write {path}: cannot create its directory {path.parent} "
                                 f"({exc.strerror or exc})") from None
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise SpikeliteError(f"cannot write {path}: directory {path.parent} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise SpikeliteError(f"cannot write {path}: the existing file is read-only")
        yield
    except BaseException:
        remove_created()
        raise


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temporary path in ``path``'s directory; removed unless the caller moved it into place."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SpikeliteError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _spiking_outputs(net: SpikingNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rec: dict[str, torch.Tensor] = {}
    hooks = []
    for path, act in net.spiking_layers():
        def hook(m, a, out, path=path):
            rec[path] = out.detach().reshape(net.T, -1, *out.shape[1:])
        hooks.append(act.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = net(x)
    finally:
        for h in hooks:
            h.remove()
    return y, rec


def _export_nir(model, tmp: Path, shape, dt, check, check_batch, seed, result: ExportResult) -> None:
    nir = _require("nir", "NIR export")
    graph = to_nir(model, shape, dt)
    try:
        nir.write(tmp, graph)
    except OSError as exc:
        raise SpikeliteError(f"cannot write {result.path}: {exc}") from None
    counts: dict[str, int] = {}
    for node in graph.nodes.values():
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
    result.nodes = counts
    result.dt = float(dt)
    if not check:
        return
    back = nir_to_torch(tmp)
    ref_net = _reference_copy(model)
    x = _check_input(shape, check_batch, seed)
    mismatch = None
    if model.encoding == "rate":  # the graph's input is the spike trains: draw them as SpikingNet.encode does
        g = torch.Generator().manual_seed(seed)
        p = torch.rand(check_batch, *shape, generator=g)
        steps = torch.bernoulli(p.unsqueeze(0).expand(ref_net.T, *p.shape), generator=g)
        with torch.no_grad():
            ref = ref_net.body(steps.flatten(0, 1)).view(ref_net.T, check_batch, -1).mean(0)
            y = back.forward_steps(steps, record=False).mean(0)
    else:
        ref, spikes = _spiking_outputs(ref_net, x)
        with torch.no_grad():
            ys, nir_spikes = back.forward_steps(x, T=ref_net.T, record=True)
        y = ys.mean(0)
        diff = total = fired = 0
        for node, paths in back.layers.items():
            if all(p in spikes for p in paths):
                ours = torch.cat([spikes[p] for p in paths], dim=2) if len(paths) > 1 else spikes[paths[0]]
                diff += int((ours != nir_spikes[node]).sum())
                total += ours.numel()
                fired += int(ours.sum())
        if total:
            mismatch = diff / total
            result.spikes_compared, result.firing_rate = total, fired / total
    _compare(result, ref, y, rel=1e-3, batch=check_batch)
    result.spike_mismatch = mismatch


def export(model: nn.Module, path: str | os.PathLike, format: str | None = None, *, input_shape=None,
           dt: float = DEFAULT_DT, opset: int | None = None, check: bool = True, check_batch: int = 3,
           seed: int = 0) -> ExportResult:
    """Write ``model`` (a CNN or a :class:`~spikelite.snn.SpikingNet`) to ``path``.

    Args:
        format: ``"nir"`` (SNNs only), ``"onnx"`` or ``"torchscript"``; default from the suffix
            (``.nir``/``.h5``, ``.onnx``, ``.pt``/``.ts``).
        input_shape: ``(C, H, W)``; default from ``model.spikelite_spec``.
        dt: NIR only: the Euler step the time constants are written for.
        opset: ONNX only: the opset version (default: torch's).
        check: read the written file back, run it on ``check_batch`` seeded random inputs and
            compare with the PyTorch model (SNN: with its T); the file is moved into place only if
            the outputs agree.

    The file is written next to ``path`` under a temporary name and ``os.replace``-d into place,
    so a failure leaves no partial file and an existing file untouched (and removes the folders it
    created for the file); the file gets the permissions the umask allows, like any file spikelite writes.
    """
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"export expects an nn.Module, got {type(model).__name__}")
    out = Path(path)
    fmt = _resolve_format(out, format)
    if isinstance(check_batch, bool) or not isinstance(check_batch, int) or check_batch < 1:
        raise SpikeliteError(f"check_batch must be a positive integer, got {check_batch!r}")
    snn = isinstance(model, SpikingNet)
    if fmt == "nir" and not snn:
        raise SpikeliteError(f"NIR describes spiking networks; {type(model).__name__} is a CNN: spikify it first, "
                             "or export it with format 'onnx' or 'torchscript'")
    if snn and fmt != "nir" and model.encoding == "rate":
        raise SpikeliteError(f"a rate-encoded SNN samples random input spikes inside forward(), which {fmt} cannot "
                             "reproduce; export it to NIR (the graph takes the spike trains as input) or use "
                             "direct encoding")
    shape = _input_shape(model, input_shape)
    result = ExportResult(path=str(out), format=fmt, kind="snn" if snn else "cnn", input_shape=shape, bytes=0,
                          T=int(model.T) if snn else None)
    with _output_folder(out), _temp_beside(out) as tmp:
        if fmt == "nir":
            _export_nir(model, tmp, shape, dt, check, check_batch, seed, result)
        elif fmt == "onnx":
            _export_onnx(model, tmp, shape, opset, check, check_batch, seed, result)
        else:
            _export_torchscript(model, tmp, shape, check, check_batch, seed, result)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # the permissions the umask allows (mkstemp's file is private)
        result.bytes = tmp.stat().st_size
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise SpikeliteError(f"cannot write {out}: {exc.strerror or exc}") from None
    return result


# ----------------------------------------------------------------------------------------------
# Checkpoints and the CLI
# ----------------------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, format: str | None = None, *,
                      T: int | None = None, image_size: int | None = None, **kwargs) -> ExportResult:
    """:func:`export` for a spikelite checkpoint file (``spikelite.checkpoint.load_model``)."""
    out = Path(path)
    fmt = _resolve_format(out, format)  # fail on a bad format before loading anything
    from ..checkpoint import check_checkpoint_path, load_model

    checkpoint = check_checkpoint_path(checkpoint)
    with _output_folder(out):  # a failure below removes the folders created for the output
        model, meta = load_model(checkpoint)
        if T is not None:
            if not isinstance(model, SpikingNet):
                raise SpikeliteError("T applies to SNN checkpoints only")
            model.T = T
        if image_size is not None:
            if int(image_size) < 1:
                raise SpikeliteError(f"image_size must be >= 1, got {image_size}")
            spec = meta.get("model_spec") or {}
            kwargs.setdefault("input_shape", (int(spec.get("in_chans", 3)), int(image_size), int(image_size)))
        return export(model, out, fmt, **kwargs)
