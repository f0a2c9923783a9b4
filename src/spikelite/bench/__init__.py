"""The benchmark: one spec, a grid of cells, one results table (``spikelite bench SPEC.yaml``).

A spec (YAML, flags on top) names models, datasets, variants, time steps and seeds. The grid is their
product; every **cell** is one trained and measured network:

* ``cnn`` — the zoo CNN trained from scratch;
* ``snn`` — the paper's pipeline: the ``cnn`` cell's checkpoint converted to LIF neurons and
  fine-tuned with surrogate gradients (``snn_init: scratch`` trains the SNN from scratch instead);
* ``snn-p`` — the ``snn`` cell pruned (whole macro modules removed: a paper schedule such as
  ``ref-1`` for SqueezeNet, for the other families the least important modules, by default a quarter
  of them ranked by exact ablation) and fine-tuned;
* ``cnn-p`` (optional) — the ``cnn`` cell pruned with the same schedule and fine-tuned, so that an
  ``snn-p`` cell can be compared with its own pruned CNN.

Each cell is trained with :func:`spikelite.train.train` (resumable), evaluated with
:func:`spikelite.train.evaluate` (accuracy, macro-F1) and measured with
:func:`spikelite.energy.measure` (ACs, MACs, energy per profile, firing rates). Everything a cell
writes lives in ``<run>/cells/<cell id>/``; ``<run>/results.csv`` (and ``results.parquet`` when
pyarrow is installed) has one row per cell. A failed cell is recorded with its error and the grid
goes on (cells that need it are recorded as skipped); re-running the same command skips finished
cells and resumes a half-trained one.

Executors: ``local`` (in this process, one cell at a time) and ``ray`` (every cell a Ray task that
asks for ``resources.cpus``/``resources.gpus``; dependencies are honoured by submitting a cell only
once the cells it needs have finished). See docs/benchmark.md.

The package, lowest first (a module imports only those before it): :mod:`.spec` (the spec and its
checks), :mod:`.cells` (the grid, :func:`build_spec`, one cell's recipe and run), :mod:`.results` (the
results table), :mod:`.executors` (local and Ray, progress), :mod:`.runner` (:func:`run_bench`). The
report is :mod:`spikelite.report`'s (it reads a run folder; bench never calls it); the command line is
:mod:`spikelite.cli.bench`.
"""

from __future__ import annotations

from .cells import Cell, build_spec, cell_config, expand_grid, load_spec, run_cell
from .executors import LocalExecutor, RayExecutor, make_executor
from .results import RESULT_COLUMNS, collect_results, write_results
from .runner import run_bench
from .spec import (CNN_VARIANTS, DEFAULT_VARIANTS, IMPORT_ONLY, VARIANTS, BenchSpec, DatasetEntry, EvalSpec, BenchModel,
                   PruneSpec, Resources, parse_spec)

__all__ = [
    "VARIANTS",
    "CNN_VARIANTS",
    "DEFAULT_VARIANTS",
    "IMPORT_ONLY",
    "BenchModel",
    "DatasetEntry",
    "PruneSpec",
    "EvalSpec",
    "Resources",
    "BenchSpec",
    "Cell",
    "parse_spec",
    "build_spec",
    "load_spec",
    "expand_grid",
    "cell_config",
    "run_cell",
    "run_bench",
    "collect_results",
    "write_results",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "RESULT_COLUMNS",
]
