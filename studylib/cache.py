"""Content-addressed, atomically written cache of derived results (maps, tables, small JSON).

An entry is identified by a key, the sha256 of

* the entry's ``name``,
* its ``inputs``: the manifest rows it reads (path, sha256 and the other columns, see
  :func:`manifest_rows`), files (their bytes), in-memory arrays/tables (their contents), or
  other cache entries (their keys: results returned by the cache carry
  ``attrs["studylib_cache_key"]``; or name them in ``depends=``),
* its ``params`` (any JSON-able mapping; dataclasses are expanded),
* the studylib source code that computes it: the modules named in ``code=`` (default: the compute
  function's own module, or for a notebook's function the studylib modules its code refers to) and
  every studylib module they import (:func:`studylib._codehash.code_hash_of`; figures, the report
  runner and the notebooks are not part of it), and
* the versions of the numerical packages (numpy, scipy, pandas, xarray, dask, zarr, ...).

So a rerun with nothing changed finds every entry, and changing a parameter or one input
file's sha256 changes exactly the keys of the entries that depend on it (and, through
their keys, of the entries downstream of those).

Layout under ``root`` (by default ``data/<preset>/derived``)::

    <root>/<experiment>/index.json                  latest key of every name (for listing)
    <root>/<experiment>/<name>/<key>/data.zarr      xarray: unconsolidated zarr v3, one chunk per scan
    <root>/<experiment>/<name>/<key>/data.parquet   pandas tables
    <root>/<experiment>/<name>/<key>/data.json      small JSON results
    <root>/<experiment>/<name>/<key>/_entry.json    completion marker + metadata, written last

An entry is written into ``<key>.tmp-p<pid>@<host>-<uuid>/`` and renamed into place with
:func:`os.replace` once complete (marker last), so a reader never sees a half-written
entry: a process killed mid-write leaves only a ``.tmp-`` folder, which readers ignore,
:meth:`Cache.remove_abandoned` deletes once its writer is gone (``studylib run`` does it at the
start) and :meth:`Cache.prune` removes.

Examples
--------
>>> import tempfile, pandas as pd
>>> cache = Cache("blz945_femri", tempfile.mkdtemp())
>>> calls = []
>>> def roi_table():
...     calls.append(1)
...     return pd.DataFrame({"animal": ["m01"], "r2star_per_s": [42.0]})
>>> cache.get_or_compute("roi_table", roi_table, params={"label": 1}, kind="parquet").r2star_per_s.tolist()
... # doctest: +ELLIPSIS
cache miss: roi_table (key ...): computing
[42.0]
>>> cache.get_or_compute("roi_table", roi_table, params={"label": 1}, kind="parquet").r2star_per_s.tolist()
... # doctest: +ELLIPSIS
cache hit: roi_table (parquet, key ...)
[42.0]
>>> len(calls)  # the second call read the entry written by the first
1

In the workbook the inputs are the manifest rows a step read, so a changed file invalidates it::

    rows = manifest_rows("data_manifest.csv", study="blz945_femri", kinds=["MEGRE"])
    maps = cache.get_or_compute("r2star_maps", lambda: fit.t2star(ds.signal), inputs=[rows],
                                params={"method": "auto"})
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from . import recorder
from ._atomic import atomic_write_text, owner_tag, remove_abandoned
from ._codehash import code_hash, code_hash_of, code_modules
from .errors import CacheError, StudyError
from .manifest import read_manifest, sha256_file

__all__ = [
    "CACHE_FORMAT",
    "Cache",
    "CacheError",
    "Entry",
    "KEY_ATTR",
    "code_hash",
    "code_hash_of",
    "make_key",
    "manifest_rows",
    "package_versions",
]

CACHE_FORMAT = 1
KINDS = ("zarr", "parquet", "json")
KEY_ATTR = "studylib_cache_key"
NAME_ATTR = "studylib_cache_name"
MARKER = "_entry.json"
INDEX = "index.json"
TMP_TAG = ".tmp-"
SCAN_DIMS = ("animal", "day")
PACKAGES = ("numpy", "scipy", "pandas", "xarray", "dask", "distributed", "zarr", "numcodecs", "pyarrow",
            "statsmodels", "nibabel", "pydicom")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DATA = {"zarr": "data.zarr", "parquet": "data.parquet", "json": "data.json"}


# ---------------------------------------------------------------------------------------------
# key ingredients


def _versions_tuple() -> tuple:
    from importlib import metadata

    out = [("python", "%d.%d.%d" % sys.version_info[:3])]
    for name in PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def package_versions() -> dict[str, str | None]:
    """Versions of python and of the packages whose numerics can change a cached result."""
    return dict(_versions_tuple())


def manifest_rows(manifest, *, study: str | None = None, kinds: Iterable[str] | None = None,
                  animals: Iterable[str] | None = None):
    """The rows of a data manifest an entry reads, as a DataFrame of strings (a cache input).

    Parameters
    ----------
    manifest : path to ``data_manifest.csv`` or an already loaded DataFrame.
    study : keep rows of this study only.
    kinds : keep rows of these kinds (e.g. ``["MEGRE", "roi"]``); histology rows have kind
        ``histology``.
    animals : keep rows of these animals only.

    Returns
    -------
    pandas.DataFrame with all manifest columns as strings, sorted by ``path``.  Used as a
    cache input its fingerprint is every column of every row, so editing one file's sha256
    (or its group, day...) changes only the keys of entries that read that row.
    """
    import pandas as pd

    if isinstance(manifest, pd.DataFrame):
        df, where = manifest.copy(), "manifest"
    else:
        path = Path(manifest)
        where = str(path)
        if not path.is_file():
            raise CacheError(f"{path}: manifest not found")
        try:
            df = read_manifest(path, validate=False)
        except StudyError as err:  # unreadable, not UTF-8, not CSV: the message names the file
            raise CacheError(str(err)) from None
    for col in ("path", "sha256"):
        if col not in df.columns:
            raise CacheError(f"{where}: manifest has no '{col}' column (columns: {list(df.columns)})")
    df = df.astype(str)
    if study is not None:
        if "study" not in df.columns:
            raise CacheError(f"{where}: manifest has no 'study' column to select study={study!r}")
        df = df[df["study"] == study]
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        df = df[df["kind"].isin(kinds)]
    if animals is not None:
        animals = [animals] if isinstance(animals, str) else [str(a) for a in animals]
        df = df[df["animal"].isin(animals)]
    if df.empty:
        raise CacheError(f"{where}: no manifest rows for study={study!r}, kinds={kinds!r}, animals={animals!r} "
                         f"(`studylib verify --manifest {where}` says what is wrong with it)")
    return df.sort_values("path").reset_index(drop=True)


def _canon(obj, where: str):
    """A canonical JSON-able form of a parameter value (for hashing)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, np.generic):
        return _canon(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": [str(obj.dtype), list(obj.shape), hashlib.sha256(
            np.ascontiguousarray(obj).tobytes()).hexdigest()]} if obj.dtype != object else \
            [_canon(v, where) for v in obj.tolist()]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__dataclass__": type(obj).__qualname__,
                **{f.name: _canon(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        return {str(k): _canon(v, f"{where}[{k!r}]") for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canon(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((_canon(v, where) for v in obj), key=repr)
    raise CacheError(f"{where}: cannot use a {type(obj).__name__} in a cache key; use numbers, strings, "
                     f"lists, dicts, arrays or a dataclass of those")


def _fingerprint(obj, where: str):
    """The hashable description of one input (see :func:`make_key`)."""
    import pandas as pd

    attrs = getattr(obj, "attrs", None)
    if isinstance(attrs, dict) and attrs.get(KEY_ATTR):
        return ["cache", str(attrs.get(NAME_ATTR, "")), str(attrs[KEY_ATTR])]
    if isinstance(obj, Entry):
        return ["cache", obj.name, obj.key]
    if isinstance(obj, pd.DataFrame):
        if {"path", "sha256"} <= set(map(str, obj.columns)):  # manifest rows: every column of every row
            rows = obj.astype(str)
            cols = sorted(map(str, rows.columns))
            recs = sorted(rows[cols].itertuples(index=False, name=None))
            return ["manifest_rows", cols, [list(r) for r in recs]]
        hashed = pd.util.hash_pandas_object(obj, index=True).to_numpy()
        return ["frame", [str(c) for c in obj.columns], [str(t) for t in obj.dtypes],
                hashlib.sha256(hashed.tobytes()).hexdigest()]
    if isinstance(obj, pd.Series):
        hashed = pd.util.hash_pandas_object(obj, index=True).to_numpy()
        return ["series", str(obj.name), str(obj.dtype), hashlib.sha256(hashed.tobytes()).hexdigest()]
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_file():
            return ["file", sha256_file(p)]
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
            return ["dir", [[q.relative_to(p).as_posix(), sha256_file(q)] for q in files]]
        raise CacheError(f"{where}: {os.fspath(obj)!r} is not an existing file or folder; pass parameters "
                         f"(strings, numbers) in params=, not inputs=")
    if isinstance(obj, np.ndarray):
        return ["array", _canon(obj, where)]
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        xr = None
    if xr is not None and isinstance(obj, (xr.Dataset, xr.DataArray)):
        ds = obj.to_dataset(name=obj.name or "__da__") if isinstance(obj, xr.DataArray) else obj
        lazy = any(v.chunks is not None for v in ds.variables.values())
        desc = {"dims": {str(k): int(v) for k, v in ds.sizes.items()},
                "attrs": _canon(_jsonable_attrs(ds.attrs), where)}
        coords = {}
        for k, c in ds.coords.items():
            if c.chunks is None:
                coords[str(k)] = _canon(np.asarray(c.values).astype(str) if c.dtype == object or c.dtype.kind in "UST"
                                        else np.asarray(c.values), where)
        desc["coords"] = coords
        if not lazy:
            desc["data"] = {str(k): _canon(np.asarray(v.values) if v.dtype != object
                                           else np.asarray(v.values).astype(str), where)
                            for k, v in ds.data_vars.items()}
            return ["xarray", desc]
        if not any(k in ds.attrs for k in ("manifest_sha256", "sha256", "source_sha256")):
            raise CacheError(f"{where}: a lazily loaded (Dask-backed) xarray object has no content fingerprint "
                             f"(attrs 'manifest_sha256'/'sha256' or a cache key); pass the manifest rows it was "
                             f"loaded from instead (studylib.cache.manifest_rows(manifest, study=..., kinds=...))")
        return ["xarray-lazy", desc]
    return ["value", _canon(obj, where)]


def make_key(name: str, *, inputs: Iterable = (), params=None, code: str | None = None,
             versions: dict | None = None) -> str:
    """The sha256 key of an entry: name + input fingerprints + params + code hash + package versions.

    ``code`` (a hash, see :func:`code_hash_of`) and ``versions`` default to the whole package's
    :func:`code_hash` and :func:`package_versions`.
    """
    if isinstance(inputs, (str, bytes, os.PathLike)) or not isinstance(inputs, Iterable) \
            or _is_single_input(inputs):
        inputs = [inputs]
    doc = {
        "format": CACHE_FORMAT,
        "name": name,
        "inputs": [_fingerprint(x, f"{name}: inputs[{i}]") for i, x in enumerate(inputs)],
        "params": _canon(params if params is not None else {}, f"{name}: params"),
        "code": code if code is not None else code_hash(),
        "versions": versions if versions is not None else package_versions(),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_single_input(obj) -> bool:
    """DataFrames/xarray/arrays are iterable but are one input, not a list of inputs."""
    mod = type(obj).__module__
    return isinstance(obj, (np.ndarray, dict)) or mod.startswith(("pandas", "xarray"))


def _summary(obj) -> str:
    """A short human description of an input, for the index."""
    attrs = getattr(obj, "attrs", None)
    if isinstance(attrs, dict) and attrs.get(KEY_ATTR):
        return f"cache:{attrs.get(NAME_ATTR, '?')}@{str(attrs[KEY_ATTR])[:12]}"
    if isinstance(obj, Entry):
        return f"cache:{obj.name}@{obj.key[:12]}"
    if isinstance(obj, (str, os.PathLike)):
        return f"file:{os.fspath(obj)}"
    mod = type(obj).__module__
    if mod.startswith("pandas") and hasattr(obj, "columns") and "path" in obj.columns:
        return f"manifest rows: {len(obj)}"
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__}{tuple(shape) if shape is not None else ''}"


# ---------------------------------------------------------------------------------------------
# reading / writing one entry


def _jsonable_attrs(attrs: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, tuple):
            v = list(v)
        try:
            json.dumps(v, allow_nan=True)
        except (TypeError, ValueError):
            v = str(v)
        out[str(k)] = v
    return out


def _prepare_zarr(ds, scan_dims):
    """Copy of ``ds`` ready for zarr v3: string arrays as object dtype, JSON attrs, one chunk per scan."""
    ds = ds.copy(deep=False)
    for name in list(ds.variables):
        var = ds.variables[name]
        if var.dtype.kind in "UST":
            ds = ds.assign_coords({name: var.astype(object)}) if name in ds.coords else \
                ds.assign({name: var.astype(object)})
    for name in ds.variables:
        ds.variables[name].encoding = {}
        ds.variables[name].attrs = _jsonable_attrs(ds.variables[name].attrs)
    ds.attrs = _jsonable_attrs(ds.attrs)
    # chunk the data variables only (object-dtype coordinates stay in memory)
    for name in list(ds.data_vars):
        var = ds.variables[name]
        if var.dtype == object:
            ds[name] = var.load() if var.chunks is not None else var
            continue
        ds[name] = var.chunk({d: (1 if d in scan_dims else -1) for d in var.dims})
    for name in list(ds.coords):
        if ds.variables[name].chunks is not None and ds.variables[name].dtype == object:
            ds = ds.assign_coords({name: ds.coords[name].load()})
    return ds


def _fix_read(ds):
    """After open_zarr: load the (small) coordinates, variable-length strings back to object dtype."""
    fixes = {}
    for name, c in ds.coords.items():
        vals = np.asarray(c.values)
        if vals.dtype.kind in "TUS":
            vals = vals.astype(object)
        fixes[name] = (c.dims, vals, c.attrs)
    return ds.assign_coords(fixes)


def _write_payload(obj, kind: str, folder: Path, scan_dims) -> dict:
    """Write ``obj`` into ``folder`` (a fresh tmp dir); return extra metadata."""
    target = folder / _DATA[kind]
    if kind == "zarr":
        import xarray as xr

        from .compute import progress

        meta = {"type": "Dataset"}
        if isinstance(obj, xr.DataArray):
            meta = {"type": "DataArray", "name": obj.name}
            obj = obj.to_dataset(name=obj.name if obj.name is not None else "__dataarray__")
        ds = _prepare_zarr(obj, scan_dims)
        delayed = ds.to_zarr(target, mode="w-", consolidated=False, zarr_format=3, compute=False)
        progress(delayed)
        return meta
    if kind == "parquet":
        import pandas as pd

        meta = {"type": "DataFrame"}
        if isinstance(obj, pd.Series):
            meta = {"type": "Series", "name": obj.name}
            obj = obj.to_frame(name=obj.name if obj.name is not None else "__series__")
        bad = [c for c in obj.columns if not isinstance(c, str)]
        if bad:
            obj = obj.rename(columns={c: str(c) for c in bad})
            meta["int_columns"] = [str(c) for c in bad if isinstance(c, (int, np.integer))]
        obj.to_parquet(target)
        return meta
    with open(target, "w", encoding="utf-8") as f:
        json.dump(obj, f, default=_json_default, allow_nan=True)
    return {"type": type(obj).__name__}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _read_payload(folder: Path, kind: str, meta: dict):
    target = folder / _DATA[kind]
    if kind == "zarr":
        import xarray as xr

        ds = _fix_read(xr.open_zarr(target, consolidated=False, zarr_format=3))
        if meta.get("type") == "DataArray":
            var = next(iter(ds.data_vars))
            da = ds[var]
            da.name = meta.get("name")
            return da
        return ds
    if kind == "parquet":
        import pandas as pd

        df = pd.read_parquet(target)
        ints = set(meta.get("int_columns", []))
        if ints:
            df = df.rename(columns={c: int(c) for c in df.columns if c in ints})
        if meta.get("type") == "Series":
            s = df.iloc[:, 0]
            s.name = meta.get("name")
            return s
        return df
    with open(target, encoding="utf-8") as f:
        return json.load(f)


def _infer_kind(obj) -> str:
    mod = type(obj).__module__
    if mod.startswith("xarray"):
        return "zarr"
    if mod.startswith("pandas"):
        return "parquet"
    return "json"


def _check_kind(obj, kind: str, where: str):
    import pandas as pd

    if kind == "zarr":
        import xarray as xr

        ok = isinstance(obj, (xr.Dataset, xr.DataArray))
    elif kind == "parquet":
        ok = isinstance(obj, (pd.DataFrame, pd.Series))
    else:
        ok = True
    if not ok:
        raise CacheError(f"{where}: compute function returned a {type(obj).__name__}, which cannot be cached "
                         f"as {kind!r} (zarr: xarray Dataset/DataArray, parquet: pandas DataFrame/Series, json: "
                         f"JSON-able values)")
    if kind == "json":
        try:
            json.dumps(obj, default=_json_default, allow_nan=True)
        except (TypeError, ValueError) as err:
            raise CacheError(f"{where}: compute function returned a value that is not JSON-able ({err})") from None


def _tag(obj, name: str, key: str):
    """Attach the cache key so the object can be passed as an input of a downstream entry."""
    attrs = getattr(obj, "attrs", None)
    if isinstance(attrs, dict):
        attrs[KEY_ATTR] = key
        attrs[NAME_ATTR] = name
    return obj


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One complete cache entry (as listed by :meth:`Cache.entries`)."""

    experiment: str
    name: str
    key: str
    kind: str
    path: Path
    created: str
    compute_s: float
    nbytes: int
    params: Any
    inputs: tuple
    description: str = ""


class Cache:
    """The cache of one experiment's derived results under ``root/<experiment>/``.

    Parameters
    ----------
    experiment : experiment id (folder name; letters, digits, ``_.-``).
    root : cache root, e.g. ``data/<preset>/derived``; created on first write.
    enabled : ``False`` computes every time and writes nothing (``get_or_compute`` still
        returns the result as read back would look like).
    verbose : print one line per hit/miss.
    scan_dims : dims stored with chunk size 1 (one zarr chunk per scan); others are whole.

    Attributes
    ----------
    hits, misses : lists of entry names looked up in this session.
    """

    def __init__(self, experiment: str, root, *, enabled: bool = True, verbose: bool = True,
                 scan_dims: tuple = SCAN_DIMS):
        _check_name(experiment, "experiment")
        self.experiment = experiment
        self.root = Path(root)
        self.dir = self.root / experiment
        self.enabled = enabled
        self.verbose = verbose
        self.scan_dims = tuple(scan_dims)
        self.hits: list[str] = []
        self.misses: list[str] = []
        self._session_keys: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Cache({self.experiment!r}, root={str(self.root)!r}, hits={len(self.hits)}, misses={len(self.misses)})"

    # -- keys ---------------------------------------------------------------------------------
    def key(self, name: str, *, inputs: Iterable = (), params=None, depends: Iterable[str] = (),
            code: Iterable[str] | str | None = None, fn: Callable | None = None) -> str:
        """The key :meth:`get_or_compute` would use for ``fn`` and ``code`` (neither: the whole package's code)."""
        _check_name(name, "name")
        inputs = _as_list(inputs)
        dep = [self._dependency(d, name) for d in depends]
        modules = code_modules(code, fn)
        return make_key(name, inputs=[*inputs, *dep], params=params,
                        code=code_hash_of(*modules) if modules is not None else None)

    def _dependency(self, dep: str, name: str) -> Entry:
        key = self._session_keys.get(dep)
        if key is None:
            latest = self._read_index().get(dep)
            if latest is None:
                raise CacheError(f"{self.dir}: entry {name!r} depends on {dep!r}, which has not been computed "
                                 f"(known: {sorted(self._read_index())})")
            key = latest["key"]
        return Entry(self.experiment, dep, key, "", self.dir / dep / key, "", 0.0, 0, None, ())

    def path(self, name: str, key: str) -> Path:
        return self.dir / name / key

    def has(self, name: str, key: str) -> bool:
        """True when a complete entry ``name``/``key`` exists (tmp folders never count)."""
        return (self.path(name, key) / MARKER).is_file()

    # -- main entry point ---------------------------------------------------------------------
    def get_or_compute(self, name: str, fn: Callable[[], Any], *, inputs: Iterable = (), params=None,
                       depends: Iterable[str] = (), code: Iterable[str] | str | None = None,
                       kind: str | None = None, description: str = ""):
        """Return the cached result for (name, inputs, params, code, versions), computing it if needed.

        Parameters
        ----------
        name : entry name (letters, digits, ``_.-``), e.g. ``"r2star_maps"``.
        fn : zero-argument function computing the result: an xarray Dataset/DataArray (stored as
            zarr v3, one chunk per scan), a pandas DataFrame/Series (parquet) or JSON-able values.
        inputs : what the result is computed from (see the module docstring); a single object or a list.
        params : JSON-able parameters (dict, dataclass, numbers, strings).
        depends : names of other entries of this experiment the result depends on.
        code : the studylib modules computing the result, e.g. ``("studylib.fit.relaxometry", "studylib.io.load")``:
            the key hashes their source and every studylib module they import (not figures, the runner or
            notebooks).  Default: :func:`studylib._codehash.modules_of` ``fn``; ``()``: no studylib code.
        kind : ``"zarr"``, ``"parquet"`` or ``"json"`` (default: from the type fn returns).
        description : one line shown by ``studylib show``.

        Returns
        -------
        The result as read back from the cache (lazy Dask-backed xarray for zarr), identical on a
        hit and on a miss; xarray/pandas results carry ``attrs["studylib_cache_key"]``.
        """
        if kind is not None and kind not in KINDS:
            raise CacheError(f"{name}: kind must be one of {KINDS}, got {kind!r}")
        inputs = _as_list(inputs)
        code = code_modules(code, fn)
        key = self.key(name, inputs=inputs, params=params, depends=depends, code=code)
        self._session_keys[name] = key
        where = f"{self.dir}/{name}"
        folder = self.path(name, key)
        if self.enabled and self.has(name, key):
            try:
                meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
                result = _read_payload(folder, meta["kind"], meta)
            except Exception as err:  # a damaged entry: recompute rather than fail
                self._say(f"cache: {name}: entry {key[:12]} unreadable ({type(err).__name__}: {err}); recomputing")
                self._discard(folder)
            else:
                self.hits.append(name)
                self._say(f"cache hit: {name} ({meta['kind']}, key {key[:12]})")
                self._note(name, key, hit=True, seconds=0.0)
                self._update_index(name, key, meta, touch_only=True)
                return _tag(result, name, key)
        self.misses.append(name)
        self._say(f"cache miss: {name} (key {key[:12]}): computing")
        t0 = time.perf_counter()
        obj = fn()
        kind = kind or _infer_kind(obj)
        _check_kind(obj, kind, where)
        if not self.enabled:
            self._note(name, key, hit=False, seconds=time.perf_counter() - t0)
            return _tag(obj, name, key)
        meta = self._write(name, key, obj, kind, inputs=inputs, params=params, depends=depends,
                           description=description, t0=t0, code=code)
        self._note(name, key, hit=False, seconds=meta["compute_s"])
        return _tag(_read_payload(folder, kind, meta), name, key)

    def _write(self, name, key, obj, kind, *, inputs, params, depends, description, t0, code=None) -> dict:
        parent = self.dir / name
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f"{key}{TMP_TAG}{owner_tag()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            extra = _write_payload(obj, kind, tmp, self.scan_dims)
            meta = {
                "format": CACHE_FORMAT, "experiment": self.experiment, "name": name, "key": key, "kind": kind,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "compute_s": round(time.perf_counter() - t0, 3),
                "nbytes": _dir_bytes(tmp),
                "params": _canon(params if params is not None else {}, f"{name}: params"),
                "inputs": [_summary(x) for x in inputs] + [f"cache:{d}" for d in depends],
                "description": description, "code": code_hash_of(*code) if code is not None else code_hash(),
                "code_modules": list(code) if code is not None else ["studylib"],
                "versions": package_versions(), **extra,
            }
            # the completion marker is written last, then the whole folder is renamed into place
            with open(tmp / MARKER, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            try:
                os.replace(tmp, parent / key)
            except OSError:
                if self.has(name, key):  # someone else completed the same entry first: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                elif (parent / key).exists():  # an incomplete folder (no marker) in the way: hide it, retry
                    self._discard(parent / key)
                    os.replace(tmp, parent / key)
                else:
                    raise
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._update_index(name, key, meta)
        return meta

    def _discard(self, folder: Path) -> None:
        trash = folder.with_name(f"{folder.name}{TMP_TAG}{owner_tag()}-{uuid.uuid4().hex}")
        with contextlib.suppress(OSError):
            os.replace(folder, trash)  # atomically hide it first, then delete
            shutil.rmtree(trash, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------
    def load(self, name: str, key: str | None = None):
        """Open an entry: the latest computed one for ``name`` (from the index) or a given ``key``.

        Raises
        ------
        CacheError
            When there is no complete entry, naming the entries that exist.
        """
        _check_name(name, "name")
        if key is None:
            latest = self._read_index().get(name)
            if latest is None or not self.has(name, latest["key"]):
                known = [e.name for e in self.entries()]
                raise CacheError(f"{self.dir}: no cached intermediate {name!r} for experiment "
                                 f"{self.experiment!r}; available: {known or 'none (run the notebook first)'}")
            key = latest["key"]
        elif not self.has(name, key):
            raise CacheError(f"{self.dir}: no complete cache entry {name!r} with key {key[:12]}")
        folder = self.path(name, key)
        meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return _tag(_read_payload(folder, meta["kind"], meta), name, key)

    def entries(self) -> list[Entry]:
        """The latest complete entry of every name, in the order they were first computed."""
        out = []
        for name, rec in self._read_index().items():
            folder = self.path(name, rec["key"])
            if not (folder / MARKER).is_file():
                continue
            try:
                meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            out.append(Entry(self.experiment, name, rec["key"], meta["kind"], folder, meta.get("created", ""),
                             float(meta.get("compute_s", 0.0)), int(meta.get("nbytes", 0)), meta.get("params"),
                             tuple(meta.get("inputs", ())), meta.get("description", "")))
        return out

    def _tmp_children(self):
        """(parent, child) of every entry folder, ``.tmp-`` ones included."""
        parents = [p for p in self.dir.iterdir() if p.is_dir() and TMP_TAG not in p.name] if self.dir.is_dir() else []
        return [(p, c) for p in parents for c in p.iterdir()]

    def remove_abandoned(self) -> int:
        """Delete ``.tmp-`` folders and half-written index files whose writing process is gone
        (:func:`studylib._atomic.owner_gone`), never one a running process still writes; returns the count."""
        n = len(remove_abandoned(self.dir, f".{INDEX}.*.tmp"))
        return n + sum(len(remove_abandoned(p, f"*{TMP_TAG}*")) for p in {p for p, _ in self._tmp_children()})

    def prune(self, *, older_than_s: float = 3600.0, keep: str = "latest") -> int:
        """Delete ``.tmp-`` folders older than ``older_than_s`` (whoever wrote them) and, with ``keep="latest"``,
        complete entries that are not the latest of their name.  Returns the number removed."""
        latest = {n: r["key"] for n, r in self._read_index().items()} if self.dir.is_dir() else {}
        removed = 0
        for parent, child in self._tmp_children():
            if TMP_TAG in child.name and time.time() - child.stat().st_mtime > older_than_s:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
            elif TMP_TAG not in child.name and keep == "latest" and child.name != latest.get(parent.name, child.name):
                self._discard(child)
                removed += 1
        return removed

    # -- index --------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        p = self.dir / INDEX
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise CacheError(f"{p}: cache index is not valid JSON ({err}); delete it to rebuild") from None
        return doc.get("entries", {})

    def _update_index(self, name: str, key: str, meta: dict, *, touch_only: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = self._read_index()
                if touch_only and entries.get(name, {}).get("key") == key:
                    return
                entries[name] = {"key": key, "kind": meta["kind"], "created": meta.get("created"),
                                 "compute_s": meta.get("compute_s"), "description": meta.get("description", "")}
                doc = {"format": CACHE_FORMAT, "experiment": self.experiment, "entries": entries}
                atomic_write_text(self.dir / INDEX, json.dumps(doc, indent=1, sort_keys=False), fsync=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reporting ----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.verbose:
            print(msg, flush=True)

    def _note(self, name: str, key: str, *, hit: bool, seconds: float) -> None:
        """Tell the report runner (when running under it) about the lookup (:mod:`studylib.recorder`)."""
        recorder.record_cache_event(self.experiment, name, key, hit, seconds)


def _as_list(inputs) -> list:
    if inputs is None:
        return []
    if isinstance(inputs, (str, bytes, os.PathLike, Entry)) or _is_single_input(inputs) \
            or not isinstance(inputs, Iterable):
        return [inputs]
    return list(inputs)


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or TMP_TAG in name:
        raise CacheError(f"cache {what} {name!r} must be 1-128 letters, digits, '_', '.' or '-' "
                         f"(not starting with '.' or '-', no '{TMP_TAG}')")
