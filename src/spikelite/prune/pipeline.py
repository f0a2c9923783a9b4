"""Pruning a checkpoint: :func:`run_pruning` prunes, fine-tunes and evaluates the candidates of a
strategy and writes the pruned checkpoint and its tables.

See docs/pruning.md.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write, run_lock
from .._runtime import resolve_device
from ..errors import SpikeliteError
from ..models.surgery import FAMILY_RULES, resolve_modules
from .gates import _as_batches
from .importance import ImportanceReport, module_importance
from .removal import prune_model
from .schedules import keep_for_schedule
from .strategies import (Candidate, PruneConfig, PruneResult, _kept_cell, candidate_table, greedy_search,
                         parse_energy_budget)
from .subject import PAPER_SCHEDULES, _subject

# ----------------------------------------------------------------------------------------------
# Strategies: candidates, fine-tuning, evaluation
# ----------------------------------------------------------------------------------------------


def _load_data(meta: dict, data_root: str | None, dataset: str | None, cfg: PruneConfig):
    from ..checkpoint import checkpoint_data
    from ..data import stratified_split

    info = meta.get("data") or {}
    name = dataset or info.get("dataset")
    if not name:
        raise SpikeliteError("the checkpoint does not name its dataset; pass --dataset")
    root = data_root if data_root is not None else (None if dataset and dataset != info.get("dataset")
                                                    else info.get("root"))
    if name == "digits":
        root = None
    elif root is None:
        raise SpikeliteError(f"where is {name}? pass --data DIR (the checkpoint records no dataset folder)")
    elif not Path(root).expanduser().exists():
        raise SpikeliteError(f"--data {root!r} does not exist")
    train_data, _ = checkpoint_data(meta, "the checkpoint", "train", data_root=root, dataset=name)
    val_data, _ = checkpoint_data(meta, "the checkpoint", "val", data_root=root, dataset=name)
    if cfg.val_subset is not None and cfg.val_subset < len(val_data):
        _, idx = stratified_split(val_data.labels, cfg.val_subset, cfg.seed)
        val_data = val_data.subset(idx)
    n_cal = min(cfg.calibration_size, len(train_data))
    if n_cal < len(train_data):
        _, idx = stratified_split(train_data.labels, n_cal, cfg.seed)
        cal = train_data.subset(idx)
    else:
        cal = train_data
    return name, root, val_data, cal


class _Pipeline:
    """Candidates: prune, fine-tune (spikelite.train.train), evaluate (accuracy, params, energy)."""

    def __init__(self, ckpt: str, meta: dict, cfg: PruneConfig, data_root, dataset, runs_dir: Path, device):
        self.ckpt, self.meta, self.cfg = ckpt, meta, cfg
        self.runs_dir = runs_dir
        self.device = device
        self.dataset, self.root, self.val_data, self.cal_data = _load_data(meta, data_root, dataset, cfg)
        self.cal_batches = None
        self.kind = meta["kind"]
        self.image_size = int(meta["model_spec"]["image_size"])

    def log(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(msg, flush=True)

    def calibration(self):
        if self.cal_batches is None:
            self.cal_batches = _as_batches(self.cal_data, 64, self.device)
        return self.cal_batches

    def importance(self, model: nn.Module, ablation: bool) -> ImportanceReport:
        return module_importance(model, self.calibration(), method="both" if ablation else "taylor", seed=self.cfg.seed)

    def measure(self, model: nn.Module, label: str, kept: list[str], removed: list[str], acc_pruned=None,
                ft_seconds: float = 0.0, checkpoint: str | None = None) -> Candidate:
        from ..energy import measure
        from ..models import model_info
        from ..train import evaluate

        model.to(self.device).eval()
        res = evaluate(model, self.val_data, batch_size=self.cfg.eval_batch_size, device=self.device,
                       seed=self.cfg.seed)
        info = model_info(model, image_size=self.image_size)
        rep = measure(model, self.val_data, samples=self.cfg.energy_samples, profiles=[self.cfg.profile],
                      seed=self.cfg.seed)
        return Candidate(label, list(kept), list(removed), res["accuracy"], acc_pruned, info.params, info.macs,
                         rep.energy_mj, rep.acs, rep.macs, ft_seconds, checkpoint=checkpoint)

    def finetune(self, model: nn.Module, label: str, prune_entry: dict) -> tuple[nn.Module, dict, float, str | None]:
        """Fine-tune ``model`` with the checkpoint's recipe for ``finetune_epochs`` via spikelite.train.train."""
        from ..checkpoint import load_model, save_checkpoint
        from ..train import train

        if self.cfg.finetune_epochs == 0:
            return model, self.meta, 0.0, None
        run = self.runs_dir / re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
        if run.exists():
            shutil.rmtree(run)
        run.mkdir(parents=True)
        init = run / "pruned_init.pt"
        save_checkpoint(init, model.cpu(), meta=_meta_for_save(self.meta, prune_entry))
        tc = _finetune_recipe(self.meta, self.cfg, init, run, self.dataset, self.root)
        t0 = time.perf_counter()
        train(tc)
        seconds = time.perf_counter() - t0
        ft_model, ft_meta = load_model(run / "last.pt", device=self.device)
        return ft_model, ft_meta, seconds, str(run / "last.pt")

    def candidate(self, start: nn.Module, label: str, keep=None, remove=None) -> tuple[nn.Module, Candidate, dict]:
        from ..train import evaluate

        pruned = prune_model(start, keep=keep, remove=remove, calibration=self.calibration(), seed=self.cfg.seed)
        subj = _subject(pruned)
        kept = list(subj.kept)
        removed = [n for n, _ in subj.macro if n not in set(kept)]
        pruned.to(self.device).eval()
        acc_pruned = evaluate(pruned, self.val_data, batch_size=self.cfg.eval_batch_size, device=self.device,
                              seed=self.cfg.seed)["accuracy"]
        entry = {"keep": kept, "removed": removed}
        ft_model, ft_meta, seconds, ckpt = self.finetune(pruned, label, entry)
        cand = self.measure(ft_model, label, kept, removed, acc_pruned, seconds, ckpt)
        self.log(f"  {label}: keeps {_kept_cell(kept, removed, subj.family)}; accuracy {100 * acc_pruned:.2f}% "
                 "pruned -> "
                 f"{100 * cand.accuracy:.2f}% after {self.cfg.finetune_epochs} epoch(s); {cand.params:,} params; "
                 f"{cand.energy_mj:.4g} mJ")
        return ft_model, cand, ft_meta


def _base_recipe(meta: dict) -> dict:
    cfg = meta.get("config")
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    info = meta.get("data") or {}
    return {"data": {"dataset": info.get("dataset"), "root": info.get("root"), "val_size": info.get("val_size"),
                     "split_seed": info.get("split_seed", 0), "image_size": info.get("image_size")}}


def _finetune_recipe(meta: dict, cfg: PruneConfig, init: Path, run: Path, dataset: str, root: str | None):
    """The TrainConfig a candidate is fine-tuned with: the checkpoint's recipe, from ``init`` into ``run``."""
    from ..train import load_config

    overrides = {
        "init_from": str(init), "mode": meta["kind"], "epochs": cfg.finetune_epochs, "out": str(run),
        "quiet": True, "tensorboard": False, "data.dataset": dataset, "data.root": root,
        "seed": cfg.seed, "device": cfg.device, "threads": cfg.threads,
    }
    if cfg.threads is None:
        overrides.pop("threads")
    return load_config(None, list(cfg.overrides), base=_with_overrides(_base_recipe(meta), overrides))


def _check_teacher(meta: dict, cfg: PruneConfig, checkpoint, dataset: str | None) -> None:
    """Fail before any work when fine-tuning distils from a teacher (the checkpoint's recipe, or --set)
    that is not on disk; a teacher the fine-tuning does not use (distill.weight 0, no fine-tuning) may
    be missing."""
    if cfg.finetune_epochs == 0 or cfg.strategy == "importance":
        return
    name = dataset or (meta.get("data") or {}).get("dataset")
    if not name:  # the pipeline asks for --dataset
        return
    tc = _finetune_recipe(meta, cfg, Path("pruned_init.pt"), Path("runs"), name, None)
    teacher = tc.distill.teacher
    if teacher and tc.distill.weight > 0 and teacher != "source" and not Path(teacher).is_file():
        raise SpikeliteError(
            f"fine-tuning distils from {teacher} (distill.teacher in the recipe of {checkpoint}), which is not on "
            "disk: pass --set distill.teacher=PATH, or --set distill.weight=0 to fine-tune without distillation")


def _run_origin(checkpoint, meta: dict) -> Path | None:
    """The directory the run that wrote an older checkpoint was started in: the checkpoint's folder with
    the recipe's relative ``out`` taken off its end. Checkpoints written before spikelite recorded absolute
    paths record ``init_from``, ``distill.teacher`` and ``source_checkpoint`` relative to it. None when
    ``out`` is absolute or does not end the checkpoint's folder (the file was moved)."""
    out = (meta.get("config") or {}).get("out")
    if not isinstance(out, str) or not out or os.path.isabs(out):
        return None
    tail = Path(os.path.normpath(out)).parts
    folder = Path(os.path.abspath(checkpoint)).parent.parts
    if ".." in tail or len(tail) >= len(folder) or folder[-len(tail):] != tail:
        return None
    return Path(*folder[:-len(tail)])


def _absolute_records(meta: dict, checkpoint) -> dict:
    """``meta`` with the relative paths an older checkpoint records made absolute, from the directory its
    run started in (:func:`_run_origin`) where the file is found there; other paths stay as they are."""
    origin = _run_origin(checkpoint, meta)
    if origin is None:
        return meta

    def fix(path):
        if not isinstance(path, str) or not path or path == "source" or os.path.isabs(path):
            return path
        there = origin / path
        return str(there) if there.exists() else path

    meta = copy.deepcopy(meta)
    config = meta.get("config")
    if isinstance(config, dict):
        config["init_from"] = fix(config.get("init_from"))
        if isinstance(config.get("distill"), dict):
            config["distill"]["teacher"] = fix(config["distill"].get("teacher"))
    for key in ("source_checkpoint", "teacher_checkpoint"):
        if isinstance(meta.get(key), dict):
            meta[key]["path"] = fix(meta[key].get("path"))
    return meta


def _with_overrides(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        node = out
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _meta_for_save(meta: dict, prune_entry: dict) -> dict:
    # model_spec comes from the pruned model itself (it carries keep); never the source's
    drop = {"model_spec", "kind", "snn", "state_dict", "train_state", "format", "format_version", "spikelite_version"}
    out = {k: v for k, v in meta.items() if k not in drop}
    out["prune"] = prune_entry
    return out


def _output_paths(out: str | os.PathLike) -> dict[str, Path]:
    p = Path(out)
    stem = p.with_suffix("") if p.suffix == ".pt" else p
    return {"checkpoint": p, "markdown": Path(f"{stem}.table.md"), "csv": Path(f"{stem}.table.csv"),
            "json": Path(f"{stem}.json"), "runs": Path(f"{stem}.runs")}


def run_pruning(checkpoint: str | os.PathLike, config: PruneConfig, out: str | os.PathLike, *,
                data_root: str | None = None, dataset: str | None = None, overwrite: bool = False) -> PruneResult:
    """Prune a checkpoint's model with ``config.strategy`` and write the results.

    Writes ``out`` (the chosen pruned checkpoint; its ``prune`` entry and ``model_spec["keep"]``
    record the kept modules), ``<out stem>.table.md`` / ``.table.csv`` (one row per candidate, like
    the paper's Table 3), ``<out stem>.json`` (everything, with the importance report) and the
    fine-tuning runs under ``<out stem>.runs/``. ``strategy="importance"`` writes only the reports.
    One process at a time writes these: a second ``run_pruning`` to the same ``out`` fails at once
    (the lock file ``.<out name>.lock`` beside ``out``, see :func:`~spikelite._io.run_lock`).
    """
    if not isinstance(config, PruneConfig):
        raise SpikeliteError(f"run_pruning takes a PruneConfig, got {type(config).__name__}")
    paths = _output_paths(out)
    with run_lock(paths["checkpoint"].parent, "spikelite prune", name=f".{paths['checkpoint'].name}.lock",
                  instead="choose another -o"):
        return _run_pruning(checkpoint, config, paths, data_root, dataset, overwrite)


def _run_pruning(checkpoint, cfg: PruneConfig, paths: dict[str, Path], data_root, dataset,
                 overwrite: bool) -> PruneResult:
    from ..checkpoint import load_model, save_checkpoint

    t_start = time.perf_counter()
    if paths["runs"].exists() and any(paths["runs"].iterdir()):
        if not overwrite:
            raise SpikeliteError(f"{paths['runs']} already holds fine-tuning runs from an earlier prune; pass "
                                 "--overwrite or choose another -o")
    model, meta = load_model(checkpoint)
    meta = _absolute_records(meta, checkpoint)
    subj = _subject(model)
    family = subj.family
    present = list(subj.kept)
    # validate the strategy against this model before any heavy work
    schedule_keep = None
    sched = cfg.schedule  # one candidate's schedule (a paper name, keep:/remove:, ablation-/taylor-), or None
    keep_names, remove_names = cfg.keep, cfg.remove  # --keep a,b is the same thing as keep:a+b
    if sched is not None and sched.kind == "keep":
        keep_names = list(sched.names)
    elif sched is not None and sched.kind == "remove":
        remove_names = list(sched.names)
    if cfg.strategy in PAPER_SCHEDULES or cfg.strategy == "paper":
        if family != "squeezenet":
            raise SpikeliteError(f"the paper's named schedules ({', '.join(PAPER_SCHEDULES)}) keep SqueezeNet fire "
                                 f"modules; {subj.label} is a {family}: use --strategy keep or greedy")
        if subj.spec.get("keep") is not None:
            raise SpikeliteError(f"{checkpoint} is already pruned (keeps {', '.join(present)}); the paper's schedules "
                                 "start from the full SqueezeNet")
        if cfg.strategy != "paper":
            schedule_keep = list(PAPER_SCHEDULES[cfg.strategy])
    if keep_names is not None or remove_names is not None:
        if keep_names is not None:
            want = set(resolve_modules(keep_names, subj.macro, family, subj.label))
            gone = [n for n in want if n not in present]
            if gone:
                raise SpikeliteError(f"{', '.join(sorted(gone))} already removed in {checkpoint}; present: "
                                     f"{', '.join(present)}")
            if not [n for n in present if n in want]:
                raise SpikeliteError("keep names no present module: removing every module leaves no network")
        else:
            rm = set(resolve_modules(remove_names, subj.macro, family, subj.label))
            if not [n for n in present if n not in rm]:
                raise SpikeliteError(f"removing {', '.join(sorted(rm))} would remove every macro module of "
                                     f"{subj.label}; keep at least one")
    if (cfg.strategy == "greedy" or (sched is not None and sched.ranked)) and len(present) <= 1:
        raise SpikeliteError(f"{subj.label} has nothing removable: only {', '.join(present)} is left")
    if sched is not None and sched.ranked and sched.count is not None and sched.count >= len(present):
        raise SpikeliteError(f"{sched.label} removes {sched.count} modules but {subj.label} in {checkpoint} has only "
                             f"{len(present)} ({', '.join(present)}); keep at least one")
    _check_teacher(meta, cfg, checkpoint, dataset)
    if overwrite and paths["runs"].is_dir():  # only the runs folder an earlier prune to this -o wrote
        shutil.rmtree(paths["runs"])

    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = resolve_device(cfg.device)
        pipe = _Pipeline(str(checkpoint), meta, cfg, data_root, dataset, paths["runs"], device)
        model.to(device).eval()
        pipe.log(f"pruning {subj.label} ({meta['kind'].upper()}, {len(present)} macro modules present) from "
                 f"{checkpoint}: strategy {cfg.strategy}; {len(pipe.cal_data)} calibration and "
                 f"{len(pipe.val_data)} validation images")
        baseline = pipe.measure(model, "unpruned", present, [n for n, _ in subj.macro if n not in set(present)])
        baseline.status = "source"
        pipe.log(f"  unpruned: accuracy {100 * baseline.accuracy:.2f}%; {baseline.params:,} params; "
                 f"{baseline.energy_mj:.4g} mJ")
        importance = pipe.importance(model, cfg.ablation or cfg.rank_by == "ablation"
                                     or (sched is not None and sched.kind == "ablation"))
        pipe.log(importance.table())
        candidates: list[Candidate] = []
        models: dict[str, tuple[nn.Module, dict]] = {}
        steps: list[dict] = []
        chosen = None
        stop = ""
        if cfg.strategy == "keep" or sched is not None:
            label = cfg.strategy  # keep, or the schedule's canonical label
            keep, remove = schedule_keep or keep_names, remove_names
            if sched is not None and sched.ranked:  # rank once on the calibration data, remove the least important
                keep, info = keep_for_schedule(model, sched, pipe.calibration(), cfg.seed, importance=importance)
                remove = None
                steps.append({"step": 1, "present": list(present), "ranking": info[f"ranking_{sched.kind}"]})
            m, c, mt = pipe.candidate(model, label, keep=keep, remove=remove)
            candidates.append(c)
            models[label] = (m, mt)
            chosen = c
            stop = "one candidate"
        elif cfg.strategy == "paper":
            for name, keep in PAPER_SCHEDULES.items():
                m, c, mt = pipe.candidate(model, name, keep=list(keep))
                candidates.append(c)
                models[name] = (m, mt)
            chosen = max(candidates, key=lambda c: (c.accuracy, -c.params))
            stop = "every paper schedule tried; chosen: the highest accuracy (fewer parameters on ties)"
        elif cfg.strategy == "greedy":
            budget = None
            if cfg.energy_budget is not None:
                unit, value = parse_energy_budget(cfg.energy_budget)
                budget = value * baseline.energy_mj if unit == "fraction" else value
            first = {"done": False}

            def rank(m):
                if not first["done"]:
                    first["done"] = True
                    return importance.ranking(cfg.rank_by)
                return pipe.importance(m, cfg.rank_by == "ablation").ranking(cfg.rank_by)

            def try_remove(m, current, name, step):
                label = f"greedy-{step}-{name}"
                mm, c, mt = pipe.candidate(m, label, remove=[name])
                models[label] = (mm, mt)
                return mm, c

            tried, best, _, steps, stop = greedy_search(
                baseline, model, rank=rank, try_remove=try_remove, max_drop=cfg.max_drop, energy_budget_mj=budget,
                candidates_per_step=cfg.candidates_per_step, log=pipe.log)
            candidates.extend(tried)
            chosen = None if best is baseline else best
            if budget is not None:
                stop += f" (budget {budget:.4g} mJ = " + (f"{cfg.energy_budget} of {baseline.energy_mj:.4g} mJ)"
                                                          if parse_energy_budget(cfg.energy_budget)[0] == "fraction"
                                                          else f"{cfg.energy_budget})")
        else:  # importance only
            stop = "importance report only"
        if chosen is not None:
            chosen.status = (chosen.status + ", " if chosen.status else "") + "chosen"
        pipe.log(f"  {stop}")
        result = PruneResult(str(checkpoint), subj.label, meta["kind"], family, FAMILY_RULES[family], cfg.strategy,
                             baseline, candidates, chosen, importance, steps, stop, None, {},
                             time.perf_counter() - t_start)
        files = {}
        if cfg.strategy != "importance":
            if chosen is not None:
                final_model, final_meta = models[chosen.label]
                entry = {"keep": chosen.kept, "removed": chosen.removed, "strategy": cfg.strategy,
                         "source": str(checkpoint), "rule": FAMILY_RULES[family],
                         "finetune_epochs": cfg.finetune_epochs, "accuracy": chosen.accuracy,
                         "source_accuracy": baseline.accuracy, "params": chosen.params,
                         "source_params": baseline.params, "energy_mj": chosen.energy_mj,
                         "source_energy_mj": baseline.energy_mj}
                save_checkpoint(paths["checkpoint"], final_model.cpu(), meta=_meta_for_save(final_meta, entry))
                files["checkpoint"] = str(paths["checkpoint"])
                result.output = str(paths["checkpoint"])
            else:
                result.stop_reason += "; no candidate was accepted, so no pruned checkpoint was written"
        files.update({"markdown": str(paths["markdown"]), "csv": str(paths["csv"]), "json": str(paths["json"])})
        result.files = files
        result.seconds = time.perf_counter() - t_start
        md = [f"# Pruning {subj.label} ({meta['kind'].upper()}) from {checkpoint}", "",
              f"Strategy: {cfg.strategy}; "
              + ("no candidates are pruned or fine-tuned (a ranking only)" if cfg.strategy == "importance"
                 else f"fine-tuning: {cfg.finetune_epochs} epoch(s) per candidate")
              + f"; rule for shape-changing modules: {FAMILY_RULES[family]}.", "",
              f"Accuracy on {len(pipe.val_data)} validation images; energy ({cfg.profile}) per image on "
              f"{min(cfg.energy_samples, len(pipe.val_data))} of them.", "",
              candidate_table(result), f"Stop: {result.stop_reason}.", "", "## Module importance", "",
              importance.table(), ""]
        atomic_write(paths["markdown"], "\n".join(md))
        atomic_write(paths["csv"], candidate_table(result, "csv"))
        atomic_write(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
        return result
    finally:
        torch.set_num_threads(prev_threads)
