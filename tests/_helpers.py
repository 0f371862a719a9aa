"""Small helpers shared by test modules (imported as ``from _helpers import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import ast
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def module_imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved), at any level."""
    parts = list(Path(path).resolve().relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # for __init__.py the package is the folder itself, as for a module beside it
    out = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


def read_zyx(path):
    """A NIfTI image as (z, y, x[, n]) floats, and its scale slope."""
    img = nib.load(str(path))
    a = np.asarray(img.get_fdata())
    return np.transpose(a, (2, 1, 0) + tuple(range(3, a.ndim))), float(img.header.get_slope_inter()[0] or 1.0)
