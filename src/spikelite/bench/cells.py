"""The grid and one cell: :func:`expand_grid` (models x datasets x variants x T x seeds, with dependencies),
:func:`cell_config` (the training recipe of a cell), fingerprints, and :func:`run_cell` (train, prune,
evaluate and measure one cell, writing everything into its folder)."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

from .._io import atomic_write, parse_value, read_json, read_yaml_mapping, set_dotted, write_json
from .._runtime import resolve_device
from ..errors import SpikeliteError
from .spec import (
    BENCH_RECIPE_DEFAULTS,
    CNN_VARIANTS,
    BenchSpec,
    DatasetEntry,
    BenchModel,
    _flatten,
    _problem_error,
    _safe,
    imported_checkpoint,
    parse_spec,
    resolve_schedule,
)

# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    """One trained and measured network of the grid."""

    id: str
    variant: str
    model: BenchModel
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
        return cls(id=d["id"], variant=d["variant"], model=BenchModel(**d["model"]),
                   dataset=DatasetEntry(**d["dataset"]), seed=int(d["seed"]), T=d.get("T"),
                   schedule=d.get("schedule"), deps=list(d.get("deps") or []), checkpoint=d.get("checkpoint"))


def _cell_id(ds: DatasetEntry, m: BenchModel, variant: str, seed: int, T: int | None = None,
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
    """The checkpoint a cell starts from: its source cell's (best or last), or the file that cell imports;
    an absolute path (checkpoints record it: they must stay usable from any directory)."""
    imported = _imported_dep(spec, dep_id)
    if imported is not None:
        return Path(os.path.abspath(imported))
    d = _cell_dir(Path(os.path.abspath(run_dir)), dep_id)
    best = d / "best.pt"
    if which == "best" and best.exists():
        return best
    return d / "last.pt"


def cell_config(spec: BenchSpec, cell: Cell, run_dir: Path):
    """The :class:`spikelite.train.TrainConfig` a cell trains with.

    Layers, later ones winning: the bench defaults (quiet, no TensorBoard), ``spec.recipe``, the
    variant's section, the dataset entry's options, then what the grid owns (mode, init_from, out,
    seed, model, dataset, root, T). Pruned variants start from ``<cell>/pruned_init.pt``. The paths it
    sets are absolute.
    """
    from ..train import load_config

    raw: dict = copy.deepcopy(BENCH_RECIPE_DEFAULTS)
    for k, v in _flatten(spec.recipe).items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    for k, v in _flatten(spec.variant_recipes.get(cell.variant, {})).items():
        set_dotted(raw, k, v, example="eval.energy_samples")
    cdir = _cell_dir(Path(os.path.abspath(run_dir)), cell.id)
    ov: dict = {
        "mode": "cnn" if cell.variant in CNN_VARIANTS else "snn",
        "out": str(cdir),
        "seed": cell.seed,
        "model.name": cell.model.name,
        "model.width": cell.model.width,
        "model.options": dict(cell.model.options),
        "data.dataset": cell.dataset.name,
        "data.root": None if cell.dataset.root is None else os.path.abspath(os.path.expanduser(cell.dataset.root)),
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
    from ..train import RUNTIME_KEYS, recipe_view

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
        changed = _changed_defaults(cell.model)
        if changed:  # a cell trained before a default changed is not the cell the spec asks for now
            train_part["model_defaults"] = changed
        for d in cell.deps:  # a source that is an imported file: its content, not its path
            imp = _imported_dep(spec, d)
            if imp is not None:
                train_part["deps"][d] = imported_checkpoint(imp).sha256
    eval_part = dataclasses.asdict(spec.eval)

    def h(obj) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return h(train_part), h(eval_part), {"train": train_part, "eval": eval_part}


def _changed_defaults(model: BenchModel) -> dict:
    """The options of ``model`` whose default changed (the registry's ``earlier_defaults``) and that the
    spec leaves to that default, at their current default. Part of a trained cell's fingerprint only
    when not empty, so the fingerprints of other models stay as they were."""
    from ..models import get_entry

    entry = get_entry(model.name)
    now = {f.name: f.default for f in dataclasses.fields(entry.options)}
    return {k: now[k] for k in entry.earlier_defaults if k not in model.options and k in now}


def build_spec(raw: dict, *, roots: dict[str, str] | None = None, check_paths: bool = True,
               check_cells: bool = True) -> BenchSpec:
    """A validated :class:`BenchSpec` from a spec mapping. Every problem is collected and reported in
    one :class:`SpikeliteError` before anything runs: the spec's own (:func:`parse_spec`), and that the
    recipe of every (variant, model, dataset) is a valid training recipe and the model fits the dataset's
    image size (checked by building it once)."""
    spec, problems = parse_spec(raw, roots=roots, check_paths=check_paths)
    if check_cells and spec.models and spec.datasets and spec.seeds:
        _check_cells(spec, problems)
    if problems:
        raise _problem_error(problems)
    return spec


def _check_cells(spec: BenchSpec, problems: list[str]) -> None:
    from ..models import create_model
    from ..prune.schedules import check_schedule

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
                for s in spec.prune.schedules:
                    try:
                        r = resolve_schedule(spec, s, m)
                    except SpikeliteError:  # unreadable: reported with the spec
                        continue
                    for p in check_schedule(r, m.name):
                        problems.append(f"prune.schedules for {m.label}: {p}")


def load_spec(path: str | os.PathLike | None = None, *, overrides: dict | list | None = None,
              base: dict | None = None, roots: dict[str, str] | None = None, check_paths: bool = True) -> BenchSpec:
    """A :class:`BenchSpec` from a YAML file (or ``base``), with dotted-key ``overrides``
    (``{"eval.energy_samples": 64}`` or ``["recipe.epochs=1", ...]``) and data ``roots``
    (``{"cifar10": "/data/cifar10"}``). Invalid input raises one SpikeliteError listing every problem."""
    raw: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        raw.update(read_yaml_mapping(path, "spec file"))
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
    """One split of a checkpoint's dataset (:func:`~spikelite.checkpoint.checkpoint_data`: normalised with
    the checkpoint's statistics, checked against its classes), ``subset`` images of it (stratified)."""
    from ..checkpoint import checkpoint_data
    from ..data import stratified_split

    data, _ = checkpoint_data(meta, f"the checkpoint of {meta['model_spec'].get('name')}", split, data_root=root)
    if subset is not None and subset < len(data):
        _, idx = stratified_split(data.labels, subset, seed)
        data = data.subset(idx)
    return data


def _calibration_data(cfg, n: int, seed: int):
    """``n`` un-augmented training images of a cell's dataset (stratified), for pruning."""
    from ..data import load_split, stratified_split

    d = cfg.data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_split(d.dataset, d.root, "train", val_size=d.val_size, seed=d.split_seed, cache_dir=d.cache_dir,
                          image_size=d.image_size, channels=d.channels)
    if n < len(data):
        _, idx = stratified_split(data.labels, n, seed)
        data = data.subset(idx)
    return data


def _apply_backend(model, cfg) -> None:
    """Give a rebuilt SNN the LIF backend the recipe asks for (checkpoints do not store it; all backends
    compute the same spikes, ``fused`` just skips torch.compile)."""
    backend = (cfg.snn.neuron or {}).get("backend")
    if not backend:
        return
    from ..snn import LIF

    for mod in model.modules():
        if isinstance(mod, LIF):
            mod.backend = backend


def _prepare_pruned(spec: BenchSpec, cell: Cell, cfg, run_dir: Path, stage: _Stage) -> dict:
    """Write ``<cell>/pruned_init.pt``: the source cell's model with the schedule's modules removed."""
    from ..checkpoint import load_model, save_checkpoint
    from ..prune import keep_for_schedule, prune_model

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
    keep, importance = keep_for_schedule(model, cell.schedule, cal, cell.seed)
    pruned = prune_model(model, keep=keep, calibration=cal, seed=cell.seed)
    from ..prune import removable_modules

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
    from ..checkpoint import load_model
    from ..energy import measure
    from ..models import model_info
    from ..snn import SpikingNet
    from ..train import evaluate

    dev = resolve_device(cfg.device)
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
    from ..checkpoint import read_checkpoint

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

    from ..train import train

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
