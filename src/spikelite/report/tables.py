"""Rows of a run grouped for the tables (mean ± std over seeds), the Pareto front, and the cell formatting."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .._io import read_json
from .paper import _VARIANT_ORDER

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower energy ``x`` and higher accuracy ``y``),
    ordered by energy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        x, y = points[i]
        if x is None or y is None or (isinstance(x, float) and math.isnan(x)):
            continue
        if y > best:
            front.append(i)
            best = y
    return front


def _mean_std(values: list) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    if len(vals) == 1:
        return vals[0], None, 1
    return statistics.fmean(vals), statistics.stdev(vals), len(vals)


def _group(rows: list[dict]) -> list[dict]:
    """Rows averaged over seeds: one per (dataset, model, variant, T, schedule); numeric columns become
    means, with ``<col>:std`` and ``n_seeds``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        key = (r["dataset"], r["model"], r["variant"], r.get("T"), r.get("schedule"))
        groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        g = {"dataset": key[0], "model": key[1], "variant": key[2], "T": key[3], "schedule": key[4],
             "family": rs[0].get("family"), "name": rs[0].get("name"), "n_seeds": len(rs),
             "seeds": sorted(r["seed"] for r in rs), "ids": [r["id"] for r in rs],
             "kept": rs[0].get("kept"), "removed": rs[0].get("removed"), "eval_split": rs[0].get("eval_split"),
             "eval_n": rs[0].get("eval_n")}
        numeric = set()
        for r in rs:
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("T", "seed", "width"):
                    numeric.add(k)
        for k in numeric:
            m, s, _ = _mean_std([r.get(k) for r in rs])
            g[k] = m
            g[f"{k}:std"] = s
        out.append(g)
    out.sort(key=lambda g: (g["dataset"], g["model"], _VARIANT_ORDER.get(g["variant"], 9), g["T"] or 0,
                            g["schedule"] or ""))
    return out


def _profiles(rows: list[dict], run_dir: Path) -> tuple[str | None, str | None]:
    """(compute-only profile, memory-aware profile) among the measured ones."""

    measured = []
    for r in rows:
        measured += [k.split("@", 1)[1] for k in r if k.startswith("energy_mj@")]
    measured = list(dict.fromkeys(measured))
    memory = {}
    for cdir in sorted((run_dir / "cells").glob("*/energy.json")):
        e = read_json(cdir) or {}
        for p in e.get("profiles") or []:
            memory[p.get("name")] = p.get("memory") is not None
        if memory:
            break
    compute = next((p for p in measured if not memory.get(p, False)), None)
    mem = next((p for p in measured if memory.get(p, False)), None)
    return compute, mem


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def _pct(v, std=None) -> str:
    if v is None:
        return "-"
    s = f"{100 * v:.2f}"
    if std is not None:
        s += f" ± {100 * std:.2f}"
    return s


def _k(v) -> str:
    return "-" if v is None else f"{v / 1e3:,.1f}k"


def _mj(v, std=None) -> str:
    if v is None:
        return "-"
    s = f"{v:.4g}"
    if std is not None:
        s += f" ± {std:.2g}"
    return s


def _ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _paper_cell(v, fmt) -> str:
    return "-" if v is None else fmt(v)


def _label(g: dict) -> str:
    v = g["variant"].upper().replace("-P", "-P")
    s = f"{v}"
    if g.get("schedule"):
        s += f" ({g['schedule']})"
    return s


def _seeds_note(g: dict) -> str:
    return "" if g.get("n_seeds", 1) <= 1 else f" (n={g['n_seeds']})"
