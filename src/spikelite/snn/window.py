"""Running a spiking network a few time steps at a time: the time window.

A :class:`~spikelite.snn.SpikingNet` runs all T steps in one pass (time folded into the batch), so its
memory grows with T x batch. A chunked run (``net.forward_steps(x, time_chunk=K)``, or ``net.time_chunk``)
runs the network's temporal part once per window of at most K steps, handing every neuron's state (its
membrane, a ConversionIF's spike count) from one window to the next. This module holds what the modules
read while that happens:

* :class:`TimeWindow` — the steps the current window covers (``start``, ``steps``, of ``total``) and the
  neurons' state, kept per neuron call site. A neuron asks for its slot (:meth:`TimeWindow.slot`), reads the
  state the previous window left there (None in the first) and stores its own;
* :func:`time_window` — the window in force, or None outside a chunked run (everything then runs as usual).

The window is a context variable set for the duration of one call and reset when the call ends, normally
or not: the state lives in the call's own :class:`TimeWindow` objects and nothing of it survives the
forward (spikelite's rule: no ``reset_net``).

Code that hooks a network's modules sees one call per window in a chunked run; :func:`chunk_aware` marks
a hook written for that (it reads :func:`time_window`), and ``time_chunk="auto"`` only chunks a network
whose hooks are all marked so.
"""

from __future__ import annotations

import contextvars
import itertools

import torch
from torch import nn

from ..errors import SpikeliteError

__all__ = ["TimeWindow", "time_window", "chunk_aware", "check_time_chunk", "chunk_bounds", "windows"]

_WINDOW: contextvars.ContextVar["TimeWindow | None"] = contextvars.ContextVar("spikelite_time_window", default=None)
_RUNS = itertools.count()


class TimeWindow:
    """Steps ``start .. start + steps - 1`` of ``total``, the ``index``-th window of one chunked call.

    ``states`` is shared by all windows of the call (one dict, dropped with them); ``run`` numbers the call
    (distinct for every chunked call of the process), so a counter that spans windows can tell calls apart.
    """

    __slots__ = ("run", "index", "start", "steps", "total", "states", "_calls", "_token")

    def __init__(self, run: int, index: int, start: int, steps: int, total: int, states: dict):
        self.run, self.index, self.start, self.steps, self.total = run, index, start, steps, total
        self.states = states
        self._calls: dict[int, int] = {}
        self._token = None

    def __enter__(self) -> "TimeWindow":
        if self._token is not None:
            raise SpikeliteError(f"{self!r} is already in force")
        self._calls.clear()
        self._token = _WINDOW.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _WINDOW.reset(self._token)
        self._token = None
        if exc[0] is not None or self.last:  # the call is over: its state goes with it
            self.states.clear()

    @property
    def last(self) -> bool:
        """Whether this window ends the call (its last step is step ``total - 1``)."""
        return self.start + self.steps == self.total

    def slot(self, module: nn.Module) -> tuple[int, int]:
        """The key of ``module``'s state for this call of it: the module and how many times it was called
        before in this window (a module called at two sites keeps two states, as two calls of an unchunked
        forward each start from rest)."""
        k = self._calls.get(id(module), 0)
        self._calls[id(module)] = k + 1
        return id(module), k

    def __repr__(self) -> str:
        return f"TimeWindow(steps {self.start}..{self.start + self.steps - 1} of {self.total})"


def time_window() -> TimeWindow | None:
    """The time window in force (inside a chunked run of a SpikingNet), else None (always None while
    ``torch.compile`` traces: a chunked run is never compiled, and the context variable stays out of graphs)."""
    if torch.compiler.is_compiling():
        return None
    return _WINDOW.get()


def chunk_aware(hook):
    """Mark a forward hook (or pre-hook) as written for chunked runs: it is called once per window there
    and reads :func:`time_window` to know which steps it sees. ``time_chunk="auto"`` leaves a network with
    hooks that are not marked unchunked, so such hooks keep seeing all T steps in one call."""
    target = getattr(hook, "__func__", hook)
    target._spikelite_chunk_aware = True
    return hook


def _is_chunk_aware(hook) -> bool:
    return bool(getattr(getattr(hook, "__func__", hook), "_spikelite_chunk_aware", False))


def unmarked_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or a submodule carries a forward hook or pre-hook not marked :func:`chunk_aware`
    (or a global module hook is registered)."""
    from torch.nn.modules import module as _m

    for hooks in (getattr(_m, "_global_forward_hooks", {}), getattr(_m, "_global_forward_pre_hooks", {})):
        if any(not _is_chunk_aware(h) for h in hooks.values()):
            return True
    for m in module.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            if any(not _is_chunk_aware(h) for h in hooks.values()):
                return True
    return False


def check_time_chunk(value):
    """``None`` (never chunk), ``"auto"`` or a positive integer K (windows of at most K steps); anything
    else is a :class:`SpikeliteError`."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpikeliteError(f"time_chunk must be a positive integer (time steps per window), 'auto' or None, "
                             f"got {value!r}")
    if value < 1:
        raise SpikeliteError(f"time_chunk must be >= 1 time step, got {value}")
    return value


def chunk_bounds(total: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, steps)`` of the windows that cover ``total`` steps ``chunk`` at a time (the last one shorter
    when ``chunk`` does not divide ``total``)."""
    return [(s, min(chunk, total - s)) for s in range(0, total, chunk)]


def windows(total: int, chunk: int) -> list[TimeWindow]:
    """The windows of one chunked call (sharing one state dict). Each is a context manager: in force inside
    ``with window:`` and reset when the block ends, normally or not."""
    run = next(_RUNS)
    states: dict = {}
    return [TimeWindow(run, index, start, steps, total, states)
            for index, (start, steps) in enumerate(chunk_bounds(total, chunk))]
