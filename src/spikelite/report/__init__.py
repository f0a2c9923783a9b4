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

The package, lowest first: :mod:`.paper` (the paper's figures), :mod:`.tables` (grouping and
formatting), :mod:`.document` (Markdown and HTML output), :mod:`.figures`, :mod:`.build`
(:func:`build_report`). The command line is :mod:`spikelite.cli.report`.
"""

from __future__ import annotations

from .build import build_report
from .paper import PAPER, PAPER_SOURCE
from .tables import pareto_front

__all__ = ["PAPER", "PAPER_SOURCE", "build_report", "pareto_front"]
