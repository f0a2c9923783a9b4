"""Batched augmentation and batching on tensors: :class:`Augment`, :func:`default_augment`, :class:`BatchLoader`."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import numpy as np
import torch

from ..errors import SpikeliteError
from .datasets import canonical_name
from .images import ImageData, _check_int, _seed_from

# ----------------------------------------------------------------------------------------------
# Augmentation and batching
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Augment:
    """Batched training augmentation, applied on the device by :class:`BatchLoader`.

    ``crop_padding``: random crop back to the image size after zero-padding every side by this many
    pixels (0: off). ``flip``: horizontal flip with probability 1/2. ``cutout``: zero (after
    normalisation, i.e. the mean colour) one ``cutout`` x ``cutout`` square at a random centre,
    clipped at the border (0: off).
    """

    flip: bool = True
    crop_padding: int = 4
    cutout: int = 0

    def __post_init__(self):
        if not isinstance(self.flip, (bool, np.bool_)):
            raise SpikeliteError(f"Augment.flip must be True or False, got {self.flip!r}")
        self.flip = bool(self.flip)
        self.crop_padding = _check_int("Augment.crop_padding", self.crop_padding, minimum=0)
        self.cutout = _check_int("Augment.cutout", self.cutout, minimum=0)

    @property
    def enabled(self) -> bool:
        return self.flip or self.crop_padding > 0 or self.cutout > 0

    @property
    def name(self) -> str:
        """Canonical spec string; ``Augment.from_name(a.name) == a``."""
        parts = (["flip"] if self.flip else []) + ([f"crop{self.crop_padding}"] if self.crop_padding else []) \
            + ([f"cutout{self.cutout}"] if self.cutout else [])
        return "+".join(parts) or "none"

    @classmethod
    def from_name(cls, spec: "str | Augment | None") -> "Augment":
        """Parse ``none``, ``standard`` (= flip+crop4), or ``+``/``,``-joined parts: ``flip``, ``crop``
        (4 px), ``crop<N>``, ``cutout`` (16 px), ``cutout<N>`` (``crop=N``/``cutout=N`` also work).
        E.g. ``standard+cutout16``, ``flip``, ``crop2``."""
        if spec is None:
            return cls(flip=False, crop_padding=0, cutout=0)
        if isinstance(spec, Augment):
            return dataclasses.replace(spec)
        if not isinstance(spec, str):
            raise SpikeliteError(f"augmentation must be a name like 'standard' or 'flip+crop4', got {spec!r}")
        flip, crop, cutout = False, 0, 0
        tokens = [t.strip().lower() for t in spec.replace(",", "+").split("+")]
        if not any(tokens):
            raise SpikeliteError("empty augmentation name; use 'none', 'standard' or e.g. 'flip+crop4'")
        for token in tokens:
            tok = token.replace("=", "").replace("_", "")
            if tok in ("none", "off", ""):
                continue
            if tok in ("standard", "default"):
                flip, crop = True, crop or 4
            elif tok in ("flip", "hflip"):
                flip = True
            elif tok.startswith("crop") and (tok[4:].isdigit() or tok == "crop"):
                crop = int(tok[4:]) if tok[4:] else 4
            elif tok.startswith("cutout") and (tok[6:].isdigit() or tok == "cutout"):
                cutout = int(tok[6:]) if tok[6:] else 16
            else:
                raise SpikeliteError(f"unknown augmentation {token!r} in {spec!r}; use 'none', 'standard', or "
                                     f"'+'-joined parts: flip, crop<N>, cutout<N> (e.g. 'flip+crop4+cutout16')")
        return cls(flip=flip, crop_padding=crop, cutout=cutout)


def default_augment(name: str, image_size: int | None = None) -> Augment:
    """The usual training augmentation for a dataset: flip + crop with padding size/8 (4 px at 32x32,
    8 px for Tiny ImageNet's 64x64); digits are not flipped (a mirrored digit is not a digit) and get a
    size/16 crop padding (2 px at 32x32, half a pixel of the original 8x8)."""
    key = canonical_name(name)
    size = image_size or {"tinyimagenet": 64, "fashion-mnist": 28}.get(key, 32)
    pad = max(1, size // 8)
    if key == "digits":
        return Augment(flip=False, crop_padding=max(1, size // 16))
    return Augment(flip=True, crop_padding=pad)


@contextlib.contextmanager
def _single_cpu_thread(active: bool):
    """Run a batch's gather/augment/normalise ops on one CPU thread, restoring the thread count at once.

    These ops are small and memory-bound: splitting them over OpenMP threads makes them slower on an
    idle machine and 20-50x slower when another process holds the cores (the team's shared 2-core
    machine measured 0.26 s vs 18 s per CIFAR epoch); see docs/data.md.
    """
    prev = torch.get_num_threads() if active else 1
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class BatchLoader:
    """Mini-batches of an :class:`ImageData` on a device, augmented and normalised with tensor ops.

    The uint8 images are copied to ``device`` once; each batch is gathered there, augmented
    (:class:`Augment`), converted to float32 and normalised with the data's mean/std. Epoch ``e``'s
    order (``shuffle``) comes from a CPU generator seeded from ``(seed, e)``, its augmentation from one
    seeded from ``(seed, e, rank)`` — never from global RNG state — so a resumed run that calls
    :meth:`set_epoch` reproduces it exactly, on any device. Call ``set_epoch(e)`` before each epoch
    (otherwise every pass repeats epoch 0). With ``world_size > 1`` the epoch's order is cut to a
    multiple of ``world_size`` (the last ``N mod world_size`` samples of that order are skipped) and
    rank ``r`` takes every ``world_size``-th sample from position ``r``: disjoint, equal-size shards.
    """

    def __init__(self, data: ImageData, batch_size: int, *, shuffle: bool = False, augment: Augment | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if not isinstance(data, ImageData):
            raise SpikeliteError(f"BatchLoader needs an ImageData (from load_split), got {type(data).__name__}")
        self.data = data
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.seed = _check_int("seed", seed)
        self.world_size = _check_int("world_size", world_size, minimum=1)
        self.rank = _check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise SpikeliteError(f"rank {self.rank} is outside 0..{self.world_size - 1} (world_size {self.world_size})")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if isinstance(augment, str):
            augment = Augment.from_name(augment)
        elif augment is not None and not isinstance(augment, Augment):
            raise SpikeliteError(f"augment must be an Augment, a name like 'standard', or None; got {augment!r}")
        # A private copy: changing the caller's Augment later cannot change this loader.
        self.augment = dataclasses.replace(augment) if augment is not None and augment.enabled else None
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise SpikeliteError(f"unknown device {device!r}: {exc}") from None
        n = len(data)
        if n == 0:
            raise SpikeliteError(f"{data.name}: the split holds no images")
        if n // self.world_size == 0:
            raise SpikeliteError(f"{data.name}: {n} images cannot be shared among {self.world_size} ranks")
        self.epoch = 0
        _, c, h, w = data.images.shape
        self._shape = (c, h, w)
        try:
            self._images = data.images.reshape(n, c * h * w).to(self.device).contiguous()
            self._labels = data.labels.to(self.device)
        except (RuntimeError, AssertionError) as exc:  # e.g. "cuda" on a machine without CUDA
            raise SpikeliteError(f"cannot put {data.name} on device {self.device}: {exc}") from None
        mean = torch.tensor(data.mean, dtype=torch.float32)
        std = torch.tensor(data.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, c, 1, 1).to(self.device)
        self._shift = (mean / std).view(1, c, 1, 1).to(self.device)
        if self.augment is not None and self.augment.crop_padding:
            p = self.augment.crop_padding
            hp, wp = h + 2 * p, w + 2 * p
            # Offset of row y of channel c inside one padded image, for the window gather in _crop.
            rows = torch.arange(c).view(c, 1) * (hp * wp) + torch.arange(h).view(1, h) * wp
            self._row_offsets = rows.reshape(1, c * h).to(self.device)
        self._ar_h = torch.arange(h, device=self.device)
        self._ar_w = torch.arange(w, device=self.device)

    # -- epoch bookkeeping ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = _check_int("epoch", epoch, minimum=0)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self.data) // self.world_size if self.world_size > 1 else len(self.data)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in batch order (CPU)."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed_from("order", self.seed, epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            order = order[: self.num_samples * self.world_size][self.rank::self.world_size]
        return order

    def augment_params(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The random augmentation parameters of this rank's samples for ``epoch`` (CPU tensors, in batch
        order): ``dy``/``dx`` crop offsets in [0, 2·pad], ``flip`` bools, ``cy``/``cx`` cutout centres."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, minimum=0)
        aug, m = self.augment, self.num_samples
        params: dict[str, torch.Tensor] = {}
        if aug is None:
            return params
        _, h, w = self._shape
        gen = torch.Generator().manual_seed(_seed_from("augment", self.seed, epoch, self.rank))
        if aug.crop_padding:
            params["dy"] = torch.randint(0, 2 * aug.crop_padding + 1, (m,), generator=gen)
            params["dx"] = torch.randint(0, 2 * aug.crop_padding + 1, (m,), generator=gen)
        if aug.flip:
            params["flip"] = torch.randint(0, 2, (m,), generator=gen).bool()
        if aug.cutout:
            params["cy"] = torch.randint(0, h, (m,), generator=gen)
            params["cx"] = torch.randint(0, w, (m,), generator=gen)
        return params

    # -- batches ------------------------------------------------------------------------------

    def _crop(self, xb: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Per-sample crop of the zero-padded batch: one index_select of image rows from an overlapping
        strided view of the padded buffer (each row of the output is a contiguous run of W pixels)."""
        b = xb.shape[0]
        c, h, w = self._shape
        p = self.augment.crop_padding
        hp, wp = h + 2 * p, w + 2 * p
        padded = xb.new_zeros((b, c, hp, wp))
        padded[:, :, p:p + h, p:p + w] = xb
        flat = padded.view(-1)
        windows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
        start = torch.arange(b, device=xb.device) * (c * hp * wp) + dy * wp + dx
        rows = (start.view(b, 1) + self._row_offsets).view(-1)
        return windows.index_select(0, rows).view(b, c, h, w)

    def _cutout(self, x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
        _, h, w = self._shape
        s = self.augment.cutout
        y0 = (cy - s // 2).view(-1, 1)
        x0 = (cx - s // 2).view(-1, 1)
        rows = (self._ar_h.view(1, h) >= y0) & (self._ar_h.view(1, h) < y0 + s)
        cols = (self._ar_w.view(1, w) >= x0) & (self._ar_w.view(1, w) < x0 + s)
        mask = rows.view(-1, 1, h, 1) & cols.view(-1, 1, 1, w)
        return x.masked_fill_(mask, 0.0)

    def _batch(self, bidx: torch.Tensor, params: dict[str, torch.Tensor], start: int, stop: int):
        c, h, w = self._shape
        xb = self._images.index_select(0, bidx).view(-1, c, h, w)
        if "dy" in params:
            xb = self._crop(xb, params["dy"][start:stop], params["dx"][start:stop])
        if "flip" in params:
            xb = torch.where(params["flip"][start:stop].view(-1, 1, 1, 1), xb.flip(3), xb)
        x = xb.float().mul_(self._scale).sub_(self._shift)
        if "cy" in params:
            x = self._cutout(x, params["cy"][start:stop], params["cx"][start:stop])
        return x, self._labels.index_select(0, bidx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices().to(self.device)
        params = {k: v.to(self.device) for k, v in self.augment_params().items()}
        m, bs = idx.numel(), self.batch_size
        for start in range(0, m, bs):
            stop = min(start + bs, m)
            if self.drop_last and stop - start < bs:
                break
            with _single_cpu_thread(self.device.type == "cpu"):
                batch = self._batch(idx[start:stop], params, start, stop)
            yield batch  # outside the single-thread scope: the model runs with all threads

    def __repr__(self) -> str:
        aug = self.augment.name if self.augment else "none"
        return (f"BatchLoader({self.data.name}, n={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={aug}, device={self.device}, rank={self.rank}/{self.world_size})")
