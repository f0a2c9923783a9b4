"""One writer per run folder (issue #28): a second train into a folder in use fails at once with exit 2 and
the holder named; a holder killed with SIGKILL leaves nothing that blocks --resume; the lock itself."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spikelite import SpikeliteError
from spikelite import train as T
from spikelite._io import exclusive_lock, run_lock
from spikelite.cli import main as cli_main

FLAGS = ["--model", "shufflenetv2_x0_3", "--width", "0.25", "--dataset", "digits", "--image-size", "8",
         "--threads", "1", "--quiet", "--no-tensorboard", "--batch-size", "32", "--lr", "0.05",
         "--train-subset", "64", "--val-subset", "32", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _isolated(isolated_run):  # tests/conftest.py: own cache, eager kernels, one thread
    yield


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s run lock (as a training run does) until it is killed."""
    src = str(Path(T.__file__).resolve().parents[2])
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {src!r})
        from spikelite._io import run_lock
        with run_lock({str(folder)!r}, "spikelite train"):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_train_into_a_folder_in_use_fails_at_once_and_a_killed_holder_blocks_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["train", *FLAGS, "--out", str(out)]) == 0  # a finished run to resume
    assert not (out / ".lock").exists()  # released (and removed) when the run ended
    holder = _holder(out)
    try:
        capsys.readouterr()
        t0 = time.perf_counter()
        assert cli_main(["train", *FLAGS, "--out", str(out), "--resume"]) == 2
        took = time.perf_counter() - t0
        err = capsys.readouterr().err
        assert f"{out} is in use by spikelite train (pid {holder.pid}" in err, err
        assert "one writer at a time" in err and "choose another --out" in err and len(err.splitlines()) == 1
        assert took < 5, took  # at once: no data loaded, no model built
        before = (out / "last.pt").stat().st_mtime_ns
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").exists()  # the killed holder's file stays behind; its lock went with it
    assert (out / "last.pt").stat().st_mtime_ns == before  # the refused run wrote nothing
    assert cli_main(["train", *FLAGS, "--out", str(out), "--resume"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and not (out / ".lock").exists()


def test_the_lock_names_its_holder_and_cleans_up_after_itself(tmp_path):
    folder = tmp_path / "new" / "run"
    with run_lock(folder, "spikelite bench", instead="choose another --out") as lock:
        note = json.loads(lock.read_text())
        assert note["pid"] == os.getpid() and note["what"] == "spikelite bench" and note["host"]
        # a second holder, even in the same process, is refused (flock locks belong to the open file)
        with pytest.raises(SpikeliteError, match=r"in use by spikelite bench \(pid \d+ on .*another output folder"):
            with run_lock(folder, "spikelite train"):
                pass
        cfg = T.load_config(None, {"model.name": "shufflenetv2_x0_3", "data.dataset": "digits", "out": str(folder),
                                   "quiet": True})
        with pytest.raises(SpikeliteError, match="is in use by spikelite bench"):
            T.train(cfg)  # train() takes the lock before it reads or builds anything
    assert not folder.exists()  # created for the lock and left empty: removed again
    kept = tmp_path / "kept"
    with run_lock(kept, "x"):
        (kept / "result.txt").write_text("1")
    assert sorted(p.name for p in kept.iterdir()) == ["result.txt"]


def test_exclusive_lock_waits_for_the_holder(tmp_path):
    path = tmp_path / "lib.lock"
    waited = []
    src = str(Path(T.__file__).resolve().parents[2])
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {src!r})
        from spikelite._io import exclusive_lock
        with exclusive_lock({str(path)!r}):
            print("locked", flush=True)
            time.sleep(1.0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        with exclusive_lock(path, on_wait=lambda: waited.append(True)):
            assert proc.poll() is not None or time.perf_counter() - t0 > 0.3  # it had let go first
    finally:
        proc.wait()
    assert waited == [True] and not path.exists()
