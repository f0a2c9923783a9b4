"""The package's layering (docs/architecture.md) as a test: data flows one way, every import counted.

Every ``import`` / ``from ... import`` in src/spikelite (module level or inside functions, relative or absolute) is
resolved to the top-level package or module it reaches; a stage may import only the shared leaves and the stages
to its left, the leaves only each other as listed, and ``cli`` anything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "spikelite"

PIPELINE = ["data", "models", "snn", "checkpoint", "train", "energy", "prune", "bench", "report"]
LEAVES = {
    "errors": set(),
    "_io": {"errors"},
    "_runtime": {"errors"},
    "allocator": {"errors"},
    "native": {"_io", "errors"},
}
SHARED = set(LEAVES) | {"__version__"}  # `from .. import __version__` reads the package's version string


def allowed(top: str) -> set[str] | None:
    """What ``top`` may import (None: anything)."""
    if top in ("cli", "__main__", "__init__"):
        return None
    if top in LEAVES:
        return LEAVES[top]
    if top == "export":  # hangs off the checkpoint: it reads SNN checkpoints, never trains or measures
        return SHARED | set(PIPELINE[: PIPELINE.index("checkpoint") + 1])
    return SHARED | set(PIPELINE[: PIPELINE.index(top)])


def imports_by_package() -> dict[str, dict[str, list[str]]]:
    """{top-level package or module: {what it imports: [where]}}."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        top = parts[0][:-3] if len(parts) == 1 else parts[0]
        package = ["spikelite", *parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = base + (node.module.split(".") if node.module else [])
                elif (node.module or "").split(".")[0] == "spikelite":
                    module = node.module.split(".")
                else:
                    continue
                targets = [module] if len(module) > 1 else [[*module, a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".") for a in node.names if a.name.split(".")[0] == "spikelite"]
            for target in targets:
                if len(target) > 1 and target[1] != top:
                    graph[top][target[1]].append(f"{path.relative_to(SRC)}:{node.lineno}")
    return graph


def test_every_top_level_package_is_placed():
    known = set(PIPELINE) | set(LEAVES) | {"export", "cli", "__main__", "__init__"}
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
            if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").exists()}
    assert tops <= known, f"place {sorted(tops - known)} in the layering (docs/architecture.md and this test)"


def test_data_flows_one_way():
    graph = imports_by_package()
    assert graph["models"], "the import scan found nothing: it is broken"
    wrong = []
    for top, targets in sorted(graph.items()):
        ok = allowed(top)
        if ok is None:
            continue
        for target, where in sorted(targets.items()):
            if target not in ok:
                wrong.append(f"{top} imports {target} ({', '.join(where[:3])})")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(wrong)


def test_the_scan_sees_module_level_and_lazy_imports():
    # the checker itself: relative imports at module level and inside a function are both found
    graph = imports_by_package()
    assert "native" in graph["snn"] and "native" in graph["models"]
    assert any("recompute.py" in w for w in graph["snn"]["native"])  # imported inside a function there
    assert "snn" in graph["checkpoint"] and "models" in graph["snn"]
