"""The native operator is built once (issue #28): processes that need it at the same time compile it once,
the others wait for that build and load it, and a build says on stderr that it runs and how long it took."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spikelite import native as _native

ops = _native.ops()
pytestmark = pytest.mark.skipif(ops is None, reason=f"native kernels unavailable: {_native._STATE.get('error')}")
PREBUILT = str(_native.library_path(_native._compiler())) if ops is not None else ""

# The build is replaced by a copy of the library this process loaded, after a pause that keeps it running
# while the other process asks for it; every call is counted.
CHILD = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from spikelite import native

    def counted_build(compiler, target):
        with open(os.environ["COUNT"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{target}.{os.getpid()}.part"
        shutil.copy(os.environ["PREBUILT"], tmp)
        os.replace(tmp, target)
        return target

    native.build = counted_build
    ready = Path(os.environ["READY"])
    (ready / str(os.getpid())).touch()
    while len(list(ready.iterdir())) < int(os.environ["N"]):  # start together
        time.sleep(0.01)
    print("OPS", native.ops() is not None, flush=True)
""")


def test_processes_building_into_an_empty_cache_compile_once_and_all_load_it(tmp_path):
    cache, ready = tmp_path / "cache", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "SPIKELITE_CACHE": str(cache), "PREBUILT": PREBUILT, "COUNT": str(tmp_path / "count"),
           "READY": str(ready), "N": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "OPS True" in out, err
    assert len((tmp_path / "count").read_text().split()) == 1  # one build
    assert [f.name for f in cache.iterdir()] == [Path(PREBUILT).name]  # the library; no lock or temporary left
    errs = sorted((err for _, err in outs), key=lambda e: "spikelite: compiling" not in e)
    builder, waiter = errs
    lines = [ln for ln in builder.splitlines() if ln.startswith("spikelite:")]
    assert len(lines) == 2 and "compiling the native LIF operator" in lines[0] and "about a minute" in lines[0]
    assert "native LIF operator compiled in" in lines[1] and " s: " in lines[1]
    assert "spikelite: compiling" not in waiter  # it waited for the first one's build and loaded it
    assert "waiting for another process that is compiling the native LIF operator" in waiter
    # a later process loads the cached build and says nothing
    (ready / "later").mkdir()
    later = subprocess.run([sys.executable, "-c", CHILD], env={**env, "READY": str(ready / "later"), "N": "1"},
                           capture_output=True, text=True, timeout=300)
    assert "OPS True" in later.stdout and "spikelite:" not in later.stderr, later.stderr
    assert len((tmp_path / "count").read_text().split()) == 1
