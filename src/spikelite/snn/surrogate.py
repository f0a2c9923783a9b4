"""Surrogate gradients for the Heaviside spike function.

Forward, every surrogate is the Heaviside step ``Θ(x) = 1 if x >= 0 else 0``; backward it uses the
derivative of a smooth stand-in. Each surrogate is a small, stateless object with

* ``grad(x)``: the surrogate derivative at ``x = H - V_th`` (used by the fused LIF kernels), and
* ``__call__(x)``: the spike function itself with that derivative attached through autograd
  (used by the step-by-step reference path).

A user's own surrogate subclasses :class:`Surrogate` and implements ``grad``; a plain callable that
maps ``x`` to spikes with its own autograd also works (the neuron then takes the reference path).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import SpikeliteError

__all__ = [
    "Surrogate",
    "Sigmoid",
    "ATan",
    "FastSigmoid",
    "Triangle",
    "Rectangle",
    "SURROGATES",
    "get_surrogate",
]


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: "Surrogate") -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


class Surrogate:
    """Base class: Heaviside forward, ``grad(x)`` backward. ``alpha`` sets the sharpness."""

    name = "surrogate"
    default_alpha = 1.0

    def __init__(self, alpha: float | None = None):
        alpha = self.default_alpha if alpha is None else float(alpha)
        if not math.isfinite(alpha) or alpha <= 0:
            raise SpikeliteError(f"surrogate {self.name!r}: alpha must be a positive number, got {alpha}")
        self.alpha = alpha

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative at ``x``; subclasses implement ``grad_fn`` (or override this)."""
        return type(self).grad_fn(x, self.alpha)

    @staticmethod
    def grad_fn(x: torch.Tensor, alpha: float) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFunction.apply(x, self)

    def config(self) -> dict:
        """A plain description (``{"name", "alpha"}``) that :func:`get_surrogate` rebuilds."""
        return {"name": self.name, "alpha": self.alpha}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha:g})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.alpha))


class Sigmoid(Surrogate):
    """``g'(x) = α·σ(αx)·(1 − σ(αx))`` (SpikingJelly's default, α = 4)."""

    name = "sigmoid"
    default_alpha = 4.0

    @staticmethod
    def grad_fn(x, alpha):
        s = torch.sigmoid(alpha * x)
        return alpha * s * (1.0 - s)


class ATan(Surrogate):
    """``g'(x) = α / (2·(1 + (π/2·α·x)²))`` (α = 2)."""

    name = "atan"
    default_alpha = 2.0

    @staticmethod
    def grad_fn(x, alpha):
        return (alpha / 2.0) / (1.0 + (math.pi / 2.0 * alpha * x) ** 2)


class FastSigmoid(Surrogate):
    """SuperSpike / fast sigmoid: ``g'(x) = 1 / (α·|x| + 1)²`` (snnTorch's slope, α = 25)."""

    name = "fast_sigmoid"
    default_alpha = 25.0

    @staticmethod
    def grad_fn(x, alpha):
        return 1.0 / (alpha * x.abs() + 1.0) ** 2


class Triangle(Surrogate):
    """``g'(x) = α·max(0, 1 − α·|x|)``: a triangle of unit area and half-width 1/α."""

    name = "triangle"
    default_alpha = 1.0

    @staticmethod
    def grad_fn(x, alpha):
        return alpha * torch.clamp(1.0 - alpha * x.abs(), min=0.0)


class Rectangle(Surrogate):
    """``g'(x) = α·[|x| < 1/(2α)]``: a box of unit area and width 1/α."""

    name = "rectangle"
    default_alpha = 1.0

    @staticmethod
    def grad_fn(x, alpha):
        return alpha * (x.abs() < 0.5 / alpha).to(x.dtype)


SURROGATES: dict[str, type[Surrogate]] = {
    cls.name: cls for cls in (Sigmoid, ATan, FastSigmoid, Triangle, Rectangle)
}
SURROGATES["superspike"] = FastSigmoid


def get_surrogate(spec: str | dict | Surrogate | Callable | None = None, alpha: float | None = None):
    """Resolve a surrogate from a name (``"sigmoid"``), a config dict, an instance or a callable."""
    if spec is None:
        return Sigmoid(alpha)
    if isinstance(spec, Surrogate):
        return spec if alpha is None else type(spec)(alpha)
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        return get_surrogate(name, spec.pop("alpha", alpha))
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in SURROGATES:
            raise SpikeliteError(
                f"unknown surrogate {spec!r}; valid names: {', '.join(sorted(SURROGATES))}"
            )
        return SURROGATES[key](alpha)
    if callable(spec):
        return spec
    raise SpikeliteError(f"surrogate must be a name, a Surrogate or a callable, got {type(spec).__name__}")
