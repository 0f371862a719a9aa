"""Inspecting an experiment's cached intermediate results: ``studylib show`` and :func:`load_intermediate`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..catalog import EXPERIMENTS
from ..errors import WorkbookError
from ..layout import default_cache_dir, experiment_manifest

__all__ = ["load_intermediate", "show"]

def _cache_for(experiment: str, preset: str, cache_dir, manifest):
    from ..cache import Cache

    if not isinstance(experiment, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", experiment):
        raise WorkbookError(f"experiment name {experiment!r} is not valid")
    exp = EXPERIMENTS.get(experiment)
    if manifest is None and exp is not None and exp.data == "real":  # its cache sits beside its own manifest
        manifest = experiment_manifest(experiment)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(preset, manifest)
    if experiment not in EXPERIMENTS and not (root / experiment).is_dir():
        raise WorkbookError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    return Cache(experiment, root, verbose=False)


def load_intermediate(experiment: str, name: str, preset: str = "demo", *, cache_dir=None, manifest=None,
                      key: str | None = None):
    """Open a cached intermediate result of an experiment (the latest computed, or a given key).

    Returns an xarray Dataset/DataArray (lazy, from zarr), a pandas DataFrame/Series or JSON values.

    Raises
    ------
    studylib.cache.CacheError
        When there is no such entry, listing the ones that exist.
    """
    return _cache_for(experiment, preset, cache_dir, manifest).load(name, key)


def show(experiment: str, preset: str = "demo", *, cache_dir=None, manifest=None, file=None) -> int:
    """Print an experiment's cached intermediates (name, kind, size, key, when, inputs); return 0."""
    out = file or sys.stdout
    cache = _cache_for(experiment, preset, cache_dir, manifest)
    entries = cache.entries()
    if not entries:
        print(f"{experiment}: no cached intermediates under {cache.dir} "
              f"(run `studylib run {experiment} --preset {preset}` first)", file=out)
        return 0
    print(f"{experiment}: {len(entries)} cached intermediate(s) under {cache.dir}", file=out)
    w = max(len(e.name) for e in entries)
    print(f"  {'name':<{w}}  {'kind':<7}  {'size':>9}  {'compute':>8}  {'key':<12}  created", file=out)
    for e in entries:
        print(f"  {e.name:<{w}}  {e.kind:<7}  {_size(e.nbytes):>9}  {e.compute_s:>7.1f}s  {e.key[:12]}  "
              f"{e.created}", file=out)
        if e.description:
            print(f"  {'':<{w}}  {e.description}", file=out)
        if e.inputs:
            print(f"  {'':<{w}}  inputs: {', '.join(e.inputs)}", file=out)
        if e.params:
            print(f"  {'':<{w}}  params: {json.dumps(e.params, sort_keys=True)}", file=out)
    print(f"\nopen one with: studylib.workbook.load_intermediate({experiment!r}, {entries[0].name!r}, "
          f"preset={preset!r})", file=out)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

