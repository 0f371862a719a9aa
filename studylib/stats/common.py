"""Shared pieces of :mod:`studylib.stats`: its exception, its warning, input checks."""

from __future__ import annotations

import ast
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import StatsFitWarning, StatsInputError

__all__ = ["StatsInputError", "StatsFitWarning", "formula_variables", "require_columns", "numeric_column", "holm"]


# names that may appear in a patsy formula without being data columns
_NON_COLUMNS = {"np", "numpy", "math", "C", "I", "Q", "Treatment", "Sum", "Poly", "Helmert", "Diff",
                "center", "standardize", "scale", "bs", "cr", "cc", "te", "abs", "pow", "round", "min", "max",
                "True", "False", "None"}


def formula_variables(formula: str, *, what: str = "formula") -> tuple[list[str], list[str]]:
    """Data columns a patsy formula refers to, as ``(lhs, rhs)`` lists in order of appearance.

    Raises :class:`StatsInputError` when the formula cannot be parsed.
    """
    import patsy

    if not isinstance(formula, str) or not formula.strip():
        raise StatsInputError(f"{what} must be a non-empty string like 'y ~ group * day', got {formula!r}")
    try:
        desc = patsy.ModelDesc.from_formula(formula)
    except patsy.PatsyError as err:
        raise StatsInputError(f"{what} {formula!r} cannot be parsed: {err}") from None

    def names(termlist) -> list[str]:
        out: list[str] = []
        for term in termlist:
            for factor in term.factors:
                code = getattr(factor, "code", str(factor))
                try:
                    tree = ast.parse(code, mode="eval")
                except SyntaxError:
                    raise StatsInputError(f"{what} {formula!r}: cannot read the factor {code!r}") from None
                skip: set[int] = set()
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call):
                        skip.add(id(node.func))
                        if isinstance(node.func, ast.Name) and node.func.id == "Q" and node.args \
                                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                            out.append(node.args[0].value)
                    elif isinstance(node, ast.Attribute):
                        skip.add(id(node.value))
                for node in ast.walk(tree):
                    if isinstance(node, ast.Name) and id(node) not in skip and node.id not in _NON_COLUMNS:
                        out.append(node.id)
        seen: list[str] = []
        for n in out:
            if n not in seen:
                seen.append(n)
        return seen

    return names(desc.lhs_termlist), names(desc.rhs_termlist)


def require_columns(data: pd.DataFrame, cols: Iterable[str], *, what: str) -> None:
    """Raise :class:`StatsInputError` naming every column of ``cols`` missing from ``data``."""
    if not isinstance(data, pd.DataFrame):
        raise StatsInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise StatsInputError(f"{what} names column(s) {missing} that are not in the data; "
                              f"the data has columns {list(map(str, data.columns))}")


def numeric_column(data: pd.DataFrame, col: str, *, role: str) -> np.ndarray:
    """``data[col]`` as float, or :class:`StatsInputError` if it is not numeric or all NaN."""
    s = data[col]
    if not (pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)):
        bad = s[pd.to_numeric(s, errors="coerce").isna() & s.notna()]
        example = f" (e.g. {bad.iloc[0]!r})" if len(bad) else ""
        raise StatsInputError(f"{role} column '{col}' is not numeric: dtype {s.dtype}{example}")
    v = s.to_numpy(dtype=float)
    if v.size == 0 or not np.isfinite(v).any():
        raise StatsInputError(f"{role} column '{col}' has no finite values (all NaN/Inf, {v.size} rows)")
    return v


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand J Stat 6:65-70); NaN entries are ignored.

    ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the ``m`` non-missing p-values
    sorted ascending; controls the family-wise error rate under any dependence.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise StatsInputError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)].tolist()}")
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * pv[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out
