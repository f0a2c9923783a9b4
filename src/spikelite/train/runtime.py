"""What a run needs around the model: the forward wrapper DDP sees, mixed precision, the distributed
environment and device, the CSV log and progress bar."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write
from .._runtime import resolve_device

# ----------------------------------------------------------------------------------------------
# Runtime: the forward wrapper, mixed precision, distributed runs, logs
# ----------------------------------------------------------------------------------------------


class _TrainForward(nn.Module):
    """What DDP wraps: the network's forward, or its per-step outputs for the TET loss."""

    def __init__(self, net: nn.Module, steps: bool):
        super().__init__()
        self.net = net
        self.steps = steps

    @property
    def wrapped(self) -> nn.Module:  # what checkpoint.unwrap() looks for
        return self.net

    def forward(self, x):
        return self.net.forward_steps(x) if self.steps else self.net(x)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _seed_for(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class _Dist:
    """torchrun's environment: rank, world size and the device to communicate on."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised_here = False
        self.comm_device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.initialised_here = True
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")

    def teardown(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device)
        dist.all_reduce(buf)
        return buf.to(t.device)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.enabled:
            return [t.clone()]
        import torch.distributed as dist

        buf = t.to(self.comm_device)
        out = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return [o.cpu() for o in out]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def is_main_process() -> bool:
    """False on the ranks of a ``torchrun`` run other than 0 (the one that writes and prints)."""
    return _Dist().main


def _resolve_device(spec: str, dist_env: _Dist) -> torch.device:
    device = resolve_device(spec)
    if device.type == "cuda":
        if dist_env.enabled:
            device = torch.device("cuda", dist_env.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


class _NonFiniteLoss(Exception):
    pass


CSV_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_f1", "epoch_seconds",
               "data_seconds", "compute_seconds", "data_share", "eval_seconds", "samples_per_second")


def _fmt_csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _write_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in history:
        w.writerow([_fmt_csv(row.get(c)) for c in CSV_COLUMNS])
    atomic_write(path, buf.getvalue())


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                unit="batch")
