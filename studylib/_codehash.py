"""Hashes of studylib's source code, for cache keys and provenance.

:func:`code_hash_of` hashes the source of the given modules and of every studylib module they import,
transitively (read from the import statements with :mod:`ast`, function-level imports included), so a
cached map's key changes when its kernel, adapter or reader changes and not when a figure, a notebook
or the docs do.  Lower layers never import higher ones (``tests/test_architecture.py``), so the closure
of a kernel never reaches ``analysis``, ``experiments``, ``plots`` or ``workbook``; the modules that
never compute a cached result (:data:`NOT_FOLLOWED`: figures, the report runner, the command line) are
not followed even from a higher-layer module such as :mod:`studylib.analysis.maps`.  A module named
explicitly is always hashed, whatever its layer.

:func:`modules_of` finds the modules a compute function needs when the caller names none: the function's
own module for a studylib function, otherwise (a notebook's lambda) the studylib modules of what its code
refers to.  :func:`code_hash` hashes the whole package (the provenance of a report).

>>> closure = module_closure("studylib.models.noise")
>>> "studylib.models.noise" in closure and "studylib.plots" not in closure
True
>>> from studylib.models.noise import add_rician_noise
>>> modules_of(add_rician_noise)
('studylib.models.noise',)
"""

from __future__ import annotations

import ast
import functools
import hashlib
import types
from pathlib import Path

from .errors import CacheError

__all__ = ["NOT_FOLLOWED", "code_hash", "code_hash_of", "code_modules", "module_closure", "modules_of"]

_PKG = Path(__file__).resolve().parent
_ROOT = _PKG.parent

#: modules (and packages) whose code never computes a cached result: not followed through imports.
#: (``analysis`` and ``experiments`` are followed: a step there, e.g. the background mask of
#: :func:`studylib.analysis.maps.background_mask`, can change a result.)
NOT_FOLLOWED: tuple[str, ...] = ("studylib.plots", "studylib.workbook", "studylib.cli")


def _file_of(module: str) -> Path | None:
    """The source file of a studylib module or package (``__init__.py``), or None."""
    if module != "studylib" and not module.startswith("studylib."):
        return None
    rel = Path(*module.split("."))
    for cand in (_ROOT / rel.with_suffix(".py"), _ROOT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _is_package(module: str) -> bool:
    p = _file_of(module)
    return p is not None and p.name == "__init__.py"


def _not_followed(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in NOT_FOLLOWED)


def _package_modules(package: str) -> list[str]:
    """Every module of a studylib package (its ``__init__`` and all submodules, recursively)."""
    folder = _file_of(package).parent
    out = []
    for p in sorted(folder.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        parts = list(p.relative_to(_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


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
    """``modules`` and every studylib module they import, transitively, sorted.

    A package named in ``modules`` stands for all its modules.  Imports of :data:`NOT_FOLLOWED`
    modules are not followed (a module named in ``modules`` is always included).

    Raises
    ------
    CacheError
        A name that is not a studylib module or package.
    """
    roots: list[str] = []
    for m in modules:
        if not isinstance(m, str) or _file_of(m) is None:
            raise CacheError(f"code: {m!r} is not a studylib module or package (e.g. 'studylib.fit.relaxometry')")
        roots += _package_modules(m) if _is_package(m) else [m]
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        stack.extend(d for d in _imports(m) - seen if not _not_followed(d))
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_hash_of(*modules: str) -> str:
    """sha256 over the source (relative path + bytes) of :func:`module_closure` of ``modules``.

    No modules: the hash of nothing (a result that depends on no studylib code).
    """
    h = hashlib.sha256()
    for m in module_closure(*modules):
        p = _file_of(m)
        h.update(p.relative_to(_ROOT).as_posix().encode())
        h.update(b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _studylib_module(name) -> str | None:
    return name if isinstance(name, str) and _file_of(name) is not None else None


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _code_names(c)
    return names


def modules_of(fn) -> tuple[str, ...]:
    """The studylib modules a compute function's result depends on (the default ``code`` of a cache entry).

    * a function defined in a studylib module: that module (its imports follow in :func:`code_hash_of`);
    * any other function (a notebook's lambda, a lab's own module): the studylib modules of every global
      name and closure variable its code refers to (functions, classes, modules, instances of studylib
      classes), following the functions it calls that are defined outside studylib, recursively.
      Referring to the ``studylib`` facade itself gives the whole package.

    Code reached only through strings, ``getattr`` or a container (e.g. a dict of functions) is not
    seen: name such modules in ``code=``.
    """
    found: set[str] = set()
    seen: set[int] = set()

    def visit(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            m = _studylib_module(obj.__name__)
            if m:
                found.add(m)
            return
        if isinstance(obj, functools.partial):
            for x in (obj.func, *obj.args, *obj.keywords.values()):
                visit(x)
            return
        if isinstance(obj, types.MethodType):
            visit(obj.__func__)
            visit(obj.__self__)
            return
        if isinstance(obj, (types.FunctionType, type, types.BuiltinFunctionType)):
            m = _studylib_module(getattr(obj, "__module__", None))
            if m:
                found.add(m)
            elif isinstance(obj, types.FunctionType):
                g = obj.__globals__
                for name in _code_names(obj.__code__):
                    if name in g:
                        visit(g[name])
                for cell in obj.__closure__ or ():
                    try:
                        visit(cell.cell_contents)
                    except ValueError:  # an empty cell
                        pass
                for d in (obj.__defaults__ or ()) + tuple((obj.__kwdefaults__ or {}).values()):
                    visit(d)
            return
        m = _studylib_module(type(obj).__module__)  # an instance of a studylib class
        if m:
            found.add(m)
        elif callable(obj) and not isinstance(obj, type):
            call = getattr(type(obj), "__call__", None)
            if isinstance(call, types.FunctionType):
                visit(call)

    if isinstance(fn, types.FunctionType) and _studylib_module(fn.__module__):
        return (fn.__module__,)
    visit(fn)
    return tuple(sorted(found))


def code_modules(code=None, fn=None) -> tuple[str, ...] | None:
    """The modules whose source keys a cache entry: ``code`` (a module name or names; checked), else
    :func:`modules_of` ``fn``, else None (the whole package, :func:`code_hash`)."""
    if code is None:
        return modules_of(fn) if fn is not None else None
    try:
        mods = tuple(sorted(set((code,) if isinstance(code, str) else code)))
    except TypeError:
        raise CacheError(f"code must be studylib module names, got {code!r}") from None
    module_closure(*mods)  # checks every name
    return mods


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
