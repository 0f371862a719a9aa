"""Step 7 of the flow: hand the results to the report — the headline and conclusions the runner
records, and the notebook's tables kept as inspectable cache entries.
"""

from __future__ import annotations

import pandas as pd
import xarray as xr

from ..cache import KEY_ATTR
from ..errors import ExperimentError
from .conclusions import headline
from .truth import _finite
from .maps import get_cache

__all__ = ["record", "keep_tables", "keep_maps", "KEPT_MAPS_PARAM"]

#: the parameter marking a cache entry as maps a notebook computed itself (``studylib export`` writes them)
KEPT_MAPS_PARAM = "kept_maps_of"
_SCAN_GRID = ("animal", "day", "z", "y", "x")


def record(conclusions: pd.DataFrame, *, study: str, against: str = "paper", **numbers) -> None:
    """Hand the conclusions table and its headline to the report runner (:mod:`studylib.recorder`).

    ``against``: what the expected direction comes from (:func:`studylib.analysis.headline`).
    """
    from .. import recorder

    r = conclusions.iloc[0]
    nums = dict(estimate=float(r["estimate"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]))
    if _finite(r["p"]):
        nums["p"] = float(r["p"])
    nums.update(numbers)
    recorder.record_headline(headline(conclusions, against=against), **nums)
    recorder.record_conclusions(conclusions)


def keep_tables(study: str, manifest, cache_dir=None, *, upstream=None, **tables) -> list[str]:
    """Store a notebook's tables (ROI tables, model fits, conclusions) in the experiment's cache.

    Each ``name=(DataFrame, "description")`` becomes a parquet entry that ``studylib show`` lists and
    :func:`studylib.workbook.load_intermediate` opens.  The key is the table's own content plus the
    ``upstream`` result it was computed from (e.g. the cached maps), so an entry is never stale: a
    changed parameter that changes the table gives a new entry.  Non-string column labels and index
    values are kept by writing the index as a column.

    Returns the names stored.
    """
    cache = get_cache(study, manifest, cache_dir)
    stored = []
    for name, spec in tables.items():
        table, description = spec if isinstance(spec, tuple) else (spec, "")
        if isinstance(table, pd.Series):
            table = table.to_frame()
        if not isinstance(table, pd.DataFrame):
            raise ExperimentError(f"keep_tables: {name} must be a pandas DataFrame, got {type(table).__name__}")
        frame = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table.copy()
        frame.columns = [str(c) for c in frame.columns]
        for c in frame.columns:  # parquet needs one type per column: mixed objects become text
            if frame[c].dtype == object and frame[c].map(type).nunique() > 1:
                frame[c] = frame[c].map(lambda v: None if v is None else str(v))
        inputs = [frame] + ([upstream] if upstream is not None else [])
        cache.get_or_compute(name, lambda frame=frame: frame, inputs=inputs, kind="parquet",
                             description=description or f"{name} table")
        stored.append(name)
    return stored



def keep_maps(study: str, manifest, cache_dir=None, *, maps, source_kind: str, name: str = "kept_maps",
              description: str = "", upstream=None) -> str:
    """Store maps a notebook computed itself in the experiment's cache, where ``studylib export`` finds them.

    The cached map steps (:func:`~studylib.analysis.fit_relaxation_maps`, ``fit_adc_maps``,
    ``fit_dce_maps``) are exported on their own; a map computed in the notebook (a T2 or T1 map of the
    generic notebook, MTRasym of a CEST notebook) is exported once it is kept here.  It must lie on the
    grid of the raw scans of kind ``source_kind``: dims ``(animal, day, z, y, x)`` in the order
    :func:`~studylib.load_study` gives (other coordinates are dropped), one variable per map with its
    ``units`` attribute (NaN where not computed).  Export writes each variable on that scan's affine;
    names it knows (``t2``, ``r2``, ``t1``, ``mtr_asym``, ...) get their BIDS or documented suffix, others
    ``<name>map``.

    Parameters
    ----------
    study, manifest, cache_dir : as :func:`keep_tables`.
    maps : xarray Dataset (or a named DataArray) of the maps.
    source_kind : the manifest kind whose scans the maps were computed from (e.g. ``"MSME"``, ``"CEST"``).
    name : the cache entry's name (``studylib show`` lists it).
    upstream : an input the maps were computed from (keys the entry, as in :func:`keep_tables`).

    Returns
    -------
    str : the cache key of the entry.

    Raises
    ------
    ExperimentError
        ``maps`` is not an xarray object on the scan grid, has no variable, or ``source_kind`` is not an
        image kind of the manifest schema.
    """
    from ..manifest import IMAGE_KINDS

    if isinstance(maps, xr.DataArray):
        if maps.name is None:
            raise ExperimentError("keep_maps: a DataArray needs a name (the map's variable name)")
        maps = maps.to_dataset()
    if not isinstance(maps, xr.Dataset):
        raise ExperimentError(f"keep_maps: maps must be an xarray Dataset, got {type(maps).__name__}")
    if source_kind not in IMAGE_KINDS or source_kind == "roi":
        raise ExperimentError(f"keep_maps: source_kind {source_kind!r} is not an image kind of the manifest "
                              f"({', '.join(k for k in IMAGE_KINDS if k != 'roi')})")
    keep = [v for v in maps.data_vars if set(maps[v].dims) == set(_SCAN_GRID)]
    odd = {v: maps[v].dims for v in maps.data_vars if v not in keep and v != "fit_ok"}
    if not keep:
        raise ExperimentError(f"keep_maps: no variable of maps has the scan-grid dims {_SCAN_GRID} "
                              f"(variables and dims: {odd or dict((v, maps[v].dims) for v in maps.data_vars)})")
    out = maps[keep + (["fit_ok"] if "fit_ok" in maps.data_vars and set(maps["fit_ok"].dims) == set(_SCAN_GRID)
                       else [])]
    out = out.reset_coords(drop=True).transpose(*_SCAN_GRID)
    out = xr.Dataset({v: out[v].astype("float32") if v != "fit_ok" else out[v].astype(bool) for v in out.data_vars},
                     coords={d: maps[d] for d in ("animal", "day") if d in maps.coords})
    for v in keep:
        out[v].attrs = {k: val for k, val in maps[v].attrs.items() if isinstance(val, (str, int, float))}
    cache = get_cache(study, manifest, cache_dir)
    inputs = [out] + ([upstream] if upstream is not None else [])
    params = {KEPT_MAPS_PARAM: source_kind, "variables": keep}
    res = cache.get_or_compute(name, lambda: out, inputs=inputs, params=params, kind="zarr", code=(),
                               description=description or f"maps computed in the notebook from {source_kind} scans")
    return str(res.attrs.get(KEY_ATTR, ""))
