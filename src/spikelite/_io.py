"""Small shared jobs every stage needs once: atomic file writes, JSON files, dotted keys.

- :func:`atomic_write` writes to a temporary file beside the target, flushes and fsyncs it, gives it the
  permissions the umask allows and moves it into place: a reader sees the old file or the new one,
  never half of one, even after a crash.
- :func:`read_json` / :func:`write_json`.
- :func:`parse_value` reads a ``KEY=VALUE`` flag's value as YAML would, and :func:`set_dotted` sets a
  ``section.key`` path in a nested dict; the CLI's ``--set`` flags and bench specs share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from .errors import SpikeliteError

__all__ = ["atomic_write", "read_json", "write_json", "read_yaml_mapping", "parse_value", "set_dotted", "plain"]

Payload = Union[bytes, str, Callable[[BinaryIO], None]]


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp's temporary files are 0600)."""
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
        os.chmod(tmp, _file_mode())
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


def write_json(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON (paths as strings, tensors and arrays as lists), written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


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
