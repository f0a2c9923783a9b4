"""The optimiser and its schedule: parameter groups (no weight decay on BatchNorm, biases and neuron
parameters), SGD with Nesterov momentum or AdamW, the per-step cosine with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checkpoint import unwrap
from .config import OptimConfig

# ----------------------------------------------------------------------------------------------
# Optimiser and schedule
# ----------------------------------------------------------------------------------------------

_NO_DECAY_MODULES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_neuron(m: nn.Module) -> bool:
    from ..snn import LIF, QCFS, ConversionIF

    return isinstance(m, (LIF, ConversionIF, QCFS))


def param_groups(model: nn.Module, weight_decay: float, neuron_weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups: weights with ``weight_decay``, and without decay every bias, every
    BatchNorm/GroupNorm/LayerNorm parameter, every neuron parameter (τ, threshold) and every other
    parameter of dimension <= 1. With ``neuron_weight_decay > 0`` the learnable neuron parameters
    (PLIF's τ parametrisation ``w`` with ``1/τ = sigmoid(w)``, thresholds) form a third group decayed by
    that amount: towards 0, i.e. τ towards 2 and the threshold towards 0. Each group also carries
    ``names`` (the parameters' names)."""
    model = unwrap(model)
    no_decay_ids, neuron_ids = set(), set()
    for m in model.modules():
        if neuron_weight_decay and _is_neuron(m):
            neuron_ids.update(id(p) for p in m.parameters(recurse=False))
        elif isinstance(m, _NO_DECAY_MODULES) or _is_neuron(m):
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay, neuron, decay_names, no_decay_names, neuron_names = [], [], [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in neuron_ids:
            neuron.append(p)
            neuron_names.append(name)
        elif id(p) in no_decay_ids or p.ndim <= 1 or name.endswith(".bias") or name == "bias":
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]
    if neuron:
        groups.append({"params": neuron, "weight_decay": float(neuron_weight_decay), "names": neuron_names})
    return groups


def _make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay, cfg.neuron_weight_decay)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_at(step: int, total_steps: int, cfg: OptimConfig, warmup_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up from ``lr/warmup_steps``
    to ``lr`` over ``warmup_steps`` steps, then ``cosine`` decay to ``min_lr`` at ``total_steps``
    (or ``constant``)."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
