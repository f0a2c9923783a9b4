"""The training loop: :func:`train` runs one recipe to the end (resumable, checkpointed, DDP-aware);
:func:`source_cnn` finds the CNN an SNN checkpoint descends from (the default distillation teacher)."""


from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write, run_lock
from ..allocator import apply_malloc_mode
from ..checkpoint import model_from_checkpoint, describe_model, load_model, read_checkpoint, save_checkpoint
from ..data import Augment, BatchLoader, ImageData, default_augment
from ..errors import SpikeliteError
from ..snn import SpikingNet
from .config import LATE_KEYS, RUNTIME_KEYS, STATE_DTYPES, TrainConfig, _flatten, recipe_view
from .metrics import _classification_loss, _inference_copy, distillation_loss, evaluate
from .optim import _make_optimizer, lr_at
from .prepare import _check_fits_data, _data_info, _initial_model, _load_run_data
from .runtime import (
    _amp_dtype,
    _autocast,
    _Dist,
    _fmt_duration,
    _NonFiniteLoss,
    _progress,
    _resolve_device,
    _seed_for,
    _TrainForward,
    _write_csv,
)

# ----------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------


TEACHER_SOURCE = "source"  # distill.teacher: the CNN the run's model descends from


def source_cnn(start: str | os.PathLike, max_depth: int = 32) -> str:
    """The path of the first CNN checkpoint up ``start``'s lineage: ``start`` itself when it is a CNN, else
    the checkpoint its ``source_checkpoint`` record names (the ``--init-from`` of the run that wrote it; a
    ``spikelite prune`` output keeps the record of the checkpoint it pruned), and so on. Recorded paths are
    absolute (older checkpoints' relative ones are read from the current directory); a missing one is an
    error naming the link that broke."""
    path, chain = str(start), []
    for _ in range(max_depth):
        if not Path(path).is_file():
            via = f" (recorded as the source of {chain[-1]})" if chain else ""
            raise SpikeliteError(f"distill.teacher: source: checkpoint {path}{via} is not on disk; "
                                 "name the teacher's path instead")
        ckpt = read_checkpoint(path)
        if ckpt.get("kind") == "cnn":
            return path
        chain.append(path)
        src = ckpt.get("source_checkpoint") or {}
        if not src.get("path"):
            raise SpikeliteError(f"distill.teacher: source: {' <- '.join(reversed(chain))} records no source "
                                 "checkpoint (an SNN trained from scratch has no CNN to distil from); name "
                                 "the teacher's path instead")
        if str(src["path"]) in chain:
            raise SpikeliteError(f"distill.teacher: source: the checkpoints' sources form a cycle at {src['path']}")
        path = str(src["path"])
    raise SpikeliteError(f"distill.teacher: source: no CNN within {max_depth} links of {start}")


def _load_teacher(cfg: TrainConfig, train_data: ImageData, data_info: dict, device: torch.device,
                  source: str | None = None) -> tuple[nn.Module | None, dict | None]:
    """The frozen teacher of ``distill.teacher`` (eval mode, no gradients), checked against the run's data;
    its ``meta["path"]`` is the file it was read from. ``source`` is the checkpoint the run's model came from
    (``init_from``), which ``distill.teacher: source`` follows to its CNN."""
    path = cfg.distill.teacher
    if not path or cfg.distill.weight == 0:  # distillation off: the teacher is not needed, not even on disk
        return None, None
    if path == TEACHER_SOURCE:
        if not source:
            raise SpikeliteError("distill.teacher: source needs a run that starts from a checkpoint (init_from); "
                                 "this one trains from scratch — name the teacher's path instead")
        path = source_cnn(source)
    elif not Path(path).is_file():
        raise SpikeliteError(f"distill.teacher: no such checkpoint: {path}")
    teacher, meta = load_model(path, device=device)
    where = f"distill.teacher {path}"
    spec = describe_model(teacher)["model_spec"]
    _check_fits_data(spec, train_data, where)
    classes = (meta.get("data") or {}).get("classes")
    if classes is not None and list(classes) != list(data_info["classes"]):
        raise SpikeliteError(f"{where} was trained on other classes (or another class order) than this run's data: "
                             f"{list(classes)[:5]}... vs {list(data_info['classes'])[:5]}...")
    teacher.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    # its forward as an inference copy (BatchNorm folded, NHWC on the CPU): the same outputs up to rounding
    return _inference_copy(teacher, device), {**meta, "path": path}


def _recipe_diff(old: dict, new: dict) -> list[str]:
    a, b = recipe_view(_flatten(old)), recipe_view(_flatten(new))
    return sorted(k for k in set(a) | set(b) if k not in RUNTIME_KEYS and a.get(k) != b.get(k))


def _rng_state(dist_env: _Dist, device: torch.device) -> dict:
    state = {"torch": dist_env.gather(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = dist_env.gather(torch.cuda.get_rng_state(device))
    return state


def _set_rng_state(state: dict, dist_env: _Dist, device: torch.device) -> None:
    torch.set_rng_state(state["torch"][dist_env.rank])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(state["cuda"][dist_env.rank], device)


def _params_checksum(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        vals = [p.detach().double().flatten() for p in model.parameters()]
        flat = torch.cat(vals) if vals else torch.zeros(1, dtype=torch.float64)
        idx = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        return torch.stack([flat.sum(), (flat * idx).sum()]).cpu()


def _grad_norm(model: nn.Module) -> torch.Tensor:
    """The total L2 norm of the model's gradients: NaN or inf when any gradient is (no device sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total_norm = getattr(nn.utils, "get_total_norm", None)
    if total_norm is not None:
        return total_norm(grads)
    # torch < 2.6: clip_grad_norm_ returns the same norm; with max_norm=inf it scales by exactly 1
    return nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], float("inf"))


def _absolute_paths(cfg: TrainConfig) -> None:
    """Make the recipe's paths absolute (from the current directory), so that the checkpoints, which
    record the recipe and its sources, stay usable from any directory and wherever they are moved."""
    def absolute(p):
        return p if p is None else os.path.abspath(os.path.expanduser(str(p)))

    cfg.out = absolute(cfg.out)
    cfg.init_from = absolute(cfg.init_from)
    if cfg.distill.teacher != TEACHER_SOURCE:
        cfg.distill.teacher = absolute(cfg.distill.teacher)
    cfg.data.root = absolute(cfg.data.root)
    cfg.data.cache_dir = absolute(cfg.data.cache_dir)


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Run a training recipe; returns the run summary (also written to ``<out>/summary.json``).

    With ``resume=True`` and a ``last.pt`` in ``config.out``, the run continues from it (the recipe
    must match the checkpoint's, except for :data:`RUNTIME_KEYS`); without one it starts fresh.
    Without ``resume`` an existing ``last.pt`` is an error (nothing is overwritten).
    """
    if not isinstance(config, TrainConfig):
        raise SpikeliteError(f"train() takes a TrainConfig, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    _absolute_paths(cfg)
    dist_env = _Dist()
    prev_threads = torch.get_num_threads()
    prev_benchmark = torch.backends.cudnn.benchmark
    device = _resolve_device(cfg.device, dist_env)
    rng_devices = [device] if device.type == "cuda" else []
    held = contextlib.ExitStack()
    try:
        if dist_env.main:  # one writer per run folder, before anything in it is read (docs/reliability.md)
            held.enter_context(run_lock(cfg.out, "spikelite train", instead="choose another --out"))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        dist_env.setup(device)
        with torch.random.fork_rng(devices=rng_devices):
            return _Run(cfg, dist_env, device, resume).run()
    finally:
        torch.set_num_threads(prev_threads)
        torch.backends.cudnn.benchmark = prev_benchmark
        dist_env.teardown()
        held.close()


def _stored_optimizer_state(state: dict, dtype: torch.dtype) -> dict:
    """The optimizer's ``state_dict`` as last.pt stores it: floating per-parameter tensors (momentum, moments) at
    ``dtype``; counters and one-element tensors (Adam's ``step``) unchanged. torch's ``load_state_dict`` casts them
    back to each parameter's dtype on resume."""
    if dtype == torch.float32:
        return state

    def cast(v):
        return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and v.numel() > 1 else v

    return {**state, "state": {k: {n: cast(v) for n, v in st.items()} for k, st in state["state"].items()}}


class _Run:
    def __init__(self, cfg: TrainConfig, dist_env: _Dist, device: torch.device, resume: bool):
        self.cfg = cfg
        self.dist = dist_env
        self.device = device
        self.out = Path(cfg.out)
        self.last_path = self.out / "last.pt"
        self.best_path = self.out / "best.pt"
        self.show = dist_env.main and not cfg.quiet
        self.resume_ckpt: dict | None = None
        if self.last_path.exists():
            if not resume:
                raise SpikeliteError(f"{self.out} already holds a run ({self.last_path}); pass --resume to continue "
                                     "it, or choose another --out")
            self.resume_ckpt = read_checkpoint(self.last_path)
            if self.resume_ckpt.get("train_state") is None:
                raise SpikeliteError(f"{self.last_path} has no training state to resume from")
            stored = self.resume_ckpt.get("config") or {}
            diff = _recipe_diff(stored, cfg.to_dict())
            if diff:
                a, b = _flatten(stored), _flatten(cfg.to_dict())
                changes = "; ".join(f"{k}: {a.get(k, LATE_KEYS.get(k))!r} -> {b.get(k)!r}" for k in diff[:6])
                raise SpikeliteError(f"cannot resume {self.last_path} with a different recipe ({changes}); "
                                     "start a new run (another --out) instead")

    def log(self, msg: str) -> None:
        if self.show:
            print(msg, flush=True)

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, dist_env = self.cfg, self.dist
        if cfg.batch_size % dist_env.world_size:
            raise SpikeliteError(f"batch_size {cfg.batch_size} must be divisible by the number of processes "
                                 f"({dist_env.world_size})")
        apply_malloc_mode(cfg.malloc)  # before the first large tensor
        self.train_data, self.val_data = _load_run_data(cfg)
        self.data_info = _data_info(cfg, self.train_data)
        self.src_meta = None
        if self.resume_ckpt is not None:
            stored_info = self.resume_ckpt.get("data") or {}
            if stored_info.get("classes") not in (None, self.data_info["classes"]):
                raise SpikeliteError(f"the data at {cfg.data.root} has other classes than the run being resumed")
            model = model_from_checkpoint(self.resume_ckpt, str(self.last_path))
            if isinstance(model, SpikingNet):
                model.T = cfg.snn.T  # the checkpoint records snn.eval_T when that is set: train at T
        else:
            model, self.src_meta = _initial_model(cfg, self.train_data, torch.device("cpu"), self.log)
        _check_fits_data(describe_model(model)["model_spec"], self.train_data, "model")
        self.model = model.to(self.device)
        nhwc = cfg.channels_last if isinstance(cfg.channels_last, bool) else self.device.type == "cpu"
        if nhwc:
            # NHWC weights make every convolution (and so every activation) channels_last: the same
            # math up to float32 rounding; a CPU speed option (docs/performance.md), on there by default.
            self.model.to(memory_format=torch.channels_last)
        self.is_snn = isinstance(model, SpikingNet)
        if self.is_snn:
            # same gradients, less memory (docs/performance.md); auto: on the CPU, where it costs no time
            model.recompute_neurons = cfg.recompute_neurons if isinstance(cfg.recompute_neurons, bool) \
                else self.device.type == "cpu"
            model.compact_spikes = cfg.compact_spikes  # same gradients; off: more memory, less time
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        per_rank = cfg.batch_size // dist_env.world_size
        augment = default_augment(cfg.data.dataset, self.train_data.image_size) if cfg.data.augment == "auto" \
            else Augment.from_name(cfg.data.augment)
        self.loader = BatchLoader(self.train_data, per_rank, shuffle=True, augment=augment, device=self.device,
                                  seed=cfg.seed, rank=dist_env.rank, world_size=dist_env.world_size)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.optimizer = _make_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.partial: dict = {}
        self.rng_to_restore = None
        if self.resume_ckpt is not None:
            ts = self.resume_ckpt["train_state"]
            self.optimizer.load_state_dict(ts["optimizer"])
            if self.scaler is not None and ts.get("scaler"):
                self.scaler.load_state_dict(ts["scaler"])
            self.epoch, self.batch, self.step = int(ts["epoch"]), int(ts["batch"]), int(ts["step"])
            self.history = list(self.resume_ckpt.get("history") or [])
            self.best = self.resume_ckpt.get("best")
            self.partial = dict(ts.get("partial") or {})
            if self.batch:
                if int(ts.get("world_size", 1)) != dist_env.world_size:
                    raise SpikeliteError(f"{self.last_path} was written mid-epoch by {ts.get('world_size')} "
                                         f"process(es); resume it with the same number ({dist_env.world_size} now)")
                self.rng_to_restore = ts["rng"]
            self.log(f"resuming {self.last_path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")
        self.teacher, self.teacher_meta = _load_teacher(cfg, self.train_data, self.data_info, self.device,
                                                        source=(self._source_record() or {}).get("path"))
        if self.teacher is not None:
            self.log(f"distilling from {self.teacher_meta['path']} ({self.teacher_meta.get('kind', '?').upper()}, "
                     f"weight {cfg.distill.weight}, temperature {cfg.distill.temperature})")
        self.train_module: nn.Module = _TrainForward(self.model, steps=self.is_snn and cfg.snn.tet)
        if dist_env.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_module = DDP(self.train_module, device_ids=[self.device.index] if self.device.type == "cuda"
                                    else None)
        self.tb = None
        if dist_env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()
            import yaml

            atomic_write(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except Exception:  # tensorboard not installed
                    SummaryWriter = None
                if SummaryWriter is not None:
                    self.tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=self.epoch + 1)

    # -- checkpoints ---------------------------------------------------------------------------
    def _meta(self) -> dict:
        # a pruned structure travels from the source (or resumed) checkpoint into every new one
        origin = self.src_meta if self.src_meta is not None else (self.resume_ckpt or {})
        return {
            "prune": origin.get("prune"),
            "data": self.data_info,
            "config": self.cfg.to_dict(),
            "metrics": self.history[-1] if self.history else None,
            "history": self.history,
            "best": self.best,
            "epoch": self.epoch,
            "source_checkpoint": self._source_record(),
            "teacher_checkpoint": None if self.teacher_meta is None else {
                "path": self.teacher_meta["path"], "kind": self.teacher_meta.get("kind"),
                "best": self.teacher_meta.get("best")},
        }

    def _source_record(self) -> dict | None:
        """The checkpoint this run's model started from; a resumed run keeps the record of its first start."""
        if self.src_meta is not None:
            return {"path": self.cfg.init_from, "kind": self.src_meta.get("kind"),
                    "metrics": self.src_meta.get("metrics")}
        return (self.resume_ckpt or {}).get("source_checkpoint")

    @contextlib.contextmanager
    def _at_eval_T(self):
        """The SNN at ``snn.eval_T`` steps (validation and the checkpoints' recorded T), then back at ``T``."""
        eval_T = self.cfg.snn.eval_T if self.is_snn else None
        if eval_T is None:
            yield
            return
        self.model.T = eval_T
        try:
            yield
        finally:
            self.model.T = self.cfg.snn.T

    def _save_last(self) -> None:
        # every rank joins the RNG gather; rank 0 writes
        ts = {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "world_size": self.dist.world_size,
            "optimizer": _stored_optimizer_state(self.optimizer.state_dict(), STATE_DTYPES[self.cfg.state_dtype]),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(self.dist, self.device),
            "partial": dict(self.partial),
        }
        if self.dist.main:
            meta = self._meta()  # a resumed run keeps its source record (_source_record)
            with self._at_eval_T():
                save_checkpoint(self.last_path, self.model, meta=meta, train_state=ts)

    def _save_best(self) -> None:
        if self.dist.main:
            meta = self._meta()  # a resumed run keeps its source record (_source_record)
            with self._at_eval_T():
                save_checkpoint(self.best_path, self.model, meta=meta)

    # -- one epoch -----------------------------------------------------------------------------
    def _check_finite(self, loss_sum: torch.Tensor, grads_bad: torch.Tensor) -> None:
        """Stop on a NaN/inf loss, or on NaN/inf gradients (``grads_bad``: a step since the last check had
        them; the loss can stay finite while they are not, e.g. a NaN input through spiking neurons)."""
        bad = torch.stack([~torch.isfinite(loss_sum), grads_bad]).double().cpu()
        bad = self.dist.all_reduce(bad)
        if float(bad[0]) > 0:
            raise _NonFiniteLoss("loss")
        if float(bad[1]) > 0:
            raise _NonFiniteLoss("gradients")

    def _train_epoch(self) -> dict:
        cfg, loader = self.cfg, self.loader
        e = self.epoch
        loader.set_epoch(e)
        skip = self.batch
        if skip:
            _set_rng_state(self.rng_to_restore, self.dist, self.device)
            self.rng_to_restore = None
        else:
            torch.manual_seed(_seed_for("train", cfg.seed, e, self.dist.rank))
            self.partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "data_seconds": 0.0, "compute_seconds": 0.0}
        p = self.partial
        self.train_module.train()
        check_every = 1 if self.device.type == "cpu" else 25
        bar = _progress(len(loader), skip, f"epoch {e + 1}/{cfg.epochs}",
                        self.show and sys.stderr.isatty())
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        correct_acc = torch.zeros((), dtype=torch.int64, device=self.device)
        seen_acc = 0
        grads_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        it = iter(loader)
        try:
            for i in range(len(loader)):
                t0 = time.perf_counter()
                x, y = next(it)
                if i < skip:
                    continue
                t1 = time.perf_counter()
                lr = lr_at(self.step, self.total_steps, cfg.optim, self.warmup_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with _autocast(self.device, self.amp_dtype):
                    out = self.train_module(x)
                out = out.float()
                loss = _classification_loss(out, y, cfg.optim.label_smoothing)
                logits = out.mean(0) if out.dim() == 3 else out
                if self.teacher is not None:
                    with torch.no_grad(), _autocast(self.device, self.amp_dtype):
                        target = self.teacher(x)
                    if target.is_inference():  # an inference copy's output: a normal tensor for the loss
                        target = target.clone()
                    d = cfg.distill
                    loss = (1 - d.weight) * loss + d.weight * distillation_loss(logits, target.float(), d.temperature)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.optim.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    # (the scaler's path skips the steps with inf/NaN gradients itself: they are normal in fp16)
                    if cfg.optim.grad_clip:
                        norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                    else:
                        norm = _grad_norm(self.model)
                    grads_bad |= ~torch.isfinite(norm)
                    self.optimizer.step()
                self.step += 1
                self.batch = i + 1
                n = y.shape[0]
                loss_acc += loss.detach().double() * n
                correct_acc += (logits.detach().argmax(1) == y).sum()
                seen_acc += n
                last = i + 1 == len(loader)
                save_now = cfg.save_every_steps and self.step % cfg.save_every_steps == 0 and not last
                if (i + 1) % check_every == 0 or last or save_now:
                    self._check_finite(loss_acc, grads_bad)
                    p["loss_sum"] += float(loss_acc)
                    p["correct"] += int(correct_acc)
                    p["seen"] += seen_acc
                    loss_acc.zero_()
                    correct_acc.zero_()
                    grads_bad.zero_()
                    seen_acc = 0
                    bar.set_postfix(loss=f"{p['loss_sum'] / max(p['seen'], 1):.4f}",
                                    acc=f"{p['correct'] / max(p['seen'], 1):.3f}", lr=f"{lr:.3g}", refresh=False)
                t2 = time.perf_counter()
                p["data_seconds"] += t1 - t0
                p["compute_seconds"] += t2 - t1
                bar.update(1)
                if save_now:
                    self._save_last()
        finally:
            bar.close()
        totals = self.dist.all_reduce(torch.tensor([p["loss_sum"], float(p["correct"]), float(p["seen"])],
                                                   dtype=torch.float64))
        seen = max(float(totals[2]), 1.0)
        return {"train_loss": float(totals[0]) / seen, "train_acc": float(totals[1]) / seen,
                "lr": lr_at(max(self.step - 1, 0), self.total_steps, cfg.optim, self.warmup_steps),
                "data_seconds": p["data_seconds"], "compute_seconds": p["compute_seconds"],
                "samples": int(totals[2])}

    def _evaluate(self) -> tuple[dict, float]:
        t0 = time.perf_counter()
        with self._at_eval_T():
            res = evaluate(self.model, self.val_data, batch_size=self.cfg.data.eval_batch_size, device=self.device,
                           amp_dtype=self.amp_dtype, seed=self.cfg.seed, rank=self.dist.rank,
                           world_size=self.dist.world_size)
        return res, time.perf_counter() - t0

    def _record(self, row: dict) -> None:
        self.history.append(row)
        improved = row.get("val_acc") is not None and (self.best is None or row["val_acc"] > self.best["val_acc"])
        if improved:
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"], "val_f1": row["val_f1"],
                         "val_loss": row["val_loss"]}
        return improved

    def _report(self, row: dict) -> None:
        if not self.dist.main:
            return
        _write_csv(self.out / "log.csv", self.history)
        if self.tb is not None:
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "lr", "epoch_seconds",
                      "data_share"):
                if row.get(k) is not None:
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()
        parts = [f"epoch {row['epoch']}/{self.cfg.epochs}"]
        if row.get("train_loss") is not None:
            parts.append(f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%")
        if row.get("val_acc") is not None:
            parts.append(f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}% F1 {row['val_f1']:.4f}")
        if row.get("epoch_seconds") is not None:
            parts.append(f"{row['epoch_seconds']:.1f} s (data {100 * row['data_share']:.0f}%)")
            timed = [r["epoch_seconds"] + (r.get("eval_seconds") or 0.0) for r in self.history
                     if r.get("epoch_seconds") is not None]
            left = self.cfg.epochs - row["epoch"]
            if left > 0 and timed:
                parts.append(f"ETA {_fmt_duration(left * sum(timed[-5:]) / len(timed[-5:]))}")
        self.log("  ".join(parts))

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        self._setup()
        kind = "SNN" if self.is_snn else "CNN"
        self.log(f"training {kind} {describe_model(self.model)['model_spec']['name']} on {self.train_data.name}: "
                 f"{len(self.train_data)} train / {len(self.val_data)} val images, {cfg.epochs} epochs of "
                 f"{self.steps_per_epoch} steps, device {self.device}"
                 + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
                 + (f", amp {self.amp_dtype}" if self.amp_dtype else ""))
        try:
            if self.resume_ckpt is None and (cfg.init_from or cfg.epochs == 0):
                res, dt = self._evaluate()  # what the starting point (e.g. the converted CNN) is worth
                row = {"epoch": 0, "step": 0, "val_loss": res["loss"], "val_acc": res["accuracy"],
                       "val_f1": res["macro_f1"], "eval_seconds": dt}
                self._record(row)
                self._save_last()
                if self.best is not None:
                    self._save_best()
                self._report(row)
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                stats = self._train_epoch()
                epoch_seconds = time.perf_counter() - t0
                self.epoch += 1
                self.batch = 0
                row = {"epoch": self.epoch, "step": self.step, "lr": stats["lr"], "train_loss": stats["train_loss"],
                       "train_acc": stats["train_acc"], "epoch_seconds": epoch_seconds,
                       "data_seconds": stats["data_seconds"], "compute_seconds": stats["compute_seconds"],
                       "data_share": stats["data_seconds"] / max(stats["data_seconds"] + stats["compute_seconds"],
                                                                 1e-12),
                       "samples_per_second": stats["samples"] / max(epoch_seconds, 1e-12),
                       "train_samples": stats["samples"],
                       "val_loss": None, "val_acc": None, "val_f1": None, "eval_seconds": None}
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    res, dt = self._evaluate()
                    row.update(val_loss=res["loss"], val_acc=res["accuracy"], val_f1=res["macro_f1"], eval_seconds=dt)
                improved = self._record(row)
                self.partial = {}
                self._save_last()
                if improved:
                    self._save_best()
                self._report(row)
        except _NonFiniteLoss as exc:
            good = self.last_path if self.last_path.exists() else "none (none written yet)"
            what = ("the gradients became NaN/inf (the loss was still finite: look for NaN/inf in the data too)"
                    if exc.args and exc.args[0] == "gradients" else "the loss became NaN/inf")
            raise SpikeliteError(
                f"training stopped: {what} in epoch {self.epoch + 1} (step {self.step}); "
                f"the last good checkpoint is {good}"
                f"; lower optim.lr, add optim.grad_clip or warm-up, and start a new run") from None
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.dist.enabled:
            sums = self.dist.gather(_params_checksum(self.model))
            if any(not torch.equal(sums[0], s) for s in sums[1:]):
                raise SpikeliteError("DDP processes ended with different weights (this is a bug; please report it)")
        summary = {
            "run": str(self.out),
            "kind": "snn" if self.is_snn else "cnn",
            "model": describe_model(self.model)["model_spec"]["name"],
            "dataset": self.train_data.name,
            "epochs": self.epoch,
            "steps": self.step,
            "final": self.history[-1] if self.history else None,
            "best": self.best,
            "checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path) if self.best is not None else None,
            "world_size": self.dist.world_size,
            "seconds": time.perf_counter() - t_start,
        }
        if self.dist.main:
            atomic_write(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        self.dist.barrier()
        return summary
