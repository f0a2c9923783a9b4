"""Small shared jobs every stage needs once: atomic file writes, JSON files, dotted keys.

- :func:`atomic_write` writes to a temporary file beside the target, flushes and fsyncs it, gives it the
  permissions the umask allows and moves it into place: a reader sees the old file or the new one,
  never half of one, even after a crash.
- :func:`read_json` / :func:`write_json`.
- :func:`parse_value` reads a ``KEY=VALUE`` flag's value as YAML would, and :func:`set_dotted` sets a
  ``section.key`` path in a nested dict; the CLI's ``--set`` flags and bench specs share them.
- :func:`run_lock`: one writer per output folder (train, bench and prune take it for their run's
  lifetime); :func:`exclusive_lock`: wait for a file lock (one build of the native operator).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

from .errors import SpikeliteError

try:
    import fcntl
except ImportError:  # Windows: no flock; the locks below do nothing there
    fcntl = None

__all__ = ["atomic_write", "read_json", "write_json", "read_yaml_mapping", "parse_value", "set_dotted", "plain",
           "run_lock", "exclusive_lock", "file_mode"]

Payload = Union[bytes, str, Callable[[BinaryIO], None]]


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (rw for everyone the umask allows): for
    files made with ``mkstemp``, which are 0600 (:func:`atomic_write`, and exports written beside their target)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, data: Payload) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function that writes into the open binary file) to
    ``path`` atomically and durably; the parent folder is created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _json_default(o):
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "tolist"):  # tensors, numpy arrays and scalars
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _is_flat(items: list) -> bool:
    return all(v is None or isinstance(v, (bool, int, float)) for v in items)


def _format_json(obj, pad: str = "") -> str:
    """Indented JSON, except that a list of numbers (a confusion-matrix row, a per-class score list) stays on
    one line: a 200-class matrix is 200 lines, not 40,000."""
    inner = pad + "  "
    if isinstance(obj, dict) and obj:
        body = ",\n".join(f"{inner}{json.dumps(str(k))}: {_format_json(v, inner)}" for k, v in obj.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(obj, list) and obj and not _is_flat(obj):
        return "[\n" + ",\n".join(inner + _format_json(v, inner) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def write_json(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON (paths as strings, tensors and arrays as lists; lists of numbers on one line),
    written atomically."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    return atomic_write(path, _format_json(plain) + "\n")


def read_json(path: str | os.PathLike) -> dict | None:
    """The JSON object in ``path``; None when the file is missing, unreadable, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_yaml_mapping(path: str | os.PathLike, what: str, *, allow_empty: bool = True) -> dict:
    """The mapping a YAML file holds (``what`` names the file in errors: "recipe file", "spec file" …).
    A missing file, invalid YAML or anything but a mapping is one SpikeliteError; an empty file is ``{}``
    (an error unless ``allow_empty``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpikeliteError(f"{what} {str(p)!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpikeliteError(f"{what} {str(p)!r} is not valid YAML: {exc}") from None
    if loaded is None and allow_empty:
        return {}
    if not isinstance(loaded, dict) or (not loaded and not allow_empty):
        got = "nothing" if loaded is None or loaded == {} else type(loaded).__name__
        raise SpikeliteError(f"{what} {str(p)!r} must hold a mapping of keys, got {got}")
    return loaded


def parse_value(text: str):
    """A flag value as YAML reads it: 'null' -> None, 'true' -> True, '2' -> 2, '[1, 2]' -> [1, 2], and a
    number YAML 1.1 leaves as a string ('5e-4') -> 0.0005; anything else stays the string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and not value.isalpha() else value
        except ValueError:
            return value
    return value


def set_dotted(d: dict, dotted: str, value, example: str = "optim.lr") -> None:
    """``d["a"]["b"]["c"] = value`` for ``dotted = "a.b.c"``, creating missing sections; a part that is
    not a section is an error (``example`` shows a valid key in it)."""
    parts = dotted.split(".")
    if not all(parts):
        raise SpikeliteError(f"bad key {dotted!r}: expected names joined by dots, e.g. {example}")
    node = d
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise SpikeliteError(f"cannot set {dotted!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def plain(obj):
    """Dataclasses, tuples and paths turned into dicts, lists and strings (checkpoint- and YAML-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


# ----------------------------------------------------------------------------------------------
# Locks: one writer per run folder, one builder per cached library
# ----------------------------------------------------------------------------------------------
#
# An exclusive flock(2) on a small file. The kernel drops it when its process ends, however it ends, so
# a kill -9 leaves nothing that blocks the next run; the file itself (which may stay behind after such
# a kill) is only a place to lock and a note of who holds it. The holder deletes the file before it lets
# go; a process that locked the old file meanwhile sees that the path now names another file (or none)
# and locks again, so two processes never both believe they hold the lock. Where flock is unavailable
# (no fcntl module: Windows) or refused (ENOLCK on some network file systems) the locks do nothing.


def _acquire(path: Path, wait: bool) -> int | None:
    """A descriptor holding an exclusive lock on ``path`` (created if missing); None when another
    process holds it and ``wait`` is false, or when this file system cannot lock (-1 then)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        except FileNotFoundError:  # the folder went away between mkdir and open: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:  # no locks on this file system: proceed unlocked
            os.close(fd)
            return -1
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
            held = os.fstat(fd)
            same = (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev)
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file as it let go: lock the file at the path now


def _release(path: Path, fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock on ``path``, from the note its holder wrote into it."""
    try:
        note = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        note = {}
    if not isinstance(note, dict) or not note.get("pid"):
        return "another process"
    where = f"pid {note['pid']}" + (f" on {note['host']}" if note.get("host") else "")
    if note.get("since"):
        where += f", since {note['since']}"
    what = note.get("what") or "another process"
    command = f"; command: {note['command']}" if note.get("command") else ""
    return f"{what} ({where}{command})"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str, *, name: str = ".lock",
             instead: str = "choose another output folder") -> Iterator[Path]:
    """Hold ``<folder>/<name>`` exclusively while the block runs: the one writer of a run folder.

    ``what`` names this process in the note the lock file holds (e.g. "spikelite train"), beside its
    pid, host, start time and command line; a second process that asks for the same lock fails at once
    with a :class:`SpikeliteError` that quotes that note and ends with ``instead`` (what to do). The
    folder is created if missing, and removed again when the block leaves it empty. The lock goes with
    the process that holds it, so a killed run blocks nothing (docs/reliability.md). Without flock
    (Windows, or a file system that refuses it) nothing is locked."""
    import datetime
    import socket
    import sys

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpikeliteError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None
    path = folder / name
    fd = -1
    if fcntl is not None:
        try:
            fd = _acquire(path, wait=False)
        except OSError as exc:
            raise SpikeliteError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        if fd is None:
            raise SpikeliteError(f"{folder} is in use by {_holder(path)}: a folder takes one writer at a time; "
                                 f"wait for that process to end, or {instead}")
        if fd >= 0:
            note = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                    "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv)}
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(note) + "\n").encode(), 0)
    try:
        yield path
    finally:
        _release(path, fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing was written into it


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` while the block runs, waiting for another holder to
    let go first (``on_wait`` is called once before such a wait). The file is created if missing and
    removed on release; a process killed while holding it blocks nothing. Without flock it does nothing."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, wait=False)
    if fd is None:
        if on_wait is not None:
            on_wait()
        fd = _acquire(path, wait=True)
    try:
        yield
    finally:
        _release(path, fd)
