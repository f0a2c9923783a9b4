"""spikelite.energy.counting: exact fan-out of every conv geometry (brute force and the all-ones-kernel
formula) and the binary-input test."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikelite.energy import conv_fanout, is_binary


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the machine's 2 cores are shared; intra-op threads oversubscribe
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# fan-out: brute force and the all-ones-kernel formula
# ----------------------------------------------------------------------------------------------


def _brute_conv(m: nn.Module, x: torch.Tensor) -> int:
    """Loop over every (output element, input channel of its group, kernel tap) and count the taps that
    read a nonzero real input element. Non-zero padding modes pad the input first (F.pad)."""
    nd = x.dim() - 2
    mask = (x != 0).to(torch.float64)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pads = [(0, 0)] * nd
        else:
            pads = [((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for d, k in zip(m.dilation, m.kernel_size)]
    else:
        pads = [(p, p) for p in m.padding]
    if m.padding_mode != "zeros":
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        mask = F.pad(mask, flat, mode=m.padding_mode)
        pads = [(0, 0)] * nd
    real = mask.shape[2:]
    padded = [n + lo + hi for n, (lo, hi) in zip(real, pads)]
    outs = [(p - d * (k - 1) - 1) // s + 1 for p, d, k, s in zip(padded, m.dilation, m.kernel_size, m.stride)]
    cin_g = m.in_channels // m.groups
    cout_g = m.out_channels // m.groups
    mk = mask.numpy()
    total = 0
    for b in range(mk.shape[0]):
        for g in range(m.groups):
            for o in itertools.product(*[range(n) for n in outs]):
                hits = 0
                for ci in range(g * cin_g, (g + 1) * cin_g):
                    for tap in itertools.product(*[range(k) for k in m.kernel_size]):
                        idx = [oo * s + t * d - lo for oo, s, t, d, (lo, _) in zip(o, m.stride, tap, m.dilation, pads)]
                        if all(0 <= i < n for i, n in zip(idx, real)) and mk[(b, ci, *idx)] != 0:
                            hits += 1
                total += hits * cout_g  # every output channel of the group reads the same taps
    return total


def _brute_conv_transpose(m: nn.Module, x: torch.Tensor, out_shape) -> int:
    """Every nonzero input element scatters to out_channels/groups filters at each tap that lands inside
    the output."""
    nd = x.dim() - 2
    mk = (x != 0).numpy()
    cin_g = m.in_channels // m.groups
    cout_g = m.out_channels // m.groups
    total = 0
    for b, ci, *pos in zip(*[t.tolist() for t in torch.nonzero(torch.from_numpy(mk), as_tuple=True)]):
        del ci, b  # every input channel reaches cout_g outputs
        for tap in itertools.product(*[range(k) for k in m.kernel_size]):
            o = [p * s - pd + t * d for p, s, pd, t, d in zip(pos, m.stride, m.padding, tap, m.dilation)]
            if all(0 <= oo < n for oo, n in zip(o, out_shape[2:])):
                total += cout_g
    assert cin_g * m.groups == m.in_channels and nd == len(out_shape) - 2
    return total


def _ones_kernel_count(m: nn.Module, x: torch.Tensor) -> int:
    """The issue's formula: the same conv on the nonzero mask with an all-ones kernel, summed."""
    ones = copy.deepcopy(m).double()
    with torch.no_grad():
        ones.weight.fill_(1.0)
        if ones.bias is not None:
            ones.bias.zero_()
        return int(ones((x != 0).double()).sum().round())


CONVS = [
    lambda: nn.Conv2d(4, 6, 3, padding=1),
    lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
    lambda: nn.Conv2d(4, 6, 3, stride=2, padding=0),
    lambda: nn.Conv2d(4, 6, 5, stride=2, padding=2, dilation=2),
    lambda: nn.Conv2d(4, 6, (3, 1), stride=(1, 2), padding=(1, 0)),
    lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
    lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4),  # depthwise, channel multiplier 2
    lambda: nn.Conv2d(4, 6, 1),
    lambda: nn.Conv2d(4, 6, 4, padding="same"),  # even kernel: asymmetric padding
    lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2),
    lambda: nn.Conv2d(4, 6, 3, padding="valid"),
    lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, padding_mode="replicate"),
    lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular", groups=2),
    lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1),
    lambda: nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("make", CONVS, ids=lambda f: repr(f()))
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_conv_fanout_matches_brute_force_and_ones_kernel(make, density):
    torch.manual_seed(0)
    m = make()
    nd = m.weight.dim() - 2
    shape = (2, m.in_channels) + ((7,) * nd if nd < 3 else (4, 5, 5))
    x = (torch.rand(shape) < density).float()
    out = m(x)
    got = conv_fanout(m, x, out)
    assert got == _brute_conv(m, x)
    assert got == _ones_kernel_count(m, x)


@pytest.mark.parametrize("make", [
    lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2),
    lambda: nn.ConvTranspose2d(4, 4, 3, stride=1, padding=2, dilation=2, groups=4),
    lambda: nn.ConvTranspose1d(4, 6, 3, stride=3, padding=0),
], ids=lambda f: repr(f()))
def test_conv_transpose_fanout_matches_brute_force_and_ones_kernel(make):
    torch.manual_seed(1)
    m = make()
    nd = m.weight.dim() - 2
    x = (torch.rand((2, m.in_channels) + (6,) * nd) < 0.4).float()
    out = m(x)
    got = conv_fanout(m, x, out)
    assert got == _brute_conv_transpose(m, x, out.shape)
    assert got == _ones_kernel_count(m, x)


def test_fanout_of_analog_input_counts_nonzero_elements_only():
    m = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    x[x.abs() < 0.5] = 0.0
    assert conv_fanout(m, x, m(x)) == _brute_conv(m, x)


def test_is_binary():
    assert is_binary(torch.tensor([0.0, 1.0, 1.0]))
    assert is_binary(torch.zeros(3, 4))  # a silent layer
    assert is_binary(torch.tensor([True, False]))
    assert is_binary(torch.tensor([0, 1], dtype=torch.int64))
    assert is_binary(torch.zeros(0))
    assert not is_binary(torch.tensor([0.0, 0.5]))
    assert not is_binary(torch.tensor([0.0, -1.0]))  # ternary spikes are not binary here
    assert not is_binary(torch.tensor([0.0, 2.0]))
    assert not is_binary(torch.tensor([float("nan"), 1.0]))
