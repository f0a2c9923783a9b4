"""Build and load spikelite's native CPU kernels (``csrc/kernels.cpp``: LIF, ConversionIF, QCFS) on first use.

The LIF layer's whole-sequence forward and backward as one C++ operator, ``torch.ops.spikelite_native.lif``,
with its autograd node in C++: a call costs one dispatcher round trip, against the Python autograd
function and two ``torch.compile`` wrapper calls of the compiled path, which dominate at T = 1–2 on small
feature maps (docs/performance.md). ``lif_steps`` runs the same forward from a given membrane and also returns
the membrane after its last step: one window of a chunked run (:mod:`spikelite.snn.window`).
``conversion_if_steps`` is :class:`~spikelite.snn.neuron.ConversionIF`'s inference forward (signed spikes,
bursts, rate; from a given membrane and count, returning both), the same arithmetic as its Python steps in
one pass over memory. It is compiled with the system's C++ compiler against the installed
torch the first time it is needed and cached under ``$SPIKELITE_CACHE`` (default
``$XDG_CACHE_HOME/spikelite`` or ``~/.cache/spikelite``), keyed by the source, torch, the compiler and the
CPU; later processes load the cached library in milliseconds. One process builds it: others that need
it meanwhile wait for that build (a file lock beside the library) and load its result. A build says on
stderr that it started and how long it took (about a minute); loading a cached build says nothing. A
build the compiler refused is recorded next to it (``.failed``, with the compiler's message) so that
later processes skip the attempt.

Nothing depends on it: without a compiler, or with ``SPIKELITE_NATIVE=0`` (or ``SPIKELITE_COMPILE=0``:
no runtime compilation at all), :func:`ops` returns None and the neurons use their compiled or eager paths.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from ._io import exclusive_lock

__all__ = ["ops", "runs_on", "library_path", "build"]

_SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
_LOCK = threading.Lock()
_STATE: dict = {}  # "ops": the loaded namespace, or "error": why it is unavailable


def _enabled() -> bool:
    return os.environ.get("SPIKELITE_NATIVE", "1") != "0" and os.environ.get("SPIKELITE_COMPILE", "1") != "0"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or "c++"
    return shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")


def _cache_dir() -> Path:
    root = os.environ.get("SPIKELITE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spikelite"


def _flags() -> list[str]:
    torch_dir = Path(torch.__file__).parent
    inc = torch_dir / "include"
    lib = torch_dir / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    # -fno-trapping-math / -fno-math-errno: no FP exceptions or errno to preserve, so selects and clamps
    # if-convert and the loops vectorise; -ffp-contract=off: no fused multiply-adds, so every operation
    # rounds as the Python formulas' do (no -ffast-math). -march=native: the cache key names the CPU.
    return ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off", "-std=c++20",
            "-shared", "-fPIC", "-fopenmp", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-L{lib}", "-lc10", "-ltorch_cpu", "-ltorch", f"-Wl,-rpath,{lib}"]


def _cpu_id() -> str:
    """The CPU's model and feature flags (built with -march=native, a library must not be loaded on a
    different CPU that shares the cache directory)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def library_path(compiler: str) -> Path:
    """Where the library built from the current source with ``compiler`` is cached."""
    key = hashlib.sha256()
    key.update(_SOURCE.read_bytes())
    for part in (torch.__version__, torch.__file__, compiler, platform.machine(), _cpu_id(), sys.version, *_flags()):
        key.update(part.encode() + b"\0")
    return _cache_dir() / f"spikelite_native_{key.hexdigest()[:16]}.so"


def build(compiler: str, target: Path) -> Path:
    """Compile ``csrc/kernels.cpp`` into ``target`` (written to a temporary file, then renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, str(_SOURCE), "-o", tmp, *_flags()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"{Path(compiler).name} exited with {proc.returncode}: " + " | ".join(tail))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _write_atomic(path: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the next process simply tries again


def _say(msg: str) -> None:
    print(f"spikelite: {msg}", file=sys.stderr, flush=True)


def _build_once(compiler: str, path: Path) -> None:
    """Build the library at ``path`` unless another process has built it (or failed to) meanwhile: the
    build runs under an exclusive lock on ``<library>.lock``, so processes that need it at the same time
    compile it once and the others wait for it (saying so) and then load it."""
    failed = path.with_suffix(".failed")
    with exclusive_lock(path.with_suffix(".lock"),
                        on_wait=lambda: _say("waiting for another process that is compiling the native LIF "
                                             f"operator into {path.parent}")):
        if path.exists():
            return
        if failed.exists():
            raise RuntimeError(f"{failed.read_text().strip()} (recorded in {failed}; delete it to retry)")
        _say(f"compiling the native LIF operator (csrc/kernels.cpp) with {Path(compiler).name}, once for this torch, "
             f"compiler and CPU; this takes about a minute (cached in {path.parent})")
        t0 = time.perf_counter()
        try:
            build(compiler, path)
        except RuntimeError as exc:  # the compiler ran and refused: record why, once
            _write_atomic(failed, str(exc))
            _say(f"compiling the native LIF operator failed after {time.perf_counter() - t0:.0f} s")
            raise
        _say(f"native LIF operator compiled in {time.perf_counter() - t0:.0f} s: {path}")


def runs_on(x: torch.Tensor) -> bool:
    """Whether the native kernels run a call on ``x``: a CPU float32/float64 tensor, not under tracing, ONNX export
    or torch.compile (they must record the eager formula), and the library built (:func:`ops`)."""
    return not (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.jit.is_tracing()
                or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or ops() is None)


def ops():
    """``torch.ops.spikelite_native`` once the library is built and loaded; None when it cannot be
    (disabled, no compiler, a failed build: warned once, with the reason)."""
    state = _STATE
    if "ops" in state:
        return state["ops"]
    if "error" in state or not _enabled():
        return None
    with _LOCK:
        if "ops" in state or "error" in state:
            return state.get("ops")
        try:
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C++ compiler found (set CXX)")
            path = library_path(compiler)
            failed = path.with_suffix(".failed")
            if failed.exists():  # an earlier process could not build it: do not pay for the attempt again
                raise RuntimeError(f"{failed.read_text().strip()} (recorded in {failed}; delete it to retry)")
            if not path.exists():
                _build_once(compiler, path)
            torch.ops.load_library(str(path))
            state["ops"] = torch.ops.spikelite_native
        except Exception as exc:  # noqa: BLE001 - any failure means: use the other paths
            state["error"] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"spikelite: native LIF kernels unavailable ({state['error']}); using the compiled "
                          "or eager paths", RuntimeWarning, stacklevel=2)
            return None
    return state["ops"]
