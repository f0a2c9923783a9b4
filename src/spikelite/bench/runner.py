"""The runner: :func:`run_bench` plans the grid, skips finished cells, runs the rest on an executor in
dependency order and writes the results table."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .._io import atomic_write, read_json, run_lock
from ..errors import SpikeliteError
from .cells import Cell, _cell_dir, _fingerprints, _skipped_result, cell_config, expand_grid
from .executors import _Progress, make_executor
from .results import collect_results, write_results
from .spec import BenchSpec, _flatten, _problem_error

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
    The run directory has one writer: a second ``run_bench`` into it fails at once (:func:`run_lock`).
    """
    run_dir = Path(spec.out)
    cells = expand_grid(spec)
    if not cells:
        raise SpikeliteError("the grid is empty (no models x datasets x variants)")
    with run_lock(run_dir, "spikelite bench", instead="choose another --out"):
        return _run_locked(spec, cells, run_dir, progress, quiet, executor, out)


def _run_locked(spec: BenchSpec, cells: list[Cell], run_dir: Path, progress, quiet, executor, out) -> dict:
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
