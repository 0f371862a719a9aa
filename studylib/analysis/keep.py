"""Step 7 of the flow: hand the results to the report — the headline and conclusions the runner
records, and the notebook's tables kept as inspectable cache entries.
"""

from __future__ import annotations

import pandas as pd

from ..errors import ExperimentError
from .conclusions import headline
from .truth import _finite
from .maps import get_cache

__all__ = ["record", "keep_tables"]

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

