"""JSON sidecars: typed reading and the acquisition axis of each kind of scan.

Keys follow BIDS where BIDS has them (SI units: ``EchoTime`` s, ``RepetitionTime`` s,
``FlipAngle`` deg, ``InversionTime`` s, ``MagneticFieldStrength`` T); see
``docs/conventions.md`` for the studylib-specific keys.  :func:`read_sidecar` checks the
type and range of every known key and raises :class:`DataFileError` naming the file and
the key; unknown keys pass through untouched.  :func:`acquisition_axis` converts the
sidecar into the design's coordinate (``te`` ms, ``b`` s/mm², ``t`` s, ``fa`` deg,
``ti`` ms, ``offset`` ppm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataFileError

__all__ = ["read_sidecar", "validate_sidecar", "acquisition_axis", "check_plausible", "AXES", "sidecar_path"]


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(cond: Callable[[float], bool], what: str):
    def check(v):
        if not _is_num(v) or not cond(v):
            return f"must be a {what}"
        return None
    return check


def _list(cond: Callable[[float], bool], what: str, *, scalar_ok: bool = False, ints: bool = False):
    def check(v):
        items = [v] if (scalar_ok and not isinstance(v, list)) else v
        if not isinstance(items, list) or not items:
            return f"must be a non-empty list of {what}" + (" (or one number)" if scalar_ok else "")
        for x in items:
            if ints and (not isinstance(x, int) or isinstance(x, bool)):
                return f"must be a non-empty list of {what}"
            if not _is_num(x) or not cond(x):
                return f"must be a non-empty list of {what}" + (" (or one number)" if scalar_ok else "")
        return None
    return check


def _str(v):
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _labels(v):
    if not isinstance(v, dict) or not v:
        return "must be an object mapping label values (\"1\") to names (\"tumour\")"
    for k, name in v.items():
        try:
            ok = str(int(k)) == k and int(k) > 0
        except ValueError:
            ok = False
        if not ok or not isinstance(name, str) or not name:
            return f"must map positive integer strings to names; bad entry {k!r}: {name!r}"
    return None


def _nucleus(v):
    return None if v in ("1H", "19F") else "must be '1H' or '19F'"


_pos = lambda x: x > 0  # noqa: E731
_nonneg = lambda x: x >= 0  # noqa: E731
_any = lambda x: True  # noqa: E731

#: key -> checker returning an error text or None
RULES: dict[str, Callable[[Any], str | None]] = {
    "EchoTime": _list(lambda x: 0 < x <= 1.0, "positive numbers in seconds (<= 1 s; milliseconds?)", scalar_ok=True),
    "RepetitionTime": _num(lambda x: 0 < x <= 100.0, "positive number in seconds (<= 100 s)"),
    "FlipAngle": _list(lambda x: 0 < x <= 180, "numbers in degrees (0, 180]", scalar_ok=True),
    "RepetitionTimes": _list(lambda x: 0 < x <= 100.0, "positive numbers in seconds (<= 100 s)"),
    "InversionTime": _list(lambda x: 0 <= x <= 100.0, "non-negative numbers in seconds (<= 100 s)", scalar_ok=True),
    "MagneticFieldStrength": _num(lambda x: 0 < x <= 30, "positive number in tesla (<= 30 T)"),
    "bValue": _list(_nonneg, "non-negative numbers in s/mm²", scalar_ok=True),
    "FrameTimes": _list(_any, "numbers in seconds"),
    "SaturationOffsets_ppm": _list(_any, "numbers in ppm"),
    "ReferenceVolumes": _list(_nonneg, "non-negative integer volume indices", ints=True),
    "SaturationB1_uT": _num(_pos, "positive number in µT"),
    "SaturationTime": _num(_pos, "positive number in seconds"),
    "Agent": _str,
    "ContrastDose_mmol_per_kg": _num(_nonneg, "non-negative number in mmol/kg"),
    "Hematocrit": _num(lambda x: 0 < x < 1, "fraction between 0 and 1"),
    "NoiseSigma": _num(_nonneg, "non-negative number"),
    "ReceiveCoilChannels": _num(lambda x: x >= 1 and x == int(x), "whole number >= 1 (receive channels, RSS-combined)"),
    "Nucleus": _nucleus,
    "ReferenceTube_mM": _list(_nonneg, "non-negative numbers in mM", scalar_ok=True),
    "Labels": _labels,
}


def validate_sidecar(data: Any, *, source: str = "sidecar") -> dict:
    """Check the types and ranges of the known keys of a parsed sidecar; return it.

    Raises
    ------
    DataFileError
        ``"<source>: <key> must be ..., got <value>"`` for the first bad key, or if the
        top level is not a JSON object.
    """
    if not isinstance(data, dict):
        raise DataFileError(f"{source}: the sidecar must be a JSON object, got {type(data).__name__}")
    for key in sorted(data):
        rule = RULES.get(key)
        if rule is None:
            continue
        msg = rule(data[key])
        if msg:
            shown = json.dumps(data[key])
            if len(shown) > 80:
                shown = shown[:77] + "..."
            raise DataFileError(f"{source}: {key} {msg}, got {shown}")
    return data


def _reject_constant(c):
    raise ValueError(f"non-standard JSON constant {c}")


def read_bytes(path, what: str) -> bytes:
    """The bytes of a small text file; :class:`DataFileError` naming it and ``what`` it is when missing or
    unreadable."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(f"{path}: {what} not found") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read the {what}: {err.strerror or err}") from None


def read_sidecar(path) -> dict:
    """Read and validate a JSON sidecar.

    Parameters
    ----------
    path : str or Path
        The ``.json`` file beside a NIfTI image.

    Returns
    -------
    dict
        The parsed sidecar (unknown keys kept as they are).

    Raises
    ------
    DataFileError
        The file is missing or unreadable, not UTF-8, not valid JSON (``NaN``/``Infinity``
        are refused), not an object, or a known key has the wrong type/range (e.g.
        ``EchoTime`` must be positive numbers in seconds).
    """
    path = Path(path)
    raw = read_bytes(path, "sidecar file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: sidecar is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except (ValueError, RecursionError) as err:
        raise DataFileError(f"{path}: invalid JSON: {err}") from None
    return validate_sidecar(data, source=str(path))


def sidecar_path(image_path) -> Path:
    """The sidecar beside an image: same stem, ``.json`` (``a/MEGRE.nii.gz`` -> ``a/MEGRE.json``)."""
    p = Path(image_path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


#: kind -> (dim, sidecar key, factor to design units, units, long name)
AXES: dict[str, tuple[str, str, float, str, str]] = {
    "MEGRE": ("te", "EchoTime", 1000.0, "ms", "echo time"),
    "MSME": ("te", "EchoTime", 1000.0, "ms", "echo time"),
    "VFA": ("fa", "FlipAngle", 1.0, "deg", "flip angle"),
    "IR": ("ti", "InversionTime", 1000.0, "ms", "inversion time"),
    "VTR": ("tr", "RepetitionTimes", 1000.0, "ms", "repetition time (saturation recovery)"),
    "DWI": ("b", "bValue", 1.0, "s/mm^2", "diffusion weighting b"),
    "DCE": ("t", "FrameTimes", 1.0, "s", "frame time"),
    "CEST": ("offset", "SaturationOffsets_ppm", 1.0, "ppm", "saturation frequency offset"),
    "WASSR": ("offset", "SaturationOffsets_ppm", 1.0, "ppm", "saturation frequency offset"),
}


def acquisition_axis(kind: str, sidecar: dict, *, n_volumes: int | None = None,
                     source: str = "sidecar") -> tuple[str | None, np.ndarray, dict]:
    """The acquisition (fitted) axis of a scan from its sidecar, in the design's units.

    Parameters
    ----------
    kind : str
        Manifest kind (``MEGRE``, ``MSME``, ``VFA``, ``IR``, ``VTR``, ``DWI``, ``DCE``, ``CEST``,
        ``WASSR``; ``F19``/``T2w``/``roi`` have no axis).
    sidecar : dict
        A sidecar as returned by :func:`read_sidecar`.
    n_volumes : int, optional
        Number of volumes in the image (4th NIfTI dim); when given the axis length must
        match (CEST/WASSR: see Notes).
    source : str
        File name for error messages.

    Returns
    -------
    (dim, values, attrs)
        ``dim`` (``te``, ``fa``, ``ti``, ``tr``, ``b``, ``t``, ``offset``; ``None`` if the kind has
        no axis), ``values`` float64 in design units (te/ti/tr ms = s × 1000, b s/mm², t s,
        fa deg, offset ppm) and ``attrs`` with ``units`` and ``long_name``.  For CEST/WASSR
        ``attrs["volumes"]`` lists the indices of the saturated volumes (the ``offset``
        values) and ``attrs["reference_volumes"]`` the unsaturated reference volume(s).

    Notes
    -----
    CEST/WASSR ``SaturationOffsets_ppm`` may list one value per volume (the entries of the
    ``ReferenceVolumes`` are then ignored) or one value per saturated volume only
    (``len == n_volumes - len(ReferenceVolumes)``).

    Raises
    ------
    DataFileError
        The key is missing, or its length does not match ``n_volumes``.
    """
    if kind not in AXES:
        return None, np.zeros(0), {}
    dim, key, factor, units, long_name = AXES[kind]
    if key not in sidecar:
        raise DataFileError(f"{source}: {kind} sidecar has no {key} (needed for the '{dim}' axis)")
    raw = sidecar[key]
    vals = np.atleast_1d(np.asarray(raw, dtype=float)) * factor
    attrs = {"units": units, "long_name": long_name}
    if kind in ("CEST", "WASSR"):
        ref = [int(i) for i in sidecar.get("ReferenceVolumes", [])]
        if len(set(ref)) != len(ref):
            raise DataFileError(f"{source}: ReferenceVolumes has duplicates: {ref}")
        n = n_volumes if n_volumes is not None else vals.size
        bad = [i for i in ref if i >= n]
        if bad:
            raise DataFileError(f"{source}: ReferenceVolumes {bad} out of range for {n} volumes")
        sat = [i for i in range(n) if i not in ref]
        if vals.size == n:
            vals = vals[sat]
        elif vals.size != len(sat):
            raise DataFileError(f"{source}: {key} has {vals.size} values but the image has {n} volumes "
                                f"({len(ref)} reference volume(s) in ReferenceVolumes)")
        attrs["volumes"] = sat
        attrs["reference_volumes"] = ref
        return dim, vals, attrs
    if n_volumes is not None and vals.size != n_volumes:
        raise DataFileError(f"{source}: {key} has {vals.size} value(s) but the image has {n_volumes} volume(s)")
    check_plausible(kind, sidecar, vals, source=source)
    return dim, vals, attrs


#: kinds whose fit needs the (readout) repetition time, and its plausible maximum in seconds: spoiled
#: gradient-echo VFA/DCE readouts use TR of a few ms to ~100 ms; 0.5 s leaves room and catches ms typed as s
_TR_MAX_S = {"VFA": 0.5, "DCE": 0.5}


def check_plausible(kind: str, sidecar: dict, values: np.ndarray, *, source: str = "sidecar") -> None:
    """What the fit of ``kind`` will assume about its acquisition axis and parameters, checked first.

    ``values`` is the axis in design units (:func:`acquisition_axis`).  Refuses, naming the file and key and
    the unit mistake a value suggests: echo/inversion times, flip angles, repetition times that are not
    distinct and increasing or too few for the fit; VFA/DCE without ``RepetitionTime`` or with one above
    0.5 s (milliseconds?); flip angles all below 2 deg (radians?); b-values above 10^5 s/mm^2 (s/m^2?) or
    all at most 10 (ms/µm^2?); DCE frame times spanning less than a minute over 10+ frames (minutes?) or
    more than 6 h (milliseconds?).

    Raises
    ------
    DataFileError
    """
    key = AXES[kind][1] if kind in AXES else ""
    v = np.asarray(values, dtype=float)
    if kind in ("MEGRE", "MSME", "IR", "VTR", "VFA"):
        need = 2
        if v.size < need:
            raise DataFileError(f"{source}: {key} has {v.size} value(s); a {kind} fit needs at least {need}")
        if np.unique(v).size != v.size:
            raise DataFileError(f"{source}: {key} has repeated values {v.tolist()}; they must be distinct")
        if kind != "VFA" and np.any(np.diff(v) <= 0):
            raise DataFileError(f"{source}: {key} must be in increasing (acquisition) order, got "
                                f"{np.round(v / AXES[kind][2], 6).tolist()}")
    if kind in _TR_MAX_S:
        tr = sidecar.get("RepetitionTime")
        if tr is None:
            raise DataFileError(f"{source}: {kind} sidecar has no RepetitionTime (s): the {kind} signal model needs it")
        if float(tr) > _TR_MAX_S[kind]:
            raise DataFileError(f"{source}: RepetitionTime {tr} s is implausible for a {kind} spoiled gradient echo "
                                f"(<= {_TR_MAX_S[kind]} s): milliseconds written as seconds?")
    if kind in ("VFA", "DCE"):
        fa = np.atleast_1d(np.asarray(sidecar.get("FlipAngle", v if kind == "VFA" else []), dtype=float))
        if fa.size and float(np.max(fa)) < 2.0:
            raise DataFileError(f"{source}: FlipAngle {fa.tolist()} (degrees) is implausibly small: radians "
                                f"written as degrees?")
    if kind == "DWI":
        if np.unique(v).size < 2:
            raise DataFileError(f"{source}: bValue {v.tolist()}: a diffusion fit needs at least two distinct b-values")
        if float(v.max()) > 1e5:
            raise DataFileError(f"{source}: bValue up to {v.max():.4g} s/mm² is implausible: s/m² written as s/mm²?")
        if 0 < float(v.max()) <= 10:
            raise DataFileError(f"{source}: bValue up to {v.max():g} s/mm² is implausibly small: ms/µm² "
                                f"(1 ms/µm² = 1000 s/mm²) written as s/mm²?")
    if kind == "DCE":
        if v.size >= 2 and np.any(np.diff(v) <= 0):
            raise DataFileError(f"{source}: FrameTimes must increase, got {v[:8].tolist()}...")
        span = float(v[-1] - v[0]) if v.size else 0.0
        if v.size >= 10 and span < 60:
            raise DataFileError(f"{source}: FrameTimes span {span:g} s over {v.size} frames: minutes written as "
                                f"seconds? (FrameTimes are in seconds)")
        if span > 6 * 3600:
            raise DataFileError(f"{source}: FrameTimes span {span:g} s (> 6 h): milliseconds written as seconds?")

