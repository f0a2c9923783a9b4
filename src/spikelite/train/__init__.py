"""Training and evaluation: one recipe for CNNs and SNNs, self-describing checkpoints.

``spikelite train`` runs one recipe (:class:`TrainConfig`, from a YAML file and/or flags) for a CNN
or for its spiking version, so the two are trained under the same setup:

* ``mode: cnn`` trains a zoo CNN (:func:`spikelite.models.create_model`);
* ``mode: snn`` trains the :func:`~spikelite.snn.spikify`-converted network with surrogate
  gradients — from scratch, or (``init_from: CNN.ckpt``) starting from a trained CNN's weights,
  optionally with threshold balancing on a training batch; ``epochs: 0`` evaluates the converted
  network without fine-tuning.

The optimiser (SGD with Nesterov momentum or AdamW), the per-step cosine schedule with linear
warm-up, weight decay (never on BatchNorm, biases or neuron parameters), label smoothing, the
optional TET loss (cross-entropy at every time step), mixed precision (CUDA only) and the seed are
all part of the recipe.

Checkpoints (``last.pt`` at the end of every epoch and optionally every N steps, ``best.pt``) are
plain dictionaries of tensors and Python containers, written atomically and read with
``torch.load(weights_only=True)``; they record the model spec, the SNN settings, the data
normalisation and classes, so :func:`load_model` rebuilds the exact model from the file alone.
A run killed at any moment resumes (``--resume``) from ``last.pt`` to the same final weights as an
uninterrupted run on CPU: the data order and augmentation of an epoch are a function of
``(seed, epoch, rank)``, the global RNG is reseeded from them at every epoch start, and mid-epoch
checkpoints also store the RNG states. Under ``torchrun`` the run is data-parallel (DDP); only rank
0 writes. See docs/training.md.

The package, lowest first (a module imports only those before it): :mod:`.config` (the recipe),
:mod:`.optim` (parameter groups, optimiser, schedule), :mod:`.runtime` (forward wrapper, mixed
precision, distributed environment, logs), :mod:`.metrics` (metrics, :func:`evaluate`,
:func:`evaluate_checkpoint`), :mod:`.prepare` (a run's data and starting model), :mod:`.loop`
(:func:`train`). The command line is :mod:`spikelite.cli.train`; the checkpoint format is
:mod:`spikelite.checkpoint`.

``spikelite.train`` is this package and also callable: ``spikelite.train(config)`` is
``spikelite.train.train(config)``.
"""

from __future__ import annotations

import sys
import types

from .config import (AMP_MODES, LATE_KEYS, MODES, OPTIMIZERS, RECIPE_NEURON, RUNTIME_KEYS, SCHEDULES, DataConfig,
                     DistillConfig, ModelConfig, OptimConfig, SNNConfig, TrainConfig, load_config, recipe_neuron,
                     recipe_view)
from .metrics import confusion_matrix, distillation_loss, evaluate, evaluate_checkpoint, macro_f1
from .loop import TEACHER_SOURCE, source_cnn, train
from .optim import lr_at, param_groups

__all__ = [
    "TrainConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "SNNConfig",
    "DistillConfig",
    "source_cnn",
    "load_config",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "confusion_matrix",
    "macro_f1",
    "distillation_loss",
    "lr_at",
    "param_groups",
    "recipe_neuron",
    "recipe_view",
    "RECIPE_NEURON",
    "RUNTIME_KEYS",
    "LATE_KEYS",
    "MODES",
    "OPTIMIZERS",
    "SCHEDULES",
    "AMP_MODES",
    "TEACHER_SOURCE",
]


class _CallableModule(types.ModuleType):
    """``spikelite.train(config, resume=False)`` runs :func:`train`: the stage's package is its entry point."""

    def __call__(self, config, *, resume: bool = False) -> dict:
        return train(config, resume=resume)


sys.modules[__name__].__class__ = _CallableModule
