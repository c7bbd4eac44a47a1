"""DESIGN.md's one rule of layout: imports point downward only, cli -> evaluation -> codecs -> core -> data."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["data", "vitok", "codecs", "evaluation", "cli"]   # folder -> its rank, lowest first; vitok/ is the core


def _layer(module: str) -> int | None:
    """The rank of an absolute ``vitok...`` module (``vitok.data.io`` -> data, ``vitok.train`` -> core)."""
    parts = module.split(".")
    if parts[0] != "vitok":
        return None
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS[2:] + ["data"] else 1


def _imports(path: Path) -> list[str]:
    """Every absolute module a file imports, at its top or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_imports_point_downward_only():
    upward = [f"{path.relative_to(ROOT)} imports {module}"
              for rank, folder in enumerate(LAYERS) for path in sorted((ROOT / folder).rglob("*.py"))
              for module in _imports(path) if (_layer(module) or 0) > rank]
    assert not upward, "\n".join(upward)
