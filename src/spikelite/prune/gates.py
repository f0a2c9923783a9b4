"""Gates that blend a block with its replacement, the least-squares fit of projections, and the
calibration-data helpers that both removal and importance run on.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpikeliteError
from ..models.surgery import Replacement, set_submodule
from .subject import _Subject

# ----------------------------------------------------------------------------------------------
# Gates: the block or its replacement, blended by a scalar
# ----------------------------------------------------------------------------------------------


class _Tap(nn.Identity):
    """Passes its input through and hands it to ``sink`` when one is set. An ``nn.Identity`` subclass
    so that ``spikify``'s tracer keeps it as one call (and runs this code inside a SpikingNet)."""

    def __init__(self):
        super().__init__()
        self.sink: Callable[[torch.Tensor], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sink is not None:
            self.sink(x)
        return x

    def __deepcopy__(self, memo):
        new = _Tap()
        memo[id(self)] = new
        return new


class _Mix(nn.Identity):
    """``y + alpha * (r - y)`` with a learnable scalar ``alpha`` (0 at creation). A leaf for
    ``spikify``'s tracer, so ``alpha`` meets the two time-folded tensors inside one call instead of
    being broadcast over time as a separate static tensor. (spikify's compact spike storage may tag
    its output as binary; that tag only changes how tensors saved for weight gradients are stored,
    and the gated copies this module lives in never compute weight gradients.)"""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return y + self.alpha * (r - y)


class _Gate(nn.Module):
    """``mix(block(x), replacement(x))``: alpha 0 is the model, 1 the model with the block removed;
    ``dL/dalpha`` at 0 is the Taylor estimate of the loss change."""

    def __init__(self, block: nn.Module, repl: nn.Module):
        super().__init__()
        self.block = block
        self.repl = repl
        self.mix = _Mix()
        self.tap_in = _Tap()
        self.tap_out = _Tap()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tap_in(x)
        y = self.tap_out(self.block(x))
        return self.mix(y, self.repl(x))


@dataclasses.dataclass
class _Handle:
    alpha: nn.Parameter
    tap_in: _Tap
    tap_out: _Tap
    repl: nn.Module | None


class _Gated:
    """A copy of the subject with gates around ``names`` (a SpikingNet for an SNN subject)."""

    def __init__(self, subj: _Subject, names: Sequence[str], plans: dict[str, Replacement]):
        self.subj = subj
        self.names = list(names)
        self.plans = plans
        if subj.is_snn:
            cnn = subj.skeleton()
        else:
            cnn = copy.deepcopy(subj.model)
        for n in self.names:
            path = subj.path(n)
            set_submodule(cnn, path, _Gate(cnn.get_submodule(path), plans[n].functional()))
        prefix = ""
        if subj.is_snn:
            from ..snn import respikify

            net = respikify(cnn, subj.snn_config)
            prefix = "body."
            self._load(net, subj.model.state_dict(), prefix)
            net.to(_device_of(subj.model))
        else:
            net = cnn
        self.net = net
        self.prefix = prefix
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        root = net.body if subj.is_snn else net
        self.handles: dict[str, _Handle] = {}
        for n in self.names:
            path = subj.path(n)
            try:
                repl = root.get_submodule(f"{path}.repl")
            except AttributeError:  # a parameter-free replacement traced away by spikify
                repl = None
            h = _Handle(root.get_parameter(f"{path}.mix.alpha"), root.get_submodule(f"{path}.tap_in"),
                        root.get_submodule(f"{path}.tap_out"), repl)
            h.alpha.requires_grad_(True)
            self.handles[n] = h

    def _load(self, net: nn.Module, src: dict, prefix: str) -> None:
        gated = [prefix + self.subj.path(n) + "." for n in self.names]
        mapped = {}
        for k, v in src.items():
            for g in gated:
                if k.startswith(g):
                    k = g + "block." + k[len(g):]
                    break
            mapped[k] = v
        missing, unexpected = net.load_state_dict(mapped, strict=False)
        bad = [k for k in missing if not any(k.startswith(g) and (k == g + "mix.alpha" or k.startswith(g + "repl."))
                                             for g in gated)]
        if bad or unexpected:  # pragma: no cover - the rebuilt structure always matches the spec
            raise SpikeliteError(f"internal error: the gated copy of {self.subj.label} does not match its weights "
                                 f"(missing {bad[:4]}, unexpected {list(unexpected)[:4]})")

    def set_alpha(self, values: dict[str, float]) -> None:
        with torch.no_grad():
            for n, v in values.items():
                self.handles[n].alpha.fill_(float(v))

    def clear_sinks(self) -> None:
        for h in self.handles.values():
            h.tap_in.sink = None
            h.tap_out.sink = None

    def state_for_pruned(self, removed: Sequence[str]) -> dict[str, torch.Tensor]:
        """The gated model's weights named as in the pruned model (gate -> replacement or block)."""
        removed = set(removed)
        out = {}
        gates = {self.prefix + self.subj.path(n) + ".": n for n in self.names}
        for k, v in self.net.state_dict().items():
            for g, n in gates.items():
                if k.startswith(g):
                    rest = k[len(g):]
                    if rest == "mix.alpha":
                        k = None
                    elif n in removed:
                        k = g + rest[len("repl."):] if rest.startswith("repl.") else None
                    else:
                        k = g + rest[len("block."):] if rest.startswith("block.") else None
                    break
            if k is not None:
                out[k] = v
        return out


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Least-squares projections
# ----------------------------------------------------------------------------------------------


class _LeastSquares:
    """Accumulates X^T X and X^T Y for a 1x1 projection (stride s) from a block's input X to its output Y."""

    def __init__(self, plan: Replacement):
        self.cin, self.cout, self.stride = plan.in_shape[0], plan.out_shape[0], plan.stride
        self.A = torch.zeros(self.cin + 1, self.cin + 1, dtype=torch.float64)
        self.B = torch.zeros(self.cin + 1, self.cout, dtype=torch.float64)
        self.x: torch.Tensor | None = None

    def take_input(self, x: torch.Tensor) -> None:
        self.x = x.detach()

    def take_output(self, y: torch.Tensor) -> None:
        x, s = self.x, self.stride
        self.x = None
        y = y.detach()
        if x is None:  # pragma: no cover - the gate always taps its input first
            return
        if x.shape[0] != y.shape[0] and y.shape[0] % x.shape[0] == 0:  # a static input meeting time
            reps = y.shape[0] // x.shape[0]
            x = x.unsqueeze(0).expand(reps, *x.shape).flatten(0, 1)
        x = x[:, :, ::s, ::s]
        if x.shape[2:] != y.shape[2:]:  # pragma: no cover - checked by replacement_plan
            raise SpikeliteError(f"projection fit: strided input {tuple(x.shape)} does not match output "
                                 f"{tuple(y.shape)}")
        X = x.permute(0, 2, 3, 1).reshape(-1, self.cin).to("cpu", torch.float64)
        X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
        Y = y.permute(0, 2, 3, 1).reshape(-1, self.cout).to("cpu", torch.float64)
        self.A += X.T @ X
        self.B += X.T @ Y

    def apply(self, proj: nn.Module) -> None:
        """Set ``proj`` (conv + BatchNorm) so that, in eval mode, it computes the ridge fit ``W x + b``."""
        c, A = self.cin, self.A
        n = float(A[c, c])
        if n <= 0:  # pragma: no cover - no data seen
            return
        reg = A.clone()
        lam = 1e-3 * float(torch.diagonal(A)[:c].mean()) + 1e-9
        reg[:c, :c] += lam * torch.eye(c, dtype=torch.float64)
        W = torch.linalg.solve(reg, self.B)
        Wx, b = W[:c], W[c]
        mu = A[:c, c] / n
        cov = A[:c, :c] / n - torch.outer(mu, mu)
        mean_z = mu @ Wx
        var_z = ((cov @ Wx) * Wx).sum(0).clamp_min(0.0)
        conv, bn = proj.get_submodule("conv"), proj.get_submodule("bn")
        with torch.no_grad():
            conv.weight.copy_(Wx.T.reshape(self.cout, c, 1, 1).to(conv.weight))
            bn.running_mean.copy_(mean_z.to(bn.running_mean))
            bn.running_var.copy_(var_z.to(bn.running_var))
            bn.weight.copy_(torch.sqrt(var_z + bn.eps).to(bn.weight))
            bn.bias.copy_((mean_z + b).to(bn.bias))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _as_batches(data, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Calibration data as a list of ``(x, y)`` batches on ``device``: ``(x, y)`` tensors, an
    ImageData (un-augmented, normalised) or an iterable of ``(x, y)`` batches."""
    from ..data import BatchLoader, ImageData

    out = []
    if isinstance(data, ImageData):
        for x, y in BatchLoader(data, batch_size, shuffle=False, augment=None, device=device):
            out.append((x, y))
    elif isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            out.append((data[i:i + batch_size].to(device), None))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data) \
            and data[0].dim() >= 2 and data[1].dim() == 1 and data[0].shape[0] == data[1].shape[0]:
        x, y = data
        for i in range(0, x.shape[0], batch_size):
            out.append((x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)))
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
        for k, item in enumerate(data):
            if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
                out.append((item[0].to(device), None if item[1] is None else item[1].to(device)))
            else:
                raise SpikeliteError(f"calibration batch {k} is a {type(item).__name__}; expected (x, y)")
    else:
        raise SpikeliteError("calibration data must be (x, y) tensors, an ImageData or an iterable of (x, y) "
                             f"batches; got {type(data).__name__}")
    if not out or sum(int(x.shape[0]) for x, _ in out) == 0:
        raise SpikeliteError("calibration data holds no samples")
    return out


def _run(net: nn.Module, batches, seed: int, *, grad: bool = False,
         need_labels: bool = True) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and sample count over ``batches`` (eval mode). With ``grad`` the
    gradient of the mean loss is accumulated (into the gates' alphas)."""
    total = sum(int(x.shape[0]) for x, _ in batches)
    loss_sum, correct = 0.0, 0
    devices = [d for d in {x.device for x, _ in batches} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        for k, (x, y) in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + k)  # the same spike draws (rate encoding) in every pass
            if y is None:
                if need_labels:
                    raise SpikeliteError("importance needs labelled calibration data: (x, y) batches")
                with torch.no_grad():
                    net(x)
                continue
            with torch.set_grad_enabled(grad):
                out = net(x).float()
                loss = F.cross_entropy(out, y, reduction="sum")
                if grad:
                    (loss / total).backward()
            loss_sum += float(loss.detach())
            correct += int((out.detach().argmax(1) == y).sum())
    return loss_sum / total, correct / total, total


def _fit_projections(gated: _Gated, batches, order: Sequence[str], progressive: bool, seed: int) -> list[str]:
    """Fit every projection replacement by least squares; returns the names fitted.

    ``progressive`` (pruning): in forward order, with every earlier removed module already replaced
    (alpha 1), so each projection is fitted on the input it will see in the pruned network; one pass
    per projection. Otherwise (importance) all at once on the unmodified model.
    """
    proj = [n for n in order if gated.plans[n].kind == "projection"]
    if not proj:
        return []
    if progressive:
        gated.set_alpha({n: 1.0 for n in order if gated.plans[n].kind != "projection"})
        groups = [[n] for n in proj]
    else:
        groups = [proj]
    for group in groups:
        fits = {n: _LeastSquares(gated.plans[n]) for n in group}
        for n, ls in fits.items():
            gated.handles[n].tap_in.sink = ls.take_input
            gated.handles[n].tap_out.sink = ls.take_output
        try:
            _run(gated.net, batches, seed, need_labels=False)
        finally:
            gated.clear_sinks()
        for n, ls in fits.items():
            ls.apply(gated.handles[n].repl)
            if progressive:
                gated.set_alpha({n: 1.0})
    return proj
