"""The report's figures (matplotlib, Agg canvas, no pyplot state): accuracy vs energy with the Pareto
front, accuracy and energy vs T, per-layer firing rates."""

from __future__ import annotations

import io

from .paper import _MARKERS, _VARIANT_ORDER, PAPER
from .tables import pareto_front

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
    paper_drawn: list[str] = []  # the paper points drawn, as their legend names them
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
                        paper_drawn.append(f"{lab[len('paper '):]} ({v['snn_acc']:g} %)")
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
                              label="paper: " + ",\n".join(dict.fromkeys(paper_drawn))))
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
    from ..models import macro_modules

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
