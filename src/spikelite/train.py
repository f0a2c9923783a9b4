"""Training and evaluation: one recipe for CNNs and SNNs, self-describing checkpoints.

``spikelite train`` runs one recipe (:class:`TrainConfig`, from a YAML file and/or flags) for a CNN
or for its spiking version, so the two are trained under the same setup:

* ``mode: cnn`` trains a zoo CNN (:func:`spikelite.models.create_model`);
* ``mode: snn`` trains the :func:`~spikelite.snn.spikify`-converted network with surrogate
  gradients — from scratch, or (``init_from: CNN.ckpt``) starting from a trained CNN's weights,
  optionally with threshold balancing on a training batch; ``epochs: 0`` evaluates the converted
  network without fine-tuning.

The optimiser (SGD with Nesterov momentum or AdamW), the per-step cosine schedule with linear
warm-up, weight decay (never on BatchNorm, biases or neuron parameters), label smoothing, the
optional TET loss (cross-entropy at every time step), mixed precision (CUDA only) and the seed are
all part of the recipe.

Checkpoints (``last.pt`` at the end of every epoch and optionally every N steps, ``best.pt``) are
plain dictionaries of tensors and Python containers, written atomically and read with
``torch.load(weights_only=True)``; they record the model spec, the SNN settings, the data
normalisation and classes, so :func:`load_model` rebuilds the exact model from the file alone.
A run killed at any moment resumes (``--resume``) from ``last.pt`` to the same final weights as an
uninterrupted run on CPU: the data order and augmentation of an epoch are a function of
``(seed, epoch, rank)``, the global RNG is reseeded from them at every epoch start, and mid-epoch
checkpoints also store the RNG states. Under ``torchrun`` the run is data-parallel (DDP); only rank
0 writes. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .allocator import MALLOC_MODES, apply_malloc_mode, env_malloc_mode
from .snn import (TIME_BN_MODES, SpikingNet, activation_percentile, convert, make_neuron, per_step_batchnorm,
                      recalibrate_bn, spikify)
from .data import Augment, BatchLoader, ImageData, default_augment, load_split, stratified_split
from ._io import atomic_write, parse_value, plain, set_dotted
from .checkpoint import (_model_from_checkpoint, checkpoint_data, describe_model, load_model, read_checkpoint,
                         rebuild_model, save_checkpoint, unwrap)
from .errors import SpikeliteError

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "SNNConfig",
    "DistillConfig",
    "source_cnn",
    "load_config",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "confusion_matrix",
    "macro_f1",
    "distillation_loss",
    "lr_at",
    "param_groups",
]


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelConfig:
    """The zoo model: ``create_model(name, width=width, **options)`` (classes, image size and input
    channels come from the data)."""

    name: str = "squeezenet1_1"
    width: float = 1.0
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _coerce_fields(self, "model")
        from .models import get_entry

        get_entry(self.name)
        if not self.width > 0 or not math.isfinite(self.width):
            raise SpikeliteError(f"model.width must be a positive number, got {self.width}")


@dataclasses.dataclass
class DataConfig:
    """Which data, how it is split and augmented (see :func:`spikelite.data.load_split`)."""

    dataset: str = "cifar10"
    root: Optional[str] = None
    val_size: Union[int, float, None] = None  # a count or a fraction; None: 10 % of the training set
    split_seed: int = 0  # seeds the train/val split only (kept apart from the training seed)
    image_size: Optional[int] = None
    channels: Optional[int] = None
    augment: str = "auto"  # "auto": the dataset's usual augmentation; or "none", "standard", "flip+crop4+cutout16"
    cache_dir: Optional[str] = None
    download: bool = False
    train_subset: Optional[int] = None  # train on a stratified subset of this many images (smoke runs)
    val_subset: Optional[int] = None
    eval_batch_size: int = 256

    def __post_init__(self):
        _coerce_fields(self, "data")
        from .data import _canonical

        self.dataset = _canonical(self.dataset)
        if self.augment != "auto":
            self.augment = Augment.from_name(self.augment).name
        for key in ("train_subset", "val_subset", "image_size"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise SpikeliteError(f"data.{key} must be >= 1 (or null), got {v}")
        if self.channels is not None and self.channels not in (1, 3):
            raise SpikeliteError(f"data.channels must be 1 or 3 (or null), got {self.channels}")
        _check_min("data.split_seed", self.split_seed, 0)
        _check_min("data.eval_batch_size", self.eval_batch_size, 1)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
MODES = ("cnn", "snn")


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (per step: linear warm-up, then cosine to ``min_lr``)."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 5e-4
    neuron_weight_decay: float = 0.0   # decay on learnable τ / thresholds (PLIF); 0: none, as before
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None

    def __post_init__(self):
        _coerce_fields(self, "optim")
        self.optimizer = self.optimizer.lower()
        _check_choice("optim.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SpikeliteError(f"optim.lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise SpikeliteError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise SpikeliteError("optim.nesterov needs optim.momentum > 0 (or set nesterov: false)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SpikeliteError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        for key in ("eps", "weight_decay", "neuron_weight_decay", "warmup_epochs", "min_lr"):
            v = getattr(self, key)
            if not (v >= 0 and math.isfinite(v)):
                raise SpikeliteError(f"optim.{key} must be a number >= 0, got {v}")
        if self.min_lr > self.lr:
            raise SpikeliteError(f"optim.min_lr ({self.min_lr}) must not exceed optim.lr ({self.lr})")
        if not 0 <= self.label_smoothing < 1:
            raise SpikeliteError(f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise SpikeliteError(f"optim.grad_clip must be > 0 (or null), got {self.grad_clip}")


# The recipe's neuron (docs/recipe.md): what snn.neuron does not set. It differs from LIF's own
# defaults (SpikingJelly's, kept for equivalence) where measurements on CIFAR-10 said so: no input
# decay (the default LIF fires ~4 % per layer at initialisation and passes ~60x smaller gradients
# than the CNN), a detached reset and the wider atan surrogate.
RECIPE_NEURON = {"decay_input": False, "detach_reset": True, "surrogate": "atan"}


def recipe_neuron(spec: dict) -> dict:
    """``spec`` (snn.neuron) with the recipe's defaults filled in where it is silent."""
    spec = dict(spec)
    kind = str(spec.get("kind", "lif")).lower()
    if kind == "conversion_if":  # soft reset, no leak, its own straight-through gradient: nothing to add
        out = {}
    else:
        out = {k: v for k, v in RECIPE_NEURON.items() if kind == "lif" or k != "decay_input"}
    out.update(spec)
    return out


@dataclasses.dataclass
class SNNConfig:
    """The spiking network (used when ``mode: snn``)."""

    T: int = 4
    eval_T: Optional[int] = None  # validate (and record checkpoints) at this many steps; None: at T
    encoding: str = "direct"
    # LIF/IF options, e.g. {tau: 2.0, surrogate: atan}; unset keys take RECIPE_NEURON's values
    neuron: dict = dataclasses.field(default_factory=dict)
    tet: bool = True  # TET loss: cross-entropy at every time step, averaged
    balance: Optional[float] = None  # threshold balancing percentile (e.g. 99.9) when converting a CNN
    balance_mode: str = "snn"
    calibration_size: int = 256  # training images in the balancing / BN-recalibration batch
    recalibrate_bn: bool = True  # converting a CNN: re-estimate BatchNorm statistics on the SNN's spikes
    # "per-step": BatchNorm layers of the spiking part keep per-step statistics and affine parameters
    time_bn: str = "shared"
    # a neuron layer before every conv that would read non-spikes (residual streams, linear bottlenecks)
    spike_inputs: bool = False

    def __post_init__(self):
        _coerce_fields(self, "snn")
        _check_min("snn.T", self.T, 1)
        if self.eval_T is not None:
            _check_min("snn.eval_T", self.eval_T, 1)
        _check_choice("snn.encoding", self.encoding, ("direct", "rate"))
        _check_choice("snn.balance_mode", self.balance_mode, ("snn", "cnn"))
        _check_choice("snn.time_bn", self.time_bn, TIME_BN_MODES)
        if self.balance is not None and not 0 < self.balance <= 100:
            raise SpikeliteError(f"snn.balance must be a percentile in (0, 100] (or null), got {self.balance}")
        _check_min("snn.calibration_size", self.calibration_size, 1)
        try:
            make_neuron(recipe_neuron(self.neuron))()
        except SpikeliteError as exc:
            raise SpikeliteError(f"snn.neuron: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise SpikeliteError(f"snn.neuron: {exc}") from None


@dataclasses.dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher checkpoint (Hinton et al. 2015): the loss becomes
    ``(1 - weight) * task loss + weight * temperature² * KL(teacher ‖ student)`` on softened class
    probabilities; an SNN student is distilled on its time-averaged output. Off while ``teacher`` is null."""

    # a spikelite checkpoint (CNN or SNN) trained on the same classes, or "source": the CNN the run's
    # model descends from (followed through the checkpoints' source_checkpoint records)
    teacher: Optional[str] = None
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self):
        _coerce_fields(self, "distill")
        if not 0 <= self.weight <= 1:
            raise SpikeliteError(f"distill.weight must be in [0, 1], got {self.weight}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise SpikeliteError(f"distill.temperature must be a positive number, got {self.temperature}")


def _default_malloc() -> str:
    return env_malloc_mode()


@dataclasses.dataclass
class TrainConfig:
    """One training recipe. Load it with :func:`load_config`; every field is documented in docs/training.md."""

    mode: str = "cnn"  # cnn | snn
    init_from: Optional[str] = None  # a checkpoint to start from (a CNN checkpoint + mode snn: convert it)
    epochs: int = 200
    batch_size: int = 128  # global batch (split across DDP processes)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 if supported, else fp16) | bf16 | fp16 | off; CUDA only
    threads: Optional[int] = None  # torch CPU threads for this run
    channels_last: bool = False  # keep conv weights (and so activations) in NHWC order: a speed option
    recompute_neurons: bool = False  # SNN: recompute BatchNorm → neuron pairs in backward (less memory, same math)
    compact_spikes: bool = True  # SNN: spike maps kept for backward as 1-byte booleans (off: floats, faster at T=1-2)
    # retain: glibc keeps freed memory (no mmap/munmap per step); system: leave it alone. The default follows
    # SPIKELITE_MALLOC, the switch of the other CLI commands, so benchmark cells and train obey it too.
    malloc: str = dataclasses.field(default_factory=_default_malloc)
    out: str = "runs/train"  # the run directory
    save_every_steps: int = 0  # also write last.pt every N optimizer steps (0: epoch ends only)
    eval_every: int = 1  # evaluate on the validation split every N epochs (and after the last)
    quiet: bool = False
    tensorboard: bool = True  # write TensorBoard events when tensorboard is installed
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    snn: SNNConfig = dataclasses.field(default_factory=SNNConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def __post_init__(self):
        for key, cls in _SECTIONS.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, _from_dict(cls, value, key))
            elif not isinstance(value, cls):
                raise SpikeliteError(f"{key} must be a mapping of {cls.__name__} options, got {value!r}")
        _coerce_fields(self, "")
        self.mode = self.mode.lower()
        _check_choice("mode", self.mode, MODES)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("malloc", self.malloc, MALLOC_MODES)
        _check_min("epochs", self.epochs, 0)
        if self.recompute_neurons and self.mode != "snn":
            raise SpikeliteError("recompute_neurons applies to spiking networks only (mode snn), not to mode "
                                 f"{self.mode}")
        if not self.compact_spikes and self.mode != "snn":
            raise SpikeliteError("compact_spikes applies to spiking networks only (mode snn), not to mode "
                                 f"{self.mode}")
        _check_min("batch_size", self.batch_size, 1)
        _check_min("seed", self.seed, 0)
        _check_min("save_every_steps", self.save_every_steps, 0)
        _check_min("eval_every", self.eval_every, 1)
        if self.threads is not None:
            _check_min("threads", self.threads, 1)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise SpikeliteError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        if not self.out:
            raise SpikeliteError("out (the run directory) must not be empty")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _from_dict(cls, d, "")

    def to_dict(self) -> dict:
        """Plain, YAML/JSON/checkpoint-safe dict (lists, no tuples or dataclasses)."""
        return plain(dataclasses.asdict(self))


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "snn": SNNConfig,
             "distill": DistillConfig}
# Keys that may change when a run is resumed: where things are and how they are reported, not the recipe.
RUNTIME_KEYS = frozenset({
    "out", "device", "threads", "channels_last", "recompute_neurons", "compact_spikes", "malloc", "quiet", "tensorboard",
    "save_every_steps", "eval_every", "init_from",
    "distill.teacher",
    "data.root", "data.cache_dir", "data.download", "data.eval_batch_size",
})
# Recipe keys added after runs and benchmarks were already written, with the value that reproduces what
# those runs did. A stored recipe without such a key meant that value (so --resume still matches), and a
# benchmark cell's fingerprint leaves the key out while it holds it (so finished cells stay finished).
LATE_KEYS: dict[str, object] = {
    "optim.neuron_weight_decay": 0.0,
}


def recipe_view(flat: dict) -> dict:
    """A flattened recipe as it compares across versions: late keys at their neutral value left out."""
    return {k: v for k, v in flat.items() if not (k in LATE_KEYS and v == LATE_KEYS[k])}


def _check_min(key: str, value, minimum) -> None:
    if value < minimum:
        raise SpikeliteError(f"{key} must be >= {minimum}, got {value}")


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise SpikeliteError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _describe_type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe_type(a) for a in args)
    if origin is list:
        return f"a list of {_describe_type(args[0])}" if args else "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str):
    """``value`` as type ``tp`` (YAML gives strings for '5e-4'); a SpikeliteError naming ``key`` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = SpikeliteError(f"{key} must be {_describe_type(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except SpikeliteError:
                continue
        raise bad
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return copy.deepcopy(dict(value))
        raise SpikeliteError(f"{key} must be a mapping with string keys, got {value!r}")
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
    raise bad  # pragma: no cover - every field type is handled above


def _coerce_fields(obj, section: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in _SECTIONS and not section:
            continue
        key = f"{section}.{f.name}" if section else f.name
        setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], key))


def _all_keys() -> dict[str, str]:
    """Every valid dotted key -> its section, for 'did you mean' hints."""
    keys = {f.name: "" for f in dataclasses.fields(TrainConfig)}
    for sec, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            keys[f"{sec}.{f.name}"] = sec
    return keys


def _from_dict(cls, d, section: str):
    where = f"section {section!r}" if section else "the recipe"
    if not isinstance(d, dict):
        raise SpikeliteError(f"{where} must be a mapping, got {d!r}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        hints = []
        for k in unknown:
            matches = [full for full in _all_keys() if full.split(".")[-1] == str(k) and full != f"{section}.{k}"]
            if matches:
                hints.append(f"{k!r} -> did you mean {' or '.join(matches)}?")
        raise SpikeliteError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: {', '.join(valid)}"
            + (f" ({'; '.join(hints)})" if hints else "")
        )
    return cls(**d)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (not prefix and k in _SECTIONS):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: dict | list | None = None,
                base: dict | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (or ``base`` dict) with dotted-key ``overrides``.

    ``overrides`` is a dict ``{"optim.lr": 0.05, ...}`` or a list of ``"key=value"`` strings (values
    parsed as YAML). Unknown keys raise a :class:`SpikeliteError` that lists the valid ones.
    """
    raw: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SpikeliteError(f"recipe file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise SpikeliteError(f"recipe file {p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpikeliteError(f"recipe file {p} must hold a mapping of options, got {type(loaded).__name__}")
        for k, v in _flatten(loaded).items():
            set_dotted(raw, k, v)
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in str(item):
                raise SpikeliteError(f"override {item!r} must look like key=value (e.g. optim.lr=0.05)")
            k, v = str(item).split("=", 1)
            pairs[k.strip()] = parse_value(v.strip())
        overrides = pairs
    for k, v in (overrides or {}).items():
        set_dotted(raw, k, v)
    return TrainConfig.from_dict(raw)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``int64 [num_classes, num_classes]``: rows are true classes, columns predicted classes."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro-averaged F1 over the classes that occur in the targets or the predictions.

    Per class: ``F1 = 2·TP / (2·TP + FP + FN)``; classes that neither occur nor are predicted are
    left out of the mean (scikit-learn's ``f1_score(average="macro")`` without ``labels``).
    """
    cm = confusion.double()
    tp = cm.diagonal()
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    present = denom > 0
    if not bool(present.any()):
        return 0.0
    return float((2 * tp[present] / denom[present]).mean())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: ``temperature² · KL(softmax(teacher/τ) ‖ softmax(student/τ))``, averaged over
    the batch (the τ² keeps its gradient on the scale of the cross-entropy's as τ changes). Both ``[N, C]``."""
    if student.shape != teacher.shape:
        raise SpikeliteError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                             f"{tuple(teacher.shape)} differ")
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature ** 2


def _classification_loss(out: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy; for per-step outputs ``[T, N, C]`` the mean over steps of each step's loss (TET)."""
    if out.dim() == 3:
        return F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]), label_smoothing=label_smoothing)
    return F.cross_entropy(out, y, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, *, batch_size: int = 256, device: str | torch.device = "cpu",
             amp_dtype: torch.dtype | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> dict:
    """Loss (plain cross-entropy), top-1 accuracy and macro-F1 of ``model`` on ``data``.

    Returns ``{"loss", "accuracy", "macro_f1", "n", "confusion"}`` (``confusion`` an int64 tensor).
    Runs in eval mode (restoring the previous mode) under its own RNG seeded with ``seed`` (rate
    encoding draws spikes), leaving the caller's RNG untouched. Under DDP every rank evaluates every
    ``world_size``-th image and the sums are all-reduced, so every image counts once.
    """
    device = torch.device(device)
    model = unwrap(model)
    num_classes = len(data.classes)
    if world_size > 1:
        data = data.subset(torch.arange(rank, len(data), world_size))
    loader = BatchLoader(data, batch_size, shuffle=False, augment=None, device=device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    was = model.training
    model.eval()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            for x, y in loader:
                with _autocast(device, amp_dtype):
                    out = model(x)
                out = out.float()
                loss_sum += F.cross_entropy(out, y, reduction="sum").double()
                conf += confusion_matrix(out.argmax(1), y, num_classes)
    finally:
        model.train(was)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(conf)
        dist.all_reduce(loss_sum)
    conf = conf.cpu()
    n = int(conf.sum())
    return {
        "loss": float(loss_sum) / max(n, 1),
        "accuracy": float(conf.diagonal().sum()) / max(n, 1),
        "macro_f1": macro_f1(conf),
        "n": n,
        "confusion": conf,
    }


# ----------------------------------------------------------------------------------------------
# Optimiser and schedule
# ----------------------------------------------------------------------------------------------

_NO_DECAY_MODULES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_neuron(m: nn.Module) -> bool:
    from .snn import LIF, QCFS, ConversionIF

    return isinstance(m, (LIF, ConversionIF, QCFS))


def param_groups(model: nn.Module, weight_decay: float, neuron_weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups: weights with ``weight_decay``, and without decay every bias, every
    BatchNorm/GroupNorm/LayerNorm parameter, every neuron parameter (τ, threshold) and every other
    parameter of dimension <= 1. With ``neuron_weight_decay > 0`` the learnable neuron parameters
    (PLIF's τ parametrisation ``w`` with ``1/τ = sigmoid(w)``, thresholds) form a third group decayed by
    that amount: towards 0, i.e. τ towards 2 and the threshold towards 0. Each group also carries
    ``names`` (the parameters' names)."""
    model = unwrap(model)
    no_decay_ids, neuron_ids = set(), set()
    for m in model.modules():
        if neuron_weight_decay and _is_neuron(m):
            neuron_ids.update(id(p) for p in m.parameters(recurse=False))
        elif isinstance(m, _NO_DECAY_MODULES) or _is_neuron(m):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay, neuron, decay_names, no_decay_names, neuron_names = [], [], [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in neuron_ids:
            neuron.append(p)
            neuron_names.append(name)
        elif id(p) in no_decay_ids or p.ndim <= 1 or name.endswith(".bias") or name == "bias":
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]
    if neuron:
        groups.append({"params": neuron, "weight_decay": float(neuron_weight_decay), "names": neuron_names})
    return groups


def _make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay, cfg.neuron_weight_decay)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_at(step: int, total_steps: int, cfg: OptimConfig, warmup_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up from ``lr/warmup_steps``
    to ``lr`` over ``warmup_steps`` steps, then ``cosine`` decay to ``min_lr`` at ``total_steps``
    (or ``constant``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


class _TrainForward(nn.Module):
    """What DDP wraps: the network's forward, or its per-step outputs for the TET loss."""

    def __init__(self, net: nn.Module, steps: bool):
        super().__init__()
        self.net = net
        self.steps = steps

    @property
    def wrapped(self) -> nn.Module:  # what checkpoint.unwrap() looks for
        return self.net

    def forward(self, x):
        return self.net.forward_steps(x) if self.steps else self.net(x)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _seed_for(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class _Dist:
    """torchrun's environment: rank, world size and the device to communicate on."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised_here = False
        self.comm_device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.initialised_here = True
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")

    def teardown(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device)
        dist.all_reduce(buf)
        return buf.to(t.device)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.enabled:
            return [t.clone()]
        import torch.distributed as dist

        buf = t.to(self.comm_device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return [o.cpu() for o in out]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def _resolve_device(spec: str, dist_env: _Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpikeliteError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if dist_env.enabled:
            device = torch.device("cuda", dist_env.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


class _NonFiniteLoss(Exception):
    pass


CSV_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "epoch_seconds",
               "data_seconds", "compute_seconds", "data_share", "eval_seconds", "samples_per_second")


def _fmt_csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _write_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in history:
        w.writerow([_fmt_csv(row.get(c)) for c in CSV_COLUMNS])
    atomic_write(path, buf.getvalue())


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                unit="batch")


# ----------------------------------------------------------------------------------------------
# Data and model for a run
# ----------------------------------------------------------------------------------------------


def _subset(data: ImageData, n: int | None, seed: int, what: str) -> ImageData:
    if n is None or n >= len(data):
        if n is not None and n > len(data):
            raise SpikeliteError(f"data.{what}_subset={n} exceeds the {len(data)} images of the {what} split")
        return data
    _, idx = stratified_split(data.labels, n, _seed_for("subset", what, seed) & 0x7FFFFFFF)
    return data.subset(idx)


def _load_run_data(cfg: TrainConfig) -> tuple[ImageData, ImageData]:
    d = cfg.data
    kw = dict(val_size=d.val_size, seed=d.split_seed, cache_dir=d.cache_dir, download=d.download,
              image_size=d.image_size, channels=d.channels)
    train_data = load_split(d.dataset, d.root, "train", **kw)
    val_data = load_split(d.dataset, d.root, "val", **kw)
    train_data = _subset(train_data, d.train_subset, d.split_seed, "train")
    val_data = _subset(val_data, d.val_subset, d.split_seed, "val")
    return train_data, val_data


def _data_info(cfg: TrainConfig, data: ImageData) -> dict:
    return {
        "dataset": data.name,
        "root": None if cfg.data.root is None else os.path.abspath(os.path.expanduser(cfg.data.root)),
        "classes": list(data.classes),
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "image_size": data.image_size,
        "in_chans": data.in_chans,
        "val_size": cfg.data.val_size,
        "split_seed": cfg.data.split_seed,
    }


def _check_fits_data(spec: dict, data: ImageData, where: str) -> None:
    problems = []
    if spec.get("num_classes") != data.num_classes:
        problems.append(f"{spec.get('num_classes')} classes but {data.name} has {data.num_classes}")
    if spec.get("in_chans") not in (None, data.in_chans):
        problems.append(f"{spec.get('in_chans')} input channels but the images have {data.in_chans}")
    if spec.get("image_size") not in (None, data.image_size):
        problems.append(f"image size {spec.get('image_size')} but the images are {data.image_size}x{data.image_size} "
                        "(set data.image_size)")
    if problems:
        raise SpikeliteError(f"{where}: the model does not fit the data: {'; '.join(problems)}")


def _calibration_batch(cfg: TrainConfig, train_data: ImageData, device: torch.device) -> torch.Tensor:
    loader = BatchLoader(train_data, min(cfg.snn.calibration_size, len(train_data)), shuffle=True, augment=None,
                         device=device, seed=cfg.seed)
    loader.set_epoch(0)
    return next(iter(loader))[0]


def _converts(cfg: TrainConfig) -> bool:
    """The run converts with :func:`~spikelite.snn.convert` (snn.neuron.kind: conversion_if)."""
    return str(cfg.snn.neuron.get("kind", "lif")).lower() == "conversion_if"


def _qcfs_requested(cfg: TrainConfig, src_meta: dict) -> bool:
    """A CNN run from a CNN checkpoint whose model options ask for QCFS activations the source lacks."""
    opts, spec = cfg.model.options, src_meta["model_spec"]
    return any(k in opts and opts[k] != spec.get(k) for k in ("act_levels", "act_threshold"))


def _to_qcfs(src: nn.Module, src_meta: dict, cfg: TrainConfig, train_data: ImageData, log) -> nn.Module:
    """``src`` (a ReLU CNN) rebuilt with QCFS activations (``model.options.act_levels`` and
    ``act_threshold``), its weights loaded; each learned λ starts at the ``snn.balance`` percentile (99.9
    by default) of the ReLU's output it replaces, on ``snn.calibration_size`` training images."""
    opts = cfg.model.options
    if "act_levels" not in opts:
        raise SpikeliteError("model.options.act_threshold needs model.options.act_levels (the QCFS levels)")
    spec = {**src_meta["model_spec"], "act_levels": opts["act_levels"]}
    if "act_threshold" in opts:
        spec["act_threshold"] = opts["act_threshold"]
    model = rebuild_model({**src_meta, "model_spec": spec})
    sd = src.state_dict()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith(".lam") for k in missing):
        raise SpikeliteError(f"init_from {cfg.init_from}: its weights do not fit the QCFS model "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    n = 0
    if spec.get("act_threshold") is not None:
        from .snn import QCFS

        q = cfg.snn.balance or 99.9
        sites = {p for p, m in model.named_modules() if isinstance(m, QCFS)}
        outs: dict[str, list[torch.Tensor]] = {}
        handles = [m.register_forward_hook(lambda mod, a, out, p=p: outs.setdefault(p, []).append(out.detach()))
                   for p, m in src.named_modules() if p in sites]
        src.eval()
        try:
            with torch.no_grad():
                src(_calibration_batch(cfg, train_data, torch.device("cpu")))
        finally:
            for h in handles:
                h.remove()
        for p, values in outs.items():
            model.get_submodule(p).set_threshold(activation_percentile(values, q))
            n += 1
    log(f"{cfg.init_from}: ReLU activations replaced by QCFS (L={spec['act_levels']}"
        + (f", {n} thresholds λ from the {cfg.snn.balance or 99.9} percentile of the ReLU outputs" if n else "") + ")")
    return model


def _spikify_cfg(cnn: nn.Module, cfg: TrainConfig, calibration: torch.Tensor | None) -> SpikingNet:
    s = cfg.snn
    net = spikify(cnn, T=s.T, neuron=recipe_neuron(s.neuron), encoding=s.encoding,
                  balance=s.balance if calibration is not None else None, calibration=calibration,
                  balance_mode=s.balance_mode, time_bn=s.time_bn, spike_inputs=s.spike_inputs)
    return net


def _with_input_spikes(src: SpikingNet, src_meta: dict, cfg: TrainConfig, log) -> SpikingNet:
    """``src`` (an SNN checkpoint's network) rebuilt with ``spike_inputs`` and its weights loaded; the new
    input neuron layers start as the recipe's neuron."""
    if not cfg.snn.spike_inputs:
        raise SpikeliteError(f"init_from {cfg.init_from} has input neuron layers (spike_inputs); this run asks for "
                             "snn.spike_inputs: false (they cannot be removed from a trained SNN)")
    meta = dict(src_meta, snn=dict(src_meta.get("snn") or {}, spike_inputs=True))
    new = rebuild_model(meta)
    result = new.load_state_dict(src.state_dict(), strict=False)
    foreign = list(result.unexpected_keys) + [k for k in result.missing_keys if "_input_spike." not in k]
    if foreign:
        raise SpikeliteError(f"init_from {cfg.init_from}: adding input neuron layers changed other weights "
                             f"({', '.join(foreign[:3])})")
    added = sum(p.endswith("_input_spike") for p, _ in new.spiking_layers())
    log(f"{added} input neuron layers added to {cfg.init_from} (spike_inputs)")
    new.train(src.training)
    return new


def _initial_model(cfg: TrainConfig, train_data: ImageData, device: torch.device, log) -> tuple[nn.Module, dict | None]:
    """The model a fresh run starts from, and (for init_from) the source checkpoint's meta."""
    from .models import create_model

    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        src, src_meta = load_model(cfg.init_from)
        _check_fits_data(src_meta["model_spec"], train_data, f"init_from {cfg.init_from}")
        src_data = (src_meta.get("config") or {}).get("data") or {}
        if src_data.get("dataset") == cfg.data.dataset:
            theirs = {k: src_data.get(k) for k in ("val_size", "split_seed")}
            ours = {"val_size": cfg.data.val_size, "split_seed": cfg.data.split_seed}
            if theirs != ours:
                raise SpikeliteError(
                    f"init_from {cfg.init_from} was trained with a different train/val split (data {theirs}, "
                    f"this run {ours}): its training images would leak into this run's validation split; "
                    "use the same data.val_size and data.split_seed")
        classes = (src_meta.get("data") or {}).get("classes")
        if classes is not None and list(classes) != list(train_data.classes):
            raise SpikeliteError(f"init_from {cfg.init_from} was trained on classes {classes[:5]}... but "
                                 f"{train_data.name} has {train_data.classes[:5]}... (different class order)")
        src.train()
        if src_meta["kind"] == "cnn" and cfg.mode == "snn" and _converts(cfg):
            cal = _calibration_batch(cfg, train_data, torch.device("cpu"))
            neuron = recipe_neuron(cfg.snn.neuron)
            signed, v_init = neuron.pop("signed", True), neuron.pop("v_init", 0.5)
            net = convert(src, T=cfg.snn.T, calibration=cal, percentile=cfg.snn.balance or 99.9, signed=signed,
                          v_init=v_init, encoding=cfg.snn.encoding, neuron=neuron)
            net.train()
            log(f"converted CNN {cfg.init_from} to an SNN (T={cfg.snn.T}, ConversionIF neurons, thresholds from "
                f"its QCFS thresholds or the {cfg.snn.balance or 99.9} percentile of {cal.shape[0]} training images, "
                "BatchNorm kept)")
            return net, src_meta
        if src_meta["kind"] == "cnn" and cfg.mode == "cnn" and _qcfs_requested(cfg, src_meta):
            src = _to_qcfs(src, src_meta, cfg, train_data, log)
            src.train()
            return src, src_meta
        if src_meta["kind"] == "cnn" and cfg.mode == "snn":
            cal = None
            if cfg.snn.balance is not None or cfg.snn.recalibrate_bn:
                cal = _calibration_batch(cfg, train_data, torch.device("cpu"))
            net = _spikify_cfg(src, cfg, cal if cfg.snn.balance is not None else None)
            n_bn = recalibrate_bn(net, cal) if cfg.snn.recalibrate_bn else 0
            net.train()
            log(f"converted CNN {cfg.init_from} to an SNN (T={cfg.snn.T}"
                + (f", thresholds balanced at the {cfg.snn.balance} percentile of {cal.shape[0]} training images"
                   if cfg.snn.balance is not None else "")
                + (f", {n_bn} BatchNorm layers recalibrated on spikes" if n_bn else "") + ")")
            return net, src_meta
        if src_meta["kind"] == "snn" and cfg.mode == "cnn":
            raise SpikeliteError(f"init_from {cfg.init_from} is an SNN checkpoint; mode cnn needs a CNN checkpoint")
        if src_meta["kind"] == "snn":
            if cfg.snn.spike_inputs != src.spike_inputs:
                src = _with_input_spikes(src, src_meta, cfg, log)
                if cfg.snn.recalibrate_bn:  # the convs after the new layers read spikes now
                    n_bn = recalibrate_bn(src, _calibration_batch(cfg, train_data, torch.device("cpu")))
                    log(f"{n_bn} BatchNorm layers recalibrated on spikes")
            src.T = cfg.snn.T
            if cfg.snn.time_bn != src.time_bn:
                if cfg.snn.time_bn == "shared":
                    raise SpikeliteError(f"init_from {cfg.init_from} has per-step BatchNorm; this run asks for "
                                         "snn.time_bn: shared (per-step statistics cannot be merged back)")
                n_bn = per_step_batchnorm(src, cfg.snn.T)
                log(f"{n_bn} BatchNorm layers of {cfg.init_from} made per-step (T={cfg.snn.T})")
        log(f"starting from the weights of {cfg.init_from} ({src_meta['kind']})")
        return src, src_meta
    cnn = create_model(cfg.model.name, num_classes=train_data.num_classes, image_size=train_data.image_size,
                       in_chans=train_data.in_chans, width=cfg.model.width, **cfg.model.options)
    if cfg.mode == "cnn":
        return cnn, None
    cal = _calibration_batch(cfg, train_data, torch.device("cpu")) if cfg.snn.balance is not None else None
    return _spikify_cfg(cnn, cfg, cal), None


# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


TEACHER_SOURCE = "source"  # distill.teacher: the CNN the run's model descends from


def source_cnn(start: str | os.PathLike, max_depth: int = 32) -> str:
    """The path of the first CNN checkpoint up ``start``'s lineage: ``start`` itself when it is a CNN, else
    the checkpoint its ``source_checkpoint`` record names (the ``--init-from`` of the run that wrote it; a
    ``spikelite prune`` output keeps the record of the checkpoint it pruned), and so on. Recorded paths are used as written (relative to
    the directory the run was started in); a missing one is an error naming the link that broke."""
    path, chain = str(start), []
    for _ in range(max_depth):
        if not Path(path).is_file():
            via = f" (recorded as the source of {chain[-1]})" if chain else ""
            raise SpikeliteError(f"distill.teacher: source: checkpoint {path}{via} is not on disk; "
                                 "name the teacher's path instead")
        ckpt = read_checkpoint(path)
        if ckpt.get("kind") == "cnn":
            return path
        chain.append(path)
        src = ckpt.get("source_checkpoint") or {}
        if not src.get("path"):
            raise SpikeliteError(f"distill.teacher: source: {' <- '.join(reversed(chain))} records no source "
                                 "checkpoint (an SNN trained from scratch has no CNN to distil from); name "
                                 "the teacher's path instead")
        if str(src["path"]) in chain:
            raise SpikeliteError(f"distill.teacher: source: the checkpoints' sources form a cycle at {src['path']}")
        path = str(src["path"])
    raise SpikeliteError(f"distill.teacher: source: no CNN within {max_depth} links of {start}")


def _load_teacher(cfg: TrainConfig, train_data: ImageData, data_info: dict, device: torch.device,
                  source: str | None = None) -> tuple[nn.Module | None, dict | None]:
    """The frozen teacher of ``distill.teacher`` (eval mode, no gradients), checked against the run's data;
    its ``meta["path"]`` is the file it was read from. ``source`` is the checkpoint the run's model came from
    (``init_from``), which ``distill.teacher: source`` follows to its CNN."""
    path = cfg.distill.teacher
    if not path:
        return None, None
    if path == TEACHER_SOURCE:
        if not source:
            raise SpikeliteError("distill.teacher: source needs a run that starts from a checkpoint (init_from); "
                                 "this one trains from scratch — name the teacher's path instead")
        path = source_cnn(source)
    elif not Path(path).is_file():
        raise SpikeliteError(f"distill.teacher: no such checkpoint: {path}")
    teacher, meta = load_model(path, device=device)
    where = f"distill.teacher {path}"
    spec = describe_model(teacher)["model_spec"]
    _check_fits_data(spec, train_data, where)
    classes = (meta.get("data") or {}).get("classes")
    if classes is not None and list(classes) != list(data_info["classes"]):
        raise SpikeliteError(f"{where} was trained on other classes (or another class order) than this run's data: "
                             f"{list(classes)[:5]}... vs {list(data_info['classes'])[:5]}...")
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    return teacher, {**meta, "path": path}


def _recipe_diff(old: dict, new: dict) -> list[str]:
    a, b = recipe_view(_flatten(old)), recipe_view(_flatten(new))
    return sorted(k for k in set(a) | set(b) if k not in RUNTIME_KEYS and a.get(k) != b.get(k))


def _rng_state(dist_env: _Dist, device: torch.device) -> dict:
    state = {"torch": dist_env.gather(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = dist_env.gather(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state: dict, dist_env: _Dist, device: torch.device) -> None:
    torch.set_rng_state(state["torch"][dist_env.rank])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(state["cuda"][dist_env.rank], device)


def _params_checksum(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        vals = [p.detach().double().flatten() for p in model.parameters()]
        flat = torch.cat(vals) if vals else torch.zeros(1, dtype=torch.float64)
        idx = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        return torch.stack([flat.sum(), (flat * idx).sum()]).cpu()


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Run a training recipe; returns the run summary (also written to ``<out>/summary.json``).

    With ``resume=True`` and a ``last.pt`` in ``config.out``, the run continues from it (the recipe
    must match the checkpoint's, except for :data:`RUNTIME_KEYS`); without one it starts fresh.
    Without ``resume`` an existing ``last.pt`` is an error (nothing is overwritten).
    """
    if not isinstance(config, TrainConfig):
        raise SpikeliteError(f"train() takes a TrainConfig, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    dist_env = _Dist()
    prev_threads = torch.get_num_threads()
    prev_benchmark = torch.backends.cudnn.benchmark
    device = _resolve_device(cfg.device, dist_env)
    rng_devices = [device] if device.type == "cuda" else []
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        dist_env.setup(device)
        with torch.random.fork_rng(devices=rng_devices):
            return _Run(cfg, dist_env, device, resume).run()
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_benchmark
        dist_env.teardown()


class _Run:
    def __init__(self, cfg: TrainConfig, dist_env: _Dist, device: torch.device, resume: bool):
        self.cfg = cfg
        self.dist = dist_env
        self.device = device
        self.out = Path(cfg.out)
        self.last_path = self.out / "last.pt"
        self.best_path = self.out / "best.pt"
        self.show = dist_env.main and not cfg.quiet
        self.resume_ckpt: dict | None = None
        if self.last_path.exists():
            if not resume:
                raise SpikeliteError(f"{self.out} already holds a run ({self.last_path}); pass --resume to continue "
                                     "it, or choose another --out")
            self.resume_ckpt = read_checkpoint(self.last_path)
            if self.resume_ckpt.get("train_state") is None:
                raise SpikeliteError(f"{self.last_path} has no training state to resume from")
            stored = self.resume_ckpt.get("config") or {}
            diff = _recipe_diff(stored, cfg.to_dict())
            if diff:
                a, b = _flatten(stored), _flatten(cfg.to_dict())
                changes = "; ".join(f"{k}: {a.get(k, LATE_KEYS.get(k))!r} -> {b.get(k)!r}" for k in diff[:6])
                raise SpikeliteError(f"cannot resume {self.last_path} with a different recipe ({changes}); "
                                     "start a new run (another --out) instead")

    def log(self, msg: str) -> None:
        if self.show:
            print(msg, flush=True)

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, dist_env = self.cfg, self.dist
        if cfg.batch_size % dist_env.world_size:
            raise SpikeliteError(f"batch_size {cfg.batch_size} must be divisible by the number of processes "
                                 f"({dist_env.world_size})")
        apply_malloc_mode(cfg.malloc)  # before the first large tensor
        self.train_data, self.val_data = _load_run_data(cfg)
        self.data_info = _data_info(cfg, self.train_data)
        self.src_meta = None
        if self.resume_ckpt is not None:
            stored_info = self.resume_ckpt.get("data") or {}
            if stored_info.get("classes") not in (None, self.data_info["classes"]):
                raise SpikeliteError(f"the data at {cfg.data.root} has other classes than the run being resumed")
            model = _model_from_checkpoint(self.resume_ckpt, str(self.last_path))
            if isinstance(model, SpikingNet):
                model.T = cfg.snn.T  # the checkpoint records snn.eval_T when that is set: train at T
        else:
            model, self.src_meta = _initial_model(cfg, self.train_data, torch.device("cpu"), self.log)
        _check_fits_data(describe_model(model)["model_spec"], self.train_data, "model")
        self.model = model.to(self.device)
        if cfg.channels_last:
            # NHWC weights make every convolution (and so every activation) channels_last: the same
            # math up to float32 rounding in BatchNorm; a CPU speed option (docs/performance.md).
            self.model.to(memory_format=torch.channels_last)
        self.is_snn = isinstance(model, SpikingNet)
        if self.is_snn:
            model.recompute_neurons = cfg.recompute_neurons  # same gradients, less memory (docs/performance.md)
            model.compact_spikes = cfg.compact_spikes  # same gradients; off: more memory, less time
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        per_rank = cfg.batch_size // dist_env.world_size
        augment = default_augment(cfg.data.dataset, self.train_data.image_size) if cfg.data.augment == "auto" \
            else Augment.from_name(cfg.data.augment)
        self.loader = BatchLoader(self.train_data, per_rank, shuffle=True, augment=augment, device=self.device,
                                  seed=cfg.seed, rank=dist_env.rank, world_size=dist_env.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.optimizer = _make_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.partial: dict = {}
        self.rng_to_restore = None
        if self.resume_ckpt is not None:
            ts = self.resume_ckpt["train_state"]
            self.optimizer.load_state_dict(ts["optimizer"])
            if self.scaler is not None and ts.get("scaler"):
                self.scaler.load_state_dict(ts["scaler"])
            self.epoch, self.batch, self.step = int(ts["epoch"]), int(ts["batch"]), int(ts["step"])
            self.history = list(self.resume_ckpt.get("history") or [])
            self.best = self.resume_ckpt.get("best")
            self.partial = dict(ts.get("partial") or {})
            if self.batch:
                if int(ts.get("world_size", 1)) != dist_env.world_size:
                    raise SpikeliteError(f"{self.last_path} was written mid-epoch by {ts.get('world_size')} "
                                         f"process(es); resume it with the same number ({dist_env.world_size} now)")
                self.rng_to_restore = ts["rng"]
            self.log(f"resuming {self.last_path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        self.teacher, self.teacher_meta = _load_teacher(cfg, self.train_data, self.data_info, self.device,
                                                        source=(self._source_record() or {}).get("path"))
        if self.teacher is not None:
            self.log(f"distilling from {self.teacher_meta['path']} ({self.teacher_meta.get('kind', '?').upper()}, "
                     f"weight {cfg.distill.weight}, temperature {cfg.distill.temperature})")
        self.train_module: nn.Module = _TrainForward(self.model, steps=self.is_snn and cfg.snn.tet)
        if dist_env.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_module = DDP(self.train_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                    else None)
        self.tb = None
        if dist_env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
            import yaml

            atomic_write(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except Exception:  # tensorboard not installed
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self.tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=self.epoch + 1)

    # -- checkpoints ---------------------------------------------------------------------------
    def _meta(self) -> dict:
        # a pruned structure travels from the source (or resumed) checkpoint into every new one
        origin = self.src_meta if self.src_meta is not None else (self.resume_ckpt or {})
        return {
            "prune": origin.get("prune"),
            "data": self.data_info,
            "config": self.cfg.to_dict(),
            "metrics": self.history[-1] if self.history else None,
            "history": self.history,
            "best": self.best,
            "epoch": self.epoch,
            "source_checkpoint": self._source_record(),
            "teacher_checkpoint": None if self.teacher_meta is None else {
                "path": self.teacher_meta["path"], "kind": self.teacher_meta.get("kind"),
                "best": self.teacher_meta.get("best")},
        }

    def _source_record(self) -> dict | None:
        """The checkpoint this run's model started from; a resumed run keeps the record of its first start."""
        if self.src_meta is not None:
            return {"path": self.cfg.init_from, "kind": self.src_meta.get("kind"),
                    "metrics": self.src_meta.get("metrics")}
        return (self.resume_ckpt or {}).get("source_checkpoint")

    @contextlib.contextmanager
    def _at_eval_T(self):
        """The SNN at ``snn.eval_T`` steps (validation and the checkpoints' recorded T), then back at ``T``."""
        eval_T = self.cfg.snn.eval_T if self.is_snn else None
        if eval_T is None:
            yield
            return
        self.model.T = eval_T
        try:
            yield
        finally:
            self.model.T = self.cfg.snn.T

    def _save_last(self) -> None:
        # every rank joins the RNG gather; rank 0 writes
        ts = {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(self.dist, self.device),
            "partial": dict(self.partial),
        }
        if self.dist.main:
            meta = self._meta()  # a resumed run keeps its source record (_source_record)
            with self._at_eval_T():
                save_checkpoint(self.last_path, self.model, meta=meta, train_state=ts)

    def _save_best(self) -> None:
        if self.dist.main:
            meta = self._meta()  # a resumed run keeps its source record (_source_record)
            with self._at_eval_T():
                save_checkpoint(self.best_path, self.model, meta=meta)

    # -- one epoch -----------------------------------------------------------------------------
    def _check_finite(self, loss_sum: torch.Tensor) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss_sum)) else 1.0])
        if float(self.dist.all_reduce(bad)) > 0:
            raise _NonFiniteLoss()

    def _train_epoch(self) -> dict:
        cfg, loader = self.cfg, self.loader
        e = self.epoch
        loader.set_epoch(e)
        skip = self.batch
        if skip:
            _set_rng_state(self.rng_to_restore, self.dist, self.device)
            self.rng_to_restore = None
        else:
            torch.manual_seed(_seed_for("train", cfg.seed, e, self.dist.rank))
            self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "data_seconds": 0.0, "compute_seconds": 0.0}
        p = self.partial
        self.train_module.train()
        check_every = 1 if self.device.type == "cpu" else 25
        bar = _progress(len(loader), skip, f"epoch {e + 1}/{cfg.epochs}",
                        self.show and sys.stderr.isatty())
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        correct_acc = torch.zeros((), dtype=torch.int64, device=self.device)
        seen_acc = 0
        it = iter(loader)
        try:
            for i in range(len(loader)):
                t0 = time.perf_counter()
                x, y = next(it)
                if i < skip:
                    continue
                t1 = time.perf_counter()
                lr = lr_at(self.step, self.total_steps, cfg.optim, self.warmup_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with _autocast(self.device, self.amp_dtype):
                    out = self.train_module(x)
                out = out.float()
                loss = _classification_loss(out, y, cfg.optim.label_smoothing)
                logits = out.mean(0) if out.dim() == 3 else out
                if self.teacher is not None:
                    with torch.no_grad(), _autocast(self.device, self.amp_dtype):
                        target = self.teacher(x)
                    d = cfg.distill
                    loss = (1 - d.weight) * loss + d.weight * distillation_loss(logits, target.float(), d.temperature)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.optim.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if cfg.optim.grad_clip:
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    self.optimizer.step()
                self.step += 1
                self.batch = i + 1
                n = y.shape[0]
                loss_acc += loss.detach().double() * n
                correct_acc += (logits.detach().argmax(1) == y).sum()
                seen_acc += n
                last = i + 1 == len(loader)
                save_now = cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and not last
                if (i + 1) % check_every == 0 or last or save_now:
                    self._check_finite(loss_acc)
                    p["loss_sum"] += float(loss_acc)
                    p["correct"] += int(correct_acc)
                    p["seen"] += seen_acc
                    loss_acc.zero_()
                    correct_acc.zero_()
                    seen_acc = 0
                    bar.set_postfix(loss=f"{p['loss_sum'] / max(p['seen'], 1):.4f}",
                                    acc=f"{p['correct'] / max(p['seen'], 1):.3f}", lr=f"{lr:.3g}", refresh=False)
                t2 = time.perf_counter()
                p["data_seconds"] += t1 - t0
                p["compute_seconds"] += t2 - t1
                bar.update(1)
                if save_now:
                    self._save_last()
        finally:
            bar.close()
        totals = self.dist.all_reduce(torch.tensor([p["loss_sum"], float(p["correct"]), float(p["seen"])],
                                                   dtype=torch.float64))
        seen = max(float(totals[2]), 1.0)
        return {"train_loss": float(totals[0]) / seen, "train_acc": float(totals[1]) / seen,
                "lr": lr_at(max(self.step - 1, 0), self.total_steps, cfg.optim, self.warmup_steps),
                "data_seconds": p["data_seconds"], "compute_seconds": p["compute_seconds"],
                "samples": int(totals[2])}

    def _evaluate(self) -> tuple[dict, float]:
        t0 = time.perf_counter()
        with self._at_eval_T():
            res = evaluate(self.model, self.val_data, batch_size=self.cfg.data.eval_batch_size, device=self.device,
                           amp_dtype=self.amp_dtype, seed=self.cfg.seed, rank=self.dist.rank,
                           world_size=self.dist.world_size)
        return res, time.perf_counter() - t0

    def _record(self, row: dict) -> None:
        self.history.append(row)
        improved = row.get("val_acc") is not None and (self.best is None or row["val_acc"] > self.best["val_acc"])
        if improved:
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"], "val_f1": row["val_f1"],
                         "val_loss": row["val_loss"]}
        return improved

    def _report(self, row: dict) -> None:
        if not self.dist.main:
            return
        _write_csv(self.out / "log.csv", self.history)
        if self.tb is not None:
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "epoch_seconds",
                      "data_share"):
                if row.get(k) is not None:
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()
        parts = [f"epoch {row['epoch']}/{self.cfg.epochs}"]
        if row.get("train_loss") is not None:
            parts.append(f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%")
        if row.get("val_acc") is not None:
            parts.append(f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}% F1 {row['val_f1']:.4f}")
        if row.get("epoch_seconds") is not None:
            parts.append(f"{row['epoch_seconds']:.1f} s (data {100 * row['data_share']:.0f}%)")
            timed = [r["epoch_seconds"] + (r.get("eval_seconds") or 0.0) for r in self.history
                     if r.get("epoch_seconds") is not None]
            left = self.cfg.epochs - row["epoch"]
            if left > 0 and timed:
                parts.append(f"ETA {_fmt_duration(left * sum(timed[-5:]) / len(timed[-5:]))}")
        self.log("  ".join(parts))

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        self._setup()
        kind = "SNN" if self.is_snn else "CNN"
        self.log(f"training {kind} {describe_model(self.model)['model_spec']['name']} on {self.train_data.name}: "
                 f"{len(self.train_data)} train / {len(self.val_data)} val images, {cfg.epochs} epochs of "
                 f"{self.steps_per_epoch} steps, device {self.device}"
                 + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
                 + (f", amp {self.amp_dtype}" if self.amp_dtype else ""))
        try:
            if self.resume_ckpt is None and (cfg.init_from or cfg.epochs == 0):
                res, dt = self._evaluate()  # what the starting point (e.g. the converted CNN) is worth
                row = {"epoch": 0, "step": 0, "val_loss": res["loss"], "val_acc": res["accuracy"],
                       "val_f1": res["macro_f1"], "eval_seconds": dt}
                self._record(row)
                self._save_last()
                if self.best is not None:
                    self._save_best()
                self._report(row)
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                stats = self._train_epoch()
                epoch_seconds = time.perf_counter() - t0
                self.epoch += 1
                self.batch = 0
                row = {"epoch": self.epoch, "step": self.step, "lr": stats["lr"], "train_loss": stats["train_loss"],
                       "train_acc": stats["train_acc"], "epoch_seconds": epoch_seconds,
                       "data_seconds": stats["data_seconds"], "compute_seconds": stats["compute_seconds"],
                       "data_share": stats["data_seconds"] / max(stats["data_seconds"] + stats["compute_seconds"],
                                                                 1e-12),
                       "samples_per_second": stats["samples"] / max(epoch_seconds, 1e-12),
                       "train_samples": stats["samples"],
                       "val_loss": None, "val_acc": None, "val_f1": None, "eval_seconds": None}
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    res, dt = self._evaluate()
                    row.update(val_loss=res["loss"], val_acc=res["accuracy"], val_f1=res["macro_f1"], eval_seconds=dt)
                improved = self._record(row)
                self.partial = {}
                self._save_last()
                if improved:
                    self._save_best()
                self._report(row)
        except _NonFiniteLoss:
            good = self.last_path if self.last_path.exists() else "none (none written yet)"
            raise SpikeliteError(
                f"training stopped: the loss became NaN/inf in epoch {self.epoch + 1} (step {self.step}); "
                f"the last good checkpoint is {good}"
                f"; lower optim.lr, add optim.grad_clip or warm-up, and start a new run") from None
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.enabled:
            sums = self.dist.gather(_params_checksum(self.model))
            if any(not torch.equal(sums[0], s) for s in sums[1:]):
                raise SpikeliteError("DDP processes ended with different weights (this is a bug; please report it)")
        summary = {
            "run": str(self.out),
            "kind": "snn" if self.is_snn else "cnn",
            "model": describe_model(self.model)["model_spec"]["name"],
            "dataset": self.train_data.name,
            "epochs": self.epoch,
            "steps": self.step,
            "final": self.history[-1] if self.history else None,
            "best": self.best,
            "checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path) if self.best is not None else None,
            "world_size": self.dist.world_size,
            "seconds": time.perf_counter() - t_start,
        }
        if self.dist.main:
            atomic_write(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.dist.barrier()
        return summary


# ----------------------------------------------------------------------------------------------
# Evaluating a checkpoint
# ----------------------------------------------------------------------------------------------


def evaluate_checkpoint(path: str | os.PathLike, *, data_root: str | None = None, dataset: str | None = None,
                        split: str = "test", batch_size: int = 256, device: str = "auto",
                        T: int | None = None) -> dict:
    """Rebuild a checkpoint's model from the file alone and measure it on a split of its dataset.

    The dataset name, image size, channels, train/val split and normalisation come from the
    checkpoint (``dataset``/``data_root`` override where the data is). Returns the :func:`evaluate`
    metrics plus what was evaluated (``confusion`` as nested lists).
    """
    if split not in ("train", "val", "test"):
        raise SpikeliteError(f"split must be train, val or test; got {split!r}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model, meta = load_model(path, device=dev)
    data, root = checkpoint_data(meta, path, split, data_root=data_root, dataset=dataset)
    if T is not None:
        if not isinstance(model, SpikingNet):
            raise SpikeliteError("--T applies to SNN checkpoints only; this one is a CNN")
        model.T = T
    t0 = time.perf_counter()
    res = evaluate(model, data, batch_size=batch_size, device=dev)
    res["seconds"] = time.perf_counter() - t0
    res["confusion"] = res["confusion"].tolist()
    res.update(checkpoint=str(path), kind=meta["kind"], model=meta["model_spec"]["name"], dataset=data.name,
               split=split, root=root, T=model.T if isinstance(model, SpikingNet) else None,
               epoch=meta.get("epoch"))
    return res
