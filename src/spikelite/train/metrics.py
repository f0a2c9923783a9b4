"""Metrics and evaluation: :func:`evaluate` (accuracy, macro-F1, confusion, loss) of a CNN or SNN on a split,
:func:`evaluate_checkpoint` (a checkpoint on its own dataset's split), and the losses shared with the loop."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from .._runtime import resolve_device
from ..checkpoint import checkpoint_data, load_model, unwrap
from ..data import BatchLoader, ImageData
from ..errors import SpikeliteError
from ..snn import InferenceModel, InferenceNet, SpikingNet, inference_model
from .runtime import _autocast

# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``int64 [num_classes, num_classes]``: rows are true classes, columns predicted classes."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    return torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro-averaged F1 over the classes that occur in the targets or the predictions.

    Per class: ``F1 = 2·TP / (2·TP + FP + FN)``; classes that neither occur nor are predicted are
    left out of the mean (scikit-learn's ``f1_score(average="macro")`` without ``labels``).
    """
    cm = confusion.double()
    tp = cm.diagonal()
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    present = denom > 0
    if not bool(present.any()):
        return 0.0
    return float((2 * tp[present] / denom[present]).mean())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: ``temperature² · KL(softmax(teacher/τ) ‖ softmax(student/τ))``, averaged over
    the batch (the τ² keeps its gradient on the scale of the cross-entropy's as τ changes). Both ``[N, C]``."""
    if student.shape != teacher.shape:
        raise SpikeliteError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                             f"{tuple(teacher.shape)} differ")
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature ** 2


def _classification_loss(out: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy; for per-step outputs ``[T, N, C]`` the mean over steps of each step's loss (TET)."""
    if out.dim() == 3:
        return F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]), label_smoothing=label_smoothing)
    return F.cross_entropy(out, y, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, *, batch_size: int = 256, device: str | torch.device = "cpu",
             amp_dtype: torch.dtype | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
             fast: bool = False) -> dict:
    """Loss (plain cross-entropy), top-1 accuracy and macro-F1 of ``model`` on ``data``.

    Returns ``{"loss", "accuracy", "macro_f1", "n", "confusion"}`` (``confusion`` an int64 tensor).
    Runs in eval mode (restoring the previous mode) under its own RNG seeded with ``seed`` (rate
    encoding draws spikes), leaving the caller's RNG untouched. Under DDP every rank evaluates every
    ``world_size``-th image and the sums are all-reduced, so every image counts once.

    ``fast=True``: evaluate an inference copy (:func:`~spikelite.snn.inference_model`: BatchNorm folded into
    its convolution, NHWC weights and inputs on the CPU, no autograd state), about 1.3x faster for the zoo's
    CNNs and SNNs on a CPU (docs/performance.md); the same network up to float rounding, which an SNN's
    thresholds can turn into a few different spikes (±0.1 point on 2,000 CIFAR-10 images), so the default
    keeps the model's own arithmetic (the figures of ``spikelite eval``, ``bench``, ``convert --check`` and
    the training loop). The model is used as it is when it carries forward hooks (they belong to its own
    modules) or cannot be copied so.
    """
    device = torch.device(device)
    model = unwrap(model)
    if fast:
        model = _inference_copy(model, device)
    num_classes = len(data.classes)
    if world_size > 1:
        data = data.subset(torch.arange(rank, len(data), world_size))
    loader = BatchLoader(data, batch_size, shuffle=False, augment=None, device=device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    was = model.training
    model.eval()
    rng_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            for x, y in loader:
                with _autocast(device, amp_dtype):
                    out = model(x)
                out = out.float()
                loss_sum += F.cross_entropy(out, y, reduction="sum").double()
                conf += confusion_matrix(out.argmax(1), y, num_classes)
    finally:
        model.train(was)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(conf)
        dist.all_reduce(loss_sum)
    conf = conf.cpu()
    n = int(conf.sum())
    return {
        "loss": float(loss_sum) / max(n, 1),
        "accuracy": float(conf.diagonal().sum()) / max(n, 1),
        "macro_f1": macro_f1(conf),
        "n": n,
        "confusion": conf,
    }


def _inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """:func:`evaluate`'s fast path: an inference copy of ``model``, or ``model`` where none applies."""
    if isinstance(model, (InferenceNet, InferenceModel)):
        return model
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return model
    try:
        return inference_model(model, channels_last=device.type == "cpu")
    except (SpikeliteError, RuntimeError, TypeError, AttributeError, NotImplementedError):
        # not traceable by torch.fx, or a layer the copy does not know: evaluate it as it is
        return model


# ----------------------------------------------------------------------------------------------
# Evaluating a checkpoint
# ----------------------------------------------------------------------------------------------


def evaluate_checkpoint(path: str | os.PathLike, *, data_root: str | None = None, dataset: str | None = None,
                        split: str = "val", batch_size: int = 256, device: str = "auto",
                        T: int | None = None, fast: bool = False) -> dict:
    """Rebuild a checkpoint's model from the file alone and measure it on a split of its dataset
    (``fast``: on an inference copy, see :func:`evaluate`).

    The dataset name, image size, channels, train/val split and normalisation come from the
    checkpoint (``dataset``/``data_root`` override where the data is). Returns the :func:`evaluate`
    metrics plus what was evaluated (``confusion`` as nested lists).
    """
    if split not in ("train", "val", "test"):
        raise SpikeliteError(f"split must be train, val or test; got {split!r}")
    dev = resolve_device(device)
    model, meta = load_model(path, device=dev)
    data, root = checkpoint_data(meta, path, split, data_root=data_root, dataset=dataset)
    if T is not None:
        if not isinstance(model, SpikingNet):
            raise SpikeliteError("--T applies to SNN checkpoints only; this one is a CNN")
        model.T = T
    t0 = time.perf_counter()
    res = evaluate(model, data, batch_size=batch_size, device=dev, fast=fast)
    res["seconds"] = time.perf_counter() - t0
    res["confusion"] = res["confusion"].tolist()
    res.update(checkpoint=str(path), kind=meta["kind"], model=meta["model_spec"]["name"], dataset=data.name,
               split=split, root=root, T=model.T if isinstance(model, SpikingNet) else None,
               epoch=meta.get("epoch"))
    return res
