"""The spiking side: neurons, and the conversion of a CNN into a spiking network.

- :mod:`.neuron` — :class:`LIF`, :class:`IF`, :class:`ConversionIF` and :class:`QCFS` (the
  quantisation-clip-floor-shift activation a CNN is trained with to be converted); :mod:`.surrogate` —
  the surrogate gradients; :mod:`.native` — the C++ LIF operator, built on first use.
- :mod:`.layers` — the modules a converted network is built from (:class:`SpikingActivation`,
  :class:`StepBatchNorm`, :class:`TimeBroadcast`) and the neuron factory :func:`make_neuron`.
- :mod:`.net` — :func:`spikify` (any CNN → :class:`SpikingNet`, every activation a neuron layer).
- :mod:`.conversion` — :func:`convert` (a trained CNN → a rate-coded SNN that converges to it as T grows),
  :func:`correct_bias`, :func:`layer_errors`.
- :mod:`.recompute` — activation checkpointing and recomputed neurons for training in less memory.
- :mod:`.inference` — eval-only copies with BatchNorm folded (:func:`inference_model`).
- :mod:`.window` — the time window of a chunked run (``net.forward_steps(x, time_chunk=K)``: inference in
  windows of K time steps, the neurons' state handed from one window to the next, memory bounded in T).

Imports flow one way: window → neuron → layers → inference → net → conversion (recompute beside net).
"""

from .conversion import convert, correct_bias, layer_errors
from .inference import InferenceModel, fold_batchnorm
from .layers import (ACTIVATION_FUNCTIONS, ACTIVATION_MODULES, NEURON_KINDS, TIME_BN_MODES, SpikingActivation,
                     StepBatchNorm, TimeBroadcast, make_neuron, mark_spikes)
from .neuron import IF, LIF, QCFS, ConversionIF
from .net import (AUTO_CHUNK_VALUES, InferenceNet, SpikingNet, activation_percentile, balance_thresholds,
                  inference_model, per_step_batchnorm, recalibrate_bn, respikify, spikify)
from .surrogate import get_surrogate
from .window import TimeWindow, chunk_aware, time_window

__all__ = [
    "LIF", "IF", "ConversionIF", "QCFS", "get_surrogate",
    "spikify", "SpikingNet", "respikify", "per_step_batchnorm", "balance_thresholds", "recalibrate_bn",
    "activation_percentile", "convert", "correct_bias", "layer_errors",
    "inference_model", "InferenceNet", "InferenceModel", "fold_batchnorm",
    "SpikingActivation", "StepBatchNorm", "TimeBroadcast", "make_neuron", "mark_spikes", "NEURON_KINDS",
    "TIME_BN_MODES", "ACTIVATION_MODULES", "ACTIVATION_FUNCTIONS",
    "AUTO_CHUNK_VALUES", "TimeWindow", "time_window", "chunk_aware",
]
