"""The benchmark: one spec, a grid of cells, one results table (``spikelite bench SPEC.yaml``).

A spec (YAML, flags on top) names models, datasets, variants, time steps and seeds. The grid is their
product; every **cell** is one trained and measured network:

* ``cnn`` — the zoo CNN trained from scratch;
* ``snn`` — the paper's pipeline: the ``cnn`` cell's checkpoint converted to LIF neurons and
  fine-tuned with surrogate gradients (``snn_init: scratch`` trains the SNN from scratch instead);
* ``snn-p`` — the ``snn`` cell pruned (whole macro modules removed: a paper schedule such as
  ``ref-1`` for SqueezeNet, for the other families the least important modules, by default a quarter
  of them ranked by exact ablation) and fine-tuned;
* ``cnn-p`` (optional) — the ``cnn`` cell pruned with the same schedule and fine-tuned, so that an
  ``snn-p`` cell can be compared with its own pruned CNN.

Each cell is trained with :func:`spikelite.train.train` (resumable), evaluated with
:func:`spikelite.train.evaluate` (accuracy, macro-F1) and measured with
:func:`spikelite.energy.measure` (ACs, MACs, energy per profile, firing rates). Everything a cell
writes lives in ``<run>/cells/<cell id>/``; ``<run>/results.csv`` (and ``results.parquet`` when
pyarrow is installed) has one row per cell. A failed cell is recorded with its error and the grid
goes on (cells that need it are recorded as skipped); re-running the same command skips finished
cells and resumes a half-trained one.

Executors: ``local`` (in this process, one cell at a time) and ``ray`` (every cell a Ray task that
asks for ``resources.cpus``/``resources.gpus``; dependencies are honoured by submitting a cell only
once the cells it needs have finished). See docs/benchmark.md.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

from ._io import atomic_write, parse_value, read_json, set_dotted, write_json
from .errors import SpikeliteError

__all__ = [
    "VARIANTS",
    "ModelEntry",
    "DatasetEntry",
    "PruneSpec",
    "EvalSpec",
    "Resources",
    "BenchSpec",
    "Cell",
    "load_spec",
    "expand_grid",
    "cell_config",
    "run_cell",
    "run_bench",
    "collect_results",
    "write_results",
    "LocalExecutor",
    "RayExecutor",
    "RESULT_COLUMNS",
]

VARIANTS = ("cnn", "snn", "snn-p", "cnn-p", "cnn-q")
CNN_VARIANTS = ("cnn", "cnn-p", "cnn-q")
# variants a spec can only import (``checkpoints``), never train in the grid: cnn-q, the convertible CNN
# (QCFS activations; spikelite train --model-opt act_levels=L --model-opt act_threshold=λ0)
IMPORT_ONLY = ("cnn-q",)
DEFAULT_VARIANTS = ["cnn", "snn", "snn-p"]
SNN_INITS = ("convert", "scratch")
# cnn: a converted snn cell is distilled from the CNN it was converted from (docs/recipe.md); none: it is not
DISTILL_MODES = ("cnn", "none")
EVAL_SPLITS = ("test", "val")
CHECKPOINT_CHOICES = ("best", "last")
DEFAULT_PROFILES = ["45nm-fp32", "45nm-fp32-mem"]

# Recipe keys the grid sets per cell: a spec must not set them in ``recipe`` or a variant section.
GRID_OWNED = ("mode", "init_from", "out", "seed", "model", "data.dataset", "data.root", "snn.T")
# Recipe defaults inside a bench (the bench draws its own progress bars; TensorBoard per cell is noise).
BENCH_RECIPE_DEFAULTS = {"quiet": True, "tensorboard": False}

_ID_SAFE = re.compile(r"[^A-Za-z0-9_.+=-]+")


def _problem_error(problems: list[str], what: str = "invalid benchmark spec") -> SpikeliteError:
    """One SpikeliteError whose message lists every problem, one per line."""
    uniq = list(dict.fromkeys(problems))
    return SpikeliteError(f"{what} ({len(uniq)} problem{'s' if len(uniq) != 1 else ''}):\n"
                          + "\n".join(f"  - {p}" for p in uniq))


def _safe(text: str) -> str:
    return _ID_SAFE.sub("_", text.replace("%", "pct").replace("@", "-w"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# The spec
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelEntry:
    """A zoo model of the grid: ``create_model(name, width=width, **options)``.

    ``checkpoints`` maps a variant (``cnn``, ``snn``, ``snn-p``, ``cnn-p``) to a trained spikelite
    checkpoint of this model: that variant's cell is then *imported* (evaluated and measured, not
    trained), and cells that start from it (``snn`` from ``cnn``, ``snn-p`` from ``snn``) start from
    that file. ``variants`` (empty: all of the grid's) narrows the grid's variants for this model.
    """

    name: str
    width: float = 1.0
    options: dict = dataclasses.field(default_factory=dict)
    label: str = ""
    checkpoints: dict = dataclasses.field(default_factory=dict)
    variants: list = dataclasses.field(default_factory=list)

    def grid_variants(self, spec_variants) -> list:
        """The grid's variants this model runs, in the grid's order."""
        return [v for v in spec_variants if not self.variants or v in self.variants]

    def __post_init__(self):
        if not self.label:
            self.label = self.name if self.width == 1.0 else f"{self.name}@{self.width:g}"

    @property
    def family(self) -> str:
        from .models import get_entry

        return get_entry(self.name).family


# DataConfig keys a dataset entry may set (besides name, root and label).
_DATASET_KEYS = ("val_size", "split_seed", "image_size", "channels", "augment", "cache_dir", "download",
                 "train_subset", "val_subset", "eval_batch_size")


@dataclasses.dataclass
class DatasetEntry:
    """A dataset of the grid; ``options`` are :class:`spikelite.train.DataConfig` keys (image_size, ...)."""

    name: str
    root: str | None = None
    options: dict = dataclasses.field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            self.label = self.name


@dataclasses.dataclass
class PruneSpec:
    """How ``snn-p`` / ``cnn-p`` cells prune.

    ``schedules``: one pruned cell per entry. An entry is a paper schedule (``head-1`` ... ``ref-2``,
    SqueezeNet only; other families use ``fallback`` instead), ``ablation-K`` / ``ablation-P%`` (remove
    the K, or P percent, least important macro modules by exact ablation: the calibration loss with
    each module removed, one pass per module over ``calibration_size`` training images),
    ``taylor-K`` / ``taylor-P%`` (the same by first-order Taylor importance: one forward and backward
    pass, cheaper but a weak proxy: docs/pruning.md), ``keep:a+b+...`` or ``remove:a+b+...``.
    """

    schedules: list = dataclasses.field(default_factory=lambda: ["ref-1"])
    fallback: str = "ablation-25%"
    calibration_size: int = 256


@dataclasses.dataclass
class EvalSpec:
    """How every cell is measured after training."""

    split: str = "test"  # test | val
    subset: int | None = None  # a stratified subset of the split (quick runs)
    energy_samples: int = 256  # images measured by spikelite.energy.measure
    profiles: list = dataclasses.field(default_factory=lambda: list(DEFAULT_PROFILES))
    batch_size: int = 256
    checkpoint: str = "best"  # best (best validation accuracy) | last


@dataclasses.dataclass
class Resources:
    """What one cell asks of a Ray cluster (and the torch threads it uses there)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclasses.dataclass
class BenchSpec:
    """A benchmark grid: models x datasets x variants x T x seeds (docs/benchmark.md)."""

    name: str = "bench"
    out: str = ""
    models: list = dataclasses.field(default_factory=list)  # ModelEntry
    datasets: list = dataclasses.field(default_factory=list)  # DatasetEntry
    variants: list = dataclasses.field(default_factory=lambda: list(DEFAULT_VARIANTS))
    T: list = dataclasses.field(default_factory=lambda: [4])
    seeds: list = dataclasses.field(default_factory=lambda: [0])
    snn_init: str = "convert"
    distill: str = "cnn"
    recipe: dict = dataclasses.field(default_factory=dict)  # TrainConfig keys, every cell
    variant_recipes: dict = dataclasses.field(default_factory=dict)  # variant -> TrainConfig keys on top
    prune: PruneSpec = dataclasses.field(default_factory=PruneSpec)
    eval: EvalSpec = dataclasses.field(default_factory=EvalSpec)
    resources: Resources = dataclasses.field(default_factory=Resources)
    executor: str = "local"
    address: str | None = None

    def to_dict(self) -> dict:
        """The spec as YAML keys (the form :func:`load_spec` reads)."""
        d = {
            "name": self.name,
            "out": self.out,
            "models": [{"name": m.name, "width": m.width, "options": dict(m.options), "label": m.label,
                        **({"checkpoints": dict(m.checkpoints)} if m.checkpoints else {}),
                        **({"variants": list(m.variants)} if m.variants else {})}
                       for m in self.models],
            "datasets": [{"name": d.name, "root": d.root, "label": d.label, **d.options} for d in self.datasets],
            "variants": list(self.variants),
            "T": list(self.T),
            "seeds": list(self.seeds),
            "snn_init": self.snn_init,
            "distill": self.distill,
            "recipe": copy.deepcopy(self.recipe),
            **{v: copy.deepcopy(r) for v, r in self.variant_recipes.items()},
            "prune": dataclasses.asdict(self.prune),
            "eval": dataclasses.asdict(self.eval),
            "resources": dataclasses.asdict(self.resources),
            "executor": self.executor,
            "address": self.address,
        }
        return d


_TOP_KEYS = ("name", "out", "models", "datasets", "variants", "T", "seeds", "snn_init", "distill", "recipe", "prune", "eval",
             "resources", "executor", "address", *VARIANTS)


def _as_list(value, key: str, problems: list[str]) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    problems.append(f"{key} must be a list, got {value!r}")
    return []


def _section(d, key: str, cls, problems: list[str]):
    """A dataclass section from a mapping, every unknown key and bad type listed."""
    if d is None:
        return cls()
    if not isinstance(d, dict):
        problems.append(f"{key} must be a mapping, got {d!r}")
        return cls()
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {key}; valid keys: "
                        f"{', '.join(valid)}")
    return cls(**{k: v for k, v in d.items() if k in valid})


def _parse_model(item, i: int, problems: list[str]) -> ModelEntry | None:
    where = f"models[{i}]"
    if isinstance(item, str):
        name, _, width = item.partition("@")
        try:
            w = float(width) if width else 1.0
        except ValueError:
            problems.append(f"{where}: {item!r}: the width after '@' must be a number (e.g. mnasnet_b1@0.12)")
            return None
        item = {"name": name.strip(), "width": w}
    if not isinstance(item, dict):
        problems.append(f"{where} must be a model name (e.g. squeezenet1_1 or mnasnet_b1@0.12) or a mapping "
                        f"with name/width/options/label/checkpoints/variants, got {item!r}")
        return None
    valid = ("name", "width", "options", "label", "checkpoints", "variants")
    unknown = [k for k in item if k not in valid]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: "
                        f"{', '.join(valid)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where} has no model name")
        return None
    width = item.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0 or not math.isfinite(width):
        problems.append(f"{where} ({name}): width must be a positive number, got {width!r}")
        width = 1.0
    options = item.get("options") or {}
    if not isinstance(options, dict):
        problems.append(f"{where} ({name}): options must be a mapping, got {options!r}")
        options = {}
    label = item.get("label") or ""
    if not isinstance(label, str):
        problems.append(f"{where} ({name}): label must be a string")
        label = ""
    checkpoints = item.get("checkpoints") or {}
    if not isinstance(checkpoints, dict):
        problems.append(f"{where} ({name}): checkpoints must map variants to checkpoint files (e.g. "
                        f"{{cnn: runs/cnn/best.pt}}), got {checkpoints!r}")
        checkpoints = {}
    for v, path in list(checkpoints.items()):
        if v not in VARIANTS:
            problems.append(f"{where} ({name}): checkpoints: unknown variant {v!r}; valid variants: "
                            f"{', '.join(VARIANTS)}")
            checkpoints.pop(v)
        elif not isinstance(path, str) or not path:
            problems.append(f"{where} ({name}): checkpoints.{v} must be a checkpoint path, got {path!r}")
            checkpoints.pop(v)
    variants = item.get("variants") or []
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    if not isinstance(variants, list):
        problems.append(f"{where} ({name}): variants must be a list of variants (e.g. [cnn, snn]), got {variants!r}")
        variants = []
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        problems.append(f"{where} ({name}): unknown variant(s) {', '.join(repr(v) for v in bad)}; valid variants: "
                        f"{', '.join(VARIANTS)}")
    variants = [v for v in dict.fromkeys(variants) if v in VARIANTS]
    from .models import get_entry

    try:
        get_entry(name)
    except SpikeliteError as exc:
        problems.append(f"{where}: {exc}")
        return None
    return ModelEntry(name, float(width), dict(options), label, {str(k): str(v) for k, v in checkpoints.items()},
                      variants)


@dataclasses.dataclass(frozen=True)
class ImportedCheckpoint:
    """What the grid needs to know about a trained checkpoint named in a model's ``checkpoints``."""

    path: str
    sha256: str
    kind: str  # cnn | snn
    name: str
    width: float
    model_spec: dict
    dataset: str | None
    T: int | None
    keep: tuple | None
    removed: tuple | None
    strategy: str | None

    @property
    def schedule(self) -> str | None:
        """The prune schedule label of a pruned checkpoint: a paper schedule's name when its keep set is one,
        else ``keep:a+b+...``."""
        if self.keep is None:
            return None
        from .prune import PAPER_SCHEDULES

        if self.name.startswith("squeezenet"):  # the paper's schedules are SqueezeNet keep sets
            for name, keep in PAPER_SCHEDULES.items():
                if tuple(keep) == tuple(self.keep):
                    return name
        return "keep:" + "+".join(self.keep)


_IMPORT_CACHE: dict = {}


def imported_checkpoint(path: str | os.PathLike) -> ImportedCheckpoint:
    """Read (once per file version) the facts of a checkpoint a spec imports; a SpikeliteError if unreadable."""
    from .checkpoint import read_checkpoint

    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise SpikeliteError(f"checkpoint {p} does not exist") from None
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _IMPORT_CACHE:
        return _IMPORT_CACHE[key]
    obj = read_checkpoint(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    spec = dict(obj["model_spec"])
    prune = obj.get("prune") or {}
    keep = spec.get("keep") or prune.get("keep")
    removed = prune.get("removed")
    if keep is not None and removed is None:
        from .models import macro_modules

        with contextlib.suppress(Exception):
            removed = [n for n, _ in macro_modules(spec["name"]) if n not in set(keep)]
    info = ImportedCheckpoint(
        path=str(p), sha256=digest, kind=obj["kind"], name=str(spec.get("name")), width=float(spec.get("width", 1.0)),
        model_spec=spec, dataset=(obj.get("data") or {}).get("dataset"),
        T=int(obj["snn"]["T"]) if obj["kind"] == "snn" else None,
        keep=tuple(keep) if keep is not None else None, removed=tuple(removed) if removed is not None else None,
        strategy=prune.get("strategy"))
    if len(_IMPORT_CACHE) >= 256:  # bounded: stale versions of rewritten files go first
        _IMPORT_CACHE.pop(next(iter(_IMPORT_CACHE)))
    _IMPORT_CACHE[key] = info
    return info


def _check_imports(spec: "BenchSpec", problems: list[str]) -> None:
    """Every checkpoint a model entry imports must be that model, of its variant's kind, trained on a dataset
    of the grid, with an SNN's T among the grid's."""
    names = {d.name for d in spec.datasets}
    for i, m in enumerate(spec.models):
        for variant, path in m.checkpoints.items():
            where = f"models[{i}] ({m.label}): checkpoints.{variant}"
            if variant not in m.grid_variants(spec.variants):
                problems.append(f"{where}: {variant} is not among the {'grid' if not m.variants else 'entry'}'s "
                                f"variants ({', '.join(m.grid_variants(spec.variants))})")
                continue
            try:
                info = imported_checkpoint(path)
            except SpikeliteError as exc:
                problems.append(f"{where}: {exc}")
                continue
            want_kind = "cnn" if variant in CNN_VARIANTS else "snn"
            pruned = variant.endswith("-p")
            if info.name != m.name:
                problems.append(f"{where}: {path} holds a {info.name}, not a {m.name}")
            elif abs(info.width - m.width) > 1e-9:
                problems.append(f"{where}: {path} has width {info.width:g}, the entry says {m.width:g}")
            if info.kind != want_kind:
                problems.append(f"{where}: {path} is a{'n' if info.kind == 'snn' else ''} {info.kind.upper()} "
                                f"checkpoint; a {variant} cell needs a{'n' if want_kind == 'snn' else ''} "
                                f"{want_kind.upper()} one")
            if variant == "cnn-q" and not info.model_spec.get("act_levels"):
                problems.append(f"{where}: {path} has no QCFS activations (its model spec has no act_levels); a "
                                "cnn-q cell is the convertible CNN")
            if pruned and info.keep is None:
                problems.append(f"{where}: {path} is not pruned (its model spec keeps every macro module)")
            if not pruned and info.keep is not None:
                problems.append(f"{where}: {path} is pruned (keeps {'+'.join(info.keep)}); name it under "
                                f"{info.kind}-p")
            for k, v in m.options.items():
                if k in info.model_spec and info.model_spec[k] != v:
                    problems.append(f"{where}: {path} was built with {k}={info.model_spec[k]!r}, the entry's "
                                    f"options say {k}={v!r}")
            if info.dataset not in names:
                problems.append(f"{where}: {path} was trained on {info.dataset}, which is not among the grid's "
                                f"datasets ({', '.join(sorted(names)) or 'none'})")
            if info.T is not None and info.T not in spec.T:
                problems.append(f"{where}: {path} runs T={info.T}; add it to T (the grid has {spec.T})")


def _parse_dataset(item, i: int, problems: list[str], roots: dict[str, str]) -> DatasetEntry | None:
    where = f"datasets[{i}]"
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        problems.append(f"{where} must be a dataset name or a mapping with name/root/label and data options, "
                        f"got {item!r}")
        return None
    valid = ("name", "root", "label", *_DATASET_KEYS)
    unknown = [k for k in item if k not in valid]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: "
                        f"{', '.join(valid)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where} has no dataset name")
        return None
    from .data import _canonical

    try:
        canon = _canonical(name)
    except SpikeliteError as exc:
        problems.append(f"{where}: {exc}")
        return None
    label = item.get("label") or name
    root = item.get("root")
    for key in (label, name, canon):
        if key in roots:
            root = roots[key]
            break
    if root is not None:
        if not isinstance(root, str):
            problems.append(f"{where} ({name}): root must be a path, got {root!r}")
            root = None
        else:
            expanded = os.path.expandvars(os.path.expanduser(root))
            missing_vars = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", expanded)
            if missing_vars:
                problems.append(f"{where} ({name}): data path {root!r} uses environment variable(s) "
                                f"{', '.join(missing_vars)} that are not set (set them, or pass "
                                f"--data-root {label}=DIR)")
                root = None
            else:
                root = expanded
    options = {k: item[k] for k in _DATASET_KEYS if k in item}
    return DatasetEntry(canon, root, options, str(label))


def _check_dataset_root(ds: DatasetEntry, where: str, problems: list[str]) -> None:
    from .data import FASHION_MNIST_SYSTEM_ROOT

    if ds.name == "digits":
        return
    if ds.root is None:
        if ds.name == "fashion-mnist" and Path(FASHION_MNIST_SYSTEM_ROOT).is_dir():
            return
        problems.append(f"{where} ({ds.label}): no data path; set its root in the spec or pass "
                        f"--data-root {ds.label}=DIR")
        return
    p = Path(ds.root)
    if not p.exists():
        if ds.options.get("download"):
            return
        problems.append(f"{where} ({ds.label}): data path {ds.root} does not exist")
    elif not p.is_dir():
        problems.append(f"{where} ({ds.label}): data path {ds.root} is not a folder")


_SCHEDULE_RE = re.compile(r"^(?:(?P<rank>taylor|ablation)-(?P<k>\d+)(?P<pct>%?)|keep:(?P<keep>.+)|remove:(?P<remove>.+))$")


def _check_schedule(s, where: str, problems: list[str]) -> bool:
    from .prune import PAPER_SCHEDULES

    if not isinstance(s, str) or not s:
        problems.append(f"{where}: a prune schedule must be a string, got {s!r}")
        return False
    if s in PAPER_SCHEDULES:
        return True
    m = _SCHEDULE_RE.match(s)
    if not m:
        problems.append(f"{where}: unknown prune schedule {s!r}; use a paper schedule "
                        f"({', '.join(PAPER_SCHEDULES)}), ablation-K, ablation-P%, taylor-K, taylor-P%, keep:a+b or remove:a+b")
        return False
    if m.group("k") is not None:
        k = int(m.group("k"))
        if m.group("pct") and not 0 < k < 100:
            problems.append(f"{where}: {s!r}: the percentage must be between 1 and 99")
            return False
        if not m.group("pct") and k < 1:
            problems.append(f"{where}: {s!r}: remove at least one module")
            return False
    return True


def resolve_schedule(spec: BenchSpec, schedule: str, model: ModelEntry) -> str:
    """The schedule a model actually gets: paper schedules apply to SqueezeNet only, others use ``fallback``."""
    from .prune import PAPER_SCHEDULES

    if schedule in PAPER_SCHEDULES and model.family != "squeezenet":
        return spec.prune.fallback
    return schedule


def _check_int_list(values, key: str, minimum: int, problems: list[str]) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            problems.append(f"{key}: {v!r} is not an integer >= {minimum}")
        else:
            out.append(int(v))
    if len(set(out)) != len(out):
        problems.append(f"{key} lists a value twice: {values}")
    return list(dict.fromkeys(out))


def build_spec(raw: dict, *, roots: dict[str, str] | None = None, check_paths: bool = True,
               check_cells: bool = True) -> BenchSpec:
    """A validated :class:`BenchSpec` from a spec mapping. Every problem is collected and reported in
    one :class:`SpikeliteError` before anything runs."""
    problems: list[str] = []
    roots = dict(roots or {})
    if not isinstance(raw, dict):
        raise _problem_error([f"a spec must be a mapping of keys, got {type(raw).__name__}"])
    unknown = [k for k in raw if k not in _TOP_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(_TOP_KEYS)}")
    spec = BenchSpec()
    name = raw.get("name", "bench")
    if not isinstance(name, str) or not name:
        problems.append(f"name must be a non-empty string, got {name!r}")
        name = "bench"
    spec.name = name
    out = raw.get("out") or f"runs/{_safe(name)}"
    if not isinstance(out, str):
        problems.append(f"out must be a path, got {out!r}")
        out = f"runs/{_safe(name)}"
    spec.out = out

    models = [_parse_model(m, i, problems) for i, m in enumerate(_as_list(raw.get("models"), "models", problems))]
    spec.models = [m for m in models if m is not None]
    if not raw.get("models"):
        problems.append("models: the spec names no model (e.g. models: [squeezenet1_1])")
    labels = [m.label for m in spec.models]
    if len(set(labels)) != len(labels):
        problems.append(f"models: two entries have the same label ({', '.join(labels)}); give them distinct labels")

    datasets = [(i, _parse_dataset(d, i, problems, roots))
                for i, d in enumerate(_as_list(raw.get("datasets"), "datasets", problems))]
    spec.datasets = [d for _, d in datasets if d is not None]
    if not raw.get("datasets"):
        problems.append("datasets: the spec names no dataset (e.g. datasets: [digits])")
    dlabels = [d.label for d in spec.datasets]
    if len(set(dlabels)) != len(dlabels):
        problems.append(f"datasets: two entries have the same label ({', '.join(dlabels)})")
    known_labels = set(dlabels) | {d.name for d in spec.datasets}
    for key in roots:
        if key not in known_labels:
            problems.append(f"--data-root {key}=...: no dataset {key!r} in the spec (datasets: "
                            f"{', '.join(dlabels) or 'none'})")
    if check_paths:
        for i, d in datasets:
            if d is not None:
                _check_dataset_root(d, f"datasets[{i}]", problems)

    variants = _as_list(raw.get("variants", DEFAULT_VARIANTS), "variants", problems)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        problems.append(f"unknown variant(s) {', '.join(repr(v) for v in bad)}; valid variants: {', '.join(VARIANTS)}")
    spec.variants = [v for v in dict.fromkeys(variants) if v in VARIANTS]
    if not variants:
        problems.append("variants: the spec names no variant (cnn, snn, snn-p, cnn-p)")
    for i, m in enumerate(spec.models):
        missing = [v for v in IMPORT_ONLY if v in m.grid_variants(spec.variants) and v not in m.checkpoints]
        if missing:
            problems.append(f"models[{i}] ({m.label}): {', '.join(missing)} cells are imported, not trained in the "
                            f"grid: name the checkpoint (checkpoints: {{{missing[0]}: PATH}}) or narrow the entry's "
                            "variants")
        outside = [v for v in m.variants if v not in spec.variants]
        if outside:
            problems.append(f"models[{i}] ({m.label}): variants {', '.join(outside)} not among the grid's variants "
                            f"({', '.join(spec.variants)}); an entry's variants narrow the grid's")
    spec.T = _check_int_list(_as_list(raw.get("T", [4]), "T", problems), "T", 1, problems)
    if not spec.T and any(v in ("snn", "snn-p") for v in spec.variants):
        problems.append("T: an SNN variant needs at least one number of time steps")
    spec.seeds = _check_int_list(_as_list(raw.get("seeds", [0]), "seeds", problems), "seeds", 0, problems)
    if not spec.seeds:
        problems.append("seeds: at least one seed")
    snn_init = raw.get("snn_init", "convert")
    if snn_init not in SNN_INITS:
        problems.append(f"snn_init must be one of {', '.join(SNN_INITS)}, got {snn_init!r}")
        snn_init = "convert"
    spec.snn_init = snn_init
    distill = raw.get("distill", "cnn")
    if distill not in DISTILL_MODES:
        problems.append(f"distill must be one of {', '.join(DISTILL_MODES)}, got {distill!r}")
        distill = "cnn"
    spec.distill = distill

    recipe = raw.get("recipe") or {}
    if not isinstance(recipe, dict):
        problems.append(f"recipe must be a mapping of training-recipe keys, got {recipe!r}")
        recipe = {}
    spec.recipe = copy.deepcopy(recipe)
    for v in VARIANTS:
        r = raw.get(v)
        if r is None:
            continue
        if not isinstance(r, dict):
            problems.append(f"{v} must be a mapping of training-recipe keys (overrides for {v} cells), got {r!r}")
            continue
        spec.variant_recipes[v] = copy.deepcopy(r)
    for where, r in [("recipe", spec.recipe), *spec.variant_recipes.items()]:
        flat = _flatten(r)
        for k in flat:
            if any(k == o or k.startswith(o + ".") for o in GRID_OWNED):
                problems.append(f"{where}.{k} is set by the grid per cell (models, datasets, T, seeds, variants); "
                                "remove it from the recipe")
            if k == "distill.teacher" and spec.distill == "cnn" and flat[k] is not None:
                problems.append(f"{where}.distill.teacher: with distill: cnn the grid sets each converted SNN's "
                                "teacher (its CNN); set distill: none to name a teacher yourself")

    spec.prune = _section(raw.get("prune"), "prune", PruneSpec, problems)
    spec.prune.schedules = _as_list(spec.prune.schedules, "prune.schedules", problems)
    for i, s in enumerate(spec.prune.schedules):
        _check_schedule(s, f"prune.schedules[{i}]", problems)
    _check_schedule(spec.prune.fallback, "prune.fallback", problems)
    from .prune import PAPER_SCHEDULES

    if spec.prune.fallback in PAPER_SCHEDULES:
        problems.append(f"prune.fallback {spec.prune.fallback!r} is a SqueezeNet schedule; the fallback serves the "
                        "other families (e.g. ablation-25%)")
    if not spec.prune.schedules and any(v in ("snn-p", "cnn-p") for v in spec.variants):
        problems.append("prune.schedules: a pruned variant needs at least one schedule")
    cs = spec.prune.calibration_size
    if isinstance(cs, bool) or not isinstance(cs, int) or cs < 1:
        problems.append(f"prune.calibration_size must be an integer >= 1, got {cs!r}")

    spec.eval = _section(raw.get("eval"), "eval", EvalSpec, problems)
    e = spec.eval
    if e.split not in EVAL_SPLITS:
        problems.append(f"eval.split must be one of {', '.join(EVAL_SPLITS)}, got {e.split!r}")
    if e.checkpoint not in CHECKPOINT_CHOICES:
        problems.append(f"eval.checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}, got {e.checkpoint!r}")
    for key in ("energy_samples", "batch_size"):
        v = getattr(e, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"eval.{key} must be an integer >= 1, got {v!r}")
    if e.subset is not None and (isinstance(e.subset, bool) or not isinstance(e.subset, int) or e.subset < 1):
        problems.append(f"eval.subset must be an integer >= 1 (or null), got {e.subset!r}")
    e.profiles = _as_list(e.profiles, "eval.profiles", problems)
    if not e.profiles:
        problems.append("eval.profiles: at least one energy profile")
    else:
        from .energy import resolve_profiles

        for p in e.profiles:
            try:
                resolve_profiles([p])
            except SpikeliteError as exc:
                problems.append(f"eval.profiles: {exc}")

    spec.resources = _section(raw.get("resources"), "resources", Resources, problems)
    for key in ("cpus", "gpus"):
        v = getattr(spec.resources, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "cpus" and v <= 0):
            problems.append(f"resources.{key} must be a number {'> 0' if key == 'cpus' else '>= 0'}, got {v!r}")
    spec.executor = raw.get("executor", "local")
    if spec.executor not in ("local", "ray"):
        problems.append(f"executor must be local or ray, got {spec.executor!r}")
    elif spec.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            problems.append("executor ray needs the ray package: pip install 'spikelite[cluster]'")
    spec.address = raw.get("address")
    if spec.address is not None and not isinstance(spec.address, str):
        problems.append(f"address must be a string (a Ray cluster address), got {spec.address!r}")

    if check_paths and any(m.checkpoints for m in spec.models):
        _check_imports(spec, problems)
    # The recipe of every (variant, model, dataset) must be a valid training recipe; the model must
    # fit the dataset's image size (checked by building it once).
    if check_cells and spec.models and spec.datasets and spec.seeds:
        _check_cells(spec, problems)
    if problems:
        raise _problem_error(problems)
    return spec


def _check_cells(spec: BenchSpec, problems: list[str]) -> None:
    from .models import create_model, macro_modules

    built: set = set()
    seen: set = set()
    for ds in spec.datasets:
        for m in spec.models:
            cfg = None
            for variant in m.grid_variants(spec.variants):
                cell = Cell(id="check", variant=variant, model=m, dataset=ds, seed=spec.seeds[0],
                            T=spec.T[0] if variant in ("snn", "snn-p") and spec.T else None,
                            schedule=None, deps=[])
                try:
                    cfg = cell_config(spec, cell, Path("/nonexistent-run"))
                except SpikeliteError as exc:
                    if str(exc) not in seen:  # the same recipe problem once, not once per model and dataset
                        seen.add(str(exc))
                        problems.append(f"recipe of the {variant} cells ({m.label} on {ds.label}): {exc}")
            key = (m.label, ds.label)
            if cfg is not None and key not in built:
                built.add(key)
                size = cfg.data.image_size or {"digits": 32, "cifar10": 32, "cifar100": 32,
                                                "tinyimagenet": 64, "fashion-mnist": 28}.get(ds.name)
                try:
                    create_model(m.name, num_classes=10, image_size=size or 32,
                                 in_chans=cfg.data.channels or 3, width=m.width, **m.options)
                except SpikeliteError as exc:
                    problems.append(f"model {m.label} on {ds.label}: {exc}")
                except TypeError as exc:
                    problems.append(f"model {m.label}: {exc}")
            if any(v in ("snn-p", "cnn-p") for v in m.grid_variants(spec.variants)):
                names = [n for n, _ in macro_modules(m.name)]
                for s in spec.prune.schedules:
                    r = resolve_schedule(spec, s, m)
                    mm = _SCHEDULE_RE.match(r)
                    if mm and (mm.group("keep") or mm.group("remove")):
                        listed = [t for t in (mm.group("keep") or mm.group("remove")).split("+") if t]
                        bad = [t for t in listed if t not in names]
                        if bad:
                            problems.append(f"prune schedule {r!r} for {m.label}: unknown module(s) "
                                            f"{', '.join(bad)}; {m.label} has {', '.join(names)}")
                        elif mm.group("keep") is not None and not listed:
                            problems.append(f"prune schedule {r!r}: keeps nothing")
                        elif mm.group("remove") is not None and len(set(listed)) >= len(names):
                            problems.append(f"prune schedule {r!r} removes every module of {m.label}")
                    elif mm and mm.group("k") is not None and not mm.group("pct") and int(mm.group("k")) >= len(names):
                        problems.append(f"prune schedule {r!r}: {m.label} has only {len(names)} macro modules")


def load_spec(path: str | os.PathLike | None = None, *, overrides: dict | list | None = None,
              base: dict | None = None, roots: dict[str, str] | None = None, check_paths: bool = True) -> BenchSpec:
    """A :class:`BenchSpec` from a YAML file (or ``base``), with dotted-key ``overrides``
    (``{"eval.energy_samples": 64}`` or ``["recipe.epochs=1", ...]``) and data ``roots``
    (``{"cifar10": "/data/cifar10"}``). Invalid input raises one SpikeliteError listing every problem."""
    import yaml

    raw: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SpikeliteError(f"spec file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise SpikeliteError(f"spec file {p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpikeliteError(f"spec file {p} must hold a mapping of keys, got {type(loaded).__name__}")
        raw.update(loaded)
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in str(item):
                raise SpikeliteError(f"override {item!r} must look like key=value (e.g. recipe.epochs=1)")
            k, v = str(item).split("=", 1)
            pairs[k.strip()] = parse_value(v.strip())
        overrides = pairs
    for k, v in (overrides or {}).items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    return build_spec(raw, roots=roots, check_paths=check_paths)


# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One trained and measured network of the grid."""

    id: str
    variant: str
    model: ModelEntry
    dataset: DatasetEntry
    seed: int
    T: int | None
    schedule: str | None
    deps: list
    checkpoint: str | None = None  # an imported cell: this trained checkpoint is evaluated, nothing is trained

    def to_dict(self) -> dict:
        model = {k: v for k, v in dataclasses.asdict(self.model).items() if k != "variants" or v}
        return {"id": self.id, "variant": self.variant, "model": model,
                "dataset": dataclasses.asdict(self.dataset), "seed": self.seed, "T": self.T,
                "schedule": self.schedule, "deps": list(self.deps), "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        return cls(id=d["id"], variant=d["variant"], model=ModelEntry(**d["model"]),
                   dataset=DatasetEntry(**d["dataset"]), seed=int(d["seed"]), T=d.get("T"),
                   schedule=d.get("schedule"), deps=list(d.get("deps") or []), checkpoint=d.get("checkpoint"))


def _cell_id(ds: DatasetEntry, m: ModelEntry, variant: str, seed: int, T: int | None = None,
             schedule: str | None = None) -> str:
    parts = [ds.label, m.label, variant]
    if T is not None:
        parts.append(f"T{T}")
    if schedule is not None:
        parts.append(schedule)
    parts.append(f"s{seed}")
    return "__".join(_safe(str(p)) for p in parts)


def expand_grid(spec: BenchSpec) -> list[Cell]:
    """Every cell of the grid, each after the cells it depends on.

    A requested variant brings the cells it needs: ``snn`` (converted) its ``cnn``, ``snn-p`` its
    ``snn``, ``cnn-p`` its ``cnn``. ``cnn`` and ``cnn-p`` have no T; the pruned variants get one
    cell per (resolved) prune schedule.

    A variant a model imports (``checkpoints``) is one cell per dataset it was trained on, under the
    grid's first seed, with the checkpoint's T and (pruned) keep set; it needs no other cell, and
    the trained cells of that model that start from it depend on it.
    """
    cells: list[Cell] = []
    for ds in spec.datasets:
        for m in spec.models:
            variants = m.grid_variants(spec.variants)
            imports = {v: imported_checkpoint(p) for v, p in m.checkpoints.items() if v in variants}
            first = spec.seeds[0] if spec.seeds else 0
            imp = {v: Cell(_cell_id(ds, m, v, first, info.T, info.schedule), v, m, ds, first, info.T, info.schedule,
                           [], checkpoint=info.path)
                   for v, info in imports.items() if info.dataset == ds.name}
            want = set(variants)
            if "snn-p" in want and "snn-p" not in imp:
                want.add("snn")
            if ("cnn-p" in want and "cnn-p" not in imp) or ("snn" in want and "snn" not in imp
                                                             and spec.snn_init == "convert"):
                want.add("cnn")
            schedules = list(dict.fromkeys(resolve_schedule(spec, s, m) for s in spec.prune.schedules))
            for n, seed in enumerate(spec.seeds):
                if "cnn" in imp:
                    cnn_id = imp["cnn"].id
                    if n == 0:
                        cells.append(imp["cnn"])
                else:
                    cnn_id = _cell_id(ds, m, "cnn", seed)
                    if "cnn" in want:
                        cells.append(Cell(cnn_id, "cnn", m, ds, seed, None, None, []))
                if "cnn-q" in imp and n == 0:
                    cells.append(imp["cnn-q"])
                if "cnn-p" in imp:
                    if n == 0:
                        cells.append(imp["cnn-p"])
                elif "cnn-p" in want:
                    for s in schedules:
                        cells.append(Cell(_cell_id(ds, m, "cnn-p", seed, None, s), "cnn-p", m, ds, seed, None, s,
                                          [cnn_id]))
                for T in spec.T:
                    if "snn" in imp:  # one cell, at the checkpoint's T; the pruned cells of that T start from it
                        snn_id = imp["snn"].id if imp["snn"].T == T else None
                        if n == 0 and snn_id is not None:
                            cells.append(imp["snn"])
                    else:
                        snn_id = _cell_id(ds, m, "snn", seed, T)
                        if "snn" in want:
                            deps = [cnn_id] if spec.snn_init == "convert" else []
                            cells.append(Cell(snn_id, "snn", m, ds, seed, T, None, deps))
                    if "snn-p" in imp:
                        if n == 0 and imp["snn-p"].T == T:
                            cells.append(imp["snn-p"])
                    elif "snn-p" in want and snn_id is not None:
                        for s in schedules:
                            cells.append(Cell(_cell_id(ds, m, "snn-p", seed, T, s), "snn-p", m, ds, seed, T, s,
                                              [snn_id]))
    return cells


def _cell_dir(run_dir: Path, cell_id: str) -> Path:
    return Path(run_dir) / "cells" / cell_id


def _imported_dep(spec: BenchSpec, cell_id: str) -> str | None:
    """The checkpoint file cell ``cell_id`` imports (None for a cell that trains)."""
    if any(m.checkpoints for m in spec.models):
        for c in expand_grid(spec):
            if c.id == cell_id and c.checkpoint:
                return c.checkpoint
    return None


def _source_checkpoint(spec: BenchSpec, run_dir: Path, dep_id: str, which: str) -> Path:
    """The checkpoint a cell starts from: its source cell's (best or last), or the file that cell imports."""
    imported = _imported_dep(spec, dep_id)
    if imported is not None:
        return Path(imported)
    d = _cell_dir(run_dir, dep_id)
    best = d / "best.pt"
    if which == "best" and best.exists():
        return best
    return d / "last.pt"


def cell_config(spec: BenchSpec, cell: Cell, run_dir: Path):
    """The :class:`spikelite.train.TrainConfig` a cell trains with.

    Layers, later ones winning: the bench defaults (quiet, no TensorBoard), ``spec.recipe``, the
    variant's section, the dataset entry's options, then what the grid owns (mode, init_from, out,
    seed, model, dataset, root, T). Pruned variants start from ``<cell>/pruned_init.pt``.
    """
    from .train import load_config

    raw: dict = copy.deepcopy(BENCH_RECIPE_DEFAULTS)
    for k, v in _flatten(spec.recipe).items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    for k, v in _flatten(spec.variant_recipes.get(cell.variant, {})).items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    cdir = _cell_dir(run_dir, cell.id)
    ov: dict = {
        "mode": "cnn" if cell.variant in CNN_VARIANTS else "snn",
        "out": str(cdir),
        "seed": cell.seed,
        "model.name": cell.model.name,
        "model.width": cell.model.width,
        "model.options": dict(cell.model.options),
        "data.dataset": cell.dataset.name,
        "data.root": cell.dataset.root,
    }
    for k, v in cell.dataset.options.items():
        ov[f"data.{k}"] = v
    if cell.T is not None:
        ov["snn.T"] = cell.T
    if cell.variant == "snn" and cell.deps:
        ov["init_from"] = str(_source_checkpoint(spec, run_dir, cell.deps[0], spec.eval.checkpoint))
        if spec.distill == "cnn":  # the CNN it is converted from teaches it (distill.weight/temperature: the recipe's)
            ov["distill.teacher"] = ov["init_from"]
    elif cell.variant in ("snn-p", "cnn-p"):
        ov["init_from"] = str(cdir / "pruned_init.pt")
    for k, v in ov.items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    return load_config(None, None, base=raw)


def _fingerprints(spec: BenchSpec, cell: Cell, cfg, dep_fps: dict[str, str]) -> tuple[str, str, dict]:
    """(train fingerprint, eval fingerprint, what they hash): a finished cell is reused only while both match."""
    from .train import RUNTIME_KEYS, recipe_view

    # late keys at their neutral value stay out: a key added to the recipe leaves finished cells finished
    recipe = {k: v for k, v in recipe_view(_flatten(cfg.to_dict())).items() if k not in RUNTIME_KEYS}
    # imports: per cell below; an entry's variants decide which cells exist, not how one trains
    model = {k: v for k, v in dataclasses.asdict(cell.model).items() if k not in ("checkpoints", "variants")}
    train_part = {
        "variant": cell.variant, "model": model,
        "dataset": {"name": cell.dataset.name, "label": cell.dataset.label, "options": cell.dataset.options},
        "seed": cell.seed, "T": cell.T, "schedule": cell.schedule, "recipe": recipe,
        "deps": {d: dep_fps.get(d) for d in cell.deps},
        "teacher": None if cfg.distill.teacher is None else (
            "cnn" if cell.variant == "snn" and spec.distill == "cnn" and cell.deps else str(cfg.distill.teacher)),
    }
    if cell.variant in ("snn-p", "cnn-p"):
        train_part["prune"] = {"calibration_size": spec.prune.calibration_size,
                               "source_checkpoint": spec.eval.checkpoint}
    if cell.checkpoint:  # nothing is trained: the cell is that file, whatever the recipe says
        train_part = {"variant": cell.variant, "model": model, "dataset": train_part["dataset"], "seed": cell.seed, "T": cell.T, "schedule": cell.schedule,
                      "imported": {"path": str(Path(cell.checkpoint).resolve()),
                                   "sha256": imported_checkpoint(cell.checkpoint).sha256}}
    else:
        for d in cell.deps:  # a source that is an imported file: its content, not its path
            imp = _imported_dep(spec, d)
            if imp is not None:
                train_part["deps"][d] = imported_checkpoint(imp).sha256
    eval_part = dataclasses.asdict(spec.eval)

    def h(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return h(train_part), h(eval_part), {"train": train_part, "eval": eval_part}


# ----------------------------------------------------------------------------------------------
# Running one cell
# ----------------------------------------------------------------------------------------------


class _Stage:
    """Where a cell is: reported to a callback (the cell progress bar)."""

    def __init__(self, callback: Callable[[str, dict], None] | None):
        self.callback = callback

    def __call__(self, name: str, **info) -> None:
        if self.callback is not None:
            with contextlib.suppress(Exception):
                self.callback(name, info)


def _load_split_for(meta: dict, root: str | None, split: str, subset: int | None, seed: int):
    """One split of a checkpoint's dataset, normalised with the checkpoint's statistics."""
    from .data import load_split, stratified_split

    info = meta.get("data") or {}
    spec = meta["model_spec"]
    name = info.get("dataset")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*normalising its test split with its own statistics")
        data = load_split(name, None if name == "digits" else root, split, val_size=info.get("val_size"),
                          seed=int(info.get("split_seed") or 0),
                          image_size=info.get("image_size") or spec.get("image_size"),
                          channels=info.get("in_chans") or spec.get("in_chans"))
    if info.get("classes") is not None and list(info["classes"]) != list(data.classes):
        raise SpikeliteError(f"the {split} split of {name} at {root} has other classes than the checkpoint")
    if info.get("mean") and info.get("std"):
        data = dataclasses.replace(data, mean=tuple(info["mean"]), std=tuple(info["std"]))
    if subset is not None and subset < len(data):
        _, idx = stratified_split(data.labels, subset, seed)
        data = data.subset(idx)
    return data


def _calibration_data(cfg, n: int, seed: int):
    """``n`` un-augmented training images of a cell's dataset (stratified), for pruning."""
    from .data import load_split, stratified_split

    d = cfg.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_split(d.dataset, d.root, "train", val_size=d.val_size, seed=d.split_seed, cache_dir=d.cache_dir,
                          image_size=d.image_size, channels=d.channels)
    if n < len(data):
        _, idx = stratified_split(data.labels, n, seed)
        data = data.subset(idx)
    return data


def _keep_for_schedule(model, schedule: str, calibration, seed: int) -> tuple[list[str], dict | None]:
    """The macro modules a schedule keeps (and the importance ranking when it needed one)."""
    from .prune import PAPER_SCHEDULES, module_importance, removable_modules

    present = [n for n, _ in removable_modules(model)]
    if schedule in PAPER_SCHEDULES:
        return list(PAPER_SCHEDULES[schedule]), None
    m = _SCHEDULE_RE.match(schedule)
    if m is None:  # pragma: no cover - validated with the spec
        raise SpikeliteError(f"unknown prune schedule {schedule!r}")
    if m.group("keep") is not None:
        return [t for t in m.group("keep").split("+") if t], None
    if m.group("remove") is not None:
        gone = set(t for t in m.group("remove").split("+") if t)
        return [n for n in present if n not in gone], None
    k = int(m.group("k"))
    n_remove = int(round(len(present) * k / 100.0)) if m.group("pct") else k
    n_remove = max(1, min(n_remove, len(present) - 1))
    by = m.group("rank")
    rep = module_importance(model, calibration, method="both" if by == "ablation" else "taylor", seed=seed)
    ranking = rep.ranking(by)
    gone = set(ranking[:n_remove])
    info = {f"ranking_{by}": ranking, "taylor": {mi.name: mi.taylor for mi in rep.modules}}
    if by == "ablation":
        info["ablation_loss"] = {mi.name: mi.ablation_loss for mi in rep.modules}
    return [n for n in present if n not in gone], info


def _apply_backend(model, cfg) -> None:
    """Give a rebuilt SNN the LIF backend the recipe asks for (checkpoints do not store it; all backends
    compute the same spikes, ``fused`` just skips torch.compile)."""
    backend = (cfg.snn.neuron or {}).get("backend")
    if not backend:
        return
    from .snn import LIF

    for mod in model.modules():
        if isinstance(mod, LIF):
            mod.backend = backend


def _prepare_pruned(spec: BenchSpec, cell: Cell, cfg, run_dir: Path, stage: _Stage) -> dict:
    """Write ``<cell>/pruned_init.pt``: the source cell's model with the schedule's modules removed."""
    from .prune import prune_model
    from .checkpoint import load_model, save_checkpoint

    cdir = _cell_dir(run_dir, cell.id)
    init = cdir / "pruned_init.pt"
    info_path = cdir / "prune.json"
    if init.exists() and info_path.exists():
        return read_json(info_path) or {}
    stage("prune")
    src_path = _source_checkpoint(spec, run_dir, cell.deps[0], spec.eval.checkpoint)
    model, meta = load_model(src_path)
    _apply_backend(model, cfg)
    cal = _calibration_data(cfg, spec.prune.calibration_size, cell.seed)
    keep, importance = _keep_for_schedule(model, cell.schedule, cal, cell.seed)
    pruned = prune_model(model, keep=keep, calibration=cal, seed=cell.seed)
    from .prune import removable_modules

    kept = [n for n, _ in removable_modules(pruned)]
    removed = [n for n, _ in removable_modules(model) if n not in set(kept)]
    entry = {"keep": kept, "removed": removed, "strategy": cell.schedule, "source": str(src_path)}
    drop = {"model_spec", "kind", "snn", "state_dict", "train_state", "format", "format_version", "spikelite_version",
            "history", "best", "metrics", "epoch"}
    save_meta = {k: v for k, v in meta.items() if k not in drop}
    save_meta["prune"] = entry
    save_meta["source_checkpoint"] = {"path": str(src_path), "kind": meta.get("kind"), "metrics": meta.get("metrics")}
    save_checkpoint(init, pruned.cpu(), meta=save_meta)
    info = {**entry, "importance": importance}
    write_json(info_path, info)
    return info


def _evaluate_cell(spec: BenchSpec, cell: Cell, cfg, ckpt: Path, stage: _Stage) -> tuple[dict, dict]:
    """Accuracy/F1 on the eval split and the energy report of a cell's checkpoint."""
    import torch

    from .snn import SpikingNet
    from .energy import measure
    from .models import model_info
    from .checkpoint import load_model
    from .train import evaluate

    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    stage("evaluate")
    model, meta = load_model(ckpt, device=dev)
    _apply_backend(model, cfg)
    data = _load_split_for(meta, cfg.data.root, spec.eval.split, spec.eval.subset, cell.seed)
    res = evaluate(model, data, batch_size=spec.eval.batch_size, device=dev, seed=cell.seed)
    stage("energy")
    rep = measure(model, data, samples=min(spec.eval.energy_samples, len(data)), profiles=list(spec.eval.profiles),
                  accuracy=res["accuracy"], batch_size=min(spec.eval.batch_size, 128), seed=cell.seed,
                  name=cell.id)
    cnn = model.body if isinstance(model, SpikingNet) else model
    try:
        info = model_info(cnn, image_size=meta["model_spec"].get("image_size"))
        dense_macs, params = info.macs, info.params
    except Exception:  # a model model_info cannot trace: fall back on what measure saw
        dense_macs, params = rep.cnn_macs, rep.params
    metrics = {
        "eval_split": spec.eval.split,
        "eval_n": res["n"],
        "accuracy": res["accuracy"],
        "macro_f1": res["macro_f1"],
        "loss": res["loss"],
        "confusion": res["confusion"].tolist(),
        "params": int(params),
        "dense_macs": float(dense_macs),
    }
    return metrics, rep.to_dict()


def _imported_result(cell: Cell) -> dict:
    """The training facts an imported checkpoint records about itself (its history rows, best epoch, prune entry)."""
    from .checkpoint import read_checkpoint

    info = imported_checkpoint(cell.checkpoint)
    obj = read_checkpoint(cell.checkpoint)
    history = [r for r in (obj.get("history") or []) if isinstance(r, dict)]
    start = next((r for r in history if r.get("epoch") == 0), None)
    finals = [r for r in history if r.get("val_acc") is not None]
    return {
        "imported": {"path": str(cell.checkpoint), "sha256": info.sha256},
        "epochs": int(obj.get("epoch") or max([int(r.get("epoch") or 0) for r in history] or [0])),
        "train_seconds": float(sum((r.get("epoch_seconds") or 0.0) for r in history)),
        "best_val_acc": (obj.get("best") or {}).get("val_acc"),
        "final_val_acc": finals[-1].get("val_acc") if finals else None,
        "start_val_acc": None if start is None else start.get("val_acc"),
        "prune": None if info.keep is None else {"keep": list(info.keep), "removed": list(info.removed or []),
                                                 "strategy": info.strategy},
    }


def _trained(cdir: Path, cfg) -> dict | None:
    """The train summary if the cell's training has completed all its epochs."""
    s = read_json(cdir / "summary.json")
    if s is None or not (cdir / "last.pt").exists():
        return None
    if int(s.get("epochs", -1)) != int(cfg.epochs):
        return None
    return s


def run_cell(spec: BenchSpec, cell: Cell, run_dir: str | os.PathLike, *, dep_fps: dict[str, str] | None = None,
             on_stage: Callable[[str, dict], None] | None = None, threads: int | None = None) -> dict:
    """Train, evaluate and measure one cell; return its result (also ``<cell>/result.json``).

    Never raises for a failing cell: the result then has ``status: failed`` and the error (the
    traceback goes to ``<cell>/error.txt``). KeyboardInterrupt propagates (the cell resumes later).
    """
    import torch

    from .train import train

    run_dir = Path(run_dir)
    cdir = _cell_dir(run_dir, cell.id)
    cdir.mkdir(parents=True, exist_ok=True)
    stage = _Stage(on_stage)
    t0 = time.perf_counter()
    result: dict = {"id": cell.id, "cell": cell.to_dict(), "status": "running", "error": None}
    prev_threads = torch.get_num_threads()
    try:
        cfg = cell_config(spec, cell, run_dir)
        if threads is not None and cfg.threads is None:
            cfg.threads = int(threads)
        train_fp, eval_fp, hashed = _fingerprints(spec, cell, cfg, dep_fps or {})
        result.update(train_fp=train_fp, eval_fp=eval_fp)
        write_json(cdir / "cell.json", {**cell.to_dict(), "train_fp": train_fp, "eval_fp": eval_fp,
                                        "fingerprint_of": hashed})
        with contextlib.suppress(OSError):
            (cdir / "error.txt").unlink()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cell.checkpoint:
            result.update(_imported_result(cell))
            ckpt = Path(cell.checkpoint)
            metrics, energy = _evaluate_cell(spec, cell, cfg, ckpt, stage)
            write_json(cdir / "energy.json", energy)
            result.update(status="ok", checkpoint=str(ckpt), metrics=metrics)
        else:
            prune_info = None
            if cell.variant in ("snn-p", "cnn-p"):
                if not (cdir / "last.pt").exists() or not (cdir / "prune.json").exists():
                    prune_info = _prepare_pruned(spec, cell, cfg, run_dir, stage)
                else:
                    prune_info = read_json(cdir / "prune.json")
            summary = _trained(cdir, cfg)
            if summary is None:
                stage("train", epochs=cfg.epochs, log=str(cdir / "log.csv"))
                summary = train(cfg, resume=True)
            ckpt = (cdir / "best.pt" if spec.eval.checkpoint == "best" and (cdir / "best.pt").exists()
                    else cdir / "last.pt")
            metrics, energy = _evaluate_cell(spec, cell, cfg, ckpt, stage)
            write_json(cdir / "energy.json", energy)
            history = summary.get("final") and _read_history(cdir)
            start = next((r for r in (history or []) if r.get("epoch") == 0), None)
            result.update(
                status="ok",
                checkpoint=str(ckpt),
                epochs=int(summary.get("epochs") or 0),
                train_seconds=float(sum((r.get("epoch_seconds") or 0.0) for r in (history or []))),
                best_val_acc=(summary.get("best") or {}).get("val_acc"),
                final_val_acc=(summary.get("final") or {}).get("val_acc"),
                start_val_acc=None if start is None else start.get("val_acc"),
                prune=None if prune_info is None else {k: prune_info.get(k) for k in ("keep", "removed", "strategy")},
                metrics=metrics,
            )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failed cell is recorded; the grid goes on
        msg = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, SpikeliteError):
            msg = f"{type(exc).__name__}: {msg}"
        result.update(status="failed", error=msg)
        with contextlib.suppress(OSError):
            atomic_write(cdir / "error.txt", traceback.format_exc())
    finally:
        torch.set_num_threads(prev_threads)
    result["seconds"] = time.perf_counter() - t0
    result["machine"] = _machine()
    result["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(cdir / "result.json", result)
    return result


def _machine() -> dict:
    """Where a cell ran (for the report): device, CPU count, torch version, platform."""
    import platform

    import torch

    device = "CPU"
    if torch.cuda.is_available():
        with contextlib.suppress(Exception):
            device = torch.cuda.get_device_name(torch.cuda.current_device())
    else:
        device = f"CPU ({platform.machine()}, no GPU)"
    return {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__.split("+")[0],
            "platform": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def _read_history(cdir: Path) -> list[dict]:
    rows = []
    try:
        with open(cdir / "log.csv", newline="") as f:
            for r in csv.DictReader(f):
                rows.append({k: _num(v) for k, v in r.items()})
    except OSError:
        return []
    return rows


def _num(v):
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _skipped_result(cell: Cell, run_dir: Path, reason: str) -> dict:
    result = {"id": cell.id, "cell": cell.to_dict(), "status": "skipped", "error": reason, "seconds": 0.0,
              "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(_cell_dir(run_dir, cell.id) / "result.json", result)
    return result


# ----------------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------------


class LocalExecutor:
    """Runs one cell at a time in this process (the default)."""

    name = "local"
    capacity = 1

    def __init__(self):
        self._queue: list = []

    def start(self) -> None:
        pass

    def submit(self, spec: BenchSpec, cell: Cell, run_dir: Path, dep_fps: dict, on_stage) -> None:
        self._queue.append((spec, cell, run_dir, dep_fps, on_stage))

    def wait(self) -> tuple[Cell, dict]:
        spec, cell, run_dir, dep_fps, on_stage = self._queue.pop(0)
        return cell, run_cell(spec, cell, run_dir, dep_fps=dep_fps, on_stage=on_stage)

    def running(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        self._queue.clear()


def _ray_cell(spec_dict: dict, cell_dict: dict, run_dir: str, dep_fps: dict, threads: int) -> dict:
    """The body of a Ray task: one cell, in a worker process."""
    spec = build_spec(spec_dict, check_paths=False, check_cells=False)
    return run_cell(spec, Cell.from_dict(cell_dict), run_dir, dep_fps=dep_fps, threads=threads)


class RayExecutor:
    """Every cell a Ray task asking for ``resources.cpus`` CPUs and ``resources.gpus`` GPUs.

    ``address`` connects to a running cluster (``ray start --head`` / ``ray://...``); without it a
    Ray instance is started on this machine (or one already initialised in this process is used).
    The run directory must be on storage every node sees (a shared filesystem) on a multi-node
    cluster: cells read their dependencies' checkpoints from it.
    """

    name = "ray"
    capacity = 1 << 30  # Ray queues tasks by their resources

    def __init__(self, address: str | None = None, resources: Resources | None = None,
                 init_kwargs: dict | None = None):
        self.address = address
        self.resources = resources or Resources()
        self.init_kwargs = dict(init_kwargs or {})
        self._started_here = False
        self._pending: dict = {}
        self._remote = None

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise SpikeliteError("the ray executor needs the ray package: pip install 'spikelite[cluster]'") from None
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kw["address"] = self.address
            try:
                ray.init(**kw)
            except Exception as exc:
                raise SpikeliteError(f"cannot start or reach Ray ({type(exc).__name__}: {exc})") from None
            self._started_here = True
        self._remote = ray.remote(_ray_cell)

    def submit(self, spec: BenchSpec, cell: Cell, run_dir: Path, dep_fps: dict, on_stage) -> None:
        threads = max(1, int(math.floor(self.resources.cpus)))
        ref = self._remote.options(num_cpus=self.resources.cpus, num_gpus=self.resources.gpus,
                                   name=f"spikelite:{cell.id}").remote(
            spec.to_dict(), cell.to_dict(), str(Path(run_dir).resolve()), dict(dep_fps), threads)
        self._pending[ref] = cell

    def wait(self) -> tuple[Cell, dict]:
        import ray

        done, _ = ray.wait(list(self._pending), num_returns=1)
        ref = done[0]
        cell = self._pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the worker died (out of memory, node lost ...)
            msg = f"Ray task failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            result = {"id": cell.id, "cell": cell.to_dict(), "status": "failed", "error": msg, "seconds": 0.0,
                      "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        return cell, result

    def running(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        if self._pending:
            import ray

            for ref in list(self._pending):
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            self._pending.clear()
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


def make_executor(spec: BenchSpec, **kwargs):
    if spec.executor == "ray":
        return RayExecutor(spec.address, spec.resources, **kwargs)
    return LocalExecutor()


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class _Progress:
    """One bar for the grid and one for the running cell (epochs, then evaluation and energy)."""

    def __init__(self, total: int, done: int, enabled: bool, lines: bool, out=None):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.lines = lines
        self.out = out or sys.stdout
        self.grid = tqdm(total=total, initial=done, desc="grid", unit="cell", position=0, disable=not enabled,
                         dynamic_ncols=True, leave=True)
        self.cell = tqdm(total=1, desc="cell", unit="epoch", position=1, disable=not enabled, dynamic_ncols=True,
                         leave=False)
        self._watch: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._epochs = 0

    def write(self, msg: str) -> None:
        if not self.lines:
            return
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=self.out)
        else:
            print(msg, file=self.out, flush=True)

    def cell_started(self, cell: Cell, running: int = 1) -> None:
        with self._lock:
            desc = cell.id if running <= 1 else f"{running} cells running, latest {cell.id}"
            self.cell.reset(total=1)
            self.cell.set_description_str(desc[:60], refresh=False)
            self.cell.set_postfix_str("starting", refresh=True)

    def on_stage(self, name: str, info: dict) -> None:
        with self._lock:
            if name == "train":
                self._stop_watch()
                epochs = max(int(info.get("epochs") or 0), 0)
                self._epochs = epochs
                self.cell.reset(total=epochs + 2)
                self.cell.set_postfix_str("train", refresh=True)
                if info.get("log") and self.enabled:
                    self._start_watch(Path(info["log"]))
            elif name in ("evaluate", "energy"):
                self._stop_watch()
                target = self._epochs + (1 if name == "evaluate" else 2) - 1
                self.cell.n = max(self.cell.n, target)
                self.cell.set_postfix_str(name, refresh=False)
                self.cell.refresh()
            else:
                self.cell.set_postfix_str(name, refresh=True)

    def _start_watch(self, log: Path) -> None:
        self._stop.clear()

        def watch():
            while not self._stop.wait(1.0):
                rows = _read_history(log.parent)
                done = sum(1 for r in rows if (r.get("epoch") or 0) >= 1)
                with self._lock:
                    if done > self.cell.n:
                        self.cell.n = min(done, self._epochs)
                        self.cell.refresh()

        self._watch = threading.Thread(target=watch, daemon=True)
        self._watch.start()

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._stop.set()
            self._watch = None

    def cell_finished(self, cell: Cell, result: dict) -> None:
        with self._lock:
            self._stop_watch()
            self.cell.n = self.cell.total
            self.cell.refresh()
            self.grid.update(1)
        self.write(_result_line(result))

    def close(self) -> None:
        with self._lock:
            self._stop_watch()
        self.cell.close()
        self.grid.close()


def _result_line(result: dict) -> str:
    cid = result.get("id")
    if result.get("status") == "ok":
        m = result.get("metrics") or {}
        e = result.get("_energy_mj")
        return (f"  ok       {cid}: {m.get('eval_split')} acc {100 * m.get('accuracy', 0):.2f}%  "
                f"F1 {m.get('macro_f1', 0):.4f}  {e if e is not None else float('nan'):.4g} mJ  "
                f"({result.get('seconds', 0):.0f} s)")
    if result.get("status") == "done":
        return f"  done     {cid} (finished earlier)"
    return f"  {result.get('status', '?'):<8} {cid}: {result.get('error')}"


# ----------------------------------------------------------------------------------------------
# Results table
# ----------------------------------------------------------------------------------------------

RESULT_COLUMNS = [
    "id", "status", "error", "dataset", "model", "family", "name", "width", "variant", "T", "seed", "schedule",
    "kept", "removed", "depends_on", "imported", "ref_cnn", "epochs", "train_seconds", "seconds", "start_val_acc",
    "best_val_acc", "final_val_acc", "eval_split", "eval_n", "accuracy", "macro_f1", "loss", "params", "dense_macs",
    "acs", "macs", "effective_macs", "neuron_updates", "spikes", "firing_rate", "activation_sparsity",
    "energy_samples", "cnn_accuracy", "accuracy_diff",
]
# then per profile: energy_mj@P, cnn_energy_mj@P, energy_ratio@P (and full_cnn_energy_ratio@P for pruned SNNs)


def _ref_cnn_id(cell: Cell) -> str | None:
    """The CNN an SNN cell is compared with: its own CNN (cnn for snn, cnn-p for snn-p)."""
    if cell.variant == "snn":
        return _cell_id(cell.dataset, cell.model, "cnn", cell.seed)
    if cell.variant == "snn-p":
        return _cell_id(cell.dataset, cell.model, "cnn-p", cell.seed, None, cell.schedule)
    return None


def _cells_in(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "cells"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir())


def collect_results(run_dir: str | os.PathLike, order: list[str] | None = None) -> list[dict]:
    """One flat row per cell found under ``<run>/cells`` (see :data:`RESULT_COLUMNS`), with each SNN
    compared with its own CNN (``cnn_accuracy``, ``cnn_energy_mj@P``, ``energy_ratio@P`` = CNN / SNN
    energy under profile P; pruned SNNs also get ``full_cnn_energy_ratio@P`` against the unpruned CNN)."""
    run_dir = Path(run_dir)
    results, cells, energies = {}, {}, {}
    for cdir in _cells_in(run_dir):
        res = read_json(cdir / "result.json")
        cdef = read_json(cdir / "cell.json")
        if res is None and cdef is None:
            continue
        if res is None:
            res = {"id": cdir.name, "status": "pending", "error": None}
        try:
            cell = Cell.from_dict(res.get("cell") or cdef)
        except (KeyError, TypeError, ValueError):
            continue
        results[cell.id] = res
        cells[cell.id] = cell
        energies[cell.id] = read_json(cdir / "energy.json") if res.get("status") == "ok" else None
    variant_rank = {v: i for i, v in enumerate(VARIANTS)}
    ids = sorted(cells, key=lambda c: (cells[c].dataset.label, cells[c].model.label, cells[c].seed,
                                       cells[c].T or 0, variant_rank.get(cells[c].variant, 9),
                                       cells[c].schedule or "", c))
    if order:
        rank = {cid: i for i, cid in enumerate(order)}
        natural = {cid: i for i, cid in enumerate(ids)}
        ids.sort(key=lambda c: (rank.get(c, len(rank)), natural[c]))
    rows = []
    for cid in ids:
        rows.append(_flat_row(cells[cid], results[cid], energies[cid]))
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        cell = cells[r["id"]]
        if cell.variant not in ("snn", "snn-p") or r["status"] != "ok":
            continue
        ref = by_id.get(r["ref_cnn"]) if r.get("ref_cnn") else None
        full = by_id.get(_cell_id(cell.dataset, cell.model, "cnn", cell.seed))
        profiles = [k.split("@", 1)[1] for k in r if k.startswith("energy_mj@")]
        if ref is not None and ref["status"] == "ok":
            r["cnn_accuracy"] = ref["accuracy"]
            r["accuracy_diff"] = r["accuracy"] - ref["accuracy"]
        for p in profiles:
            snn_e = r.get(f"energy_mj@{p}")
            cnn_e = ref.get(f"energy_mj@{p}") if ref is not None and ref["status"] == "ok" else None
            if cnn_e is None:
                cnn_e = r.get(f"own_cnn_energy_mj@{p}")  # the SNN's own layers, dense, one step
            r[f"cnn_energy_mj@{p}"] = cnn_e
            r[f"energy_ratio@{p}"] = (cnn_e / snn_e) if cnn_e is not None and snn_e else None
            if cell.variant == "snn-p":
                fe = full.get(f"energy_mj@{p}") if full is not None and full["status"] == "ok" else None
                r[f"full_cnn_energy_ratio@{p}"] = (fe / snn_e) if fe is not None and snn_e else None
        if cell.variant == "snn-p" and full is not None and full["status"] == "ok":
            r["full_cnn_accuracy"] = full["accuracy"]
        r["cnn_source"] = ("cell " + r["ref_cnn"]) if ref is not None and ref["status"] == "ok" else \
            "the SNN's own layers for one time step (dense MACs; no accuracy)"
    return rows


def _flat_row(cell: Cell, res: dict, energy: dict | None) -> dict:
    from .models import get_entry

    m = res.get("metrics") or {}
    prune = res.get("prune") or {}
    try:
        family = get_entry(cell.model.name).family
    except SpikeliteError:
        family = None
    row: dict = {
        "id": cell.id, "status": res.get("status"), "error": res.get("error"), "dataset": cell.dataset.label,
        "model": cell.model.label, "family": family, "name": cell.model.name, "width": float(cell.model.width),
        "variant": cell.variant, "T": cell.T, "seed": cell.seed, "schedule": cell.schedule,
        "kept": "+".join(prune.get("keep") or []) or None, "removed": "+".join(prune.get("removed") or []) or None,
        "depends_on": "+".join(cell.deps) or None, "imported": cell.checkpoint,
        "ref_cnn": _ref_cnn_id(cell), "epochs": res.get("epochs"),
        "train_seconds": res.get("train_seconds"), "seconds": res.get("seconds"),
        "start_val_acc": res.get("start_val_acc"), "best_val_acc": res.get("best_val_acc"),
        "final_val_acc": res.get("final_val_acc"), "eval_split": m.get("eval_split"), "eval_n": m.get("eval_n"),
        "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"), "loss": m.get("loss"),
        "params": m.get("params"), "dense_macs": m.get("dense_macs"),
        "cnn_accuracy": None, "accuracy_diff": None,
    }
    if energy:
        for k in ("acs", "macs", "effective_macs", "neuron_updates", "spikes", "firing_rate", "activation_sparsity"):
            row[k] = energy.get(k)
        row["energy_samples"] = energy.get("samples")
        for e in energy.get("energy") or []:
            row[f"energy_mj@{e['profile']}"] = e.get("total_mj")
        for e in energy.get("cnn_energy") or []:
            row[f"own_cnn_energy_mj@{e['profile']}"] = e.get("total_mj")
    else:
        for k in ("acs", "macs", "effective_macs", "neuron_updates", "spikes", "firing_rate", "activation_sparsity",
                  "energy_samples"):
            row[k] = None
    return row


def _table_columns(rows: list[dict]) -> list[str]:
    cols = list(RESULT_COLUMNS)
    extra = []
    for r in rows:
        for k in r:
            if k not in cols and k not in extra and not k.startswith("own_cnn_energy_mj@"):
                extra.append(k)
    profiles = list(dict.fromkeys(k.split("@", 1)[1] for k in extra if "@" in k))
    ordered = []
    for prefix in ("energy_mj", "cnn_energy_mj", "energy_ratio", "full_cnn_energy_ratio"):
        ordered += [f"{prefix}@{p}" for p in profiles if f"{prefix}@{p}" in extra]
    rest = [k for k in extra if k not in ordered]
    return cols + ordered + rest


def write_results(run_dir: str | os.PathLike, rows: list[dict] | None = None) -> dict:
    """Write ``<run>/results.csv`` and, when pyarrow is importable, ``<run>/results.parquet``.

    Returns ``{"csv": path, "parquet": path or None, "note": why Parquet was skipped or None}``."""
    run_dir = Path(run_dir)
    rows = collect_results(run_dir) if rows is None else rows
    cols = _table_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r[c])
                    for c in cols])
    csv_path = run_dir / "results.csv"
    atomic_write(csv_path, buf.getvalue())
    out = {"csv": str(csv_path), "parquet": None, "note": None}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        out["note"] = "pyarrow is not installed: results.parquet not written (pip install 'spikelite[cluster]')"
        return out
    columns = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds and kinds <= {int, float} and float in kinds:
            vals = [None if v is None else float(v) for v in vals]
        elif kinds and not kinds <= {int, float, bool}:
            vals = [None if v is None else str(v) for v in vals]
        columns[c] = vals
    table = pa.table({c: pa.array(v) for c, v in columns.items()})
    pq_buf = pa.BufferOutputStream()
    pq.write_table(table, pq_buf)
    pq_path = run_dir / "results.parquet"
    atomic_write(pq_path, pq_buf.getvalue().to_pybytes())
    out["parquet"] = str(pq_path)
    return out


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


def _finished(run_dir: Path, cell: Cell, train_fp: str, eval_fp: str) -> dict | None:
    res = read_json(_cell_dir(run_dir, cell.id) / "result.json")
    if res and res.get("status") == "ok" and res.get("train_fp") == train_fp and res.get("eval_fp") == eval_fp:
        return res
    return None


def _plan(spec: BenchSpec, cells: list[Cell], run_dir: Path) -> tuple[dict, list[str]]:
    """Train fingerprints of every cell, and the cells whose folder holds training of another recipe."""
    fps: dict[str, str] = {}
    evfps: dict[str, str] = {}
    conflicts = []
    for cell in cells:
        cfg = cell_config(spec, cell, run_dir)
        tfp, efp, hashed = _fingerprints(spec, cell, cfg, fps)
        fps[cell.id], evfps[cell.id] = tfp, efp
        cdir = _cell_dir(run_dir, cell.id)
        old = read_json(cdir / "cell.json")
        if old is not None and old.get("train_fp") != tfp and ((cdir / "last.pt").exists()
                                                                or (cdir / "pruned_init.pt").exists()):
            before = _flatten((old.get("fingerprint_of") or {}).get("train") or {})
            now = _flatten(hashed["train"])
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            conflicts.append(f"{cdir} was trained with other settings (changed: {', '.join(changed[:6]) or '?'})")
    return {"train": fps, "eval": evfps}, conflicts


def run_bench(spec: BenchSpec, *, progress: bool | None = None, quiet: bool = False, executor=None,
              out=None) -> dict:
    """Run every cell of ``spec`` not finished yet; write the results table (the report is
    :func:`spikelite.report.build_report`'s, on the run folder).

    Returns ``{"run_dir", "cells": [result...], "counts": {...}, "results": {...}}``.
    A failed cell is recorded and the others go on; cells depending on it are recorded as skipped.
    """
    run_dir = Path(spec.out)
    cells = expand_grid(spec)
    if not cells:
        raise SpikeliteError("the grid is empty (no models x datasets x variants)")
    fps, conflicts = _plan(spec, cells, run_dir)
    if conflicts:
        raise _problem_error(conflicts + ["use another --out, or delete those cell folders to train them again"],
                             "the run directory holds cells trained with other settings")
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    atomic_write(run_dir / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    stream = out or sys.stdout
    if progress is None:
        progress = (not quiet) and sys.stderr.isatty()
    results: dict[str, dict] = {}
    todo: list[Cell] = []
    for cell in cells:
        fin = _finished(run_dir, cell, fps["train"][cell.id], fps["eval"][cell.id])
        if fin is not None:
            results[cell.id] = fin
        else:
            todo.append(cell)
    bar = _Progress(len(cells), len(cells) - len(todo), enabled=progress, lines=not quiet, out=stream)
    if not quiet:
        bar.write(f"bench {spec.name}: {len(cells)} cells ({len(cells) - len(todo)} finished earlier), executor "
                  f"{spec.executor if executor is None else executor.name}, run directory {run_dir}")
    ex = executor or make_executor(spec)
    t0 = time.perf_counter()
    try:
        if todo:
            ex.start()
        pending = list(todo)
        while pending or ex.running():
            progressed = False
            for cell in list(pending):
                states = [results.get(d, {}).get("status") if d in results else None for d in cell.deps]
                bad = [d for d, s in zip(cell.deps, states) if s in ("failed", "skipped")]
                if bad:
                    pending.remove(cell)
                    res = _skipped_result(cell, run_dir, f"needs {', '.join(bad)}, which "
                                          f"{'failed' if results[bad[0]]['status'] == 'failed' else 'was skipped'}")
                    results[cell.id] = res
                    bar.cell_finished(cell, res)
                    progressed = True
                    continue
                if all(s == "ok" for s in states) and ex.running() < ex.capacity:
                    pending.remove(cell)
                    dep_fps = {d: fps["train"][d] for d in cell.deps}
                    bar.cell_started(cell, ex.running() + 1)
                    ex.submit(spec, cell, run_dir, dep_fps, bar.on_stage)
                    progressed = True
            if ex.running():
                cell, res = ex.wait()
                res["_energy_mj"] = _energy_of(run_dir, cell.id, spec.eval.profiles[0])
                results[cell.id] = res
                bar.cell_finished(cell, res)
                res.pop("_energy_mj", None)
                write_results(run_dir, collect_results(run_dir, order=[c.id for c in cells]))
            elif pending and not progressed:  # pragma: no cover - dependencies outside the grid
                for cell in pending:
                    results[cell.id] = _skipped_result(cell, run_dir, "its dependencies are not in the grid")
                pending = []
    finally:
        ex.shutdown()
        bar.close()
    rows = collect_results(run_dir, order=[c.id for c in cells])
    written = write_results(run_dir, rows)
    counts: dict[str, int] = {}
    for c in cells:
        s = results.get(c.id, {}).get("status", "missing")
        counts[s] = counts.get(s, 0) + 1
    summary = {"run_dir": str(run_dir), "cells": [results[c.id] for c in cells if c.id in results], "counts": counts,
               "results": written, "seconds": time.perf_counter() - t0}
    return summary


def _energy_of(run_dir: Path, cell_id: str, profile: str) -> float | None:
    e = read_json(_cell_dir(run_dir, cell_id) / "energy.json")
    if not e:
        return None
    for b in e.get("energy") or []:
        if b.get("profile") == profile:
            return b.get("total_mj")
    return None
