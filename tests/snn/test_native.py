"""The native C++ LIF operator (spikelite/csrc/kernels.cpp): same spikes and gradients as the eager fused path,
every layout, no-grad calls, and the build: cached, written atomically, and optional."""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from spikelite import native as _native
from spikelite.snn import IF, LIF

ops = _native.ops()
needs_native = pytest.mark.skipif(ops is None, reason=f"native kernels unavailable: {_native._STATE.get('error')}")


@needs_native
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid", "triangle", "rectangle"])
def test_native_equals_fused_for_every_variant(surrogate):
    g = torch.Generator().manual_seed(0)
    for v_reset, decay, detach, dtype in itertools.product([0.0, None, -0.5], [True, False], [True, False],
                                                         [torch.float32, torch.float64]):
        x = (torch.randn(5, 4, 6, 3, 3, generator=g, dtype=dtype) * 1.5 + 0.3).requires_grad_()
        kw = dict(tau=2.0, v_reset=v_reset, decay_input=decay, detach_reset=detach, surrogate=surrogate)
        native, fused = LIF(**kw, backend="native"), LIF(**kw, backend="fused")
        s, s_ref = native(x), fused(x)
        assert "NativeLIF" in s.grad_fn.name()
        assert 0.02 < s.mean() < 0.95  # firing and silence both exercised
        assert torch.equal(s, s_ref), kw  # the forward rounds exactly as the Python formula
        w = torch.randn(s.shape, generator=g, dtype=dtype)
        gx, = torch.autograd.grad(s, x, w)
        gx_ref, = torch.autograd.grad(s_ref, x, w)
        if dtype == torch.float64:
            assert torch.allclose(gx, gx_ref, rtol=1e-12, atol=1e-13), (kw, (gx - gx_ref).abs().max())
            continue
        # float32: both round differently (the sigmoid's a·e/(1+e)² against a·s·(1-s)); measured against
        # the float64 gradient, the native one is as accurate as the fused one
        x64 = x.detach().double().requires_grad_()
        truth, = torch.autograd.grad(LIF(**kw, backend="fused").double()(x64), x64, w.double())
        err, err_ref = (gx.double() - truth).abs().max(), (gx_ref.double() - truth).abs().max()
        assert err <= 2 * err_ref + 1e-6 and err < 1e-5, (kw, float(err), float(err_ref))


@needs_native
def test_native_if_neuron_and_other_taus():
    x = (torch.randn(6, 3, 40) * 0.8).requires_grad_()
    for make in (lambda b: IF(surrogate="atan", backend=b), lambda b: LIF(tau=3.7, surrogate="sigmoid", backend=b),
                 lambda b: LIF(tau=1.5, v_threshold=0.6, v_reset=None, backend=b)):
        s, s_ref = make("native")(x), make("fused")(x)
        assert torch.equal(s, s_ref)
        gx, = torch.autograd.grad(s.sum(), x)
        gx_ref, = torch.autograd.grad(s_ref.sum(), x)
        assert torch.allclose(gx, gx_ref, rtol=1e-5, atol=1e-6)


@needs_native
def test_native_keeps_every_layout_and_reads_views():
    T = 3
    torch.manual_seed(0)
    base = torch.rand(T, 2, 3, 4, 6) * 2
    layouts = [  # (input, read in place)
        (base, True),
        (base.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3), True),  # channels_last per step
        (base.reshape(T * 2, 3, 4, 6).contiguous(memory_format=torch.channels_last).view(T, 2, 3, 4, 6), True),
        (base.reshape(T, 6, 24).transpose(1, 2), True),                   # a transposed view
        (base.transpose(0, 1), False),                                     # time not outermost: copied
        (base[:, :, :, ::2], False),                                       # a strided slice: copied
    ]
    for x, in_place in layouts:
        x = x.detach().requires_grad_(True)
        s = LIF(backend="native")(x)
        assert "NativeLIF" in s.grad_fn.name()
        assert s.stride() == (x.stride() if in_place else s.contiguous().stride())  # the layout comes back
        w = torch.randn(x.shape)
        (s * w).sum().backward()
        xr = x.detach().contiguous().requires_grad_(True)
        s_ref = LIF(backend="fused")(xr)
        (s_ref * w).sum().backward()
        assert torch.equal(s, s_ref)
        assert torch.allclose(x.grad, xr.grad, atol=1e-6, rtol=0)
    # a gradient arriving in another layout than the input's
    x = layouts[1][0].detach().requires_grad_(True)
    s = LIF(backend="native")(x)
    w = torch.randn(x.shape)
    gx, = torch.autograd.grad(s, x, w.contiguous())
    gx_ref, = torch.autograd.grad(LIF(backend="fused")(x), x, w.contiguous())
    assert torch.allclose(gx, gx_ref, atol=1e-6, rtol=0)


@needs_native
def test_native_saves_its_input_not_h_and_a_broadcast_input_as_one_step():
    """The operator saves X (H is recomputed in backward); an input broadcast over time (direct encoding's
    first neuron layer) is read in place and saved as its one step."""
    T = 4
    torch.manual_seed(1)
    for one in (torch.rand(2, 3, 5, 6) * 2,
                (torch.rand(2, 3, 5, 6) * 2).contiguous(memory_format=torch.channels_last)):
        for surrogate in ("sigmoid", "atan"):
            leaf = one.clone().requires_grad_(True)
            x = leaf.unsqueeze(0).expand(T, *leaf.shape)
            saved = []

            def pack(t):
                saved.append(t)
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                s = LIF(surrogate=surrogate, backend="native")(x)
            assert "NativeLIF" in s.grad_fn.name()
            assert len(saved) == 1 and saved[0].untyped_storage().nbytes() == one.numel() * 4
            assert s.stride()[1:] == one.stride() and s.stride(0) == one.numel()  # each step in the input's layout
            w = torch.randn(s.shape)
            (s * w).sum().backward()
            ref_leaf = one.clone().requires_grad_(True)
            s_ref = LIF(surrogate=surrogate, backend="fused")(ref_leaf.unsqueeze(0).expand(T, *one.shape).contiguous())
            (s_ref * w).sum().backward()
            assert torch.equal(s, s_ref)
            assert torch.allclose(leaf.grad, ref_leaf.grad, atol=1e-5, rtol=1e-5)
    # a T-outermost input is saved as itself (no copy, no H)
    x = (torch.rand(3, 2, 7) * 2).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        LIF(backend="native")(x)
    assert len(saved) == 1 and saved[0] is x


@needs_native
def test_native_without_autograd_keeps_nothing_and_fires_the_same():
    x = torch.rand(4, 8, 16) * 2
    lif = LIF(surrogate="atan", backend="native")
    with torch.no_grad():
        s = lif(x)
    assert s.grad_fn is None and not s.requires_grad
    with torch.inference_mode():
        s2 = lif(x)
    assert torch.equal(s, s2) and torch.equal(s, LIF(surrogate="atan", backend="fused")(x))
    # the operator's pieces: forward returns H, backward (from the input, H recomputed) equals the
    # autograd node's
    h_seq = ops.lif_forward(x, 2.0, 1.0, 0.0, True, False)[1]
    h_ref = torch.empty_like(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        h_ref[t] = v + (x[t] - v) / 2.0
        v = torch.where(h_ref[t] >= 1.0, torch.zeros_like(v), h_ref[t])
    assert torch.equal(h_seq, h_ref)
    g = torch.randn_like(x)
    xg = x.clone().requires_grad_()
    gx, = torch.autograd.grad(lif(xg), xg, g)
    assert torch.equal(ops.lif_backward(x, g, 2.0, 1.0, 0.0, 2.0, True, False, False, 1), gx)


@needs_native
def test_native_rejects_what_it_cannot_run():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.lif(torch.ones(2, 3, dtype=torch.int64), 2.0, 1.0, 0.0, 2.0, True, False, False, 1)
    with pytest.raises(RuntimeError, match="gradient of shape"):
        ops.lif_backward(torch.ones(2, 3), torch.ones(2, 1), 2.0, 1.0, 0.0, 2.0, True, False, False, 1)
    with pytest.raises(RuntimeError, match="unknown surrogate"):
        ops.lif(torch.ones(2, 3), 2.0, 1.0, 0.0, 2.0, True, False, False, 9)
    # LIF itself routes such inputs elsewhere: bfloat16 takes the compiled/fused path
    x = torch.rand(3, 2, 5, dtype=torch.bfloat16) * 2
    s = LIF(backend="native")(x)
    assert s.dtype == torch.bfloat16 and "NativeLIF" not in str(getattr(s.grad_fn, "name", lambda: "")())


@needs_native
def test_lif_records_the_eager_formula_when_traced():
    # under torch.jit.trace LIF runs neither the operator (spikelite.native.runs_on refuses tracing) nor a compiled
    # kernel: a traced network holds plain aten ops (loadable without the library), fires the same spikes, and
    # tracing leaves the compiled kernels usable
    lif = LIF(surrogate="atan").eval()
    x = torch.rand(4, 2, 6, generator=torch.Generator().manual_seed(0)) * 2
    assert "NativeLIF" in lif(x.clone().requires_grad_()).grad_fn.name()  # eager: the operator
    with torch.no_grad():
        traced = torch.jit.trace(lif, (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "spikelite_native" not in graph and "aten::" in graph
    y = torch.rand(4, 3, 6, generator=torch.Generator().manual_seed(1)) * 2  # another batch
    with torch.no_grad():
        torch.testing.assert_close(traced(y), lif(y), atol=0, rtol=0)
    from spikelite.snn.neuron import _KERNELS
    assert not _KERNELS.broken


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_build_is_cached_and_atomic_and_a_broken_compiler_falls_back(tmp_path):
    probe = """
        import warnings, torch
        from spikelite import native as _native
        from spikelite.snn import LIF
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            x = torch.rand(3, 2, 5, requires_grad=True) * 2
            s = LIF(surrogate="atan")(x)
            s.sum().backward()
        print("OPS", _native.ops() is not None)
        print("NODE", s.grad_fn.name())
        print("WARN", [str(m.message) for m in w if "native" in str(m.message)])
    """
    # a compiler that fails: one warning naming the failure, the neuron still works, nothing is cached
    bad = _run(probe, CXX="false", SPIKELITE_CACHE=str(tmp_path / "bad"))
    assert bad.returncode == 0, bad.stderr
    assert "OPS False" in bad.stdout and "native LIF kernels unavailable" in bad.stdout
    left = sorted(p.suffix for p in (tmp_path / "bad").iterdir())
    assert left == [".failed"], left  # no library, no temporary: only the record of why
    again = _run(probe, CXX="false", SPIKELITE_CACHE=str(tmp_path / "bad"))
    assert "OPS False" in again.stdout and "delete it to retry" in again.stdout  # not attempted again
    # switched off: silently not used
    off = _run(probe, SPIKELITE_NATIVE="0", SPIKELITE_CACHE=str(tmp_path / "off"))
    assert off.returncode == 0 and "OPS False" in off.stdout and "WARN []" in off.stdout
    if ops is None:
        pytest.skip("no working C++ compiler here")
    good = _run(probe, SPIKELITE_CACHE=str(tmp_path / "good"))
    assert good.returncode == 0, good.stderr
    assert "OPS True" in good.stdout and "NativeLIF" in good.stdout and "WARN []" in good.stdout
    built = list((tmp_path / "good").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # the library, no temporary left behind
    mtime = built[0].stat().st_mtime_ns
    again = _run(probe, SPIKELITE_CACHE=str(tmp_path / "good"))
    assert "OPS True" in again.stdout and built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt


def _pair_paths(net) -> tuple[list[str], list]:
    """The backward node of every recomputed BatchNorm -> neuron pair in the net's training body."""
    from spikelite.snn.recompute import RecomputedNeuron

    names: list[str] = []
    handles = [m.register_forward_hook(lambda m, a, out: names.append(out.grad_fn.name()))
               for m in net._training_body().modules() if isinstance(m, RecomputedNeuron)]
    return names, handles


@needs_native
@pytest.mark.parametrize("case", ["default", "if-soft-float64", "momentum-none", "frozen-bn", "channels-last"])
def test_recomputed_pairs_run_as_one_native_operator_with_identical_results(case):
    """recompute_neurons' BatchNorm -> LIF pairs run as spikelite_native::bn_lif: the same loss, the same
    gradients bit for bit and the same running statistics as the two layers stored as usual (the stem's
    pair included, whose output is broadcast over T)."""
    import copy

    import torch.nn.functional as F

    from spikelite import spikify
    from spikelite.models import create_model

    torch.manual_seed(0)
    neuron = {"kind": "if", "v_reset": None, "surrogate": "triangle"} if case == "if-soft-float64" else None
    dtype = torch.float64 if case == "if-soft-float64" else torch.float32
    plain = spikify(create_model("squeezenet1_1", num_classes=10, image_size=32), T=3, neuron=neuron).to(dtype)
    plain.train()
    bns = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if case == "momentum-none":
        for m in bns:
            m.momentum = None
    if case == "frozen-bn":
        for m in bns[::2]:
            m.eval()
    x, y = torch.randn(4, 3, 32, 32, dtype=dtype), torch.randint(0, 10, (4,))
    if case == "channels-last":
        plain = plain.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    fast.recompute_neurons = True
    names, handles = _pair_paths(fast)
    for _ in range(2):  # two steps: the running statistics move twice
        for net in (plain, fast):
            torch.manual_seed(1)
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
    for h in handles:
        h.remove()
    assert names and all("NativeBNLIF" in n for n in names), names
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert torch.equal(p.grad, q.grad), n
    for (n, b), c in zip(plain.named_buffers(), fast.buffers()):
        assert torch.equal(b, c), n


@needs_native
def test_recomputed_pairs_with_hooks_keep_the_python_path():
    import copy

    import torch.nn.functional as F

    from spikelite import spikify
    from spikelite.models import create_model

    torch.manual_seed(0)
    plain = spikify(create_model("squeezenet1_1", num_classes=10, image_size=32), T=2).train()
    fast = copy.deepcopy(plain)
    fast.recompute_neurons = True
    seen = []
    bn = next(m for m in fast.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    names, handles = _pair_paths(fast)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for net in (plain, fast):
        torch.manual_seed(1)  # the same dropout mask
        F.cross_entropy(net(x), y).backward()
    assert seen  # the hooked BatchNorm was called as a module
    assert any("Recompute" in n for n in names) and any("NativeBNLIF" in n for n in names), names
    for (n, p), q in zip(plain.named_parameters(), fast.parameters()):
        assert torch.equal(p.grad, q.grad), n


@needs_native
def test_native_conversion_if_equals_the_python_steps_for_every_variant(monkeypatch):
    """ConversionIF's inference forward as one C++ call: the same outputs, membrane and count to the bit as its
    Python steps, for signed/unsigned, bursts and rates, both float dtypes, channels-last views and windows."""
    from spikelite.snn import ConversionIF

    g = torch.Generator().manual_seed(0)
    calls = []
    real = ConversionIF._forward_native

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(ConversionIF, "_forward_native", spy)
    for signed, (burst, rate), dtype, cl in itertools.product([True, False], [(1, 1), (4, 1), (8, 2)],
                                                              [torch.float32, torch.float64], [False, True]):
        n = ConversionIF(v_threshold=0.731, signed=signed, burst=burst, rate=rate)
        x = torch.randn(6, 3, 5, 4, 4, generator=g, dtype=dtype) * 0.9
        if cl:  # each step channels-last: the kernel reads the view in its own layout and keeps it
            x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        th = n.v_threshold.to(dtype)
        with torch.no_grad():
            out, (v, c) = n._forward_fast(x, th)
            calls.clear()
            with monkeypatch.context() as m:
                m.setattr(ConversionIF, "_forward_native", lambda *a, **k: None)
                ref, (v_ref, c_ref) = n._forward_fast(x, th)
            assert torch.equal(out, ref) and torch.equal(v, v_ref), (signed, burst, rate, dtype, cl)
            assert (c is None) == (c_ref is None) and (c is None or torch.equal(c, c_ref))
            assert out.stride() == ref.stride()
            assert (out < 0).any() == signed and (out.abs() > th * 1.5).any() == (burst > 1)  # each rule exercised
            # windows: 4 + 2 steps from the handed-over state are the 6 steps of one call
            a, state = n._forward_fast(x[:4], th)
            b, _ = n._forward_fast(x[4:], th, state, 4)
            assert torch.equal(torch.cat([a, b]), out)
    assert calls and all(calls)
    # where it does not run (tracing, other dtypes) the Python steps do
    n = ConversionIF(v_threshold=0.5)
    assert n._forward_native(torch.ones(2, 3, dtype=torch.bfloat16), torch.tensor(0.5), None, 0) is None
    with pytest.raises(RuntimeError, match="both the membrane and the count"):
        ops.conversion_if_steps(torch.ones(2, 3), torch.zeros(3), None, 1.0, 0.5, True, 1, 1, 0)
    with pytest.raises(RuntimeError, match="rate <= burst"):
        ops.conversion_if_steps(torch.ones(2, 3), None, None, 1.0, 0.5, True, 1, 2, 0)


@needs_native
def test_native_conversion_if_training_equals_the_python_steps():
    """Fine-tuning a converted network: ConversionIF's training forward on the native kernel gives the Python
    steps' outputs and input gradients to the bit (the straight-through mask included), and its learned
    threshold's gradient up to the order of summation."""
    from spikelite.snn import ConversionIF

    g = torch.Generator().manual_seed(1)
    for signed, (burst, rate), dtype, cl, learn in itertools.product(
            [True, False], [(1, 1), (4, 1), (8, 2)], [torch.float32, torch.float64], [False, True], [False, True]):
        n = ConversionIF(v_threshold=0.731, signed=signed, burst=burst, rate=rate, learn_threshold=learn).to(dtype)
        x0 = torch.randn(5, 3, 6, 4, 4, generator=g, dtype=dtype) * 0.9
        if cl:
            x0 = x0.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        w = torch.randn(x0.shape, generator=g, dtype=dtype)
        got = []
        for native in (True, False):
            x = x0.clone().requires_grad_()
            n.zero_grad()
            out = n(x) if native else n._forward_autograd(x, n.v_threshold.to(dtype))
            out.backward(w)
            got.append((out.detach(), x.grad, n.v_threshold.grad.clone() if learn else None, out.grad_fn.name()))
        (o, gx, gth, node), (o_ref, gx_ref, gth_ref, _) = got
        assert "ConversionIFTrain" in node
        case = (signed, burst, rate, dtype, cl, learn)
        assert torch.equal(o, o_ref) and torch.equal(gx, gx_ref), case
        assert 0 < (gx == 0).float().mean() < 1, case  # the mask both passes and stops gradients
        if learn:
            assert torch.allclose(gth, gth_ref, rtol=1e-5 if dtype == torch.float32 else 1e-12), case


def _qcfs_pair(levels=4, threshold=1.5, dtype=torch.float32):
    from spikelite.models.qcfs import QCFS

    q = QCFS(levels, threshold=threshold).to(dtype)
    eager = QCFS(levels, threshold=threshold).to(dtype)
    eager._native_ok = lambda x: False  # the eager formula, on the same λ
    return q, eager


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided", "big"])
def test_native_qcfs_equals_the_eager_formula(dtype, layout):
    # the learned-λ QCFS (models/qcfs.py) runs spikelite_native::qcfs_forward/backward: the forward bit for bit
    # the eager formula's, the input gradient the same up to its rounding of (g·λ)/λ, λ's up to summation order
    g = torch.Generator().manual_seed(3)
    shape = (64, 96, 32, 32) if layout == "big" else (6, 8, 5, 7)  # big: the vectorised blocks of the reduction
    x = torch.randn(*shape, generator=g, dtype=dtype) * 2
    x.view(-1)[:6] = torch.tensor([0.0, 1.5, 3.0, -0.0, 0.75, 1.5 / 8], dtype=dtype)  # clamp edges, rounding ties
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=3)[..., ::2]  # not dense: copied for the kernel
    grad = torch.randn(*shape, generator=g, dtype=dtype)
    for levels, lam in ((4, 1.5), (8, 0.37), (1, 2.0)):
        q, eager = _qcfs_pair(levels, lam, dtype)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = q(xa), eager(xb)
        assert "QCFSNative" in ya.grad_fn.name() and "QCFSNative" not in yb.grad_fn.name()
        assert torch.equal(ya, yb)
        ya.backward(grad)
        yb.backward(grad)
        tol = 1e-6 if dtype == torch.float32 else 1e-14
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=tol * grad.abs().max().item())
        assert ((xa.grad == 0) == (xb.grad == 0)).all()  # the same elements inside the clamp
        torch.testing.assert_close(q.lam.grad, eager.lam.grad, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-6)
        with torch.no_grad():  # evaluation runs the same kernel
            assert torch.equal(q(x), eager(x))


@needs_native
def test_native_qcfs_trains_a_network_like_the_eager_one():
    # a small QCFS CNN: one step's outputs equal and its weight gradients within float rounding of the eager ones
    from spikelite.models import create_model
    from spikelite.models import qcfs as Q

    torch.manual_seed(0)
    m = create_model("squeezenet1_1", num_classes=10, image_size=32, act_levels=4, act_threshold=1.0).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    def step(native):
        for mod in m.modules():
            if isinstance(mod, Q.QCFS):
                if native:
                    mod.__dict__.pop("_native_ok", None)
                else:
                    mod._native_ok = lambda x: False
        m.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        out = m(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    out_n, g_n = step(True)
    out_e, g_e = step(False)
    assert torch.equal(out_n, out_e)
    for name, ge in g_e.items():
        if ge.norm() > 1e-4:  # conv biases before BatchNorm get ~0 gradients: rounding noise only
            assert (g_n[name] - ge).norm() <= 1e-4 * ge.norm(), name
