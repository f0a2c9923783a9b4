"""Strategies (:func:`~spikelite.prune.run_pruning`, ``spikelite prune``): an explicit keep set, the
paper's named SqueezeNet schedules (:data:`PAPER_SCHEDULES`), or a greedy search that removes the
least important module, fine-tunes with the training module's loop (:func:`spikelite.train.train`)
and evaluates accuracy, parameters and energy (:func:`spikelite.energy.measure`) until an
accuracy-drop or energy budget is met. Every candidate lands in a table like the paper's Table 3.

Besides its meta-strategies (:data:`META_STRATEGIES`) a strategy may be any schedule of
:mod:`.schedules` (``ablation-25%``, ``keep:fire4+fire6``, a paper name ...): one candidate.

This module holds the vocabulary and the search: :data:`STRATEGIES`, :class:`PruneConfig`,
:func:`parse_energy_budget`, the result rows (:class:`Candidate`, :class:`PruneResult`,
:func:`candidate_table`) and :func:`greedy_search`; :mod:`.pipeline` runs them on a checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import SpikeliteError
from .importance import ImportanceReport
from .schedules import SCHEDULE_GRAMMAR, Schedule, parse_schedule
from .subject import PAPER_SCHEDULES

def parse_energy_budget(value) -> tuple[str, float]:
    """``("fraction", f)`` for ``0.6`` or ``"60%"`` (of the unpruned model's energy), ``("mj", e)`` for
    ``"0.12mJ"`` or ``"120uJ"`` (absolute, per image)."""
    if isinstance(value, bool):
        raise SpikeliteError(f"energy budget must be a fraction (0.6, 60%) or an energy (0.12mJ), got {value!r}")
    if isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
    else:
        raise SpikeliteError(f"energy budget must be a fraction (0.6, 60%) or an energy (0.12mJ), got {value!r}")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(%|mj|uj|µj|nj)?", text, re.IGNORECASE)
    if not m:
        raise SpikeliteError(f"cannot read energy budget {value!r}: write a fraction of the unpruned model's energy "
                             "(0.6 or 60%) or an energy per image (0.12mJ, 120uJ)")
    x, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        x /= 100.0
        unit = ""
    if unit == "":
        if not 0 < x <= 1:
            raise SpikeliteError(f"energy budget {value!r} as a fraction must be in (0, 1]; for an absolute budget add "
                                 "a unit (e.g. 0.12mJ)")
        return "fraction", x
    if x <= 0:
        raise SpikeliteError(f"energy budget {value!r} must be positive")
    return "mj", x * {"mj": 1.0, "uj": 1e-3, "µj": 1e-3, "nj": 1e-6}[unit]


# keep (with keep/remove), paper (every paper schedule), greedy (a search), importance (the report only)
META_STRATEGIES = ("keep", "paper", "greedy", "importance")
# the named strategies; any schedule text (parse_schedule: ablation-25%, keep:a+b ...) is one too
STRATEGIES = (*META_STRATEGIES, *PAPER_SCHEDULES)


@dataclasses.dataclass
class PruneConfig:
    """Settings of :func:`run_pruning` (``spikelite prune``)."""

    strategy: str = "greedy"  # keep | paper | greedy | importance, or a schedule: head-1 ... ref-2, ablation-K ...
    keep: list[str] | None = None  # strategy keep: the modules to keep (or:)
    remove: list[str] | None = None  # strategy keep: the modules to remove
    max_drop: float | None = None  # greedy: largest accepted accuracy drop (points) from the unpruned model
    energy_budget: Any = None  # greedy: stop once energy <= budget (fraction like 0.6 / "60%", or "0.12mJ")
    finetune_epochs: int = 1  # fine-tuning epochs per candidate (0: evaluate as pruned)
    rank_by: str = "ablation"  # greedy: ablation | taylor (docs/pruning.md: Taylor misranks plain chains)
    ablation: bool = True  # also run the exact ablation in the importance report
    candidates_per_step: int = 1  # greedy: try this many of the least important modules per step, keep the best
    calibration_size: int = 256  # training images (un-augmented) for importance and projection fits
    energy_samples: int = 64  # validation images for the energy measurement
    profile: str = "45nm-fp32"  # energy profile
    overrides: list[str] = dataclasses.field(default_factory=list)  # fine-tuning recipe keys, "optim.lr=0.01"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int = 256
    val_subset: int | None = None  # evaluate candidates on a stratified subset of the validation split
    quiet: bool = False

    def __post_init__(self):
        self.strategy = str(self.strategy).strip().lower()
        if self.strategy not in META_STRATEGIES:
            try:
                self.strategy = parse_schedule(self.strategy).label  # the canonical spelling
            except SpikeliteError:
                raise SpikeliteError(f"unknown strategy {self.strategy!r}; choose {', '.join(META_STRATEGIES)} or "
                                     f"a schedule: {SCHEDULE_GRAMMAR}") from None
        if self.keep is not None and self.remove is not None:
            raise SpikeliteError("give --keep or --remove, not both")
        if self.strategy == "keep" and self.keep is None and self.remove is None:
            raise SpikeliteError("strategy keep needs --keep a,b,... (the modules to keep) or --remove a,b,...")
        if self.strategy != "keep" and (self.keep is not None or self.remove is not None):
            raise SpikeliteError(f"--keep/--remove go with --strategy keep, not {self.strategy}")
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise SpikeliteError(f"max_drop must be >= 0 accuracy points, got {self.max_drop}")
        if self.energy_budget is not None:
            parse_energy_budget(self.energy_budget)
        if self.strategy == "greedy" and self.max_drop is None and self.energy_budget is None:
            raise SpikeliteError("greedy needs a stopping rule: --max-drop POINTS and/or --energy-budget "
                                 "(0.6, 60% or 0.12mJ)")
        if self.strategy != "greedy" and (self.max_drop is not None or self.energy_budget is not None):
            raise SpikeliteError("--max-drop and --energy-budget apply to --strategy greedy")
        for key, minimum in (("finetune_epochs", 0), ("candidates_per_step", 1), ("calibration_size", 1),
                             ("energy_samples", 1), ("eval_batch_size", 1), ("seed", 0)):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise SpikeliteError(f"{key} must be an integer >= {minimum}, got {v!r}")
        if self.rank_by not in ("taylor", "ablation"):
            raise SpikeliteError(f"rank_by must be taylor or ablation, got {self.rank_by!r}")
        if self.threads is not None and self.threads < 1:
            raise SpikeliteError(f"threads must be >= 1, got {self.threads}")
        if self.val_subset is not None and self.val_subset < 1:
            raise SpikeliteError(f"val_subset must be >= 1, got {self.val_subset}")
        from ..energy import get_profile

        get_profile(self.profile)

    @property
    def schedule(self) -> Schedule | None:
        """The strategy as a :class:`Schedule` when it is one candidate's schedule (None for keep,
        paper, greedy and importance; keep's sets are :attr:`keep` / :attr:`remove`)."""
        return None if self.strategy in META_STRATEGIES else parse_schedule(self.strategy)


@dataclasses.dataclass
class Candidate:
    """One pruned model tried: a row of the Table-3-like report."""

    label: str
    kept: list[str]
    removed: list[str]
    accuracy: float | None  # validation accuracy after fine-tuning (fraction)
    accuracy_pruned: float | None  # validation accuracy right after removal, before fine-tuning
    params: int
    dense_macs: int
    energy_mj: float | None
    acs: float | None
    macs: float | None
    finetune_seconds: float
    status: str = ""
    checkpoint: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PruneResult:
    """What :func:`run_pruning` did: the unpruned baseline, every candidate and the one chosen."""

    source: str
    model: str
    kind: str
    family: str
    rule: str
    strategy: str
    baseline: Candidate
    candidates: list[Candidate]
    chosen: Candidate | None
    importance: ImportanceReport | None
    steps: list[dict]
    stop_reason: str
    output: str | None
    files: dict[str, str]
    seconds: float

    def to_dict(self) -> dict:
        return {
            "source": self.source, "model": self.model, "kind": self.kind, "family": self.family, "rule": self.rule,
            "strategy": self.strategy, "baseline": self.baseline.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "importance": None if self.importance is None else self.importance.to_dict(),
            "steps": self.steps, "stop_reason": self.stop_reason, "output": self.output, "files": self.files,
            "seconds": self.seconds,
        }


def _short(names: Sequence[str], family: str) -> str:
    if family == "squeezenet":
        return ", ".join("F" + n[len("fire"):] for n in names)
    return ", ".join(names)


def _kept_cell(kept: Sequence[str], removed: Sequence[str], family: str) -> str:
    """The kept modules, or "all but ..." when fewer were removed than kept (long families)."""
    if family != "squeezenet" and removed and len(removed) < len(kept):
        return "all but " + _short(removed, family)
    if not removed and family != "squeezenet":
        return f"all {len(kept)}"
    return _short(kept, family)


def _fmt_int(n) -> str:
    return "-" if n is None else f"{n:,}"


def _pct(new, old) -> str:
    if new is None or old in (None, 0):
        return "-"
    return f"{100.0 * (new - old) / old:+.1f}%"


def candidate_table(result: PruneResult, fmt: str = "markdown") -> str:
    """The paper's Table 3 for every candidate tried: modules kept, accuracy, params, energy."""
    base = result.baseline
    rows = [base] + result.candidates
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["candidate", "kept", "removed", "accuracy", "accuracy_pruned", "accuracy_change_points", "params",
                    "params_change", "dense_macs", "acs", "macs", "energy_mj", "energy_change", "finetune_seconds",
                    "status", "checkpoint"])
        for c in rows:
            w.writerow([c.label, " ".join(c.kept), " ".join(c.removed), _g(c.accuracy), _g(c.accuracy_pruned),
                        _g(None if c.accuracy is None or base.accuracy is None else 100 * (c.accuracy - base.accuracy)),
                        c.params, _g((c.params - base.params) / base.params), c.dense_macs, _g(c.acs), _g(c.macs),
                        _g(c.energy_mj), _g(None if c.energy_mj is None or not base.energy_mj
                                            else (c.energy_mj - base.energy_mj) / base.energy_mj),
                        f"{c.finetune_seconds:.2f}", c.status, c.checkpoint or ""])
        return buf.getvalue()
    head = ["candidate", "modules kept", "acc. (%)", "Δacc (pts)", "acc. before FT (%)", "params", "Δparams",
            "dense MACs", "ACs", "MACs", "energy (mJ)", "Δenergy", "status"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "|".join(["---:"] * (len(head) - 3)) + "|---|"]
    for c in rows:
        acc = "-" if c.accuracy is None else f"{100 * c.accuracy:.2f}"
        dacc = "-" if c.accuracy is None or base.accuracy is None else f"{100 * (c.accuracy - base.accuracy):+.2f}"
        accp = "-" if c.accuracy_pruned is None else f"{100 * c.accuracy_pruned:.2f}"
        energy = "-" if c.energy_mj is None else f"{c.energy_mj:.4g}"
        lines.append("| " + " | ".join([
            c.label, _kept_cell(c.kept, c.removed, result.family), acc, dacc, accp, _fmt_int(c.params),
            _pct(c.params, base.params), _fmt_int(c.dense_macs), "-" if c.acs is None else f"{c.acs:,.0f}",
            "-" if c.macs is None else f"{c.macs:,.0f}",
            energy, _pct(c.energy_mj, base.energy_mj), c.status or ""]) + " |")
    return "\n".join(lines) + "\n"


def _g(v) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def greedy_search(baseline: Candidate, base_model: nn.Module, *, rank: Callable[[nn.Module], list[str]],
                  try_remove: Callable[[nn.Module, Candidate, str, int], tuple[nn.Module, Candidate]],
                  max_drop: float | None, energy_budget_mj: float | None, candidates_per_step: int = 1,
                  log: Callable[[str], None] = lambda s: None,
                  ) -> tuple[list[Candidate], Candidate, nn.Module, list[dict], str]:
    """Remove one module per step, least important first, while the constraints allow.

    ``rank(model)`` lists the present modules least important first; ``try_remove(model, current,
    name, step)`` returns the pruned, fine-tuned and evaluated candidate. Each step tries the first
    ``candidates_per_step`` modules of the ranking; a candidate whose accuracy is more than
    ``max_drop`` points below ``baseline``'s is rejected, and of the others the most accurate one
    (then the one with less energy) is kept. The search stops when a step keeps nothing, when the
    energy is within ``energy_budget_mj``, or when one module is left. Returns (every candidate
    tried, the last one kept, its model, per-step rankings, the stop reason).
    """
    current, model = baseline, base_model
    tried: list[Candidate] = []
    steps: list[dict] = []
    step = 0
    while True:
        if energy_budget_mj is not None and current.energy_mj is not None and current.energy_mj <= energy_budget_mj:
            return tried, current, model, steps, (f"energy budget met: {current.energy_mj:.4g} mJ <= "
                                                  f"{energy_budget_mj:.4g} mJ")
        if len(current.kept) <= 1:
            return tried, current, model, steps, f"one module left ({current.kept[0]}): nothing more to remove"
        step += 1
        order = rank(model)
        steps.append({"step": step, "present": list(current.kept), "ranking": order})
        ok: list[tuple[nn.Module, Candidate]] = []
        for name in order[:candidates_per_step]:
            cand_model, cand = try_remove(model, current, name, step)
            tried.append(cand)
            drop = None if cand.accuracy is None or baseline.accuracy is None else \
                100.0 * (baseline.accuracy - cand.accuracy)
            if max_drop is not None and drop is not None and drop > max_drop:
                cand.status = f"rejected: drop {drop:.2f} > {max_drop:g} pts"
                log(f"  step {step}: removing {name} drops accuracy by {drop:.2f} points (> {max_drop:g}): rejected")
                continue
            cand.status = "within limit"
            ok.append((cand_model, cand))
        if not ok:
            return tried, current, model, steps, (f"accuracy-drop limit {max_drop:g} pts reached: no removal among "
                                                  f"{', '.join(order[:candidates_per_step])} stays within it")
        model, current = max(ok, key=lambda mc: (mc[1].accuracy if mc[1].accuracy is not None else -1.0,
                                                 -(mc[1].energy_mj or 0.0)))
        current.status = "accepted"
