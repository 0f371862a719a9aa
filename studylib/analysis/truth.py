"""Simulated truth: where a synthetic study keeps it and how a notebook reads one number from it.

``studylib synth`` writes ``DIR/truth/<study>/truth.json`` beside ``DIR/raw/<study>/``; real data has
no truth, and every reader here says so instead of failing (:func:`load_truth` with
``missing="empty"`` returns ``{}``, and :func:`true_effect` / :func:`true_correlation` give NaN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from ..errors import ExperimentError
from ..manifest import read_manifest

__all__ = ["find_truth", "load_truth", "load_truth_table", "truth_value", "find_key", "true_effect", "true_correlation",
           "true_correlation_parts", "true_map_over_roi", "outline_contrast"]

def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def find_truth(manifest, study: str) -> Path:
    """Locate ``truth/<study>/truth.json`` beside the study's ``raw/`` folder.

    The synthetic-study layout (docs/conventions.md) is ``DIR/raw/<study>/...`` and
    ``DIR/truth/<study>/...``, with manifest paths relative to the manifest's folder; the truth
    is found from the first manifest path of ``study`` that contains ``raw/<study>/``.

    Raises
    ------
    ExperimentError
        the manifest is missing, has no rows for ``study``, or no truth file exists there.
    """
    mpath = Path(manifest)
    if not mpath.is_file():
        raise ExperimentError(f"{mpath}: manifest not found")
    df = read_manifest(mpath)
    rows = df.loc[df["study"] == study, "path"]
    if rows.empty:
        raise ExperimentError(f"{mpath}: no rows for study '{study}'")
    for rel in rows:
        parts = PurePosixPath(rel).parts
        for i in range(len(parts) - 1):
            if parts[i] == "raw" and parts[i + 1] == study:
                cand = mpath.parent.joinpath(*parts[:i], "truth", study, "truth.json")
                if cand.is_file():
                    return cand
                raise ExperimentError(f"{cand}: no simulated truth for study '{study}' (real data has none)")
    raise ExperimentError(f"{mpath}: paths of study '{study}' are not under raw/{study}/, cannot locate truth/")


def load_truth(manifest, study: str, *, required: bool = False) -> dict:
    """Read the simulated truth of ``study`` (see :func:`find_truth`) as a dict.

    Real data has no truth: unless ``required``, a study without ``truth/<study>/truth.json`` gives ``{}``
    (and a printed note), so every finding's ``truth`` is NaN and its ``ci_covers_truth`` None.
    """
    try:
        path = find_truth(manifest, study)
    except ExperimentError as err:
        if required or "manifest not found" in str(err) or "no rows for study" in str(err):
            raise
        print(f"no simulated truth for '{study}' ({err}); the conclusions compare with the paper only")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{path}: not valid JSON ({err})") from None


def load_truth_table(manifest, study: str, name: str, *, required: bool = False):
    """A CSV table the simulator wrote beside ``truth.json`` (e.g. ``sessions.csv``), as a DataFrame;
    None when the study has no truth (real data) unless ``required``."""
    import pandas as pd

    try:
        path = find_truth(manifest, study).parent / name
    except ExperimentError:
        if required:
            raise
        return None
    if not path.is_file():
        raise ExperimentError(f"{path}: no such truth table for study '{study}'")
    return pd.read_csv(path)


def truth_value(truth: Mapping, *keys: str):
    """``truth[k1][k2]...``, raising :class:`ExperimentError` naming the missing key path."""
    cur: Any = truth
    for i, k in enumerate(keys):
        if not isinstance(cur, Mapping) or k not in cur:
            have = list(cur.keys()) if isinstance(cur, Mapping) else type(cur).__name__
            raise ExperimentError(f"truth.json has no key {'/'.join(keys[: i + 1])!r} (has {have})")
        cur = cur[k]
    return cur


def find_key(truth: Mapping, key: str):
    """The value stored under ``key`` anywhere in the nested truth dict (depth-first), or None."""
    if isinstance(truth, Mapping):
        if key in truth:
            return truth[key]
        for v in truth.values():
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def true_effect(truth: Mapping, key: str, *, day: float | None = None, which: str = "population") -> float:
    """A true effect from ``truth.json``: ``effects/<key>/<which>`` (NaN when absent or for another day).

    ``which="population"`` is the generating parameter (what a CI for a population effect should
    cover); ``"sample"`` the same contrast computed on the simulated animals' noise-free ROI means.
    """
    e = find_key(truth, key)
    if not isinstance(e, Mapping):
        return float("nan")
    if day is not None and "day" in e and float(e["day"]) != float(day):
        return float("nan")
    v = e.get(which)
    return float(v) if _finite(v) else float("nan")


def true_correlation(truth: Mapping, key: str) -> float:
    """A true correlation from ``truth.json`` (``correlations/<key>``; a number or ``{"r": ...}``)."""
    v = find_key(truth, key)
    if isinstance(v, Mapping):
        v = v.get("r", v.get("population", v.get("sample")))
    return float(v) if _finite(v) else float("nan")



def true_correlation_parts(table, x: str, y: str, *, cluster: str, covariates=(), histology=None) -> dict:
    """The simulated animals' true correlation of ``x`` and ``y``, pooled, within and between ``cluster``.

    ``table`` is the truth's per-session table (:func:`load_truth_table`, e.g. ``sessions.csv``: the noise-free
    ROI means and histology of each simulated animal), or None on real data.  The parts are those of
    :func:`studylib.stats.correlation` on these true values (the "sample" truth, as
    ``correlations/<key>`` in ``truth.json`` is for the pooled r); with ``covariates`` also
    ``"partial"``: the partial r of x and y given them (:func:`studylib.stats.partial_regression`).
    ``histology`` (optional, one row per animal) supplies columns the truth table lacks (joined on ``animal``),
    e.g. the simulated MVD and IFP, which the simulator writes to the histology CSV without noise.

    Returns
    -------
    dict ``pooled, within, between`` (and ``partial``), each a float, NaN without truth or when not estimable.
    """
    keys = ["pooled", "within", "between"] + (["partial"] if covariates else [])
    nan = {k: float("nan") for k in keys}
    if table is None:
        return nan
    if histology is not None:
        add = [c for c in histology.columns if c not in table.columns]
        table = table.merge(histology[["animal", *add]], on="animal", how="left") if add else table
    need = [x, y, cluster, *covariates]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ExperimentError(f"truth table lacks columns {missing}; it has {list(table.columns)}")
    from .. import stats

    res = stats.correlation(table, x, y, cluster=cluster)
    out = {p.level: float(p.r) for p in res.parts()}
    if covariates:
        out["partial"] = float(stats.partial_regression(table, y, x, tuple(covariates)).partial_r)
    return {k: out.get(k, float("nan")) for k in keys}


def true_map_over_roi(ds, manifest, study: str, variable: str, labels) -> "pd.DataFrame | None":
    """The simulated truth map averaged over the ROI the analysis used and over the true ROI, per session.

    A drawn outline (the simulated rater's, or a lab's) is not the tissue: where a parameter is not uniform
    (e.g. iron in a tumour's rim) its mean over the drawn ROI differs from the tissue truth even without noise
    or a fit.  This splits an estimate's distance from the truth into that outline part (``drawn - true``) and
    the rest (fit, noise, partial volume).  The simulator writes ``truth/<study>/maps/<animal>_dayNN.npz`` with
    the true parameter maps (z, y, x) and the true label map ``roi``.

    Parameters
    ----------
    ds : xarray.Dataset from :func:`studylib.load_study` with ``roi`` (animal, day, z, y, x): the analysis ROI.
    manifest, study : where the truth is (:func:`find_truth`).
    variable : key of the true map in the npz files (e.g. ``"r2star_per_s"``).
    labels : ROI label value(s) making up the region (e.g. ``(1, 6)`` for both tumours).

    Returns
    -------
    DataFrame ``animal, day, true_over_drawn_roi, true_over_true_roi, drawn_voxels, true_voxels, dice`` (one row per
    session that has a truth map), or None when the study has no truth (real data).
    """
    import numpy as np
    import pandas as pd

    try:
        folder = find_truth(manifest, study).parent / "maps"
    except ExperimentError as err:
        if "manifest not found" in str(err) or "no rows for study" in str(err):
            raise
        return None
    wanted = np.atleast_1d(np.asarray(labels, dtype=int))
    roi = ds["roi"]
    rows = []
    for animal in roi["animal"].values:
        for day in roi["day"].values:
            path = folder / f"{animal}_day{int(day):02d}.npz"
            if not path.is_file():
                continue
            with np.load(path) as z:
                if variable not in z.files or "roi" not in z.files:
                    raise ExperimentError(f"{path}: no true map {variable!r} (has {sorted(z.files)})")
                true_map, true_lab = z[variable].astype(float), z["roi"]
            drawn = np.isin(np.asarray(roi.sel(animal=animal, day=day).values), wanted)
            if drawn.shape != true_map.shape:
                raise ExperimentError(f"{path}: truth map shape {true_map.shape} differs from the ROI's {drawn.shape}")
            true_m = np.isin(true_lab, wanted)
            if not drawn.any() and not true_m.any():
                continue
            inter = float((drawn & true_m).sum())
            rows.append(dict(animal=str(animal), day=int(day),
                             true_over_drawn_roi=float(true_map[drawn].mean()) if drawn.any() else float("nan"),
                             true_over_true_roi=float(true_map[true_m].mean()) if true_m.any() else float("nan"),
                             drawn_voxels=int(drawn.sum()), true_voxels=int(true_m.sum()),
                             dice=2.0 * inter / max(float(drawn.sum() + true_m.sum()), 1.0)))
    return pd.DataFrame(rows, columns=["animal", "day", "true_over_drawn_roi", "true_over_true_roi", "drawn_voxels",
                                       "true_voxels", "dice"])


def outline_contrast(ds, manifest, study: str, variable: str, *, regions, day, control: str, treated: str,
                     estimate: float | None = None, units: str = "", baseline_day=None) -> dict:
    """A treated - control difference of the truth map on one day, over the drawn ROIs and over the true ones.

    Each animal's value is the mean over ``regions`` (e.g. ``[1, 6]``: the left and right tumours, each
    averaged on its own, as the analysis's animal means are) of :func:`true_map_over_roi`; the contrast is the
    difference of the group means.  Without noise or a fit, ``drawn - true`` is what the outlines alone do to
    the effect; ``estimate`` (the analysis's own) then splits its distance from the truth into that and the
    rest.  ``baseline_day`` (a day, or a mapping animal -> day, e.g. each animal's pre-contrast scan) makes each
    animal's value its change from that day (a Delta-R2* contrast: the drawn ROIs of both scans count).
    Returns ``{"drawn", "true", "text"}`` (NaN and a "no simulated truth" text on real data).
    """
    import numpy as np

    nan = {"drawn": float("nan"), "true": float("nan")}
    parts = []
    for r in regions:
        t = true_map_over_roi(ds, manifest, study, variable, labels=r)
        if t is None:
            return {**nan, "text": "No simulated truth: the outlines cannot be compared with the tissue."}
        cols = ["true_over_drawn_roi", "true_over_true_roi"]
        value = t[t["day"] == int(day)].set_index("animal")[cols]
        if baseline_day is not None:
            base_of = baseline_day if isinstance(baseline_day, Mapping) else {a: baseline_day for a in value.index}
            keyed = t.set_index(["animal", "day"])[cols]
            pairs = [(a, int(base_of[a])) for a in value.index if a in base_of and (a, int(base_of[a])) in keyed.index]
            base = keyed.loc[pairs].droplevel("day") if pairs else value.iloc[:0]
            value = (value.loc[base.index] - base)
        parts.append(value)
    if not parts or all(p.empty for p in parts):
        return {**nan, "text": f"No truth map of {variable!r} on day {day}."}
    per_animal = sum(parts) / len(parts)
    group = ds["group"].to_series().reindex(per_animal.index)
    means = per_animal.groupby(group).mean()
    if control not in means.index or treated not in means.index:
        return {**nan, "text": f"No truth maps of both groups ({control!r}, {treated!r}) on day {day}."}
    drawn = float(means.loc[treated, "true_over_drawn_roi"] - means.loc[control, "true_over_drawn_roi"])
    true = float(means.loc[treated, "true_over_true_roi"] - means.loc[control, "true_over_true_roi"])
    u = f" {units}" if units else ""
    change = "" if baseline_day is None else " (change from the baseline scan)"
    text = (f"Truth map {variable}{change}, {treated} - {control} on day {day:g}: {true:.3g}{u} over the true ROIs, "
            f"{drawn:.3g}{u} over the ROIs as drawn ({100 * (drawn / true - 1):+.0f} % from the outlines alone)")
    if estimate is not None and np.isfinite(estimate) and true != 0:
        text += (f"; the estimate {estimate:.3g}{u} is {100 * (estimate / true - 1):+.0f} % from the tissue truth, "
                 f"{100 * (estimate / drawn - 1):+.0f} % from the truth over its own outlines")
    return {"drawn": drawn, "true": true, "text": text + "."}

