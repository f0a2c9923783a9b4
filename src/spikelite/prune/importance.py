"""Importance (:func:`module_importance`).

Every candidate module ``m`` is wrapped in a gate ``y + a * (r(x) - y)`` where ``y`` is the
block's output, ``r`` its replacement (identity, projection or SqueezeNet's channel adaptation,
exactly what removal would leave) and ``a = 0``. ``dL/da`` is the first-order Taylor estimate of
the loss change when ``m`` is removed, ``<dL/dy, r(x) - y>`` summed over the calibration set — for
a shape-preserving block ``<dL/d(out), in - out>``. Setting ``a = 1`` gives the exact ablation (the
loss and accuracy with ``m`` removed, before any fine-tuning). Both are reported with their
Spearman rank correlation (:func:`spearman`). The gates also run inside a spiking network (they
are ordinary modules that ``spikify`` converts), so SNN importance uses surrogate gradients.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Sequence

from torch import nn

from ..errors import SpikeliteError
from .gates import _as_batches, _device_of, _fit_projections, _Gated, _run
from .subject import _plans, _subject

# ----------------------------------------------------------------------------------------------
# Importance
# ----------------------------------------------------------------------------------------------


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences (average ranks for ties); None when
    it is undefined (fewer than 2 values, or one sequence constant)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b):
        raise SpikeliteError(f"spearman: sequences of different length ({len(a)} and {len(b)})")
    n = len(a)
    if n < 2:
        return None

    def ranks(v):
        order = sorted(range(n), key=lambda i: v[i])
        r = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0 + 1.0
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


@dataclasses.dataclass
class ModuleImportance:
    """One module's importance. ``taylor``: first-order estimate of the mean-loss change when the
    module is removed (before fine-tuning); ``ablation_loss``/``ablation_accuracy``: the measured
    change (accuracy in points). Larger = more important."""

    name: str
    path: str
    replacement: str
    params: int
    taylor: float
    ablation_loss: float | None = None
    ablation_accuracy: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImportanceReport:
    """What :func:`module_importance` found on the calibration data."""

    model: str
    kind: str
    samples: int
    base_loss: float
    base_accuracy: float
    modules: list[ModuleImportance]
    spearman: float | None  # Taylor vs ablation loss change
    spearman_accuracy: float | None  # Taylor vs ablation accuracy drop
    fitted_projections: list[str]
    taylor_seconds: float
    ablation_seconds: float | None

    def ranking(self, by: str = "taylor") -> list[str]:
        """Module names, least important first."""
        if by == "taylor":
            key = lambda m: m.taylor  # noqa: E731
        elif by == "ablation":
            if any(m.ablation_loss is None for m in self.modules):
                raise SpikeliteError("no ablation was run; rank by taylor or run module_importance(method='both')")
            key = lambda m: m.ablation_loss  # noqa: E731
        else:
            raise SpikeliteError(f"rank by 'taylor' or 'ablation', got {by!r}")
        return [m.name for m in sorted(self.modules, key=key)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ranking_taylor"] = self.ranking("taylor")
        if self.ablation_seconds is not None:
            d["ranking_ablation"] = self.ranking("ablation")
        return d

    def table(self) -> str:
        """A Markdown table, one row per module in forward order."""
        abl = self.ablation_seconds is not None
        rank_t = {n: i + 1 for i, n in enumerate(self.ranking("taylor"))}
        rank_a = {n: i + 1 for i, n in enumerate(self.ranking("ablation"))} if abl else {}
        head = ["module", "replacement", "params", "Taylor ΔL", "rank"]
        if abl:
            head += ["ablation ΔL", "ablation Δacc (pts)", "rank"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        for m in self.modules:
            row = [m.name, m.replacement, f"{m.params:,}", f"{m.taylor:+.4f}", str(rank_t[m.name])]
            if abl:
                row += [f"{m.ablation_loss:+.4f}", f"{m.ablation_accuracy:+.2f}", str(rank_a[m.name])]
            lines.append("| " + " | ".join(row) + " |")
        tail = (f"\nBase: loss {self.base_loss:.4f}, accuracy {100 * self.base_accuracy:.2f}% on {self.samples} "
                f"calibration images ({self.kind}).")
        if abl:
            rho = "n/a" if self.spearman is None else f"{self.spearman:+.3f}"
            rho_a = "n/a" if self.spearman_accuracy is None else f"{self.spearman_accuracy:+.3f}"
            tail += (f" Spearman rank correlation, Taylor vs ablation: {rho} (loss), {rho_a} (accuracy drop). "
                     f"Taylor {self.taylor_seconds:.2f} s, ablation {self.ablation_seconds:.2f} s.")
        return "\n".join(lines) + "\n" + tail


def module_importance(model: nn.Module, data, *, modules: Sequence[str] | None = None, method: str = "both",
                      batch_size: int = 64, input_shape=None, fit: bool = True, seed: int = 0) -> ImportanceReport:
    """Taylor and (optionally) exact-ablation importance of every present macro module.

    Args:
        model: a zoo CNN, a SpikingNet made from one, or a user CNN (``modules`` + ``input_shape``).
        data: labelled calibration data: ``(x, y)`` tensors, an ImageData, or ``(x, y)`` batches.
        modules: score only these (names or paths); default every present macro module.
        method: ``"taylor"`` (one forward + backward over the data) or ``"both"`` (plus one forward
            pass per module with that module removed).
        fit: fit projection replacements by least squares first (otherwise they stay random).
        seed: seeds rate-encoding draws so every pass sees the same spikes.

    Runs in eval mode (BatchNorm running statistics, no dropout) on the model's device.
    """
    if method not in ("taylor", "both"):
        raise SpikeliteError(f"method must be 'taylor' or 'both', got {method!r}")
    subj = _subject(model, modules, input_shape)
    names = [n for n, _ in subj.macro if n in set(subj.kept)]
    if not names:
        raise SpikeliteError(f"{subj.label}: no macro module left to score")
    plans, order = _plans(subj, names)
    device = _device_of(model)
    batches = _as_batches(data, batch_size, device)
    gated = _Gated(subj, names, plans)
    fitted = _fit_projections(gated, batches, order, progressive=False, seed=seed) if fit else []
    t0 = time.perf_counter()
    base_loss, base_acc, n = _run(gated.net, batches, seed, grad=True)
    taylor = {k: float(h.alpha.grad) if h.alpha.grad is not None else 0.0 for k, h in gated.handles.items()}
    t_taylor = time.perf_counter() - t0
    abl_loss: dict[str, float] = {}
    abl_acc: dict[str, float] = {}
    t_abl = None
    if method == "both":
        t0 = time.perf_counter()
        for k in names:
            gated.set_alpha({k: 1.0})
            loss, acc, _ = _run(gated.net, batches, seed)
            gated.set_alpha({k: 0.0})
            abl_loss[k] = loss - base_loss
            abl_acc[k] = 100.0 * (acc - base_acc)
        t_abl = time.perf_counter() - t0
    cnn = subj.skeleton() if subj.is_snn else model
    mods = []
    for k in names:
        block = cnn.get_submodule(subj.path(k))
        mods.append(ModuleImportance(k, subj.path(k), plans[k].describe(), sum(p.numel() for p in block.parameters()),
                                     taylor[k], abl_loss.get(k), abl_acc.get(k)))
    rho = rho_a = None
    if method == "both":
        rho = spearman([m.taylor for m in mods], [m.ablation_loss for m in mods])
        rho_a = spearman([m.taylor for m in mods], [-m.ablation_accuracy for m in mods])
    return ImportanceReport(subj.label, "snn" if subj.is_snn else "cnn", n, base_loss, base_acc, mods, rho, rho_a,
                            fitted, t_taylor, t_abl)
