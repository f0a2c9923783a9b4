"""The results table: :func:`collect_results` reads every cell's files, :func:`write_results` writes
``results.csv`` (and ``results.parquet`` with pyarrow)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from .._io import atomic_write, read_json
from ..errors import SpikeliteError
from .cells import Cell, _cell_id
from .spec import VARIANTS

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
# then per profile: energy_mj@P, cnn_energy_mj@P, energy_ratio@P (and full_cnn_energy_ratio@P for pruned SNNs);
# a quantised (QCFS) CNN's activation_bits and lowbit_energy_mj@P, and beside an SNN the quantised CNN it came from:
# qcnn_id, qcnn_accuracy, qcnn_lowbit_energy_mj@P, lowbit_ratio@P (= that low-bit CNN's energy / the SNN's)


def _qcnn_id(cell: Cell) -> str:
    """The quantised CNN an SNN cell may come from: ``cnn-q`` for an SNN, its own ``cnn-p`` for an SNN-P (used
    only when that cell has QCFS activations)."""
    if cell.variant == "snn":
        return _cell_id(cell.dataset, cell.model, "cnn-q", cell.seed)
    return _ref_cnn_id(cell)


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
        q = by_id.get(_qcnn_id(cell))
        if q is not None and q["status"] == "ok" and q.get("activation_bits") is not None:
            r["qcnn_id"], r["qcnn_accuracy"], r["qcnn_activation_bits"] = q["id"], q["accuracy"], q["activation_bits"]
            for p in profiles:
                qe, snn_e = q.get(f"lowbit_energy_mj@{p}"), r.get(f"energy_mj@{p}")
                r[f"qcnn_lowbit_energy_mj@{p}"] = qe
                r[f"lowbit_ratio@{p}"] = (qe / snn_e) if qe is not None and snn_e else None
        r["cnn_source"] = ("cell " + r["ref_cnn"]) if ref is not None and ref["status"] == "ok" else \
            "the SNN's own layers for one time step (dense MACs; no accuracy)"
    return rows


def _flat_row(cell: Cell, res: dict, energy: dict | None) -> dict:
    from ..models import get_entry

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
        lowbit = energy.get("lowbit")
        if lowbit:
            row["activation_bits"] = lowbit.get("activation_bits")
            row["lowbit_macs"] = lowbit.get("lowbit_macs")
            for e in lowbit.get("energy") or []:
                row[f"lowbit_energy_mj@{e['profile']}"] = e.get("total_mj")
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
    for prefix in ("energy_mj", "cnn_energy_mj", "energy_ratio", "full_cnn_energy_ratio", "lowbit_energy_mj",
                   "qcnn_lowbit_energy_mj", "lowbit_ratio"):
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
