"""The checkpoint file format: save, read (``weights_only``), rebuild.

A spikelite checkpoint is self-describing: one ``torch.save`` dict holding the format and its version,
``kind`` (cnn|snn), ``model_spec`` (the :func:`~spikelite.models.create_model` arguments), ``snn`` (T,
encoding and neuron settings), ``prune`` (the macro modules kept), what the writer adds (``data``,
``config``, ``metrics``, ``history`` …), the ``state_dict`` and, in a training run's ``last.pt``, its
``train_state``. :func:`load_model` rebuilds the network from the file alone; it reads with
``torch.load(weights_only=True)``, so a checkpoint can never run code.

Every checkpoint carries ``checksum``: ``{"algorithm": "sha256", "digest": ...}``, a SHA-256 over all its
other entries (tensors by dtype, shape and bytes; dict keys in sorted order; see :func:`payload_digest`),
verified by :func:`read_checkpoint`: a file whose bytes changed after it was written (a disk or copy error,
an edit by hand) is refused as damaged. The checksum is an addition to format version 1, not a new
version: spikelite versions without it read these files unchanged, and files written before it (no
``checksum`` entry) still load, with one warning per file that they cannot be checked.

- :func:`save_checkpoint` (atomic), :func:`read_checkpoint` (the raw dict, checked and its checksum
  verified), :func:`write_checkpoint` (a raw dict written back with a fresh checksum),
  :func:`rebuild_model` (the untrained network a checkpoint describes), :func:`load_model` (``(model,
  meta)`` from a path), :func:`load_checkpoint` (timm's convention: weights from a path into a model).
- :func:`checkpoint_data` — the split of the dataset a checkpoint was trained on, with its
  normalisation, checked against the model (number and order of classes).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import __version__
from ._io import atomic_write, plain
from .data import load_split
from .errors import SpikeliteError
from .snn import SpikingNet, respikify

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "read_checkpoint",
    "rebuild_model",
    "load_model",
    "load_checkpoint",
    "describe_model",
    "checkpoint_data",
    "unwrap",
    "model_from_checkpoint",
    "REBUILD_HOOKS",
    "write_checkpoint",
    "payload_digest",
    "check_checkpoint_path",
]

CHECKPOINT_FORMAT = "spikelite-checkpoint"
CHECKPOINT_VERSION = 1  # the checksum entry is an addition readers of version 1 may ignore
CHECKSUM_ALGORITHM = "sha256"
KINDS = ("cnn", "snn")


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside training wrappers: DDP's ``module``, and any wrapper that names the network it
    wraps in a ``wrapped`` attribute (the training loop's forward wrapper)."""
    while True:
        inner = (model.module if isinstance(model, nn.parallel.DistributedDataParallel)
                 else getattr(model, "wrapped", None))
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def describe_model(model: nn.Module) -> dict:
    """``{"kind", "model_spec", "snn"}`` for a zoo CNN or a SpikingNet made from one."""
    model = unwrap(model)
    if isinstance(model, SpikingNet):
        spec = getattr(model, "spikelite_spec", None) or getattr(model.body, "spikelite_spec", None)
        snn = model.config()
        if snn.get("neuron") is None:
            raise SpikeliteError("this SpikingNet's neurons have no config() (a custom neuron factory), so a "
                                 "checkpoint could not rebuild it; use a neuron dict with spikify")
        kind = "snn"
    else:
        spec, snn, kind = getattr(model, "spikelite_spec", None), None, "cnn"
    if not isinstance(spec, dict):
        raise SpikeliteError(f"{type(model).__name__} has no spikelite_spec (it was not built by "
                             "spikelite.models.create_model), so a checkpoint could not rebuild it")
    return {"kind": kind, "model_spec": plain(copy.deepcopy(spec)), "snn": plain(copy.deepcopy(snn))}


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(obj, where: str = "checkpoint") -> None:
    """Refuse anything ``torch.load(weights_only=True)`` would not read back (dataclasses, numpy …)."""
    if isinstance(obj, _PLAIN_SCALARS) or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise SpikeliteError(f"{where}: key {k!r} is not a string or an integer")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise SpikeliteError(f"{where} holds a {type(obj).__name__}; checkpoints hold only tensors and plain "
                         "Python containers, strings and numbers")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, meta: dict | None = None,
                    train_state: dict | None = None) -> Path:
    """Write a self-describing checkpoint of ``model`` (a zoo CNN or a SpikingNet) atomically.

    The file is a dict: ``format``/``format_version``/``spikelite_version``, ``kind`` (cnn|snn),
    ``model_spec`` (``create_model`` kwargs), ``snn`` (``{"T", "encoding", "neuron"}`` or None),
    ``prune`` (None, or e.g. ``{"keep": [...]}`` for :func:`rebuild_model`), whatever ``meta`` adds
    (``data``, ``config``, ``metrics``, ``history`` …), ``state_dict`` (CPU tensors) and
    ``train_state`` (what resuming needs; None in model-only checkpoints). ``meta`` may override
    ``model_spec``/``prune``. Only tensors and plain containers are allowed (checked).
    """
    path = Path(path)
    desc = describe_model(model)
    ckpt: dict = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "spikelite_version": __version__,
        **desc,
        "prune": None,
    }
    for k, v in (meta or {}).items():
        if k in ("format", "format_version", "spikelite_version", "kind", "snn", "state_dict", "state_dict_metadata",
                 "train_state"):
            continue
        ckpt[k] = plain(v)
    sd = unwrap(model).state_dict()
    ckpt["state_dict"] = {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
    # module versions (e.g. torchvision's MNASNet refuses a state_dict without its version entry)
    ckpt["state_dict_metadata"] = {k: {kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))}
                                   for k, v in getattr(sd, "_metadata", {}).items()}
    ckpt["train_state"] = train_state
    return write_checkpoint(path, ckpt)


def _feed(h, obj) -> None:
    """Feed ``obj`` to the hash ``h`` in one canonical, unambiguous byte form (type tag, length, content)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.is_quantized:
            t = t.int_repr()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.resolve_conj().resolve_neg().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"{%d:" % len(obj))
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, torch.Size):
        h.update(f"S{tuple(obj)}".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(b"%s%d:" % (b"[" if isinstance(obj, list) else b"(", len(obj)))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif isinstance(obj, bool) or obj is None:
        h.update({True: b"b1", False: b"b0", None: b"n"}[obj])
    elif isinstance(obj, int):
        h.update(b"i%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"f" + obj.hex().encode() + b";")
    else:  # dtype, device; nothing else passes _check_plain
        text = f"{type(obj).__name__}:{obj}".encode()
        h.update(b"o%d:" % len(text) + text)


def payload_digest(ckpt: dict) -> str:
    """The SHA-256 hex digest of a checkpoint dict's entries other than ``checksum``: every tensor by dtype,
    shape and bytes, every dict with its keys in sorted order. Deterministic: the same contents give the same
    digest on every machine, whatever order the dict was built in."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != "checksum"})
    return h.hexdigest()


def write_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write a raw checkpoint dict (e.g. one from :func:`read_checkpoint` with an entry edited) atomically,
    with a fresh ``checksum``; only tensors and plain containers are allowed (checked). Editing a checkpoint
    and saving it with ``torch.save`` instead leaves the old checksum, and the file is then refused as damaged."""
    path = Path(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SpikeliteError(f"write_checkpoint takes a spikelite checkpoint dict (format={CHECKPOINT_FORMAT!r})")
    ckpt = {k: v for k, v in ckpt.items() if k != "checksum"}
    _check_plain(ckpt)
    ckpt["checksum"] = {"algorithm": CHECKSUM_ALGORITHM, "digest": payload_digest(ckpt)}
    atomic_write(path, lambda f: torch.save(ckpt, f))
    return path


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is an existing file; else a SpikeliteError saying what it is instead (missing,
    or a directory: then naming the checkpoints in it)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(q.name for q in p.glob("*.pt") if q.is_file())
        hint = (f"; it holds {', '.join(found[:6])}{' …' if len(found) > 6 else ''}: name one of them" if found
                else "; name the checkpoint file (.pt) itself")
        raise SpikeliteError(f"checkpoint {p} is a directory, not a checkpoint file{hint}")
    if not p.exists():
        raise SpikeliteError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise SpikeliteError(f"checkpoint {p} is not a regular file")
    return p


def _verify_checksum(obj: dict, p: Path) -> None:
    stored = obj.get("checksum")
    if stored is None:
        warnings.warn(f"checkpoint {p} carries no checksum (written before spikelite stored one), so damage to it "
                      "cannot be detected; write it again with spikelite.checkpoint.write_checkpoint("
                      "path, read_checkpoint(path)) to add one", UserWarning, stacklevel=3)
        return
    if (not isinstance(stored, dict) or stored.get("algorithm") != CHECKSUM_ALGORITHM
            or not isinstance(stored.get("digest"), str)):
        raise SpikeliteError(f"checkpoint {p} is damaged: its checksum entry is unreadable ({str(stored)[:80]}); "
                             "use another copy of it")
    if payload_digest(obj) != stored["digest"]:
        raise SpikeliteError(f"checkpoint {p} is damaged: its contents do not match the SHA-256 checksum stored in "
                             "it (the file changed after it was written: a disk or copy error, or an edit saved "
                             "with torch.save instead of write_checkpoint); use another copy of it")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, read with ``weights_only=True`` and its checksum verified; a SpikeliteError for
    anything else (a damaged file among them). A file without a checksum (written by an older spikelite)
    loads with a warning."""
    p = check_checkpoint_path(path)
    import zipfile

    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise SpikeliteError(f"cannot read checkpoint {p}: the file is corrupt or truncated (not a complete "
                             "PyTorch zip archive)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged archive members, unpickling refused …
        text = str(exc).strip()
        if "weights_only" in text or "Weights only load failed" in text:
            detail = next((line.strip() for line in text.splitlines()
                           if "GLOBAL" in line or "Unsupported" in line), "")
            detail = detail or "rejected by torch.load(weights_only=True)"
            raise SpikeliteError(f"refusing to load {p}: it holds objects other than tensors and plain "
                                 f"containers, and a checkpoint must never run code ({detail})") from None
        msg = text.splitlines()[0] if text else type(exc).__name__
        raise SpikeliteError(f"cannot read checkpoint {p}: the file is corrupt or truncated "
                             f"({type(exc).__name__}: {msg})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise SpikeliteError(f"{p} is not a spikelite checkpoint (no format={CHECKPOINT_FORMAT!r} entry; "
                             "a bare state_dict cannot be rebuilt without its model spec)")
    version = obj.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise SpikeliteError(f"{p} has checkpoint format version {version!r}; this spikelite reads up to "
                             f"{CHECKPOINT_VERSION} (upgrade spikelite)")
    missing = [k for k in ("kind", "model_spec", "state_dict") if k not in obj]
    if missing or obj["kind"] not in KINDS or not isinstance(obj["state_dict"], dict):
        raise SpikeliteError(f"{p} is an incomplete spikelite checkpoint (missing or bad: "
                             f"{', '.join(missing) or 'kind/state_dict'})")
    _verify_checksum(obj, p)
    if obj["kind"] == "snn" and not isinstance(obj.get("snn"), dict):
        raise SpikeliteError(f"{p}: an SNN checkpoint without its snn settings (T, encoding, neuron)")
    return obj


# Functions ``(spec: dict, meta: dict) -> dict`` applied to the create_model kwargs by rebuild_model,
# in order; a pruning module can append one to rebuild pruned structures.
REBUILD_HOOKS: list[Callable[[dict, dict], dict]] = []


def _prune_hook(spec: dict, meta: dict) -> dict:
    """A checkpoint whose ``prune`` entry has ``keep`` (the macro modules kept) passes it on to
    ``create_model(..., keep=[...])`` unless the model spec already carries it."""
    prune = meta.get("prune")
    if isinstance(prune, dict) and prune.get("keep") is not None and "keep" not in spec:
        spec = {**spec, "keep": list(prune["keep"])}
    return spec


REBUILD_HOOKS.append(_prune_hook)


def _earlier_defaults_hook(spec: dict, meta: dict) -> dict:
    """A spec recorded before an option's default changed, which does not name that option, rebuilds with
    the earlier default (:func:`spikelite.models.recorded_spec`: SqueezeNet's ``pool`` was ``max``)."""
    from .models import recorded_spec

    return recorded_spec(spec)


REBUILD_HOOKS.append(_earlier_defaults_hook)


def rebuild_model(meta: dict) -> nn.Module:
    """The (untrained) model a checkpoint describes: ``create_model(**model_spec)`` after the
    :data:`REBUILD_HOOKS` (e.g. a pruned structure), then ``spikify`` with the recorded T, encoding
    and neuron settings for an SNN."""
    from .models import create_model

    spec = meta.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise SpikeliteError("checkpoint has no model spec (model_spec with a name)")
    spec = dict(spec)
    for hook in REBUILD_HOOKS:
        spec = hook(spec, meta)
    try:
        model = create_model(**spec)
    except SpikeliteError as exc:
        raise SpikeliteError(f"cannot rebuild the checkpoint's model: {exc}") from None
    except TypeError as exc:
        raise SpikeliteError(f"cannot rebuild the checkpoint's model from spec {spec}: {exc}") from None
    if meta.get("kind") == "snn":
        snn = meta.get("snn") or {}
        model = respikify(model, {"T": 4, **snn})
    return model


def model_from_checkpoint(ckpt: dict, where: str) -> nn.Module:
    """The network a raw checkpoint dict (:func:`read_checkpoint`) describes, its weights loaded; ``where``
    names the checkpoint in errors."""
    model = rebuild_model(ckpt)
    sd = collections.OrderedDict(ckpt["state_dict"])
    # the module versions the weights were saved with; older checkpoints lack them: the rebuilt
    # model's own versions are the ones its code writes, so they describe those weights too
    sd._metadata = collections.OrderedDict(ckpt.get("state_dict_metadata") or model.state_dict()._metadata)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise SpikeliteError(f"{where}: the weights do not fit the model its spec describes "
                             f"({'; '.join(line.strip() for line in first[:3])})") from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """``(model, meta)`` from a checkpoint file alone: the CNN or SpikingNet with its weights, in eval
    mode on ``device``; ``meta`` is the checkpoint without ``state_dict`` and ``train_state``
    (``kind``, ``model_spec``, ``snn``, ``prune``, ``data``, ``config``, ``metrics``, ``history`` …)."""
    ckpt = read_checkpoint(path)
    model = model_from_checkpoint(ckpt, str(path))
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "state_dict_metadata", "train_state")}
    return model, meta


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> dict:
    """Load the weights of checkpoint ``path`` into ``model`` (timm's ``load_checkpoint(model, path)``);
    returns the checkpoint's meta. The checkpoint must describe a network of the same kind (CNN or SNN);
    ``strict`` as in :meth:`torch.nn.Module.load_state_dict` (a mismatch is a SpikeliteError)."""
    if not isinstance(model, nn.Module):
        raise SpikeliteError(f"load_checkpoint(model, path): model must be an nn.Module, got {type(model).__name__} "
                             "(to rebuild a network from a file alone use load_model(path))")
    ckpt = read_checkpoint(path)
    net = unwrap(model)
    kind = "snn" if isinstance(net, SpikingNet) else "cnn"
    if ckpt["kind"] != kind:
        raise SpikeliteError(f"{path} holds a {ckpt['kind'].upper()} but the model is a {kind.upper()}")
    try:
        net.load_state_dict(ckpt["state_dict"], strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise SpikeliteError(f"{path}: the weights do not fit this model "
                             f"({'; '.join(line.strip() for line in first[:3])})") from None
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "state_dict_metadata", "train_state")}


def _same_classes(a: list[str], b: list[str]) -> bool:
    """Equal class lists, or equal but for names one side adds after a bare key (Tiny ImageNet's
    ``"n01443537 (goldfish, ...)"`` against ``"n01443537"`` where the names file is absent)."""
    def key(c: str) -> str:
        return c.split(" (", 1)[0]

    return len(a) == len(b) and all(x == y or (key(x) == key(y) and key(x) in (x, y)) for x, y in zip(a, b))


def checkpoint_data(meta: dict, path, split: str, *, data_root: str | None = None, dataset: str | None = None):
    """The split of a checkpoint's dataset it is evaluated on: name, image size, channels, train/val split
    and normalisation from the checkpoint (``meta`` from :func:`load_model`); ``dataset``/``data_root``
    override where the data is. Returns ``(data, root)``; a SpikeliteError when the data do not fit the
    checkpoint."""
    info = meta.get("data") or {}
    name = dataset or info.get("dataset")
    if name is None:
        raise SpikeliteError(f"{path} does not record its dataset; pass --dataset")
    root = data_root if data_root is not None else (None if dataset and dataset != info.get("dataset")
                                                    else info.get("root"))
    if name == "digits":
        root = None
    with warnings.catch_warnings():
        if info.get("mean") and info.get("std"):  # the checkpoint's statistics replace the split's own below
            warnings.filterwarnings("ignore", message=".*normalising its test split with its own statistics")
        data = load_split(name, root, split, val_size=info.get("val_size"), seed=int(info.get("split_seed") or 0),
                          image_size=info.get("image_size") or meta["model_spec"].get("image_size"),
                          channels=info.get("in_chans") or meta["model_spec"].get("in_chans"))
    n_classes = meta["model_spec"].get("num_classes")
    if data.num_classes != n_classes:
        raise SpikeliteError(f"{data.name} at {root} has {data.num_classes} classes but the checkpoint's model has "
                             f"{n_classes}: wrong dataset for this checkpoint")
    if info.get("classes") is not None and not _same_classes(list(info["classes"]), list(data.classes)):
        raise SpikeliteError(f"the classes of {data.name} at {root} ({', '.join(data.classes[:4])}, ...) differ from "
                             f"the checkpoint's ({', '.join(info['classes'][:4])}, ...)")
    if info.get("mean") and info.get("std"):
        data = dataclasses.replace(data, mean=tuple(info["mean"]), std=tuple(info["std"]))
    return data, root
