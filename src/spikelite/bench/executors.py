"""Executors (:class:`LocalExecutor`, :class:`RayExecutor`, :func:`make_executor`) and the progress display."""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import sys
import threading
from pathlib import Path

from ..errors import SpikeliteError
from .cells import Cell, _read_history, build_spec, run_cell
from .spec import BenchSpec, Resources

# ----------------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------------


class LocalExecutor:
    """Runs one cell at a time in this process (the default)."""

    name = "local"
    capacity = 1

    def __init__(self):
        self._queue: list = []

    def start(self) -> None:
        pass

    def submit(self, spec: BenchSpec, cell: Cell, run_dir: Path, dep_fps: dict, on_stage) -> None:
        self._queue.append((spec, cell, run_dir, dep_fps, on_stage))

    def wait(self) -> tuple[Cell, dict]:
        spec, cell, run_dir, dep_fps, on_stage = self._queue.pop(0)
        return cell, run_cell(spec, cell, run_dir, dep_fps=dep_fps, on_stage=on_stage)

    def running(self) -> int:
        return len(self._queue)

    def shutdown(self) -> None:
        self._queue.clear()


def _ray_cell(spec_dict: dict, cell_dict: dict, run_dir: str, dep_fps: dict, threads: int) -> dict:
    """The body of a Ray task: one cell, in a worker process."""
    spec = build_spec(spec_dict, check_paths=False, check_cells=False)
    return run_cell(spec, Cell.from_dict(cell_dict), run_dir, dep_fps=dep_fps, threads=threads)


class RayExecutor:
    """Every cell a Ray task asking for ``resources.cpus`` CPUs and ``resources.gpus`` GPUs.

    ``address`` connects to a running cluster (``ray start --head`` / ``ray://...``); without it a
    Ray instance is started on this machine (or one already initialised in this process is used).
    The run directory must be on storage every node sees (a shared filesystem) on a multi-node
    cluster: cells read their dependencies' checkpoints from it.
    """

    name = "ray"
    capacity = 1 << 30  # Ray queues tasks by their resources

    def __init__(self, address: str | None = None, resources: Resources | None = None,
                 init_kwargs: dict | None = None):
        self.address = address
        self.resources = resources or Resources()
        self.init_kwargs = dict(init_kwargs or {})
        self._started_here = False
        self._pending: dict = {}
        self._remote = None

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise SpikeliteError("the ray executor needs the ray package: pip install 'spikelite[cluster]'") from None
        if not ray.is_initialized():
            kw = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kw["address"] = self.address
            try:
                ray.init(**kw)
            except Exception as exc:
                raise SpikeliteError(f"cannot start or reach Ray ({type(exc).__name__}: {exc})") from None
            self._started_here = True
        self._remote = ray.remote(_ray_cell)

    def submit(self, spec: BenchSpec, cell: Cell, run_dir: Path, dep_fps: dict, on_stage) -> None:
        threads = max(1, int(math.floor(self.resources.cpus)))
        ref = self._remote.options(num_cpus=self.resources.cpus, num_gpus=self.resources.gpus,
                                   name=f"spikelite:{cell.id}").remote(
            spec.to_dict(), cell.to_dict(), str(Path(run_dir).resolve()), dict(dep_fps), threads)
        self._pending[ref] = cell

    def wait(self) -> tuple[Cell, dict]:
        import ray

        done, _ = ray.wait(list(self._pending), num_returns=1)
        ref = done[0]
        cell = self._pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:  # the worker died (out of memory, node lost ...)
            msg = f"Ray task failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            result = {"id": cell.id, "cell": cell.to_dict(), "status": "failed", "error": msg, "seconds": 0.0,
                      "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        return cell, result

    def running(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        if self._pending:
            import ray

            for ref in list(self._pending):
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            self._pending.clear()
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False


def make_executor(spec: BenchSpec, **kwargs):
    if spec.executor == "ray":
        return RayExecutor(spec.address, spec.resources, **kwargs)
    return LocalExecutor()


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class _Progress:
    """One bar for the grid and one for the running cell (epochs, then evaluation and energy)."""

    def __init__(self, total: int, done: int, enabled: bool, lines: bool, out=None):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.lines = lines
        self.out = out or sys.stdout
        self.grid = tqdm(total=total, initial=done, desc="grid", unit="cell", position=0, disable=not enabled,
                         dynamic_ncols=True, leave=True)
        self.cell = tqdm(total=1, desc="cell", unit="epoch", position=1, disable=not enabled, dynamic_ncols=True,
                         leave=False)
        self._watch: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._epochs = 0

    def write(self, msg: str) -> None:
        if not self.lines:
            return
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=self.out)
        else:
            print(msg, file=self.out, flush=True)

    def cell_started(self, cell: Cell, running: int = 1) -> None:
        with self._lock:
            desc = cell.id if running <= 1 else f"{running} cells running, latest {cell.id}"
            self.cell.reset(total=1)
            self.cell.set_description_str(desc[:60], refresh=False)
            self.cell.set_postfix_str("starting", refresh=True)

    def on_stage(self, name: str, info: dict) -> None:
        with self._lock:
            if name == "train":
                self._stop_watch()
                epochs = max(int(info.get("epochs") or 0), 0)
                self._epochs = epochs
                self.cell.reset(total=epochs + 2)
                self.cell.set_postfix_str("train", refresh=True)
                if info.get("log") and self.enabled:
                    self._start_watch(Path(info["log"]))
            elif name in ("evaluate", "energy"):
                self._stop_watch()
                target = self._epochs + (1 if name == "evaluate" else 2) - 1
                self.cell.n = max(self.cell.n, target)
                self.cell.set_postfix_str(name, refresh=False)
                self.cell.refresh()
            else:
                self.cell.set_postfix_str(name, refresh=True)

    def _start_watch(self, log: Path) -> None:
        self._stop.clear()

        def watch():
            while not self._stop.wait(1.0):
                rows = _read_history(log.parent)
                done = sum(1 for r in rows if (r.get("epoch") or 0) >= 1)
                with self._lock:
                    if done > self.cell.n:
                        self.cell.n = min(done, self._epochs)
                        self.cell.refresh()

        self._watch = threading.Thread(target=watch, daemon=True)
        self._watch.start()

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._stop.set()
            self._watch = None

    def cell_finished(self, cell: Cell, result: dict) -> None:
        with self._lock:
            self._stop_watch()
            self.cell.n = self.cell.total
            self.cell.refresh()
            self.grid.update(1)
        self.write(_result_line(result))

    def close(self) -> None:
        with self._lock:
            self._stop_watch()
        self.cell.close()
        self.grid.close()


def _result_line(result: dict) -> str:
    cid = result.get("id")
    if result.get("status") == "ok":
        m = result.get("metrics") or {}
        e = result.get("_energy_mj")
        return (f"  ok       {cid}: {m.get('eval_split')} acc {100 * m.get('accuracy', 0):.2f}%  "
                f"F1 {m.get('macro_f1', 0):.4f}  {e if e is not None else float('nan'):.4g} mJ  "
                f"({result.get('seconds', 0):.0f} s)")
    if result.get("status") == "done":
        return f"  done     {cid} (finished earlier)"
    return f"  {result.get('status', '?'):<8} {cid}: {result.get('error')}"
