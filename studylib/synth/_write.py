"""Deterministic writers for the synthetic study (NIfTI + sidecar, JSON, CSV, npz, manifest).

Every writer produces the same bytes for the same input on any machine: no timestamps
(gzip ``mtime=0``, zip entries dated 1980-01-01), integer image storage with an explicit
``scl_slope``, JSON with sorted keys and rounded floats, CSV with ``\\n`` line ends.
Files are written to a temporary name in the target folder and renamed into place, so an
interrupted run never leaves a half-written file under the final name.

Images and the manifest are written by the project's own writers
(:func:`studylib.io.nifti.write_nifti`, :func:`studylib.manifest.write_manifest`); this
module holds the synthesiser's other writers (truth JSON/CSV/npz).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._atomic import atomic_write_bytes

__all__ = [
    "atomic_write_bytes",
    "json_bytes",
    "write_json",
    "write_npz",
    "csv_bytes",
]


def _round_sig(x: float, sig: int = 7) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{sig}g}")


def _jsonable(obj: Any, sig: int) -> Any:
    """Plain-Python copy of ``obj`` with floats rounded to ``sig`` significant digits."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, sig) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, sig) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v, sig) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if not math.isfinite(v):
            return None  # JSON has no NaN
        return _round_sig(v, sig)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def json_bytes(obj: Any, sig: int = 7) -> bytes:
    """Canonical JSON: sorted keys, 2-space indent, floats to ``sig`` significant digits, final newline."""
    text = json.dumps(_jsonable(obj, sig), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_json(path: str | os.PathLike, obj: Any, sig: int = 7) -> Path:
    return atomic_write_bytes(path, json_bytes(obj, sig))


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Deterministic compressed ``.npz`` (readable by :func:`numpy.load`), entries sorted by name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr = np.ascontiguousarray(arrays[name])
            ab = io.BytesIO()
            np.lib.format.write_array(ab, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, ab.getvalue(), compresslevel=6)
    return atomic_write_bytes(path, buf.getvalue())


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return ""
        return repr(_round_sig(v, 6)) if v != int(v) or abs(v) >= 1e15 else str(int(v))
    s = str(v)
    if any(c in s for c in ',"\n\r'):
        s = '"' + s.replace('"', '""') + '"'
    return s


def csv_bytes(rows: list[Mapping[str, Any]], columns: list[str]) -> bytes:
    """CSV text (header + rows, ``\\n`` line ends, floats to 6 significant digits, empty for missing)."""
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(_csv_cell(r.get(c)) for c in columns))
    return ("\n".join(lines) + "\n").encode("utf-8")
