"""The benchmark spec: :class:`BenchSpec` and its entries (models, datasets, pruning, evaluation, resources),
parsed and checked from YAML (:func:`build_spec`, :func:`load_spec`), imported checkpoints, the pruning-schedule
grammar."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import re
from pathlib import Path

from ..errors import SpikeliteError

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
class BenchModel:
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
        from ..models import get_entry

        return get_entry(self.name).family


def _dataset_keys() -> tuple[str, ...]:
    """The training recipe's data keys a dataset entry may set (besides name, root and label): the fields
    of :class:`spikelite.train.DataConfig` but ``dataset`` and ``root``."""
    from ..train import DataConfig

    return tuple(f.name for f in dataclasses.fields(DataConfig) if f.name not in ("dataset", "root"))


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

    ``schedules``: one pruned cell per entry, each a schedule of :mod:`spikelite.prune.schedules` (the
    grammar ``spikelite prune --strategy`` takes too): a paper schedule (``head-1`` ... ``ref-2``,
    SqueezeNet only; other families use ``fallback`` instead), ``ablation-K`` / ``ablation-P%``,
    ``taylor-K`` / ``taylor-P%`` (ranked once on ``calibration_size`` training images),
    ``keep:a+b+...`` or ``remove:a+b+...``. Cells record the canonical label.
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
    models: list = dataclasses.field(default_factory=list)  # BenchModel
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


def _parse_model(item, i: int, problems: list[str]) -> BenchModel | None:
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
    from ..models import get_entry

    try:
        get_entry(name)
    except SpikeliteError as exc:
        problems.append(f"{where}: {exc}")
        return None
    return BenchModel(name, float(width), dict(options), label, {str(k): str(v) for k, v in checkpoints.items()},
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
        from ..prune import PAPER_SCHEDULES

        if self.name.startswith("squeezenet"):  # the paper's schedules are SqueezeNet keep sets
            for name, keep in PAPER_SCHEDULES.items():
                if tuple(keep) == tuple(self.keep):
                    return name
        return "keep:" + "+".join(self.keep)


_IMPORT_CACHE: dict = {}


def imported_checkpoint(path: str | os.PathLike) -> ImportedCheckpoint:
    """Read (once per file version) the facts of a checkpoint a spec imports; a SpikeliteError if unreadable."""
    from ..checkpoint import read_checkpoint

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
        from ..models import macro_modules

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
    valid = ("name", "root", "label", *_dataset_keys())
    unknown = [k for k in item if k not in valid]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; valid keys: "
                        f"{', '.join(valid)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"{where} has no dataset name")
        return None
    from ..data import canonical_name

    try:
        canon = canonical_name(name)
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
    options = {k: item[k] for k in _dataset_keys() if k in item}
    return DatasetEntry(canon, root, options, str(label))


def _check_dataset_root(ds: DatasetEntry, where: str, problems: list[str]) -> None:
    from ..data import FASHION_MNIST_SYSTEM_ROOT

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


def resolve_schedule(spec: BenchSpec, schedule: str, model: BenchModel) -> str:
    """The canonical label of the schedule a model actually gets (:func:`spikelite.prune.parse_schedule`,
    keep/remove names resolved to the model's own): paper schedules apply to SqueezeNet only, the other
    families get ``fallback`` instead."""
    from ..prune.schedules import for_model, parse_schedule

    sched = parse_schedule(schedule)
    if sched.kind == "paper" and model.family != "squeezenet":
        sched = parse_schedule(spec.prune.fallback)
    return for_model(sched, model.name).label


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


def parse_spec(raw: dict, *, roots: dict[str, str] | None = None, check_paths: bool = True
               ) -> tuple[BenchSpec, list[str]]:
    """A :class:`BenchSpec` from a spec mapping and the problems found in it (collected, not raised);
    :func:`spikelite.bench.build_spec` adds the checks that need the grid and raises them all at once."""
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
    from ..prune.schedules import parse_schedule

    for where, s in [*((f"prune.schedules[{i}]", s) for i, s in enumerate(spec.prune.schedules)),
                     ("prune.fallback", spec.prune.fallback)]:
        try:
            sched = parse_schedule(s)
        except SpikeliteError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if where == "prune.fallback" and sched.kind == "paper":
            problems.append(f"prune.fallback {spec.prune.fallback!r} is a SqueezeNet schedule; the fallback serves "
                            "the other families (e.g. ablation-25%)")
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
        from ..energy import resolve_profiles

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
    return spec, problems
