"""Schedules: the one text form of "which modules to remove", shared by ``spikelite prune``,
:class:`~spikelite.prune.PruneConfig` and the benchmark's ``prune.schedules``.

A schedule is one of

- a paper schedule, ``head-1`` ... ``ref-2`` (:data:`PAPER_SCHEDULES`, SqueezeNet only);
- ``keep:a+b+...`` or ``remove:a+b+...``: the modules to keep or to remove, by name (``fire4``), module
  path or, on SqueezeNet, ``F4``, in any case, separated by ``+`` or ``,``;
- ``ablation-K`` / ``ablation-P%``: rank the present modules once by exact ablation (the calibration
  loss with each one removed) and remove the K, or P percent, least important;
- ``taylor-K`` / ``taylor-P%``: the same by first-order Taylor importance (one forward and backward
  pass; cheaper but a weak proxy, docs/pruning.md).

:func:`parse_schedule` reads the text into a :class:`Schedule` (its ``label`` is the canonical
spelling), :func:`check_schedule` lists what is wrong with one for a zoo model, and
:func:`keep_for_schedule` turns one into the modules a model keeps.
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from ..errors import SpikeliteError
from ..models.surgery import resolve_modules
from .importance import ImportanceReport, module_importance
from .subject import PAPER_SCHEDULES, _subject, removable_modules

SCHEDULE_KINDS = ("paper", "keep", "remove", "ablation", "taylor")

SCHEDULE_GRAMMAR = (f"a paper schedule ({', '.join(PAPER_SCHEDULES)}; SqueezeNet only), keep:a+b or remove:a+b "
                    "(module names, paths or F4; '+' or ',' between them), ablation-K, ablation-P%, taylor-K or "
                    "taylor-P% (remove the K, or P percent, least important modules)")

_RANKED_RE = re.compile(r"(ablation|taylor)-(\d+)(%?)")
_LIST_RE = re.compile(r"(keep|remove)\s*:(.*)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule: ``kind`` (paper, keep, remove, ablation, taylor) and its argument: the paper
    schedule's ``name``, the module ``names`` of keep/remove, or ``count`` (K) or ``percent`` (P) of a
    ranked schedule. ``label`` is the canonical text (``parse_schedule(s.label) == s``)."""

    kind: str
    name: str | None = None
    names: tuple[str, ...] = ()
    count: int | None = None
    percent: int | None = None

    @property
    def label(self) -> str:
        if self.kind == "paper":
            return str(self.name)
        if self.kind in ("keep", "remove"):
            return f"{self.kind}:" + "+".join(self.names)
        if self.percent is not None:
            return f"{self.kind}-{self.percent}%"
        return f"{self.kind}-{self.count}"

    @property
    def ranked(self) -> bool:
        """True for ablation-/taylor- schedules (they rank the modules of the model they prune)."""
        return self.kind in ("ablation", "taylor")

    def n_remove(self, present: int) -> int:
        """How many of ``present`` modules a ranked schedule removes: K, or round(P% x present), clamped
        to [1, present - 1]."""
        n = int(round(present * self.percent / 100.0)) if self.percent is not None else int(self.count)
        return max(1, min(n, present - 1))

    def __str__(self) -> str:
        return self.label


def _bad(text, why: str = "") -> SpikeliteError:
    return SpikeliteError(f"unknown prune schedule {text!r}{why}; write {SCHEDULE_GRAMMAR}")


def parse_schedule(text) -> Schedule:
    """The :class:`Schedule` a text names (a :class:`Schedule` is returned as it is); bad text raises a
    SpikeliteError that spells out the grammar."""
    if isinstance(text, Schedule):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _bad(text)
    s = text.strip()
    low = s.lower()
    if low in PAPER_SCHEDULES:
        return Schedule("paper", name=low)
    m = _LIST_RE.fullmatch(low)
    if m:
        names = tuple(dict.fromkeys(t for t in re.split(r"[+,\s]+", m.group(2)) if t))
        if not names:
            raise _bad(text, f" ({m.group(1)}: names no module)")
        return Schedule(m.group(1), names=names)
    m = _RANKED_RE.fullmatch(low)
    if m:
        k = int(m.group(2))
        if m.group(3):
            if not 0 < k < 100:
                raise _bad(text, " (the percentage must be between 1 and 99)")
            return Schedule(m.group(1), percent=k)
        if k < 1:
            raise _bad(text, " (remove at least one module)")
        return Schedule(m.group(1), count=k)
    raise _bad(text)


def for_model(schedule, model_name: str) -> Schedule:
    """``schedule`` with its keep/remove names resolved to ``model_name``'s macro-module names, in forward
    order (``keep:F6+F4`` on SqueezeNet is ``keep:fire4+fire6``): one schedule, one label. Names the model
    does not have are left as written (:func:`check_schedule` reports them)."""
    from ..models import get_entry, macro_modules

    sched = parse_schedule(schedule)
    if sched.kind not in ("keep", "remove"):
        return sched
    try:
        macro = macro_modules(model_name)
        listed = set(resolve_modules(sched.names, macro, get_entry(model_name).family, model_name))
    except SpikeliteError:
        return sched
    return dataclasses.replace(sched, names=tuple(n for n, _ in macro if n in listed))


def check_schedule(schedule, model_name: str) -> list[str]:
    """What is wrong with ``schedule`` (text or :class:`Schedule`) for the zoo model ``model_name``
    (every macro module present): unreadable text, unknown module names, removing every module, a
    ranked schedule removing K >= all modules, a paper schedule on a family other than SqueezeNet.
    An empty list when it applies."""
    from ..models import get_entry, macro_modules

    try:
        sched = parse_schedule(schedule)
        family = get_entry(model_name).family
        macro = macro_modules(model_name)
    except SpikeliteError as exc:
        return [str(exc)]
    names = [n for n, _ in macro]
    if sched.kind == "paper":
        if family != "squeezenet":
            return [f"{sched.label} is one of the paper's schedules, which keep SqueezeNet fire modules; "
                    f"{model_name} is a {family}"]
        return []
    if sched.kind in ("keep", "remove"):
        try:
            listed = resolve_modules(sched.names, macro, family, model_name)
        except SpikeliteError as exc:
            return [f"{sched.label}: {exc}"]
        if sched.kind == "remove" and not [n for n in names if n not in set(listed)]:
            return [f"{sched.label} removes every macro module of {model_name}; keep at least one"]
        return []
    if sched.count is not None and sched.count >= len(names):
        return [f"{sched.label} removes {sched.count} modules but {model_name} has only {len(names)}; "
                "keep at least one"]
    return []


def keep_for_schedule(model: nn.Module, schedule, calibration, seed: int = 0, *,
                      importance: ImportanceReport | None = None) -> tuple[list[str], dict | None]:
    """The macro modules ``model`` keeps under ``schedule`` (text or :class:`Schedule`), and the
    importance ranking when the schedule needed one (None otherwise).

    A paper schedule keeps its fire modules; ``keep:``/``remove:`` resolve their names against the
    model. A ranked schedule ranks the present modules once on ``calibration`` (exact ablation or
    Taylor, :func:`module_importance` with ``seed``) and removes the :meth:`Schedule.n_remove` least
    important; ``importance``, a report already computed on this model and data, is used instead of
    ranking again when it holds the measure needed.
    """
    sched = parse_schedule(schedule)
    present = [n for n, _ in removable_modules(model)]
    if sched.kind == "paper":
        subj = _subject(model)
        if subj.family != "squeezenet":
            raise SpikeliteError(f"the paper's schedule {sched.label} keeps SqueezeNet fire modules; {subj.label} is "
                                 f"a {subj.family}")
        return list(PAPER_SCHEDULES[sched.name]), None
    if sched.kind in ("keep", "remove"):
        subj = _subject(model)
        listed = set(resolve_modules(sched.names, subj.macro, subj.family, subj.label))
        if sched.kind == "keep":
            return [n for n, _ in subj.macro if n in listed], None
        return [n for n in present if n not in listed], None
    if len(present) < 2:
        raise SpikeliteError(f"{sched.label}: only {', '.join(present) or 'no module'} is left, nothing to remove")
    n_remove = sched.n_remove(len(present))
    by = sched.kind
    rep = importance
    if rep is None or (by == "ablation" and any(mi.ablation_loss is None for mi in rep.modules)):
        rep = module_importance(model, calibration, method="both" if by == "ablation" else "taylor", seed=seed)
    ranking = rep.ranking(by)
    gone = set(ranking[:n_remove])
    info = {f"ranking_{by}": ranking, "taylor": {mi.name: mi.taylor for mi in rep.modules}}
    if by == "ablation":
        info["ablation_loss"] = {mi.name: mi.ablation_loss for mi in rep.modules}
    return [n for n in present if n not in gone], info
