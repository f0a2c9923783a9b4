"""Module-level structured pruning: remove whole macro modules (fire modules, ShuffleNet units, ...).

The paper removes whole fire modules from spiking SqueezeNet and retrains. This package makes that a
tool for every zoo family and for user models:

- :mod:`.subject` — which model, which modules: a zoo CNN, a SpikingNet made from one or a user CNN,
  :func:`removable_modules`, and the paper's SqueezeNet schedules (:data:`PAPER_SCHEDULES`).
- :mod:`.gates` — a block and its replacement blended by a scalar (the gated copy both removal and
  importance run on), the least-squares fit of projections, and the calibration-data helpers.
- :mod:`.removal` — :func:`prune_model`: the model with macro modules removed.
- :mod:`.importance` — :func:`module_importance` (Taylor and exact ablation), :func:`spearman`.
- :mod:`.schedules` — the one schedule grammar of the CLI, the API and bench specs (paper names,
  ``keep:a+b``, ``remove:a+b``, ``ablation-K``/``-P%``, ``taylor-K``/``-P%``): :func:`parse_schedule`,
  :class:`Schedule`, :func:`check_schedule`, :func:`keep_for_schedule`.
- :mod:`.strategies` — the vocabulary and the search: :data:`STRATEGIES`, :class:`PruneConfig`,
  :func:`parse_energy_budget`, :class:`Candidate`, :class:`PruneResult`, :func:`candidate_table`,
  :func:`greedy_search`.
- :mod:`.pipeline` — :func:`run_pruning`: a checkpoint pruned, fine-tuned and evaluated by strategy.

How a module is taken out (identity, projection, SqueezeNet's channel adaptation) is the structure
surgery in :mod:`spikelite.models.surgery`; its public names are re-exported here.

Imports flow one way: subject → gates → removal → importance → schedules → strategies → pipeline (a module
imports only those before it). Outside the package, prune imports errors, _io, models, snn, data,
checkpoint, train and energy, never bench, report, export or cli.

See docs/pruning.md.
"""

from ..models.surgery import FAMILY_RULES, ChannelAdapt, Projection, Replacement, apply_keep, replacement_plan
from .importance import ImportanceReport, ModuleImportance, module_importance, spearman
from .pipeline import run_pruning
from .removal import prune_model
from .schedules import SCHEDULE_GRAMMAR, Schedule, check_schedule, for_model, keep_for_schedule, parse_schedule
from .strategies import (META_STRATEGIES, STRATEGIES, Candidate, PruneConfig, PruneResult, candidate_table,
                         greedy_search, parse_energy_budget)
from .subject import PAPER_SCHEDULES, removable_modules

__all__ = [
    "PAPER_SCHEDULES",
    "FAMILY_RULES",
    "Projection",
    "ChannelAdapt",
    "Replacement",
    "apply_keep",
    "prune_model",
    "removable_modules",
    "replacement_plan",
    "ModuleImportance",
    "ImportanceReport",
    "module_importance",
    "spearman",
    "parse_energy_budget",
    "PruneConfig",
    "Candidate",
    "PruneResult",
    "run_pruning",
    "greedy_search",
    # public names the old module's __all__ left out (spikelite.cli.prune imports them from here)
    "STRATEGIES",
    "candidate_table",
    # the schedule grammar shared with bench specs
    "META_STRATEGIES",
    "SCHEDULE_GRAMMAR",
    "Schedule",
    "parse_schedule",
    "check_schedule",
    "for_model",
    "keep_for_schedule",
]
