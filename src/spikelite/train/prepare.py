"""The data and the starting model of a run: the train/val split, the model from scratch or from
``init_from`` (a CNN converted with spikify or convert, a ReLU CNN made a QCFS CNN, an SNN continued)."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoint import load_model, rebuild_model
from ..data import BatchLoader, ImageData, load_split, stratified_split
from ..errors import SpikeliteError
from ..snn import SpikingNet, activation_percentile, convert, per_step_batchnorm, recalibrate_bn, spikify
from .config import TrainConfig, recipe_neuron
from .runtime import _seed_for

# ----------------------------------------------------------------------------------------------
# Data and model for a run
# ----------------------------------------------------------------------------------------------


def _subset(data: ImageData, n: int | None, seed: int, what: str) -> ImageData:
    if n is None or n >= len(data):
        if n is not None and n > len(data):
            raise SpikeliteError(f"data.{what}_subset={n} exceeds the {len(data)} images of the {what} split")
        return data
    _, idx = stratified_split(data.labels, n, _seed_for("subset", what, seed) & 0x7FFFFFFF)
    return data.subset(idx)


def _load_run_data(cfg: TrainConfig) -> tuple[ImageData, ImageData]:
    d = cfg.data
    kw = dict(val_size=d.val_size, seed=d.split_seed, cache_dir=d.cache_dir, download=d.download,
              image_size=d.image_size, channels=d.channels)
    train_data = load_split(d.dataset, d.root, "train", **kw)
    val_data = load_split(d.dataset, d.root, "val", **kw)
    train_data = _subset(train_data, d.train_subset, d.split_seed, "train")
    val_data = _subset(val_data, d.val_subset, d.split_seed, "val")
    return train_data, val_data


def _data_info(cfg: TrainConfig, data: ImageData) -> dict:
    return {
        "dataset": data.name,
        "root": None if cfg.data.root is None else os.path.abspath(os.path.expanduser(cfg.data.root)),
        "classes": list(data.classes),
        "num_classes": data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        "image_size": data.image_size,
        "in_chans": data.in_chans,
        "val_size": cfg.data.val_size,
        "split_seed": cfg.data.split_seed,
    }


def _check_fits_data(spec: dict, data: ImageData, where: str) -> None:
    problems = []
    if spec.get("num_classes") != data.num_classes:
        problems.append(f"{spec.get('num_classes')} classes but {data.name} has {data.num_classes}")
    if spec.get("in_chans") not in (None, data.in_chans):
        problems.append(f"{spec.get('in_chans')} input channels but the images have {data.in_chans}")
    if spec.get("image_size") not in (None, data.image_size):
        problems.append(f"image size {spec.get('image_size')} but the images are {data.image_size}x{data.image_size} "
                        "(set data.image_size)")
    if problems:
        raise SpikeliteError(f"{where}: the model does not fit the data: {'; '.join(problems)}")


def _calibration_batch(cfg: TrainConfig, train_data: ImageData, device: torch.device) -> torch.Tensor:
    loader = BatchLoader(train_data, min(cfg.snn.calibration_size, len(train_data)), shuffle=True, augment=None,
                         device=device, seed=cfg.seed)
    loader.set_epoch(0)
    return next(iter(loader))[0]


def _converts(cfg: TrainConfig) -> bool:
    """The run converts with :func:`~spikelite.snn.convert` (snn.neuron.kind: conversion_if)."""
    return str(cfg.snn.neuron.get("kind", "lif")).lower() == "conversion_if"


def _qcfs_requested(cfg: TrainConfig, src_meta: dict) -> bool:
    """A CNN run from a CNN checkpoint whose model options ask for QCFS activations the source lacks."""
    opts, spec = cfg.model.options, src_meta["model_spec"]
    return any(k in opts and opts[k] != spec.get(k) for k in ("act_levels", "act_threshold"))


def _to_qcfs(src: nn.Module, src_meta: dict, cfg: TrainConfig, train_data: ImageData, log) -> nn.Module:
    """``src`` (a ReLU CNN, or a QCFS CNN given new levels) rebuilt with QCFS activations
    (``model.options.act_levels`` and ``act_threshold``), its weights loaded; each learned λ starts at the
    ``snn.balance`` percentile (99.9 by default) of the output of the activation it replaces, on
    ``snn.calibration_size`` training images (for a QCFS source: its clipped, quantised outputs, so a learned λ
    is re-estimated, not carried over)."""
    opts = cfg.model.options
    if "act_levels" not in opts:
        raise SpikeliteError("model.options.act_threshold needs model.options.act_levels (the QCFS levels)")
    spec = {**src_meta["model_spec"], "act_levels": opts["act_levels"]}
    if "act_threshold" in opts:
        spec["act_threshold"] = opts["act_threshold"]
    model = rebuild_model({**src_meta, "model_spec": spec})
    sd = src.state_dict()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith(".lam") for k in missing):
        raise SpikeliteError(f"init_from {cfg.init_from}: its weights do not fit the QCFS model "
                             f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    n = 0
    if spec.get("act_threshold") is not None:
        from ..snn import QCFS

        q = cfg.snn.balance or 99.9
        sites = {p for p, m in model.named_modules() if isinstance(m, QCFS)}
        outs: dict[str, list[torch.Tensor]] = {}
        handles = [m.register_forward_hook(lambda mod, a, out, p=p: outs.setdefault(p, []).append(out.detach()))
                   for p, m in src.named_modules() if p in sites]
        src.eval()
        try:
            with torch.no_grad():
                src(_calibration_batch(cfg, train_data, torch.device("cpu")))
        finally:
            for h in handles:
                h.remove()
        for p, values in outs.items():
            model.get_submodule(p).set_threshold(activation_percentile(values, q))
            n += 1
    old_levels = src_meta["model_spec"].get("act_levels")
    what = (f"QCFS activations re-levelled (L={old_levels} -> {spec['act_levels']}"
            if old_levels is not None else f"ReLU activations replaced by QCFS (L={spec['act_levels']}")
    outputs = "its QCFS outputs (its learned λ not kept)" if old_levels is not None else "the ReLU outputs"
    log(f"{cfg.init_from}: {what}"
        + (f", {n} thresholds λ from the {cfg.snn.balance or 99.9} percentile of {outputs}" if n else "") + ")")
    return model


def _spikify_cfg(cnn: nn.Module, cfg: TrainConfig, calibration: torch.Tensor | None) -> SpikingNet:
    s = cfg.snn
    net = spikify(cnn, T=s.T, neuron=recipe_neuron(s.neuron), encoding=s.encoding,
                  balance=s.balance if calibration is not None else None, calibration=calibration,
                  balance_mode=s.balance_mode, time_bn=s.time_bn, spike_inputs=s.spike_inputs)
    return net


def _with_input_spikes(src: SpikingNet, src_meta: dict, cfg: TrainConfig, log) -> SpikingNet:
    """``src`` (an SNN checkpoint's network) rebuilt with ``spike_inputs`` and its weights loaded; the new
    input neuron layers start as the recipe's neuron."""
    if not cfg.snn.spike_inputs:
        raise SpikeliteError(f"init_from {cfg.init_from} has input neuron layers (spike_inputs); this run asks for "
                             "snn.spike_inputs: false (they cannot be removed from a trained SNN)")
    meta = dict(src_meta, snn=dict(src_meta.get("snn") or {}, spike_inputs=True))
    new = rebuild_model(meta)
    result = new.load_state_dict(src.state_dict(), strict=False)
    foreign = list(result.unexpected_keys) + [k for k in result.missing_keys if "_input_spike." not in k]
    if foreign:
        raise SpikeliteError(f"init_from {cfg.init_from}: adding input neuron layers changed other weights "
                             f"({', '.join(foreign[:3])})")
    added = sum(p.endswith("_input_spike") for p, _ in new.spiking_layers())
    log(f"{added} input neuron layers added to {cfg.init_from} (spike_inputs)")
    new.train(src.training)
    return new


def _initial_model(cfg: TrainConfig, train_data: ImageData, device: torch.device, log) -> tuple[nn.Module, dict | None]:
    """The model a fresh run starts from, and (for init_from) the source checkpoint's meta."""
    from ..models import create_model

    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        src, src_meta = load_model(cfg.init_from)
        _check_fits_data(src_meta["model_spec"], train_data, f"init_from {cfg.init_from}")
        src_data = (src_meta.get("config") or {}).get("data") or {}
        if src_data.get("dataset") == cfg.data.dataset:
            theirs = {k: src_data.get(k) for k in ("val_size", "split_seed")}
            ours = {"val_size": cfg.data.val_size, "split_seed": cfg.data.split_seed}
            if theirs != ours:
                raise SpikeliteError(
                    f"init_from {cfg.init_from} was trained with a different train/val split (data {theirs}, "
                    f"this run {ours}): its training images would leak into this run's validation split; "
                    "use the same data.val_size and data.split_seed")
        classes = (src_meta.get("data") or {}).get("classes")
        if classes is not None and list(classes) != list(train_data.classes):
            raise SpikeliteError(f"init_from {cfg.init_from} was trained on classes {classes[:5]}... but "
                                 f"{train_data.name} has {train_data.classes[:5]}... (different class order)")
        src.train()
        if src_meta["kind"] == "cnn" and cfg.mode == "snn" and _converts(cfg):
            cal = _calibration_batch(cfg, train_data, torch.device("cpu"))
            neuron = recipe_neuron(cfg.snn.neuron)
            signed, v_init = neuron.pop("signed", True), neuron.pop("v_init", 0.5)
            net = convert(src, T=cfg.snn.T, calibration=cal, percentile=cfg.snn.balance or 99.9, signed=signed,
                          v_init=v_init, encoding=cfg.snn.encoding, neuron=neuron)
            net.train()
            log(f"converted CNN {cfg.init_from} to an SNN (T={cfg.snn.T}, ConversionIF neurons, thresholds from "
                f"its QCFS thresholds or the {cfg.snn.balance or 99.9} percentile of {cal.shape[0]} training images, "
                "BatchNorm kept)")
            return net, src_meta
        if src_meta["kind"] == "cnn" and cfg.mode == "cnn" and _qcfs_requested(cfg, src_meta):
            src = _to_qcfs(src, src_meta, cfg, train_data, log)
            src.train()
            return src, src_meta
        if src_meta["kind"] == "cnn" and cfg.mode == "snn":
            cal = None
            if cfg.snn.balance is not None or cfg.snn.recalibrate_bn:
                cal = _calibration_batch(cfg, train_data, torch.device("cpu"))
            net = _spikify_cfg(src, cfg, cal if cfg.snn.balance is not None else None)
            n_bn = recalibrate_bn(net, cal) if cfg.snn.recalibrate_bn else 0
            net.train()
            log(f"converted CNN {cfg.init_from} to an SNN (T={cfg.snn.T}"
                + (f", thresholds balanced at the {cfg.snn.balance} percentile of {cal.shape[0]} training images"
                   if cfg.snn.balance is not None else "")
                + (f", {n_bn} BatchNorm layers recalibrated on spikes" if n_bn else "") + ")")
            return net, src_meta
        if src_meta["kind"] == "snn" and cfg.mode == "cnn":
            raise SpikeliteError(f"init_from {cfg.init_from} is an SNN checkpoint; mode cnn needs a CNN checkpoint")
        if src_meta["kind"] == "snn":
            if cfg.snn.spike_inputs != src.spike_inputs:
                src = _with_input_spikes(src, src_meta, cfg, log)
                if cfg.snn.recalibrate_bn:  # the convs after the new layers read spikes now
                    n_bn = recalibrate_bn(src, _calibration_batch(cfg, train_data, torch.device("cpu")))
                    log(f"{n_bn} BatchNorm layers recalibrated on spikes")
            src.T = cfg.snn.T
            if cfg.snn.time_bn != src.time_bn:
                if cfg.snn.time_bn == "shared":
                    raise SpikeliteError(f"init_from {cfg.init_from} has per-step BatchNorm; this run asks for "
                                         "snn.time_bn: shared (per-step statistics cannot be merged back)")
                n_bn = per_step_batchnorm(src, cfg.snn.T)
                log(f"{n_bn} BatchNorm layers of {cfg.init_from} made per-step (T={cfg.snn.T})")
        log(f"starting from the weights of {cfg.init_from} ({src_meta['kind']})")
        return src, src_meta
    cnn = create_model(cfg.model.name, num_classes=train_data.num_classes, image_size=train_data.image_size,
                       in_chans=train_data.in_chans, width=cfg.model.width, **cfg.model.options)
    if cfg.mode == "cnn":
        return cnn, None
    cal = _calibration_batch(cfg, train_data, torch.device("cpu")) if cfg.snn.balance is not None else None
    return _spikify_cfg(cnn, cfg, cal), None
