"""Training stops on NaN/inf gradients, not only on a NaN/inf loss (issue #28, item 1), and keeps the last
good checkpoint."""

from pathlib import Path

import pytest
import torch

from spikelite import SpikeliteError
from spikelite import checkpoint as C
from spikelite import data as D
from spikelite import train as T
from spikelite.train import loop as TL

TINY = {"model.name": "shufflenetv2_x0_3", "model.width": 0.25, "data.dataset": "digits", "data.image_size": 8,
        "threads": 1, "quiet": True, "tensorboard": False, "batch_size": 32, "optim.lr": 0.05,
        "data.val_subset": 96, "data.train_subset": 256}  # 8 steps an epoch


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: own cache, eager kernels, one thread
    yield


def _poison_gradients_at(monkeypatch, step: int) -> None:
    """From training step ``step`` on the loss keeps its value but its gradient is NaN: ``where`` picks the
    finite branch forward, and backward multiplies the other branch's NaN derivative (sqrt at -1) by 0."""
    calls = {"n": 0}
    real = TL._classification_loss

    def poisoned(out, y, ls):
        calls["n"] += 1
        loss = real(out, y, ls)
        if calls["n"] < step:
            return loss
        neg = out.sum() * 0 - 1
        return loss + torch.where(neg < 0, torch.zeros_like(neg), neg.sqrt())

    monkeypatch.setattr(TL, "_classification_loss", poisoned)


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_nan_gradients_with_a_finite_loss_stop_the_run(tmp_path, monkeypatch, grad_clip):
    # NaN gradients in the last step of the run: without the check the run ended "fine", its last.pt
    # holding NaN weights
    _poison_gradients_at(monkeypatch, 16)
    cfg = T.load_config(None, {**TINY, "out": str(tmp_path / "run"), "epochs": 2, "optim.grad_clip": grad_clip})
    with pytest.raises(SpikeliteError, match=r"the gradients became NaN/inf \(the loss was still finite.*\) in epoch 2 "
                                             r"\(step 16\); the last good checkpoint is .*last.pt"):
        T.train(cfg)
    ckpt = C.read_checkpoint(Path(cfg.out) / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["train_state"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_nan_input_in_a_spiking_run_is_named(tmp_path, monkeypatch):
    # an SNN run whose data turn NaN: the network refuses the input by name (before any gradient)
    real_next = D.BatchLoader.__iter__

    def nan_batches(self):
        for x, y in real_next(self):
            yield torch.full_like(x, float("nan")), y

    monkeypatch.setattr(D.BatchLoader, "__iter__", nan_batches)
    cfg = T.load_config(None, {**TINY, "out": str(tmp_path / "snn"), "epochs": 1, "mode": "snn", "snn.T": 2})
    with pytest.raises(SpikeliteError, match="input holds .* non-finite value"):
        T.train(cfg)
