"""The report of a run folder: :func:`build_report` reads every cell's files and writes ``report.md``
(figures under ``figures/``) and ``report.html``."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from .._io import atomic_write, read_json
from ..errors import SpikeliteError
from .document import _Doc
from .figures import _fig_firing, _fig_scatter, _fig_vs_T
from .paper import PAPER, PAPER_SOURCE, _paper, _paper_datasets, _paper_note
from .tables import _group, _k, _label, _mj, _paper_cell, _pct, _profiles, _ratio, _seeds_note

# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for a bench run directory.

    ``out`` defaults to the run directory. Returns ``{"markdown", "html", "figures": [...]}``.
    """
    from ..bench import collect_results

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpikeliteError(f"run directory {run_dir} does not exist")
    if not (run_dir / "cells").is_dir():
        raise SpikeliteError(f"{run_dir} is not a bench run directory (no cells/ folder); run spikelite bench first")
    spec = {}
    if (run_dir / "spec.yaml").is_file():
        import yaml

        try:
            spec = yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}
        except yaml.YAMLError:
            spec = {}
    order = None
    rows = collect_results(run_dir, order=order)
    if not rows:
        raise SpikeliteError(f"{run_dir} holds no cells yet")
    out_dir = Path(out) if out is not None else run_dir
    groups = _group(rows)
    energies = {}
    for r in rows:
        if r["status"] == "ok":
            energies[r["id"]] = read_json(run_dir / "cells" / r["id"] / "energy.json")
    results = {r["id"]: read_json(run_dir / "cells" / r["id"] / "result.json") or {} for r in rows}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    paper_sets = _paper_datasets(datasets)
    compute, memory = _profiles(rows, run_dir)
    profiles = [p for p in (compute, memory) if p]

    doc = _Doc()
    title = f"spikelite benchmark: {spec.get('name') or run_dir.name}"
    doc.h(1, title)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    machines = list(dict.fromkeys(_machine_line(results[r["id"]].get("machine")) for r in rows
                                  if results[r["id"]].get("machine")))
    split = next((r.get("eval_split") for r in rows if r.get("eval_split")), None)
    n_eval = next((r.get("eval_n") for r in rows if r.get("eval_n")), None)
    doc.p(f"Run directory `{run_dir}`; {len(rows)} cells (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"); report written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.")
    doc.p(f"Accuracy and macro-F1 are measured on the **{split or '?'}** split"
          + (f" ({n_eval} images)" if n_eval else "") + "; energy is per image for all T time steps of one "
          "inference, from exact AC/MAC counts on real images (`spikelite.energy`), under the profiles "
          + ", ".join(f"`{p}`" for p in profiles) + " (compute-only: 0.9 pJ per AC, 4.6 pJ per MAC, 45 nm fp32; "
          "memory-aware: the same plus weight reads per synaptic operation and membrane reads/writes per neuron "
          "update, 12.5 pJ/byte)." + (f" Figures labelled **paper** are the published {paper_sets} values of "
          f"{PAPER_SOURCE}, printed beside ours where the paper has them; they come from the paper's own models, "
          "training and hardware assumptions, not from this run." if paper_sets else ""))
    if machines:
        doc.p("Machine: " + "; ".join(machines) + ".")
    bad = [r for r in rows if r["status"] not in ("ok",)]
    if bad:
        doc.h(2, "Cells that did not finish")
        doc.table(["cell", "status", "error"], [[r["id"], r["status"], (r.get("error") or "")[:300]] for r in bad],
                  right=set())

    for ds in datasets:
        gds = [g for g in groups if g["dataset"] == ds]
        if not gds:
            continue
        paper_ds = next((r.get("dataset") for r in rows if r["dataset"] == ds), ds)
        ds_name = next((rr["cell"]["dataset"]["name"] for rr in results.values()
                        if rr.get("cell", {}).get("dataset", {}).get("label") == ds), paper_ds)
        has_paper = ds_name in PAPER
        doc.h(2, f"{ds}" + ("" if has_paper else " (the paper has no figures for this dataset)"))
        # Table 1: SNN statistics
        snn = [g for g in gds if g["variant"] in ("snn", "snn-p")]
        if snn:
            doc.h(3, "SNN statistics")
            head = ["model", "variant", "T", "params", "paper params", "ACs", "paper ACs", "MACs", "paper MACs",
                    "firing rate %"]
            if compute:
                head += [f"energy mJ ({compute})", "paper energy mJ"]
            if memory:
                head += [f"energy mJ ({memory})"]
            head += ["accuracy %", "macro-F1"]
            rows_t = []
            for g in snn:
                pp = _paper(ds_name, g["family"], g["variant"])
                row = [g["model"] + _seeds_note(g), _label(g), str(g["T"]), _k(g.get("params")),
                       _paper_cell(pp.get("params_k"), lambda v: f"{v:,.1f}k"), _k(g.get("acs")),
                       _paper_cell(pp.get("acs_k"), lambda v: f"{v:,.0f}k"), _k(g.get("macs")),
                       _paper_cell(pp.get("macs_k"), lambda v: f"{v:,.0f}k"),
                       "-" if g.get("firing_rate") is None else f"{100 * g['firing_rate']:.2f}"]
                if compute:
                    row += [_mj(g.get(f"energy_mj@{compute}"), g.get(f"energy_mj@{compute}:std")),
                            _paper_cell(pp.get("energy_mj"), lambda v: f"{v:.4g}")]
                if memory:
                    row += [_mj(g.get(f"energy_mj@{memory}"), g.get(f"energy_mj@{memory}:std"))]
                row += [_pct(g.get("accuracy"), g.get("accuracy:std")),
                        "-" if g.get("macro_f1") is None else f"{g['macro_f1']:.4f}"]
                rows_t.append(row)
            doc.table(head, rows_t, right=set(range(2, len(head))), paper=has_paper)
            doc.p("ACs, MACs and energy per image (all T steps); MACs are the operations whose input is not binary "
                  "(the stem on the image, layers after linear bottlenecks, squeeze-excitation paths; an average pool of spikes "
                  "folds into the layer after it, which counts ACs). Firing rate: spikes per "
                  "neuron update over all neuron layers."
                  + _paper_note(ds_name))
        # Table 2: CNN vs SNN
        pairs = [g for g in gds if g["variant"] in ("snn", "snn-p")]
        if pairs:
            doc.h(3, "CNN vs SNN")
            head = ["model", "SNN", "T", "CNN acc %", "paper CNN", "SNN acc %", "paper SNN", "Δ acc (points)"]
            for p in profiles:
                tag = "compute" if p == compute else "memory"
                head += [f"CNN mJ ({tag})", f"SNN mJ ({tag})", f"CNN/SNN ({tag})"]
            head += ["paper CNN/SNN"]
            lowbit = bool(compute) and any(g.get("qcnn_accuracy") is not None for g in pairs)
            if lowbit:
                head += ["QCFS CNN acc %", "bits", "low-bit CNN mJ (compute)", "low-bit CNN/SNN (compute)"]
            rows_t = []
            for g in pairs:
                pp = _paper(ds_name, g["family"], g["variant"])
                cnn_acc = g.get("cnn_accuracy")
                diff = g.get("accuracy_diff")
                row = [g["model"] + _seeds_note(g), _label(g), str(g["T"]), _pct(cnn_acc),
                       _paper_cell(pp.get("cnn_acc"), lambda v: f"{v:g}"), _pct(g.get("accuracy"), g.get("accuracy:std")),
                       _paper_cell(pp.get("snn_acc"), lambda v: f"{v:g}"),
                       "-" if diff is None else f"{100 * diff:+.2f}"]
                for p in profiles:
                    row += [_mj(g.get(f"cnn_energy_mj@{p}")), _mj(g.get(f"energy_mj@{p}")),
                            _ratio(g.get(f"energy_ratio@{p}"))]
                row += [_paper_cell(pp.get("energy_ratio"), lambda v: f"{v:g}x")]
                if lowbit:
                    bits = g.get("qcnn_activation_bits")
                    row += [_pct(g.get("qcnn_accuracy")), "-" if bits is None else f"{bits:g}",
                            _mj(g.get(f"qcnn_lowbit_energy_mj@{compute}")), _ratio(g.get(f"lowbit_ratio@{compute}"))]
                rows_t.append(row)
            doc.table(head, rows_t, right=set(range(2, len(head))), paper=has_paper)
            doc.p("Every SNN is compared with its own CNN: an SNN with the CNN cell of the same model, dataset and "
                  "seed (the network it was converted from); a pruned SNN with the pruned CNN of the same schedule "
                  "when the grid has a `cnn-p` cell, otherwise with its own pruned architecture run densely for one "
                  "step (energy only, no accuracy). CNN/SNN > 1 means the SNN spends less. Δ acc = SNN − CNN."
                  + (" QCFS CNN: the quantised-activation CNN the SNN was converted from (`cnn-q`; for an SNN-P its "
                     "`cnn-p` when that has QCFS activations), priced as a low-bit network: each MAC on a nonzero "
                     "QCFS activation of that many bits at the add plus the multiplier's share scaled by bits/32, "
                     "zeros skipped, other MACs at full width (docs/energy.md). Low-bit CNN/SNN > 1: the SNN spends "
                     "less than that low-bit CNN; below 1 the SNN is not worth its time steps on this count."
                     if lowbit else ""))
        # Table 3: pruning ablation
        pr = [g for g in gds if g["variant"] in ("snn-p", "cnn-p")]
        if pr:
            doc.h(3, "Pruning ablation")
            head = ["model", "variant", "T", "schedule", "modules kept", "params", "Δ params", "accuracy %",
                    "Δ acc (points)"]
            for p in profiles:
                tag = "compute" if p == compute else "memory"
                head += [f"energy mJ ({tag})", f"Δ energy ({tag})"]
            head += ["vs unpruned CNN", "paper acc", "paper mJ"]
            rows_t = []
            for g in gds:
                if g["variant"] not in ("snn", "cnn") or not any(
                        x["model"] == g["model"] and x["variant"] == g["variant"] + "-p" and x["T"] == g["T"] for x in pr):
                    continue
                base = g
                fam_rows = [base] + [x for x in pr if x["model"] == g["model"] and x["variant"] == g["variant"] + "-p"
                                     and x["T"] == g["T"]]
                for x in fam_rows:
                    pp = _paper(ds_name, x["family"], x["variant"]) if x is not base else {}
                    if x is base:
                        pp = _paper(ds_name, x["family"], x["variant"])
                    paper_acc = pp.get("snn_acc" if x["variant"].startswith("snn") else "cnn_acc")
                    paper_e = pp.get("energy_mj") if x["variant"].startswith("snn") else None
                    row = [x["model"] + _seeds_note(x), x["variant"].upper(), "-" if x["T"] is None else str(x["T"]),
                           x.get("schedule") or "(unpruned)",
                           "all" if x is base else _modules_cell(x.get("kept"), x.get("removed")),
                           _k(x.get("params")),
                           "" if x is base else _rel(x.get("params"), base.get("params")),
                           _pct(x.get("accuracy"), x.get("accuracy:std")),
                           "" if x is base else _diff(x.get("accuracy"), base.get("accuracy"))]
                    for p in profiles:
                        row += [_mj(x.get(f"energy_mj@{p}")),
                                "" if x is base else _rel(x.get(f"energy_mj@{p}"), base.get(f"energy_mj@{p}"))]
                    full = x.get(f"full_cnn_energy_ratio@{compute}") if compute else None
                    if x is base and x["variant"] == "snn":
                        full = x.get(f"energy_ratio@{compute}") if compute else None
                    row += [_ratio(full) if x["variant"].startswith("snn") else "-",
                            _paper_cell(paper_acc, lambda v: f"{v:g}"), _paper_cell(paper_e, lambda v: f"{v:.4g}")]
                    rows_t.append(row)
            doc.table(head, rows_t, right=set(range(5, len(head))), paper=has_paper)
            doc.p("Each pruned network is the unpruned one above it with whole macro modules removed (SqueezeNet: the "
                  "paper's schedules keep the listed fire modules; other families: ablation-P% removes the modules "
                  "whose removal raises the loss on training images least, taylor-P% those with the lowest "
                  "first-order Taylor importance), then fine-tuned. Δ is relative to the unpruned "
                  "row. 'vs unpruned CNN' = energy of the full CNN / energy of this SNN (compute-only profile)."
                  + (" Paper: SNN-SqueezeNet-P 81 % (its CNN 82 %), 0.0295 mJ, 5.6x below its CNN; the paper's "
                     "schedule may differ from the one run here." if has_paper else ""))

    fig_names = []
    png = _fig_scatter(groups, datasets, profiles)
    if png:
        doc.h(2, "Accuracy vs energy")
        doc.figure("accuracy_vs_energy", png, "Accuracy vs energy per image (log scale), compute-only and "
                   "memory-aware profiles side by side; colour: model, marker: variant (o CNN, ^ SNN, v SNN-P, "
                   "s CNN-P); dashed: the Pareto front (no other network is both cheaper and more accurate)"
                   + (f"; stars: the paper's SNN-SqueezeNet figures ({paper_sets})" if paper_sets else "") + ".")
        fig_names.append(("accuracy_vs_energy", png))
    png = _fig_vs_T(groups, datasets, compute)
    if png:
        doc.h(2, "Accuracy and energy vs time steps")
        doc.figure("accuracy_energy_vs_T", png, f"Accuracy and energy ({compute}) of the SNNs vs T; dashed: "
                   "pruned; dotted horizontal lines: the CNN.")
        fig_names.append(("accuracy_energy_vs_T", png))
    png = _fig_firing(groups, energies, datasets)
    if png:
        doc.h(2, "Firing rates per layer")
        doc.figure("firing_rates", png, "Firing rate of every neuron layer in forward order (spikes per neuron "
                   "and time step, on the measured images).")
        fig_names.append(("firing_rates", png))

    doc.h(2, "All cells")
    head = ["cell", "status", "acc %", "F1", "params", "ACs", "MACs"] + [f"mJ ({p})" for p in profiles] + \
        ["epochs", "train s", "trained"]
    rows_t = []
    for r in rows:
        rows_t.append([r["id"], r["status"], _pct(r.get("accuracy")),
                       "-" if r.get("macro_f1") is None else f"{r['macro_f1']:.4f}", _k(r.get("params")),
                       _k(r.get("acs")), _k(r.get("macs"))] + [_mj(r.get(f"energy_mj@{p}")) for p in profiles]
                      + ["-" if r.get("epochs") is None else str(r["epochs"]),
                         "-" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}",
                         f"imported: `{r['imported']}`" if r.get("imported") else "in this run"])
    doc.table(head, rows_t, right=set(range(2, len(head) - 1)))
    if any(r.get("imported") for r in rows):
        doc.p("Imported cells were not trained by this run: the named checkpoint was evaluated and measured here; "
              "its epochs and training seconds are the ones it records about its own training (docs/benchmark.md).")
    doc.p("The tidy table with every measured column: `results.csv` (and `results.parquet`) in the run directory; "
          "each cell's folder under `cells/` holds its recipe (`config.yaml`), training log, checkpoints, "
          "`metrics` in `result.json` and the full energy report (`energy.json`, per layer).")

    out_dir.mkdir(parents=True, exist_ok=True)

    fig_dir = out_dir / "figures"
    written = []
    for name, data in fig_names:
        path = fig_dir / f"{name}.png"
        atomic_write(path, data)
        written.append(str(path))
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write(md_path, doc.markdown())
    atomic_write(html_path, doc.html(title))
    return {"markdown": str(md_path), "html": str(html_path), "figures": written}


def _modules_cell(kept: str | None, removed: str | None) -> str:
    """The kept macro modules, or "all but ..." when that is shorter."""
    k = [t for t in (kept or "").split("+") if t]
    r = [t for t in (removed or "").split("+") if t]
    if r and len(r) < len(k):
        return "all but " + ", ".join(r)
    return ", ".join(k) or "-"


def _rel(new, old) -> str:
    if new is None or old is None or old == 0:
        return "-"
    return f"{100 * (new - old) / old:+.1f}%"


def _diff(new, old) -> str:
    if new is None or old is None:
        return "-"
    return f"{100 * (new - old):+.2f}"


def _machine_line(m: dict | None) -> str:
    if not m:
        return ""
    parts = [m.get("device") or "?", f"{m.get('cpus')} CPU cores" if m.get("cpus") else None,
             f"torch {m.get('torch')}" if m.get("torch") else None, m.get("platform")]
    return ", ".join(p for p in parts if p)
