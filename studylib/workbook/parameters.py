"""Notebook parameters given on the command line (``studylib run EXP -p name=value``), checked and typed
against the notebook's ``parameters`` cell before anything runs.

A value takes the type of the parameter's default in the notebook: ``alpha = 0.05`` makes ``-p alpha=0.01``
a float (``-p alpha=abc`` is an error), ``n_boot = 2000`` an int, ``fit_pools = True`` a bool
(``true``/``false``/``1``/``0`` accepted), ``band_ppm = [0.2, 0.6]`` a list (``-p band_ppm=[0.3,0.5]``);
a string default keeps the text as given (``-p t2star_method=loglinear``); a ``None`` default (an optional
setting) takes a Python literal when the text is one (``-p effect_day=7``) and the text otherwise
(``-p control=PBS``).  Names the runner sets itself (``manifest``, ``study``, ``preset``, ``cache_dir``,
``scheduler``, ``reports_dir``) have their own options and cannot be given with ``-p``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..errors import WorkbookError

__all__ = ["RUNNER_PARAMETERS", "parse_assignments", "load_notebook", "declared_parameters", "typed_parameters"]

#: parameters ``studylib run`` sets itself (each has its own command-line option)
RUNNER_PARAMETERS = {"manifest": "--manifest", "study": "the experiment name", "preset": "--preset",
                     "cache_dir": "--cache", "scheduler": "--scheduler", "reports_dir": "--reports"}

_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def parse_assignments(items) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; WorkbookError on an item without ``=`` or a repeated name."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise WorkbookError(f"-p {item!r}: expected name=value with a Python name, e.g. -p alpha=0.01")
        if name in out:
            raise WorkbookError(f"-p {name}: given twice")
        out[name] = value
    return out


def load_notebook(src: Path):
    """A notebook (jupytext ``.py`` or ``.ipynb``) as nbformat, with a kernelspec and no outputs."""
    import jupytext
    import nbformat

    try:
        nb = jupytext.read(src) if src.suffix == ".py" else nbformat.read(src, as_version=4)
    except Exception as err:
        raise WorkbookError(f"{src}: cannot read the notebook ({type(err).__name__}: {err})") from None
    ks = nb.metadata.get("kernelspec") or {}
    if not ks.get("name"):
        # a text notebook without a kernelspec makes papermill fail with "No language found"
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def declared_parameters(src: Path, nb=None) -> dict[str, str]:
    """``{name: default source text}`` of the notebook's ``parameters`` cell (the cell tagged ``parameters``,
    where papermill injects the given values after it): every top-level ``name = value`` in it, read with
    :mod:`ast` (papermill's own line parser skips a line whose comment holds an ``=``)."""
    if nb is None:
        nb = load_notebook(Path(src))
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in (c.metadata.get("tags") or [])]
    if not cells:
        return {}
    text = cells[0].source
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise WorkbookError(f"{src}: its parameters cell is not valid Python ({err.msg}, line {err.lineno})") from None
    out = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if isinstance(target, ast.Name):
            out[target.id] = ast.get_source_segment(text, node.value)
    return out


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError from None


def _value_as(value, types, what: str):
    """``value`` (a Python literal when it is text) if it is one of ``types``; ValueError(``what``) otherwise."""
    if isinstance(value, str):
        try:
            value = _literal(value)
        except ValueError:
            raise ValueError(what) from None
    if not isinstance(value, types):
        raise ValueError(what)
    return value


def _typed(value, default_src: str):
    """``value`` (text from the command line, or a Python value) in the type of the default."""
    try:
        default = _literal(default_src)
    except ValueError:  # an expression: no type to hold the value to
        default = None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("true or false")
    if isinstance(default, (int, float)):
        v = _value_as(value, (int, float), "a number")
        if isinstance(v, bool):
            raise ValueError("a number")
        if isinstance(default, int):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError("a whole number")
            return int(v)
        return float(v)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError("text")
        return value
    if isinstance(default, (list, tuple)):
        return list(_value_as(value, (list, tuple), "a list, e.g. [0.2, 0.6]"))
    # None (optional) or an expression default: a literal when the text is one, else the text
    if isinstance(value, str):
        try:
            return _literal(value)
        except ValueError:
            return value
    return value


def typed_parameters(experiment: str, src: Path, given: dict, *, nb=None) -> dict:
    """The ``given`` parameters checked against the notebook of ``experiment`` and typed like their defaults.

    Raises
    ------
    WorkbookError
        a name the notebook does not declare (listing the ones it does), a name the runner sets itself,
        or a value that does not fit the default's type (naming the parameter, the value and the default).
    """
    if not given:
        return {}
    declared = declared_parameters(src, nb)
    settable = [k for k in declared if k not in RUNNER_PARAMETERS]
    out = {}
    for name, value in given.items():
        if name in RUNNER_PARAMETERS:
            raise WorkbookError(f"{experiment}: parameter {name!r} is set by studylib run; use "
                                f"{RUNNER_PARAMETERS[name]} instead")
        if name not in declared:
            raise WorkbookError(f"{experiment}: no parameter {name!r} in {src.name}; its parameters are: "
                                f"{', '.join(settable) or '(none)'}")
        try:
            out[name] = _typed(value, declared[name])
        except ValueError as err:
            raise WorkbookError(f"{experiment}: parameter {name}={value!r} is not {err} (default "
                                f"{declared[name]})") from None
    return out
