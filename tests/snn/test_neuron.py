"""LIF neuron: equivalence with SpikingJelly, fused vs reference path, statelessness, learnables."""

import itertools
import math

import pytest
import torch

from spikelite import SpikeliteError
from spikelite.snn import IF, LIF
from spikelite.snn.surrogate import SURROGATES, Surrogate, get_surrogate

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

CASES = list(itertools.product([0.0, None, -0.5], [True, False], [False, True], ["sigmoid", "atan"], [2.0, 3.0]))


def _sj(v_reset, decay_input, detach_reset, sur, tau):
    fn = sj_surrogate.Sigmoid() if sur == "sigmoid" else sj_surrogate.ATan()
    return sj_neuron.LIFNode(tau=tau, decay_input=decay_input, v_reset=v_reset, detach_reset=detach_reset,
                             surrogate_function=fn, step_mode="m", store_v_seq=True)


@pytest.mark.parametrize("v_reset,decay_input,detach_reset,sur,tau", CASES)
@pytest.mark.parametrize("backend", ["fused", "torch", "compiled", "native"])
def test_matches_spikingjelly(v_reset, decay_input, detach_reset, sur, tau, backend):
    g = torch.Generator().manual_seed(CASES.index((v_reset, decay_input, detach_reset, sur, tau)))
    x = (torch.randn(8, 4, 3, 5, generator=g) * 1.5 + 0.4).requires_grad_()
    ref = _sj(v_reset, decay_input, detach_reset, sur, tau)
    s_ref = ref(x)
    w = torch.randn(s_ref.shape, generator=g)
    (s_ref * w).sum().backward()
    gx_ref = x.grad.clone()
    x.grad = None

    if backend == "compiled" and (tau != 2.0 or v_reset == -0.5):
        pytest.skip("compiled kernels: one tau and the two reset kinds keep compile time low")
    ours = LIF(tau=tau, v_reset=v_reset, decay_input=decay_input, detach_reset=detach_reset, surrogate=sur,
               backend=backend)
    s = ours(x)
    (s * w).sum().backward()
    assert 0.01 < s.mean() < 0.95  # the case exercises firing and silence
    assert torch.equal(s, s_ref)
    assert torch.allclose(x.grad, gx_ref, atol=1e-6, rtol=0)
    # membrane: the reference path can return it; compare with SpikingJelly's v_seq
    from spikelite.snn.neuron import lif_multistep_reference

    _, v_seq = lif_multistep_reference(x.detach(), torch.tensor(tau), torch.tensor(1.0), v_reset, decay_input,
                                       detach_reset, get_surrogate(sur), return_v=True)
    assert torch.allclose(v_seq, ref.v_seq, atol=1e-6, rtol=0)


def test_auto_backend_picks_native_then_compiled_for_fixed_and_fused_for_learnable(monkeypatch):
    import spikelite.snn.neuron as nmod
    from spikelite import native as _native

    x = torch.rand(3, 2, 4, requires_grad=True) * 2
    fixed = LIF()
    out = fixed(x)
    if _native.ops() is not None:  # a C++ compiler is here: CPU tensors take the native operator
        assert "NativeLIF" in out.grad_fn.name()
    monkeypatch.setattr(nmod, "lif_multistep_native", lambda *a: None)  # as without a compiler
    out = fixed(x)
    assert type(out.grad_fn).__name__ == "_CompiledLIFBackward" or nmod._KERNELS.broken
    learn = LIF(learn_threshold=True)
    assert type(learn(x).grad_fn).__name__ == "_FusedLIFBackward"


def test_no_state_survives_a_call():
    lif = LIF()
    x = torch.rand(4, 2, 10) * 2
    a = lif(x)
    b = lif(x)
    assert torch.equal(a, b)
    assert not any(isinstance(v, torch.Tensor) and v.shape == x.shape[1:] for v in vars(lif).values())


def test_heaviside_at_zero_fires():
    lif = LIF(tau=2.0, v_threshold=1.0, decay_input=False)
    x = torch.tensor([[1.0, 0.999]])  # H = x exactly at t = 0
    assert lif(x).tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("name", sorted(set(SURROGATES)))
def test_every_surrogate_fused_equals_reference(name):
    x = (torch.randn(5, 3, 7) * 1.3).requires_grad_()
    outs = []
    for backend in ("fused", "torch"):
        s = LIF(surrogate=name, backend=backend)(x)
        (s * torch.arange(s.numel()).view_as(s).sin()).sum().backward()
        outs.append((s.detach(), x.grad.clone()))
        x.grad = None
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-6)
    assert outs[0][1].abs().sum() > 0


def test_surrogate_grad_areas():
    # Sigmoid, atan, triangle and rectangle are unit-area derivatives; fast sigmoid keeps snnTorch's
    # unnormalised form (peak 1, area 2/alpha).
    xs = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    for name, cls in SURROGATES.items():
        sur = cls()
        area = torch.trapezoid(sur.grad(xs), xs).item()
        expected = 2.0 / sur.alpha if name in ("fast_sigmoid", "superspike") else 1.0
        assert abs(area - expected) < 0.01 * expected + 2e-3, (name, area, expected)


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("decay_input", [True, False])
def test_learnable_tau_and_threshold_gradients_match_autograd(v_reset, detach_reset, decay_input):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, dtype=torch.float64) * 1.5 + 0.5
    grads = []
    for backend in ("fused", "torch"):
        lif = LIF(tau=2.5, v_threshold=0.8, v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input,
                  learn_tau=True, learn_threshold=True, backend=backend).double()
        xi = x.clone().requires_grad_()
        s = lif(xi)
        (s * torch.linspace(-1, 1, s.numel(), dtype=torch.float64).view_as(s)).sum().backward()
        grads.append((s.detach(), xi.grad, lif.tau_param.grad, lif.v_threshold.grad))
    (s0, gx0, gt0, gth0), (s1, gx1, gt1, gth1) = grads
    assert torch.equal(s0, s1)
    assert torch.allclose(gx0, gx1, atol=1e-10)
    assert torch.allclose(gt0, gt1, atol=1e-10) and gt0.abs() > 0
    assert torch.allclose(gth0, gth1, atol=1e-10) and gth0.abs() > 0


def test_plif_parametrisation_and_state_dict():
    lif = LIF(tau=3.0, learn_tau=True)
    assert math.isclose(float(lif.tau), 3.0, rel_tol=1e-6)
    assert set(lif.state_dict()) == {"tau_param", "v_threshold"}
    fixed = LIF(tau=3.0)
    assert set(fixed.state_dict()) == {"tau_value", "v_threshold"}
    assert not list(fixed.parameters())


def test_if_neuron_integrates_without_leak():
    x = torch.full((4, 1), 0.3)
    assert IF()(x).flatten().tolist() == [0.0, 0.0, 0.0, 1.0]  # 0.3, 0.6, 0.9, 1.2 -> fire


def test_custom_callable_surrogate_takes_reference_path():
    calls = []

    class Box(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return (x >= 0).float()

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            (x,) = ctx.saved_tensors
            return g * (x.abs() < 0.5).float()

    lif = LIF(surrogate=Box.apply)
    assert not lif.uses_fused()
    x = torch.randn(3, 5, requires_grad=True)
    lif(x).sum().backward()
    assert calls and x.grad is not None


def test_custom_surrogate_subclass_is_fused():
    class Gauss(Surrogate):
        name = "gauss"

        def grad(self, x):
            return torch.exp(-x * x * self.alpha) * math.sqrt(self.alpha / math.pi)

    lif = LIF(surrogate=Gauss(2.0))
    assert lif.uses_fused()
    x = torch.randn(3, 5, requires_grad=True)
    lif(x).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=1.0), "tau"),
        (dict(v_threshold=0.0), "v_threshold"),
        (dict(v_reset=1.5), "v_reset"),
        (dict(surrogate="nope"), "unknown surrogate"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(SpikeliteError, match=match):
        LIF(**kwargs)


def test_bad_input_rank():
    with pytest.raises(SpikeliteError, match="sequence"):
        LIF()(torch.randn(5))


def test_compiled_kernels_compile_once_per_T_whatever_the_layout():
    # 4-D and 5-D inputs, NCHW and channels_last, a transposed view: the compiled kernels read every
    # one as a flat [T, M] tensor in its memory order, so one compilation serves them all, the
    # output keeps the input's layout and spikes/gradients equal the eager fused path's.
    import spikelite.snn.neuron as nmod
    from torch._dynamo.utils import counters

    T = 5  # a T no other test uses: its kernels are compiled here
    torch.manual_seed(0)
    base = torch.rand(T, 2, 3, 4, 6) * 2
    layouts = [
        base,                                                        # contiguous 5-D
        base.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),  # channels_last per step
        base.reshape(T, 6, 4, 6),                                    # 4-D
        base.reshape(T, 6, 24).transpose(1, 2),                      # a transposed view
    ]
    graphs = []
    for x in layouts:
        x = x.detach().requires_grad_(True)
        w = torch.randn(x.shape)
        s = LIF(backend="compiled")(x)
        if nmod._KERNELS.broken:
            pytest.skip("no C++ compiler for torch.compile here")
        assert type(s.grad_fn).__name__ == "_CompiledLIFBackward"
        (s * w).sum().backward()
        xr = x.detach().clone().requires_grad_(True)
        s_ref = LIF(backend="fused")(xr)
        (s_ref * w).sum().backward()
        assert torch.equal(s, s_ref)
        assert torch.allclose(x.grad, xr.grad, atol=1e-6, rtol=0)
        assert s.stride() == x.stride()  # the layout comes back
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == [graphs[0]] * 3, graphs  # no recompilation after the first layout
