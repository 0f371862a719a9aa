"""Hashes of studylib's source code, for cache keys and provenance.

:func:`code_hash_of` hashes the source of the given modules and of every studylib module they import,
transitively (read from the import statements with :mod:`ast`, function-level imports included), so a
cached map's key changes when its kernel, adapter or reader changes and not when a figure, a notebook
or the docs do.  :func:`code_hash` hashes the whole package (the provenance of a report).

>>> closure = module_closure("studylib.models.noise")
>>> "studylib.models.noise" in closure and "studylib.plots" not in closure
True
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

__all__ = ["code_hash", "code_hash_of", "module_closure"]

_PKG = Path(__file__).resolve().parent
_ROOT = _PKG.parent


def _file_of(module: str) -> Path | None:
    """The source file of a studylib module or package (``__init__.py``), or None."""
    rel = Path(*module.split("."))
    for cand in (_ROOT / rel.with_suffix(".py"), _ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


@functools.lru_cache(maxsize=None)
def _imports(module: str) -> frozenset[str]:
    """The studylib modules ``module`` imports directly (a ``from pkg import name`` of a submodule counts
    as importing that submodule)."""
    path = _file_of(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "studylib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "studylib":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if _file_of(sub) is not None else base)
    out.discard(module)
    return frozenset(m for m in out if _file_of(m) is not None)


def module_closure(*modules: str) -> tuple[str, ...]:
    """``modules`` and every studylib module they import, transitively, sorted."""
    seen: set[str] = set()
    stack = [m for m in modules if _file_of(m) is not None]
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(_imports(m) - seen)
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_hash_of(*modules: str) -> str:
    """sha256 over the source (relative path + bytes) of :func:`module_closure` of ``modules``."""
    h = hashlib.sha256()
    for m in module_closure(*modules):
        p = _file_of(m)
        h.update(p.relative_to(_ROOT).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over every ``studylib/**/*.py`` file (relative path + bytes), computed once per process."""
    h = hashlib.sha256()
    for p in sorted(_PKG.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(_PKG).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
