"""The training recipe: :class:`TrainConfig` and its sections, read from YAML and dotted-key overrides
(:func:`load_config`), each key checked and coerced; the recipe's neuron (:func:`recipe_neuron`)."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from typing import Any, Optional, Union

import torch

from .._io import parse_value, plain, read_yaml_mapping, set_dotted
from ..allocator import MALLOC_MODES, env_malloc_mode
from ..data import Augment
from ..errors import SpikeliteError
from ..snn import TIME_BN_MODES, make_neuron

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


# create_model's own arguments, which a recipe sets elsewhere, not in model.options: where each comes from
MODEL_ARGUMENTS = {
    "name": "the model is model.name (--model)",
    "num_classes": "the number of classes comes from the dataset",
    "image_size": "the image size is data.image_size (--image-size; default: the dataset's)",
    "in_chans": "the input channels are data.channels (--set data.channels=N; default: the dataset's)",
    "width": "the width multiplier is model.width (--width)",
}


@dataclasses.dataclass
class ModelConfig:
    """The zoo model: ``create_model(name, width=width, **options)`` (classes, image size and input
    channels come from the data)."""

    name: str = "squeezenet1_1"
    width: float = 1.0
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _coerce_fields(self, "model")
        from ..models import get_entry

        get_entry(self.name)
        if not self.width > 0 or not math.isfinite(self.width):
            raise SpikeliteError(f"model.width must be a positive number, got {self.width}")
        taken = [k for k in MODEL_ARGUMENTS if k in self.options]
        if taken:
            raise SpikeliteError(
                f"model.options cannot set {', '.join(taken)}: "
                + "; ".join(MODEL_ARGUMENTS[k] for k in taken) + ". model.options (--model-opt) holds the "
                "model family's own options (e.g. pool=avg)")


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
        from ..data import canonical_name

        self.dataset = canonical_name(self.dataset)
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
    channels_last: bool | str = "auto"  # NHWC conv weights (and so activations), a speed option; auto: on the CPU
    recompute_neurons: bool | str = "auto"  # SNN: recompute BatchNorm → neuron pairs in backward (less memory,
    # same math); auto: on for SNN runs on the CPU (measured to cost no time there), off elsewhere
    compact_spikes: bool = True  # SNN: spike maps kept for backward as 1-byte booleans (off: floats, faster at T=1-2)
    # retain: glibc keeps freed memory (no mmap/munmap per step); system: leave it alone. The default follows
    # SPIKELITE_MALLOC, the switch of the other CLI commands, so benchmark cells and train obey it too.
    malloc: str = dataclasses.field(default_factory=_default_malloc)
    out: str = "runs/train"  # the run directory
    save_every_steps: int = 0  # also write last.pt every N optimizer steps (0: epoch ends only)
    # the optimizer's state (SGD momentum, Adam moments) as last.pt stores it: float32, or bfloat16 for a resumable
    # file about a third smaller (a resume casts it back to the parameters' dtype; the run then differs from an
    # uninterrupted one by that rounding, once per resume)
    state_dtype: str = "float32"
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
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise SpikeliteError(f"channels_last must be true, false or auto, got {self.channels_last!r}")
        if isinstance(self.recompute_neurons, str) and self.recompute_neurons != "auto":
            raise SpikeliteError(f"recompute_neurons must be true, false or auto, got {self.recompute_neurons!r}")
        if self.recompute_neurons is True and self.mode != "snn":
            raise SpikeliteError("recompute_neurons applies to spiking networks only (mode snn), not to mode "
                                 f"{self.mode}")
        if not self.compact_spikes and self.mode != "snn":
            raise SpikeliteError("compact_spikes applies to spiking networks only (mode snn), not to mode "
                                 f"{self.mode}")
        _check_min("batch_size", self.batch_size, 1)
        _check_min("seed", self.seed, 0)
        _check_min("save_every_steps", self.save_every_steps, 0)
        _check_min("eval_every", self.eval_every, 1)
        if self.state_dtype not in STATE_DTYPES:
            raise SpikeliteError(f"state_dtype must be one of {', '.join(STATE_DTYPES)}, got {self.state_dtype!r}")
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


STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # state_dtype: how last.pt stores optimizer state

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "snn": SNNConfig,
             "distill": DistillConfig}
# Keys that may change when a run is resumed: where things are and how they are reported, not the recipe.
RUNTIME_KEYS = frozenset({
    "out", "device", "threads", "channels_last", "recompute_neurons", "compact_spikes", "malloc", "quiet", "tensorboard",
    "save_every_steps", "state_dtype", "eval_every", "init_from",
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
        loaded = read_yaml_mapping(path, "recipe file")
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
