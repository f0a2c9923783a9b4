"""The benchmark report: Markdown and one self-contained HTML file (``spikelite report RUNDIR``).

Reads a run directory written by :mod:`spikelite.bench` (every ``cells/*/result.json`` and
``energy.json``) and writes

* ``report.md`` — the tables, with the figures as PNG files under ``figures/``;
* ``report.html`` — the same tables and figures in one file: inline CSS, every image embedded as a
  base64 PNG, no scripts and no external links, so it can be mailed or archived as is.

The tables follow the paper's: SNN statistics per dataset (parameters, ACs, MACs, firing rate, energy,
accuracy), CNN vs SNN with energy ratios (every SNN against its own CNN, compute-only and
memory-aware energy side by side), and the pruning ablation. Where the paper publishes a figure it
is printed beside the measured one in a column labelled "paper". Figures (matplotlib, Agg canvas,
no pyplot state): accuracy vs energy with the Pareto front, accuracy and energy vs T, per-layer
firing rates. Cells run with several seeds are averaged (mean ± standard deviation).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import statistics
from pathlib import Path

from ._io import atomic_write, read_json
from .errors import SpikeliteError

__all__ = ["PAPER", "PAPER_SOURCE", "build_report", "pareto_front"]

PAPER_SOURCE = ("From Lightweight CNNs to SpikeNets: Benchmarking Accuracy-Energy Tradeoffs with Pruned Spiking "
                "SqueezeNet (arXiv 2602.09717)")

# The paper's published CIFAR-10 figures (test accuracy in %, parameters in thousands, ACs/MACs in
# thousands per image, energy in mJ per image, 45 nm fp32: 0.9 pJ/AC, 4.6 pJ/MAC). Keyed by zoo family;
# "squeezenet-p" is the paper's pruned SqueezeNet.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "cifar10": {
        "squeezenet": {"cnn_acc": 81.0, "snn_acc": 75.0, "params_k": 736.5, "acs_k": 16_610.0, "macs_k": 4_470.0,
                       "energy_mj": 0.0355},
        "squeezenet-p": {"cnn_acc": 82.0, "snn_acc": 81.0, "energy_mj": 0.0295, "energy_ratio": 5.6},
        "mnasnet": {"cnn_acc": 83.0, "snn_acc": 78.0, "params_k": 151.8},
        "mixnet": {"cnn_acc": 82.0, "snn_acc": 73.0, "params_k": 84.9},
        "shufflenetv2": {"cnn_acc": 70.0, "snn_acc": 40.0, "params_k": 911.0},
        "xception": {"cnn_acc": 79.0, "snn_acc": 75.0, "params_k": 1_025.0},
    }
}

_VARIANT_ORDER = {"cnn": 0, "cnn-q": 1, "cnn-p": 2, "snn": 3, "snn-p": 4}
_MARKERS = {"cnn": "o", "cnn-q": "D", "cnn-p": "s", "snn": "^", "snn-p": "v"}


def _paper(dataset: str, family: str | None, variant: str) -> dict:
    fam = family or ""
    if variant in ("snn-p", "cnn-p") and fam == "squeezenet":
        fam = "squeezenet-p"
    return PAPER.get(dataset, {}).get(fam, {})


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


# ----------------------------------------------------------------------------------------------
# Blocks -> Markdown / HTML
# ----------------------------------------------------------------------------------------------


class _Doc:
    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: list[str], rows: list[list[str]], right: set[int] | None = None,
              paper: bool = True) -> None:
        """A table; ``paper=False`` drops the columns whose header starts with "paper"."""
        if right is None:
            right = set(range(1, len(head)))
        if not paper:
            keep = [i for i, h in enumerate(head) if not h.startswith("paper")]
            right = {keep.index(i) for i in right if i in keep}
            head = [head[i] for i in keep]
            rows = [[r[i] for i in keep] for r in rows]
        self.blocks.append(("table", head, rows, right))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("fig", name, png, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                _, head, rows, right = b
                out.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
                out.append("| " + " | ".join("---:" if i in right else "---" for i in range(len(head))) + " |")
                for r in rows:
                    out.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
                out.append("")
            elif b[0] == "fig":
                _, name, _, caption = b
                out += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def html(self, title: str) -> str:
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>"]
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{_inline_html(b[1])}</p>")
            elif b[0] == "table":
                _, head, rows, right = b
                cls = [" ".join(c for c in ("r" if i in right else "", "paper" if h.startswith("paper") else "") if c)
                       for i, h in enumerate(head)]
                attr = [f' class="{c}"' if c else "" for c in cls]
                t = ['<div class="tw"><table>', "<thead><tr>"]
                t += [f"<th{attr[i]}>{html.escape(h)}</th>" for i, h in enumerate(head)]
                t.append("</tr></thead><tbody>")
                for r in rows:
                    t.append("<tr>" + "".join(f"<td{attr[i]}>{_inline_html(c)}</td>" for i, c in enumerate(r)) + "</tr>")
                t.append("</tbody></table></div>")
                parts.append("".join(t))
            elif b[0] == "fig":
                _, name, png, caption = b
                data = base64.b64encode(png).decode("ascii")
                parts.append(f'<figure id="{html.escape(name)}"><img alt="{html.escape(caption)}" '
                             f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
                             "</figure>")
        parts += ["</main>", "</body>", "</html>"]
        return "\n".join(parts) + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#fafafa;color:#222;
line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 64px;background:#fff}
h1{font-size:1.7em;margin-top:0.2em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-top:1.6em}
.tw{overflow-x:auto;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:4px 8px;white-space:nowrap}th{background:#f0f3f6;text-align:left}
td.r,th.r{text-align:right}tbody tr:nth-child(even){background:#fafbfc}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.88em;color:#555;margin-top:4px}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:0.92em}
th.paper{background:#f7efe0}td.paper{color:#7a4b00;background:#fffaf0}
"""


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _inline_html(s: str) -> str:
    """Escape, then render `code` spans and **bold** (the only inline markup the report uses)."""
    import re

    parts = str(s).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it literally
        parts = [str(s)]
    out = []
    for i, part in enumerate(parts):
        e = html.escape(part)
        if i % 2 == 1:
            out.append(f"<code>{e}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e))
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _new_figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _colors(models: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def _fig_scatter(groups: list[dict], datasets: list[str], profiles: list[str]) -> bytes | None:
    profiles = [p for p in profiles if p]
    pts = [g for g in groups if g.get("accuracy") is not None]
    if not pts or not profiles:
        return None
    models = list(dict.fromkeys(g["model"] for g in groups))
    colors = _colors(models)
    fig = _new_figure(5.2 * len(profiles) + 1.6, 3.9 * len(datasets))
    axes = fig.subplots(len(datasets), len(profiles), squeeze=False)
    paper_drawn = False
    for i, ds in enumerate(datasets):
        for j, prof in enumerate(profiles):
            ax = axes[i][j]
            gs = [g for g in pts if g["dataset"] == ds and g.get(f"energy_mj@{prof}") is not None]
            xy = [(g[f"energy_mj@{prof}"], 100 * g["accuracy"]) for g in gs]
            for g, (x, y) in zip(gs, xy):
                ax.scatter([x], [y], marker=_MARKERS.get(g["variant"], "o"), s=46, color=colors[g["model"]],
                           edgecolors="black", linewidths=0.4, zorder=3)
                if g.get("T"):
                    ax.annotate(f"T{g['T']}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                color="#444")
            front = pareto_front(xy)
            if len(front) >= 1:
                fx = [xy[k][0] for k in front]
                fy = [xy[k][1] for k in front]
                ax.step(fx, fy, where="post", color="black", lw=1.0, ls="--", zorder=2, label="Pareto front")
                ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=1.0, zorder=4)
            paper = PAPER.get(ds, {})
            if prof == "45nm-fp32":
                for fam, lab in (("squeezenet", "paper SNN-SqueezeNet"), ("squeezenet-p", "paper SNN-SqueezeNet-P")):
                    v = paper.get(fam, {})
                    if v.get("energy_mj") and v.get("snn_acc"):
                        paper_drawn = True
                        ax.scatter([v["energy_mj"]], [v["snn_acc"]], marker="*", s=120, facecolors="none",
                                   edgecolors="#b8860b", linewidths=1.2, zorder=3, label=lab)
            ax.set_xscale("log")
            _plain_log_axis(ax.xaxis)
            ax.set_xlabel(f"energy per image, mJ ({prof})")
            ax.set_ylabel(f"{gs[0]['eval_split'] if gs else 'test'} accuracy, %")
            ax.set_title(f"{ds}: accuracy vs energy ({prof})", fontsize=10)
            ax.grid(True, which="both", alpha=0.25)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker="o", ls="", label=m) for m in models]
    handles += [Line2D([], [], color="gray", marker=_MARKERS[v], ls="", label=v.upper())
                for v in _VARIANT_ORDER if any(g["variant"] == v for g in pts)]
    handles.append(Line2D([], [], color="black", ls="--", label="Pareto front"))
    if paper_drawn:
        handles.append(Line2D([], [], color="#b8860b", marker="*", markerfacecolor="none", ms=10, ls="",
                              label="paper: SNN-SqueezeNet (75 %),\nSNN-SqueezeNet-P (81 %)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return _png(fig)


def _fig_vs_T(groups: list[dict], datasets: list[str], profile: str | None) -> bytes | None:
    snn = [g for g in groups if g["variant"] in ("snn", "snn-p") and g.get("T") is not None]
    if not snn or profile is None:
        return None
    models = list(dict.fromkeys(g["model"] for g in groups))
    colors = _colors(models)
    fig = _new_figure(11.5, 3.6 * len(datasets))
    axes = fig.subplots(len(datasets), 2, squeeze=False)
    for i, ds in enumerate(datasets):
        ax_a, ax_e = axes[i]
        for m in models:
            lines: dict[tuple, list[dict]] = {}
            for g in snn:
                if g["dataset"] == ds and g["model"] == m:
                    lines.setdefault((g["variant"], g.get("schedule")), []).append(g)
            for (variant, sched), gs in lines.items():
                gs.sort(key=lambda g: g["T"])
                ts = [g["T"] for g in gs]
                ls = "-" if variant == "snn" else "--"
                lab = f"{m} {variant.upper()}" + (f" ({sched})" if sched else "")
                acc = [100 * g["accuracy"] if g.get("accuracy") is not None else float("nan") for g in gs]
                en = [g.get(f"energy_mj@{profile}") or float("nan") for g in gs]
                ax_a.plot(ts, acc, ls=ls, marker=_MARKERS[variant], color=colors[m], label=lab)
                ax_e.plot(ts, en, ls=ls, marker=_MARKERS[variant], color=colors[m], label=lab)
            cnn = next((g for g in groups if g["dataset"] == ds and g["model"] == m and g["variant"] == "cnn"), None)
            if cnn is not None and cnn.get("accuracy") is not None:
                ax_a.axhline(100 * cnn["accuracy"], color=colors[m], ls=":", lw=1.0, label=f"{m} CNN")
                if cnn.get(f"energy_mj@{profile}"):
                    ax_e.axhline(cnn[f"energy_mj@{profile}"], color=colors[m], ls=":", lw=1.0, label=f"{m} CNN")
        all_t = sorted({g["T"] for g in snn if g["dataset"] == ds})
        for ax in (ax_a, ax_e):
            ax.set_xlabel("time steps T")
            ax.set_xticks(all_t)
            ax.grid(True, alpha=0.25)
        ax_a.set_ylabel("accuracy, %")
        ax_a.set_title(f"{ds}: accuracy vs T (dotted: the CNN)", fontsize=10)
        ax_e.set_ylabel(f"energy per image, mJ ({profile})")
        ax_e.set_yscale("log")
        _plain_log_axis(ax_e.yaxis)
        ax_e.set_title(f"{ds}: energy vs T (dotted: the CNN)", fontsize=10)
        ax_e.legend(fontsize=7, loc="best")
    return _png(fig)


def _fig_firing(groups: list[dict], energies: dict[str, dict], datasets: list[str]) -> bytes | None:
    panels = []
    for ds in datasets:
        for m in dict.fromkeys(g["model"] for g in groups if g["dataset"] == ds):
            gs = [g for g in groups if g["dataset"] == ds and g["model"] == m and g["variant"] in ("snn", "snn-p")]
            if gs:
                panels.append((ds, m, gs))
    if not panels:
        return None
    fig = _new_figure(11.5, 2.9 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for ax, (ds, m, gs) in zip(axes[:, 0], panels):
        gs = sorted(gs, key=lambda g: (_VARIANT_ORDER[g["variant"]], g["T"] or 0, g.get("schedule") or ""))
        names_ref: list[str] = []
        blocks = _macro_paths(gs[0].get("name"))
        for k, g in enumerate(gs):
            e = energies.get(g["ids"][0]) or {}
            neurons = e.get("neurons") or []
            if not neurons:
                continue
            names = [n["name"] for n in neurons]
            if len(names) > len(names_ref):
                names_ref = names
            rates = [100 * (n.get("firing_rate") or 0.0) for n in neurons]
            pos = [names_ref.index(n) if n in names_ref else i for i, n in enumerate(names)]
            lab = f"{g['variant'].upper()} T={g['T']}" + (f" ({g['schedule']})" if g.get("schedule") else "")
            ax.plot(pos, rates, marker=".", ms=4, lw=1.0, ls="-" if g["variant"] == "snn" else "--",
                    color=cmap(k / max(len(gs) - 1, 1) * 0.85), label=lab)
        ax.set_title(f"{ds} / {m}: firing rate per neuron layer (first seed)", fontsize=10)
        ax.set_ylabel("firing rate, %")
        ax.grid(True, alpha=0.25)
        if names_ref:
            step = max(1, len(names_ref) // 24)
            ticks = list(range(0, len(names_ref), step))
            ax.set_xticks(ticks)
            ax.set_xticklabels([_short_layer(names_ref[t], blocks) for t in ticks], rotation=60, ha="right",
                               fontsize=6.5)
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def _plain_log_axis(axis) -> None:
    """Log-scale ticks as plain numbers (0.002, 0.005, 0.01), no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _macro_paths(model_name: str | None) -> list[tuple[str, str]]:
    """``(module path, macro name)`` of a zoo model, longest path first (for readable layer labels)."""
    if not model_name:
        return []
    from .models import macro_modules

    try:
        pairs = macro_modules(model_name)
    except Exception:  # not a zoo name
        return []
    return sorted(((path, name) for name, path in pairs), key=lambda t: -len(t[0]))


def _short_layer(name: str, blocks: list[tuple[str, str]] | None = None) -> str:
    """A neuron layer's path as a tick label: the macro module's name for its path
    (features.3.squeeze_activation -> fire2.squeeze), activation suffixes dropped."""
    name = name.replace("body.", "", 1) if name.startswith("body.") else name
    for path, macro in blocks or []:
        if name == path or name.startswith(path + "."):
            name = macro + name[len(path):]
            break
    for a, b in (("_activation", ""), ("branch", "br"), (".act_fn", ".act")):
        name = name.replace(a, b)
    return name if len(name) <= 24 else "…" + name[-23:]


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for a bench run directory.

    ``out`` defaults to the run directory. Returns ``{"markdown", "html", "figures": [...]}``.
    """
    from .bench import collect_results

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
          "update, 12.5 pJ/byte). Figures labelled **paper** are the published CIFAR-10 values of "
          f"{PAPER_SOURCE}, printed beside ours where the paper has them; they come from the paper's own models, "
          "training and hardware assumptions, not from this run.")
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
                  "(the stem on the image, layers after linear bottlenecks or pooling). Firing rate: spikes per "
                  "neuron update over all neuron layers."
                  + (" Paper columns: the paper's SNN-SqueezeNet figures are 16,610k ACs + 4,470k MACs = 0.0355 mJ; "
                     "its parameter counts are the CNN's." if has_paper else ""))
        # Table 2: CNN vs SNN
        pairs = [g for g in gds if g["variant"] in ("snn", "snn-p")]
        if pairs:
            doc.h(3, "CNN vs SNN")
            head = ["model", "SNN", "T", "CNN acc %", "paper CNN", "SNN acc %", "paper SNN", "Δ acc (points)"]
            for p in profiles:
                tag = "compute" if p == compute else "memory"
                head += [f"CNN mJ ({tag})", f"SNN mJ ({tag})", f"CNN/SNN ({tag})"]
            head += ["paper CNN/SNN"]
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
                rows_t.append(row)
            doc.table(head, rows_t, right=set(range(2, len(head))), paper=has_paper)
            doc.p("Every SNN is compared with its own CNN: an SNN with the CNN cell of the same model, dataset and "
                  "seed (the network it was converted from); a pruned SNN with the pruned CNN of the same schedule "
                  "when the grid has a `cnn-p` cell, otherwise with its own pruned architecture run densely for one "
                  "step (energy only, no accuracy). CNN/SNN > 1 means the SNN spends less. Δ acc = SNN − CNN.")
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
                   "s CNN-P); dashed: the Pareto front (no other network is both cheaper and more accurate); "
                   "stars: the paper's SNN-SqueezeNet figures (CIFAR-10).")
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
