"""The SDK's logic modules do no I/O, and only iris_mesh/sockets imports zmq (only membership zeroconf)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3] / "iris_mesh"
_SANS_IO = ("client/_session.py", "client/_sends.py", "client/_dedup.py", "client/_edges.py", "client/_errors.py",
            "client/_types.py", "client/_options.py", "messaging/_client_frames.py")
_IO = {"zmq", "zeroconf", "threading", "time", "asyncio", "socket", "queue", "iris_mesh.sockets"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def hits(names: set[str], forbidden: set[str]) -> set[str]:
    return {n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)}


@pytest.mark.parametrize("module", _SANS_IO)
def test_module_is_sans_io(module: str) -> None:
    assert not hits(imports(ROOT / module), _IO), f"{module} does I/O"


@pytest.mark.parametrize("path", sorted((ROOT / "client").glob("*.py")), ids=lambda p: p.name)
def test_the_sdk_imports_neither_zmq_nor_zeroconf(path: Path) -> None:
    assert not hits(imports(path), {"zmq", "zeroconf"})
