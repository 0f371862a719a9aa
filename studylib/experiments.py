"""Analysis steps of the experiment notebooks, and the check of each result against paper and truth.

A notebook is a thin narrative over these functions: each step below is one notebook cell
(verify -> load -> fit -> ROI table -> model -> conclusions), and ``analyse_<experiment>``
chains the very same steps for the tests, so what the report shows is what the tests check.

The check itself is :func:`check_effect`: an estimated treatment effect (or correlation) with
its 95 % CI is compared with

* the paper's finding: is the direction the same, and is the result significant?
* the simulated truth (``truth/<study>/truth.json`` written by :mod:`studylib.synth`, never
  read by the analysis itself): does the CI cover the true effect?

:func:`conclusions_table` collects the checks of one experiment into the table each notebook
ends with; ``tests/test_experiments.py`` asserts on the same table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .errors import StudyError

__all__ = [
    "ExperimentError",
    "ExperimentResult",
    "PAPERS",
    "CONCLUSION_COLUMNS",
    "ROI_LABELS",
    "FERUMOXYTOL_LABELS",
    "check_effect",
    "conclusions_table",
    "disagreements",
    "summary_lines",
    "headline",
    "find_truth",
    "load_truth",
    "truth_value",
    "session_table",
    "animal_table",
    "repo_root",
    "resolve_manifest",
    "start",
    "require_verified",
    "pick_groups",
    "design_table",
    "anatomy",
    "voxel_volume_mm3",
    "data_root",
    "get_cache",
    "keep_tables",
    "quality_variable",
    "histology_column",
    "background_mask",
    "fit_relaxation_maps",
    "roi_tables",
    "record",
    "longitudinal_effect",
    "model_diagnostics",
    "model_covariates",
    "correlation_effect",
    "compute_with_progress",
    "find_key",
    "true_effect",
    "true_correlation",
    "effect_row",
    "correlation_row",
    "group_difference",
    "conclusions_ampb",
    "conclusions_blz945",
    "analyse_iron_study",
    "tumour_volumes",
    "per_tumour_table",
    "animal_means",
    "uptake_day",
    "conclusions_ferumoxytol",
    "analyse_ferumoxytol_therapy",
    "regression_slope",
    "conclusions_collagen",
    "fit_adc_maps",
    "analyse_collagen_adc",
    "other_correlations",
    "conclusions_ktrans",
    "baseline_frames",
    "fit_dce_maps",
    "analyse_ktrans_hypoxia",
]

#: Conclusion table columns, in order.
CONCLUSION_COLUMNS = [
    "finding", "paper", "paper_direction", "estimate", "ci_low", "ci_high", "units", "p", "method",
    "significant", "direction_matches_paper", "truth", "ci_covers_truth", "agrees_with_paper",
]


class ExperimentError(StudyError):
    """An analysis step got unusable input (missing columns, groups, days, truth keys...)."""


#: The paper each experiment follows and its finding, in one line (see /work/shared/science.md).
PAPERS: dict[str, dict[str, str]] = {
    "ampb_ferumoxytol": dict(
        citation="Yang et al., Neuro-Oncology 2017;19:364",
        finding="Amp B raises tumour R2* after ferumoxytol (more iron-laden macrophages) vs vehicle"),
    "blz945_femri": dict(
        citation="Leftin et al., Sci Rep 2019;9:857",
        finding="BLZ945 lowers endogenous-iron R2* (FeMRI) as it depletes TAMs; R2* tracks histological iron"),
    "ferumoxytol_therapy": dict(
        citation="Zanganeh et al., Nat Nanotechnol 2016;11:986 (doi:10.1038/nnano.2016.168)",
        finding="ferumoxytol suppresses MMTV-PyMT tumour growth and shortens tumour T2*; CD80 up, CD206 down"),
    "collagen_adc": dict(
        citation="Hauge et al., cervical carcinoma PDX (Rofstad lab)",
        finding="ADC correlates inversely with the collagen I-positive tissue fraction"),
    "ktrans_hypoxia": dict(
        citation="Hauge et al., J Transl Med 2017;15:225",
        finding="Ktrans correlates inversely with the pimonidazole hypoxic fraction"),
    "fluorine19_pfc": dict(
        citation="Makela et al., MRM 2018;80:1138 (doi:10.1002/mrm.27081)",
        finding="19F (PFC-labelled macrophage) signal rises with metastatic potential: 67NR < 168FARN < 4T1"),
    "lactate_cest": dict(
        citation="DeBrosse et al., Sci Rep 2016;6:19517 (doi:10.1038/srep19517)",
        finding="LATEST (lactate CEST, MTRasym at 0.4 ppm) rises after pyruvate infusion"),
}


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def check_effect(finding: str, *, estimate: float, ci_low: float, ci_high: float, expected_sign: int,
                 p: float | None = None, truth: float | None = None, units: str = "", paper: str = "",
                 method: str = "", alpha: float = 0.05) -> dict[str, Any]:
    """Compare one estimated effect with the paper's finding and with the simulated truth.

    Parameters
    ----------
    finding : what was estimated, e.g. ``"tumour R2* Amp B - vehicle, day 7"``.
    estimate, ci_low, ci_high : the estimate and its (1 - alpha) confidence interval, in ``units``.
    expected_sign : +1 or -1, the direction the paper reports (e.g. -1 for an inverse correlation).
    p : the p-value of the test of no effect; without it, significance is read from the CI
        (the CI excludes 0).
    truth : the simulated true effect in the same units (NaN/None when unknown, e.g. real data).
    paper : citation of the paper the finding comes from.
    method : how the estimate was obtained (model, df method, CI method).
    alpha : significance level.

    Returns
    -------
    dict with the keys of :data:`CONCLUSION_COLUMNS`:

    * ``significant``: ``p < alpha`` (or the CI excludes 0 when ``p`` is None);
    * ``direction_matches_paper``: ``sign(estimate) == expected_sign``;
    * ``ci_covers_truth``: ``ci_low <= truth <= ci_high``, or None without a truth;
    * ``agrees_with_paper``: same direction and significant.

    Raises
    ------
    ExperimentError
        non-finite estimate or CI, ``ci_low > ci_high``, an estimate outside its CI, or an
        ``expected_sign`` other than +1/-1.
    """
    for name, v in (("estimate", estimate), ("ci_low", ci_low), ("ci_high", ci_high)):
        if not _finite(v):
            raise ExperimentError(f"{finding}: {name} must be a finite number, got {v!r}")
    estimate, ci_low, ci_high = float(estimate), float(ci_low), float(ci_high)
    if ci_low > ci_high:
        raise ExperimentError(f"{finding}: ci_low {ci_low} is above ci_high {ci_high}")
    tol = 1e-9 * max(1.0, abs(estimate))
    if not (ci_low - tol <= estimate <= ci_high + tol):
        raise ExperimentError(f"{finding}: estimate {estimate} lies outside its CI [{ci_low}, {ci_high}]")
    if expected_sign not in (1, -1):
        raise ExperimentError(f"{finding}: expected_sign must be +1 or -1, got {expected_sign!r}")
    if p is not None and not (_finite(p) and 0.0 <= float(p) <= 1.0):
        raise ExperimentError(f"{finding}: p must be a number in [0, 1], got {p!r}")
    significant = (float(p) < alpha) if p is not None else not (ci_low <= 0.0 <= ci_high)
    direction = bool(np.sign(estimate) == expected_sign)
    has_truth = _finite(truth)
    return dict(
        finding=finding, paper=paper, paper_direction="increase / positive" if expected_sign > 0 else
        "decrease / negative", estimate=estimate, ci_low=ci_low, ci_high=ci_high, units=units,
        p=float(p) if p is not None else float("nan"), method=method, significant=bool(significant),
        direction_matches_paper=direction, truth=float(truth) if has_truth else float("nan"),
        ci_covers_truth=bool(ci_low <= float(truth) <= ci_high) if has_truth else None,
        agrees_with_paper=bool(direction and significant),
    )


def conclusions_table(checks: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per :func:`check_effect` result, columns :data:`CONCLUSION_COLUMNS` in order."""
    if not checks:
        raise ExperimentError("no checks given: a conclusions table needs at least one finding")
    rows = []
    for c in checks:
        missing = [k for k in CONCLUSION_COLUMNS if k not in c]
        if missing:
            raise ExperimentError(f"check '{c.get('finding', '?')}' lacks keys {missing}; build it with check_effect")
        rows.append({k: c[k] for k in CONCLUSION_COLUMNS})
    return pd.DataFrame(rows, columns=CONCLUSION_COLUMNS)


def disagreements(table: pd.DataFrame, *, require_significance: bool = True) -> list[str]:
    """Every way a conclusions table fails the paper or the truth; empty when all findings hold.

    A finding fails when its direction differs from the paper's, when it is not significant
    (``require_significance``), or when its CI misses the simulated truth (rows without a truth
    are not checked against it).  The notebooks print this; the tests assert it is empty.
    """
    out = []
    for _, r in table.iterrows():
        if not r["direction_matches_paper"]:
            out.append(f"{r['finding']}: estimate {r['estimate']:.3g} is not in the paper's direction "
                       f"({r['paper_direction']})")
        if require_significance and not r["significant"]:
            out.append(f"{r['finding']}: not significant (p = {r['p']:.3g})")
        cov = r["ci_covers_truth"]
        if cov is not None and not pd.isna(cov) and not bool(cov):
            out.append(f"{r['finding']}: CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}] misses the simulated truth "
                       f"{r['truth']:.3g}")
    return out


def summary_lines(table: pd.DataFrame) -> str:
    """A short verdict for the notebook: which findings agree with the paper and cover the truth."""
    bad = disagreements(table)
    n = len(table)
    if not bad:
        return (f"All {n} findings agree with the paper (direction, significance) and every 95 % CI covers "
                f"the simulated truth.")
    return f"{len(bad)} issue(s) among {n} findings:\n" + "\n".join(f"- {b}" for b in bad)


def headline(table: pd.DataFrame, row: int = 0) -> str:
    """A one-line summary of a conclusions-table row, for the report index."""
    r = table.iloc[row]
    p = f", p = {r['p']:.2g}" if _finite(r["p"]) else ""
    truth = ""
    if _finite(r["truth"]):
        truth = f"; truth {r['truth']:.3g} {'inside' if r['ci_covers_truth'] else 'OUTSIDE'} CI"
    verdict = "agrees with paper" if r["agrees_with_paper"] else "does NOT agree with paper"
    u = f" {r['units']}" if r["units"] else ""
    return (f"{r['finding']}: {r['estimate']:.3g}{u} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]{p} "
            f"({verdict}{truth})")


# ----------------------------------------------------------------------------- truth

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
    df = pd.read_csv(mpath, dtype=str, keep_default_na=False)
    if "study" not in df.columns or "path" not in df.columns:
        raise ExperimentError(f"{mpath}: manifest lacks 'study'/'path' columns")
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


def load_truth(manifest, study: str) -> dict:
    """Read the simulated truth of ``study`` (see :func:`find_truth`) as a dict."""
    path = find_truth(manifest, study)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExperimentError(f"{path}: not valid JSON ({err})") from None


def truth_value(truth: Mapping, *keys: str):
    """``truth[k1][k2]...``, raising :class:`ExperimentError` naming the missing key path."""
    cur: Any = truth
    for i, k in enumerate(keys):
        if not isinstance(cur, Mapping) or k not in cur:
            have = list(cur.keys()) if isinstance(cur, Mapping) else type(cur).__name__
            raise ExperimentError(f"truth.json has no key {'/'.join(keys[: i + 1])!r} (has {have})")
        cur = cur[k]
    return cur


# ----------------------------------------------------------------------------- tables

def session_table(summary: pd.DataFrame, *, roi: str = "tumour", stat: str = "mean",
                  variables: Sequence[str] | None = None) -> pd.DataFrame:
    """Wide per-session table from a tidy ROI summary: one row per animal x day, one column per map.

    Parameters
    ----------
    summary : tidy DataFrame from :func:`studylib.roi.summarize` (columns ``animal, group, day,
        roi, variable`` and the statistics).
    roi : which ROI's rows to keep (``"tumour"``).
    stat : which statistic becomes the value (``"mean"``, ``"median"``...).
    variables : the maps to keep (default all).

    Returns
    -------
    DataFrame with ``animal, group, day`` (and ``model``/``sex`` when present), one column per
    variable, and the ROI's ``n_voxels`` and ``volume_mm3`` when the summary has them.
    """
    need = ["animal", "group", "day", "roi", "variable", stat]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise ExperimentError(f"ROI summary lacks columns {missing}; it has {list(summary.columns)}")
    s = summary[summary["roi"] == roi]
    if "acquired" in s.columns:
        s = s[s["acquired"].astype(bool)]
    if s.empty:
        raise ExperimentError(f"ROI summary has no rows for roi '{roi}' (rois: {sorted(summary['roi'].unique())})")
    if variables is not None:
        absent = sorted(set(variables) - set(s["variable"]))
        if absent:
            raise ExperimentError(f"ROI summary has no variable(s) {absent} (has {sorted(s['variable'].unique())})")
        s = s[s["variable"].isin(variables)]
    keys = ["animal", "group", "day"] + [c for c in ("model", "sex") if c in s.columns]
    wide = s.groupby(keys + ["variable"], sort=False, dropna=False)[stat].first().unstack("variable")
    wide.columns.name = None
    wide = wide.reset_index()
    extra = [c for c in ("n_voxels", "volume_mm3") if c in s.columns]
    if extra:
        first = s.drop_duplicates(keys)[keys + extra]
        wide = wide.merge(first, on=keys, how="left")
    return wide.sort_values(["group", "animal", "day"]).reset_index(drop=True)


def animal_table(sessions: pd.DataFrame, histology: pd.DataFrame | None = None, *, day=None,
                 histology_on: Sequence[str] = ("animal",)) -> pd.DataFrame:
    """One row per animal: the session on ``day`` (default: each animal's last session), joined to histology.

    Raises
    ------
    ExperimentError
        no session on ``day``, or the histology CSV lacks the join columns.
    """
    s = sessions.dropna(subset=[c for c in sessions.columns if c not in ("animal", "group", "day")], how="all")
    if day is None:
        s = s.sort_values("day").groupby("animal", as_index=False).tail(1)
    else:
        s = s[s["day"] == day]
        if s.empty:
            raise ExperimentError(f"no session on day {day}; days present: {sorted(sessions['day'].unique())}")
    s = s.reset_index(drop=True)
    if histology is None:
        return s
    missing = [c for c in histology_on if c not in histology.columns]
    if missing:
        raise ExperimentError(f"histology lacks join column(s) {missing}; it has {list(histology.columns)}")
    h = histology.drop(columns=[c for c in ("group", "model", "sex", "day") if c in histology.columns
                                and c not in histology_on and c in s.columns])
    return s.merge(h, on=list(histology_on), how="inner")


# ----------------------------------------------------------------------------- notebook steps

_CONTROL_WORDS = ("vehicle", "control", "untreated", "sham", "placebo", "saline")
#: goodness-of-fit variables a fit may return, in order of preference
_QUALITY_NAMES = ("rmse", "nrmse", "rel_rmse", "rmse_mM", "r2", "r_squared", "chi2", "residual_sd")
#: ROI labels of docs/conventions.md
ROI_LABELS = {1: "tumour", 2: "muscle", 3: "vessel", 4: "reference_tube", 5: "background", 6: "tumour_rim",
              7: "tumour_core"}


def repo_root() -> Path:
    """The folder holding ``studylib/`` (the repository root in a source checkout)."""
    return Path(__file__).resolve().parents[1]


def start(manifest=None, preset: str = "demo", scheduler=None):
    """The first cell of every experiment notebook: resolve the manifest, choose the scheduler.

    Sets pandas' display precision, resolves ``manifest`` (:func:`resolve_manifest`), starts or
    connects the Dask scheduler (:func:`studylib.compute.get_client`: ``None``/``"threads"``,
    ``"local"`` or an address) and prints both.  Returns ``(manifest_path, client)``; ``client``
    is ``None`` under the threads scheduler.
    """
    from . import compute

    pd.set_option("display.precision", 3)
    path = resolve_manifest(manifest, preset)
    client = compute.get_client(scheduler)
    print(f"manifest: {path}\nscheduler: {compute.describe(scheduler)}")
    return path, client


def resolve_manifest(manifest=None, preset: str = "demo") -> Path:
    """The manifest to analyse: ``manifest`` if given, else the preset's default location.

    Defaults (docs/conventions.md): ``./data_manifest.csv`` (repository root) for ``demo``,
    ``data/<preset>/data_manifest.csv`` otherwise.

    Raises
    ------
    ExperimentError
        the manifest does not exist (with the command that creates it).
    """
    if manifest is None:
        root = repo_root()
        manifest = root / "data_manifest.csv" if preset == "demo" else root / "data" / preset / "data_manifest.csv"
    path = Path(manifest).expanduser().resolve()
    if not path.is_file():
        raise ExperimentError(f"{path}: manifest not found; create the study with "
                              f"`studylib synth --preset {preset}` or pass manifest=")
    return path


def require_verified(manifest, *, check_hashes: bool = True) -> int:
    """Verify the manifest (schema, path safety, sha256 of every file); raise on any problem.

    Returns the number of manifest rows checked and prints a one-line summary.

    Raises
    ------
    ExperimentError
        listing the problems :func:`studylib.manifest.verify_manifest` found (first 20).
    """
    from .manifest import verify_manifest

    problems = verify_manifest(manifest, check_hashes=check_hashes)
    if problems:
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ExperimentError(f"{manifest}: {len(problems)} problem(s):\n" + "\n".join(problems[:20]) + more)
    n = len(pd.read_csv(manifest, dtype=str, keep_default_na=False))
    print(f"{manifest}: OK ({n} files, sha256 {'checked' if check_hashes else 'not checked'})")
    return n


def pick_groups(ds: xr.Dataset, control: str | None = None, treated: str | None = None) -> tuple[str, str]:
    """The control and treated group labels: given, or inferred from the ``group`` coordinate.

    The control group is the one whose name contains vehicle/control/untreated/sham/placebo/saline;
    the treated group is the other one (exactly two groups needed for inference).
    """
    if "group" not in ds.coords:
        raise ExperimentError("dataset has no 'group' coordinate along 'animal'")
    groups = [str(g) for g in pd.unique(np.asarray(ds["group"].values))]
    for name, g in (("control", control), ("treated", treated)):
        if g is not None and g not in groups:
            raise ExperimentError(f"{name} group {g!r} is not in the data (groups: {groups})")
    if control is None:
        cands = [g for g in groups if any(w in g.lower() for w in _CONTROL_WORDS) and g != treated]
        if len(cands) != 1:
            raise ExperimentError(f"cannot tell the control group among {groups}; pass control=")
        control = cands[0]
    if treated is None:
        rest = [g for g in groups if g != control]
        if len(rest) != 1:
            raise ExperimentError(f"more than one non-control group {rest}; pass treated=")
        treated = rest[0]
    if control == treated:
        raise ExperimentError(f"control and treated are the same group {control!r}")
    return control, treated


def design_table(ds: xr.Dataset) -> pd.DataFrame:
    """Animals scanned per group (rows) and day (columns), plus the total animals per group."""
    acq = ds["acquired"].to_pandas()
    groups = pd.Series(np.asarray(ds["group"].values), index=acq.index, name="group")
    keys = [groups] + ([pd.Series(np.asarray(ds["model"].values), index=acq.index, name="model")]
                       if "model" in ds.coords else [])
    t = acq.groupby(keys).sum().astype(int)
    t.columns = [f"day {d}" for d in t.columns]
    t["animals"] = acq.groupby(keys).size()
    parts = [f"{k}: {ds.attrs[k]}" for k in ("kind", "field_T", "tr_ms", "agent") if k in ds.attrs]
    dims = [d for d in ds["signal"].dims if d not in ("animal", "day", "z", "y", "x")]
    for d in dims:
        vals = np.asarray(ds[d].values)
        parts.append(f"{d} ({ds[d].attrs.get('units', '')}): {np.round(vals, 3).tolist()}")
    parts.append(f"matrix (z, y, x): {tuple(ds.sizes[d] for d in ('z', 'y', 'x'))}, voxel (x, y, z) mm: "
                 f"{ds.attrs.get('voxel_size_mm')}")
    print("\n".join(parts))
    return t


def anatomy(ds: xr.Dataset) -> xr.DataArray:
    """A background image per scan: the first volume along the acquisition axis (first echo, b0...)."""
    sig = ds["signal"]
    dims = [d for d in sig.dims if d not in ("animal", "day", "z", "y", "x")]
    return sig.isel({d: 0 for d in dims}) if dims else sig


def voxel_volume_mm3(ds: xr.Dataset) -> float:
    vs = ds.attrs.get("voxel_size_mm")
    if vs is None or len(vs) != 3:
        raise ExperimentError(f"dataset attrs lack voxel_size_mm (x, y, z), got {vs!r}")
    return float(np.prod(np.asarray(vs, dtype=float)))


def data_root(manifest, study: str) -> Path:
    """``DIR`` of the study's ``DIR/raw/<study>/`` folder (``truth/`` and ``derived/`` live beside ``raw/``)."""
    return find_truth(manifest, study).parents[2]


def get_cache(study: str, manifest, cache_dir=None):
    """The :class:`studylib.cache.Cache` of this experiment (default root ``DIR/derived``)."""
    from .cache import Cache

    if cache_dir is None:
        try:
            cache_dir = data_root(manifest, study) / "derived"
        except ExperimentError:
            cache_dir = Path(manifest).resolve().parent / "derived"
    return Cache(study, cache_dir)


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


def quality_variable(maps: xr.Dataset) -> str:
    """Name of the goodness-of-fit map in a fit result."""
    for n in _QUALITY_NAMES:
        if n in maps.data_vars:
            return n
    for n in maps.data_vars:
        if any(w in n.lower() for w in ("rmse", "residual", "quality", "chi")):
            return n
    raise ExperimentError(f"fit result has no goodness-of-fit map (variables: {list(maps.data_vars)})")


def histology_column(histology: pd.DataFrame, keywords: Sequence[str]) -> str:
    """The first histology column whose name contains one of ``keywords`` (case-insensitive)."""
    for k in keywords:
        for c in histology.columns:
            if k.lower() in c.lower():
                return c
    raise ExperimentError(f"histology has no column matching {list(keywords)} (columns: {list(histology.columns)})")


def background_mask(ds: xr.Dataset, *, label: int = 5) -> xr.DataArray | None:
    """The signal-free background ROI (label 5) used for the Rayleigh noise estimate, or None if absent."""
    bg = ds["roi"] == label
    return bg


def _bare(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its non-index coordinates (group, sex, model, acquired).

    Fits run on the bare arrays and :func:`_with_design` puts the design coordinates back on the
    maps: ``DataArray.chunk`` also chunks non-index coordinates (xarray >= 2025), which an earlier
    version of the shared fit adapter could not handle; this keeps the maps independent of that.
    """
    return ds.reset_coords(drop=True)


def _with_design(maps: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    coords = {c: ds.coords[c] for c in ("group", "sex", "model", "acquired") if c in ds.coords}
    return maps.assign_coords(coords)


def _manifest_of(ds: xr.Dataset):
    m = ds.attrs.get("manifest")
    if m is None:
        raise ExperimentError("dataset attrs lack 'manifest' (load it with studylib.load_study)")
    return m


def fit_relaxation_maps(ds: xr.Dataset, *, method: str = "auto", labels: Sequence[int] = (1, 2, 6, 7),
                        noise_label: int = 5, cache_dir=None, study: str | None = None) -> xr.Dataset:
    """T2*/R2* maps of every scan inside the ROI labels, fitted with Dask and cached.

    :func:`studylib.fit.relaxometry.t2star` with the noise SD estimated per scan from the background
    ROI (label 5, Rayleigh mean), computed with a progress bar; stored in the experiment's cache (key: the
    manifest rows read, ``method``, ``labels``, the code and package versions), so a rerun
    reads the maps back instead of refitting.

    Returns
    -------
    Dataset (animal, day, z, y, x): ``t2star`` (ms), ``r2star`` (1/s), ``s0``, the fit quality
    and ``fit_ok``, loaded in memory.
    """
    from .cache import manifest_rows
    from .fit.relaxometry import t2star

    study = study or ds.attrs.get("study")
    manifest = _manifest_of(ds)

    def compute():
        bare = _bare(ds)
        bg = background_mask(bare, label=noise_label) if noise_label is not None else None
        maps = t2star(bare["signal"], method=method, background=bg, mask=bare["roi"].isin(list(labels)))
        return compute_with_progress(maps, label=f"fitting T2* ({method}) on {int(ds['acquired'].sum())} scans")

    cache = get_cache(study, manifest, cache_dir)
    maps = cache.get_or_compute(
        "t2star_maps", compute, inputs=[manifest_rows(manifest, study=study, kinds=[ds.attrs.get("kind", "MEGRE"),
                                                                                   "roi"])],
        params=dict(method=method, labels=list(labels), noise_label=noise_label),
        description="T2*/R2* maps (fit.t2star) inside the ROIs")
    return _with_design(maps.load(), ds)


def roi_tables(maps: xr.Dataset, ds: xr.Dataset, *, variables: Sequence[str],
               labels: Mapping[int, str] | None = None, roi: str = "tumour") -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROI summary (tidy, :func:`studylib.roi.summarize`) and the per-session table of ``roi``.

    Returns
    -------
    (summary, sessions): the tidy table of every ROI and variable, and one row per animal x day
    with the ROI mean of each variable and the ROI volume.
    """
    from . import roi as roimod

    labels = dict(labels or {1: "tumour", 2: "muscle"})
    keep = [v for v in variables if v in maps.data_vars]
    missing = sorted(set(variables) - set(keep))
    if missing:
        raise ExperimentError(f"maps lack variable(s) {missing} (have {list(maps.data_vars)})")
    sub = maps[keep + (["fit_ok"] if "fit_ok" in maps.data_vars else [])]
    summary = roimod.summarize(sub, ds["roi"], labels=labels, voxel_volume_mm3=voxel_volume_mm3(ds))
    if "model" in ds.coords and "model" not in summary.columns:
        models = dict(zip(np.asarray(ds["animal"].values), np.asarray(ds["model"].values)))
        if any(str(m) for m in models.values()):
            summary.insert(summary.columns.get_loc("group") + 1, "model", summary["animal"].map(models))
    sessions = session_table(summary, roi=roi, variables=keep)
    return summary, sessions


def record(conclusions: pd.DataFrame, *, study: str, **numbers) -> None:
    """Hand the conclusions table and its headline to the report runner (:mod:`studylib.workbook`)."""
    from . import workbook

    r = conclusions.iloc[0]
    nums = dict(estimate=float(r["estimate"]), ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"]))
    if _finite(r["p"]):
        nums["p"] = float(r["p"])
    nums.update(numbers)
    workbook.record_headline(headline(conclusions), **nums)
    workbook.record_conclusions(conclusions)


# ----------------------------------------------------------------------------- statistics wrappers

def _mixed_model():
    from . import stats

    return stats.mixed_model


def longitudinal_effect(table: pd.DataFrame, y: str, *, control: str, treated: str, at_day: float | None = None,
                        slope: bool = False, day_model: str = "linear", group_col: str = "group",
                        covariates: Sequence[str] = (), ddf: str = "satterthwaite", log: bool = False,
                        unit: str = "animal", alpha: float = 0.05) -> dict[str, Any]:
    """Treated-minus-control effect from a longitudinal mixed model (animal = unit of analysis).

    Two models of time, both with ``treated`` = 1 for the treated group:

    * ``day_model="linear"``: ``y ~ treated * day_c + covariates`` with ``day_c = day - at_day`` and
      a random intercept and slope per animal (``re_formula="~day_c"``). The coefficient of ``treated``
      is the difference of the means on ``at_day``; ``treated:day_c`` (``slope=True``) the
      difference of slopes per day (e.g. growth rates of log volume).
    * ``day_model="categorical"``: cell means, no shape imposed on the time course,
      ``y ~ treated + sum_k (d_k + treated:d_k) + covariates`` with an indicator ``d_k`` for every day
      other than ``at_day`` and a random intercept per animal. The coefficient of ``treated`` is the
      difference on ``at_day``. Use it when the response is not linear in time (ferumoxytol uptake
      peaks at 24-48 h then clears; TAM depletion saturates).

    Fitted by :func:`studylib.stats.mixed_model` with small-sample (Satterthwaite by default) df.

    Parameters
    ----------
    table : one row per animal x day with columns ``unit``, ``day``, ``group_col`` and ``y``.
    control, treated : the two group labels compared (other groups are dropped).
    at_day : the day of the difference (default: the last day).
    covariates : extra fixed-effect terms (e.g. ``"C(model)"``).
    log : analyse ``log(y)`` (tumour volume); effects are then differences of logs.

    Returns
    -------
    dict: ``estimate, ci_low, ci_high, p, df, term, at_day, n_animals, formula, model`` (the fit).
    """
    need = [unit, "day", group_col, y]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(table.columns)}")
    if day_model not in ("linear", "categorical"):
        raise ExperimentError(f"day_model must be 'linear' or 'categorical', got {day_model!r}")
    if slope and day_model != "linear":
        raise ExperimentError("slope=True needs day_model='linear'")
    d = table[table[group_col].isin([control, treated])].copy()
    for g in (control, treated):
        if not (d[group_col] == g).any():
            raise ExperimentError(f"group '{g}' not in column '{group_col}' "
                                  f"(groups: {sorted(map(str, table[group_col].unique()))})")
    d = d.dropna(subset=[y])
    if log:
        if (d[y] <= 0).any():
            raise ExperimentError(f"log=True needs positive '{y}'")
        d[y] = np.log(d[y].astype(float))
    days = sorted(d["day"].unique())
    at_day = float(max(days)) if at_day is None else float(at_day)
    if at_day not in [float(x) for x in days] and day_model == "categorical":
        raise ExperimentError(f"at_day {at_day:g} is not an imaging day {[int(x) for x in days]}")
    d["treated"] = (d[group_col] == treated).astype(float)
    d[unit] = d[unit].astype(str)
    yy = f"Q('{y}')" if not y.isidentifier() else y
    if day_model == "linear":
        d["day_c"] = d["day"].astype(float) - at_day
        rhs = ["treated * day_c"]
        re_formula = "~day_c"
    else:
        rhs = ["treated"]
        for k in days:
            if float(k) == at_day:
                continue
            name = f"d{int(k)}" if k >= 0 else f"d_m{int(-k)}"
            d[name] = (d["day"] == k).astype(float)
            rhs += [name, f"treated:{name}"]
        re_formula = "~1"
    formula = f"{yy} ~ " + " + ".join([*rhs, *covariates])
    fit = _mixed_model()(d, formula, groups=unit, re_formula=re_formula, ddf=ddf, ci=1.0 - alpha)
    term = "treated:day_c" if slope else "treated"
    fx = fit.fixed
    if term not in fx.index:
        raise ExperimentError(f"mixed model has no term '{term}' (terms: {list(fx.index)})")
    row = fx.loc[term]
    return dict(estimate=float(row["estimate"]), ci_low=float(row["ci_low"]), ci_high=float(row["ci_high"]),
                p=float(row["p"]), df=float(row["df"]), term=term, at_day=at_day,
                n_animals=int(d[unit].nunique()), formula=formula, re_formula=re_formula, day_model=day_model,
                ddf=ddf, model=fit)


def model_diagnostics(effect: Mapping) -> str:
    """One paragraph on the mixed model behind an effect: formula, size, convergence, singularity,
    and any warning other than the optimiser comparison notes."""
    m = effect["model"]
    lines = [f"{effect['formula']}  (random {effect.get('re_formula', '')} per {m.groups}; "
             f"{m.n_obs} observations, {m.n_groups} animals; {m.ddf} df)",
             f"converged: {bool(m.converged)}; singular/boundary fit: {bool(m.boundary)}"]
    lines += [w for w in m.warnings if not w.startswith("optimizer ")]
    return "\n".join(lines)


def model_covariates(table: pd.DataFrame, column: str = "model") -> list[str]:
    """``["C(model)"]`` when the table has more than one tumour model, else ``[]``."""
    if column in table.columns and table[column].nunique() > 1:
        return [f"C({column})"]
    return []


def correlation_effect(data: pd.DataFrame, x: str, y: str, *, method: str = "pearson", n_boot: int = 2000,
                       seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Correlation of ``x`` and ``y`` (one row per animal) with a bootstrap CI, via :mod:`studylib.stats`.

    Returns
    -------
    dict: ``estimate, ci_low, ci_high, p, n, method``.
    """
    missing = [c for c in (x, y) if c not in data.columns]
    if missing:
        raise ExperimentError(f"table lacks columns {missing}; it has {list(data.columns)}")
    d = data[[x, y]].astype(float).dropna()
    if len(d) < 4:
        raise ExperimentError(f"need at least 4 animals with both '{x}' and '{y}' for a correlation, got {len(d)}")
    from . import stats

    res = stats.correlation(d[x], d[y], method=method, ci=1.0 - alpha, n_boot=n_boot, seed=seed)
    return dict(estimate=float(res.r), ci_low=float(res.ci_low), ci_high=float(res.ci_high), p=float(res.p),
                n=int(res.n), method=f"{method} r, {res.ci_method} bootstrap CI ({res.n_boot} resamples)")


# ----------------------------------------------------------------------------- compute

def compute_with_progress(obj, *, label: str | None = None):
    """Compute Dask-backed xarray object(s) with a progress display (threads or a distributed client).

    A thin alias of :func:`studylib.compute.progress`, which picks ``distributed.progress`` under a
    client (where dask's ``ProgressBar`` prints nothing) and ``ProgressBar`` otherwise.
    """
    from .compute import progress

    return progress(obj, label=label, minimum_s=0.0)


@dataclass
class ExperimentResult:
    """Everything one analysis produced, for tests and for inspection after a notebook run."""

    study: str
    sessions: pd.DataFrame
    conclusions: pd.DataFrame
    maps: xr.Dataset | None = None
    animals: pd.DataFrame | None = None
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- truth lookup and rows

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


def effect_row(finding: str, effect: Mapping, *, expected_sign: int, truth: float, units: str, study: str,
               alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`longitudinal_effect` / :func:`group_difference` result."""
    method = effect.get("method") or (f"mixed model {effect.get('formula', '')}, random {effect.get('re_formula', '')} "
                                      f"per animal, {effect.get('ddf', '')} df {effect.get('df', float('nan')):.1f}")
    return check_effect(finding, estimate=effect["estimate"], ci_low=effect["ci_low"], ci_high=effect["ci_high"],
                        p=effect.get("p"), expected_sign=expected_sign, truth=truth, units=units,
                        paper=PAPERS[study]["citation"], method=method, alpha=alpha)


def correlation_row(finding: str, corr: Mapping, *, expected_sign: int, truth: float, study: str,
                    alpha: float = 0.05) -> dict:
    """:func:`check_effect` for a :func:`correlation_effect` result (r is unitless)."""
    return check_effect(finding, estimate=corr["estimate"], ci_low=corr["ci_low"], ci_high=corr["ci_high"],
                        p=corr.get("p"), expected_sign=expected_sign, truth=truth, units="",
                        paper=PAPERS[study]["citation"], method=f"{corr['method']}, n = {corr['n']}", alpha=alpha)


def group_difference(table: pd.DataFrame, y: str, *, control: str, treated: str, group_col: str = "group",
                     alpha: float = 0.05) -> dict[str, Any]:
    """Welch two-sample t-test of ``y`` (one row per animal), treated minus control, with its CI.

    ``t = (m_T - m_C) / sqrt(s_T^2/n_T + s_C^2/n_C)`` with Welch-Satterthwaite df
    (Welch, Biometrika 1947;34:28, doi:10.1093/biomet/34.1-2.28).
    """
    from scipy import stats as sps

    for c in (y, group_col):
        if c not in table.columns:
            raise ExperimentError(f"table lacks column '{c}'; it has {list(table.columns)}")
    a = table.loc[table[group_col] == treated, y].astype(float).dropna().to_numpy()
    b = table.loc[table[group_col] == control, y].astype(float).dropna().to_numpy()
    if len(a) < 2 or len(b) < 2:
        raise ExperimentError(f"need at least 2 animals per group for '{y}': {treated} has {len(a)}, "
                              f"{control} has {len(b)}")
    res = sps.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=1 - alpha)
    return dict(estimate=float(a.mean() - b.mean()), ci_low=float(ci.low), ci_high=float(ci.high),
                p=float(res.pvalue), df=float(res.df), n_animals=len(a) + len(b),
                method=f"Welch t-test, df {float(res.df):.1f}, n = {len(a)} + {len(b)}")


# ----------------------------------------------------------------------------- iron experiments

def conclusions_ampb(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                     hist_col: str = "iba1_cells_per_mm2", alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ampb_ferumoxytol``: tumour R2* Amp B - vehicle, and R2* vs macrophage histology."""
    study = "ampb_ferumoxytol"
    day = effect["at_day"]
    rows = [
        effect_row(f"tumour R2* {treated} − {control}, day {day:g}", effect, expected_sign=+1,
                   truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_last_day", day=day),
                   units="1/s", study=study, alpha=alpha),
        correlation_row(f"r(tumour R2*, {hist_col}) at endpoint", corr, expected_sign=+1,
                        truth=true_correlation(truth, f"endpoint_tumour_r2star_vs_{hist_col}"), study=study,
                        alpha=alpha),
    ]
    return conclusions_table(rows)


def conclusions_blz945(effect: Mapping, corr: Mapping, truth: Mapping, *, control: str, treated: str,
                       hist_col: str = "prussian_blue_area_pct", alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``blz945_femri``: tumour R2* BLZ945 - control (model-adjusted), R2* vs iron histology."""
    study = "blz945_femri"
    day = effect["at_day"]
    rows = [
        effect_row(f"tumour R2* {treated} − {control}, day {day:g} (adjusted for tumour model)", effect,
                   expected_sign=-1,
                   truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_last_day", day=day),
                   units="1/s", study=study, alpha=alpha),
        correlation_row(f"r(tumour R2*, {hist_col}) at endpoint", corr, expected_sign=+1,
                        truth=true_correlation(truth, f"endpoint_tumour_r2star_vs_{hist_col}"), study=study,
                        alpha=alpha),
    ]
    return conclusions_table(rows)


def analyse_iron_study(manifest, study: str, *, method: str = "auto", control: str | None = None,
                       treated: str | None = None, effect_day: float | None = None, day_model: str = "categorical",
                       hist_keywords: Sequence[str] = ("iba1",), n_boot: int = 2000, seed: int = 0,
                       alpha: float = 0.05, cache_dir=None, verify: bool = True) -> ExperimentResult:
    """The whole ``ampb_ferumoxytol`` / ``blz945_femri`` analysis: the notebook's steps in one call.

    verify -> load MEGRE -> :func:`fit_relaxation_maps` -> :func:`roi_tables` ->
    :func:`longitudinal_effect` (tumour R2*, treated - control on ``effect_day``, tumour model as a
    covariate when there are several) -> :func:`correlation_effect` (endpoint R2* vs histology) ->
    conclusions against the paper and ``truth.json``.
    """
    from .io import load_histology, load_study

    if verify:
        require_verified(manifest)
    ds = load_study(manifest, study, "MEGRE")
    control, treated = pick_groups(ds, control, treated)
    maps = fit_relaxation_maps(ds, method=method, cache_dir=cache_dir, study=study)
    summary, sessions = roi_tables(maps, ds, variables=["r2star", "t2star"])
    effect = longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=effect_day,
                                 day_model=day_model, covariates=model_covariates(sessions))
    histology = load_histology(manifest, study)
    animals = animal_table(sessions, histology)
    hist_col = histology_column(histology, hist_keywords)
    corr = correlation_effect(animals, "r2star", hist_col, n_boot=n_boot, seed=seed)
    truth = load_truth(manifest, study)
    build = conclusions_ampb if study == "ampb_ferumoxytol" else conclusions_blz945
    conclusions = build(effect, corr, truth, control=control, treated=treated, hist_col=hist_col, alpha=alpha)
    return ExperimentResult(study, sessions, conclusions, maps=maps, animals=animals,
                            extras=dict(summary=summary, effect=effect, correlation=corr, truth=truth))


# ----------------------------------------------------------------------------- ferumoxytol therapy

def tumour_volumes(ds: xr.Dataset, labels: Mapping[int, str]) -> pd.DataFrame:
    """Tumour volume per animal x day x ROI label from the label maps: voxel count x voxel volume (mm^3).

    Returns
    -------
    DataFrame: ``animal, group, day, tumour, n_voxels, volume_mm3`` (acquired sessions only).
    """
    vv = voxel_volume_mm3(ds)
    counts = xr.concat([(ds["roi"] == k).sum(("z", "y", "x")) for k in labels], dim="tumour")
    counts = counts.assign_coords(tumour=list(labels.values()))
    counts = compute_with_progress(counts) if hasattr(counts.data, "dask") else counts
    df = counts.to_dataframe(name="n_voxels").reset_index()
    acq = ds["acquired"].to_dataframe(name="acq").reset_index()[["animal", "day", "acq"]]
    df = df.merge(acq, on=["animal", "day"])
    df = df[df["acq"]].drop(columns="acq")
    df["group"] = df["animal"].map(dict(zip(ds["animal"].values, ds["group"].values)))
    df["volume_mm3"] = df["n_voxels"].astype(float) * vv
    return df[["animal", "group", "day", "tumour", "n_voxels", "volume_mm3"]].reset_index(drop=True)


def per_tumour_table(summary: pd.DataFrame, volumes: pd.DataFrame, *, variables: Sequence[str],
                     stat: str = "mean") -> pd.DataFrame:
    """One row per animal x day x tumour: volume and the ROI ``stat`` of each map variable."""
    s = summary[summary["variable"].isin(variables)]
    wide = s.groupby(["animal", "day", "roi", "variable"])[stat].first().unstack("variable").reset_index()
    wide.columns.name = None
    wide = wide.rename(columns={"roi": "tumour"})
    return volumes.merge(wide, on=["animal", "day", "tumour"], how="left")


def animal_means(per_tumour: pd.DataFrame, *, variables: Sequence[str], log_volume: bool = True) -> pd.DataFrame:
    """Average an animal's tumours per session (the animal is the unit of analysis).

    ``log_volume`` adds ``log_volume`` = mean of the tumours' ``log(volume_mm3)`` (its slope over days
    is the mean of the tumours' exponential growth rates) and ``volume_mm3`` = their mean volume.
    """
    d = per_tumour.copy()
    agg = {v: "mean" for v in variables}
    agg["volume_mm3"] = "mean"
    if log_volume:
        if (d["volume_mm3"] <= 0).any():
            bad = d.loc[d["volume_mm3"] <= 0, ["animal", "day", "tumour"]].to_dict("records")[:5]
            raise ExperimentError(f"tumour ROI empty (volume 0) for {bad}: cannot take log volume")
        d["log_volume"] = np.log(d["volume_mm3"])
        agg["log_volume"] = "mean"
    out = d.groupby(["animal", "group", "day"], as_index=False).agg(agg)
    return out.sort_values(["group", "animal", "day"]).reset_index(drop=True)


def uptake_day(days: Sequence, preferred: Sequence[int] = (1, 2)) -> int:
    """The imaging day 24-48 h after ferumoxytol (day 1 or 2); else the first day after day 0."""
    days = sorted(int(d) for d in days)
    for p in preferred:
        if p in days:
            return p
    later = [d for d in days if d > 0]
    if not later:
        raise ExperimentError(f"no imaging day after ferumoxytol (days: {days})")
    return later[0]


def conclusions_ferumoxytol(growth: Mapping, r2: Mapping, cd80: Mapping, cd206: Mapping, truth: Mapping, *,
                            control: str, treated: str, alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ferumoxytol_therapy``: growth rate, tumour R2* at 24-48 h, CD80 and CD206."""
    study = "ferumoxytol_therapy"
    day = r2["at_day"]
    rows = [
        effect_row(f"tumour growth rate (log volume) {treated} − {control}", growth, expected_sign=-1,
                   truth=true_effect(truth, f"log_volume_growth_per_day_{treated}_minus_{control}"),
                   units="1/day", study=study, alpha=alpha),
        effect_row(f"tumour R2* {treated} − {control}, day {day:g} (T2* shortening)", r2, expected_sign=+1,
                   truth=true_effect(truth, f"tumour_r2star_per_s_{treated}_minus_{control}_day1", day=day),
                   units="1/s", study=study, alpha=alpha),
        effect_row(f"CD80+ (M1) % of F4/80+ {treated} − {control}", cd80, expected_sign=+1,
                   truth=true_effect(truth, f"cd80_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
        effect_row(f"CD206+ (M2) % of F4/80+ {treated} − {control}", cd206, expected_sign=-1,
                   truth=true_effect(truth, f"cd206_pct_{treated}_minus_{control}"), units="%", study=study,
                   alpha=alpha),
    ]
    return conclusions_table(rows)


FERUMOXYTOL_LABELS = {1: "tumour_left", 6: "tumour_right"}


def analyse_ferumoxytol_therapy(manifest, study: str = "ferumoxytol_therapy", *, method: str = "auto",
                                control: str | None = None, treated: str | None = None, r2_day: int | None = None,
                                alpha: float = 0.05, cache_dir=None, verify: bool = True) -> ExperimentResult:
    """The whole ``ferumoxytol_therapy`` analysis: the notebook's steps in one call.

    T2w label maps -> tumour volumes (two tumours per animal, labels 1 and 6) -> animal-mean log volume
    -> growth-rate difference (linear mixed model, random slopes); MEGRE -> R2* maps -> animal-mean
    tumour R2* -> difference 24-48 h after ferumoxytol (cell-means mixed model); histology CD80/CD206
    (animal means of both tumours) -> Welch t-tests; conclusions against paper and truth.
    """
    from .io import load_histology, load_study

    if verify:
        require_verified(manifest)
    t2w = load_study(manifest, study, "T2w")
    control, treated = pick_groups(t2w, control, treated)
    volumes = tumour_volumes(t2w, FERUMOXYTOL_LABELS)
    ds = load_study(manifest, study, "MEGRE")
    maps = fit_relaxation_maps(ds, method=method, labels=(1, 2, 6), cache_dir=cache_dir, study=study)
    summary, _ = roi_tables(maps, ds, variables=["r2star", "t2star"], labels=FERUMOXYTOL_LABELS,
                            roi="tumour_left")
    tumours = per_tumour_table(summary, volumes, variables=["r2star", "t2star"])
    sessions = animal_means(tumours, variables=["r2star", "t2star"])
    growth = longitudinal_effect(sessions, "log_volume", control=control, treated=treated, slope=True)
    day1 = uptake_day(sessions["day"].unique()) if r2_day is None else r2_day
    r2 = longitudinal_effect(sessions, "r2star", control=control, treated=treated, at_day=day1,
                             day_model="categorical")
    histology = load_histology(manifest, study)
    hist = histology.groupby(["animal", "group"], as_index=False)[["cd80_pct_of_f480", "cd206_pct_of_f480"]].mean()
    cd80 = group_difference(hist, "cd80_pct_of_f480", control=control, treated=treated, alpha=alpha)
    cd206 = group_difference(hist, "cd206_pct_of_f480", control=control, treated=treated, alpha=alpha)
    truth = load_truth(manifest, study)
    conclusions = conclusions_ferumoxytol(growth, r2, cd80, cd206, truth, control=control, treated=treated,
                                          alpha=alpha)
    return ExperimentResult(study, sessions, conclusions, maps=maps, animals=hist,
                            extras=dict(tumours=tumours, growth=growth, r2=r2, truth=truth))


# ----------------------------------------------------------------------------- correlations with histology

def regression_slope(data: pd.DataFrame, x: str, y: str, *, x_scale: float = 1.0, alpha: float = 0.05) -> dict:
    """OLS slope of ``y`` on ``x * x_scale`` with its t-based CI (one row per animal).

    ``y = a + b x + e``; ``b`` with SE from the residual variance, ``n - 2`` df.
    """
    import statsmodels.api as sm

    d = data[[x, y]].astype(float).dropna()
    if len(d) < 4:
        raise ExperimentError(f"need at least 4 animals with both '{x}' and '{y}' for a regression, got {len(d)}")
    X = sm.add_constant(d[x].to_numpy() * x_scale)
    res = sm.OLS(d[y].to_numpy(), X).fit()
    lo, hi = res.conf_int(alpha)[1]
    return dict(estimate=float(res.params[1]), ci_low=float(lo), ci_high=float(hi), p=float(res.pvalues[1]),
                df=float(res.df_resid), n_animals=len(d), method=f"OLS slope, t with {int(res.df_resid)} df, "
                f"n = {len(d)}")


def conclusions_collagen(corr: Mapping, slope: Mapping, truth: Mapping, *, alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``collagen_adc``: r(ADC, collagen I) and the ADC slope per collagen fraction."""
    study = "collagen_adc"
    rows = [
        correlation_row("r(tumour ADC, collagen I area %)", corr, expected_sign=-1,
                        truth=true_correlation(truth, "tumour_adc_vs_collagen_i_area_pct"), study=study, alpha=alpha),
        effect_row("tumour ADC slope per collagen I fraction", slope, expected_sign=-1,
                   truth=true_effect(truth, "adc_slope_um2_per_ms_per_collagen_fraction"), units="µm²/ms per fraction",
                   study=study, alpha=alpha),
    ]
    return conclusions_table(rows)


def fit_adc_maps(ds: xr.Dataset, *, b_min: float = 200.0, method: str = "auto", labels: Sequence[int] = (1, 2),
                 noise_label: int | None = 5, cache_dir=None, study: str | None = None) -> xr.Dataset:
    """ADC maps from the b-values ``>= b_min`` (s/mm^2) inside the ROI labels, with Dask and cached.

    Leaving out b < 200 s/mm^2 removes the perfusion (IVIM pseudo-diffusion) contribution, so the ADC
    reflects tissue water diffusion (Le Bihan et al., Radiology 1988;168:497,
    doi:10.1148/radiology.168.2.3393671).  ``method="auto"`` with the background ROI gives the
    noise-floor-corrected fit of :func:`studylib.fit.diffusion.adc`.
    """
    from .cache import manifest_rows
    from .fit.diffusion import adc

    study = study or ds.attrs.get("study")
    manifest = _manifest_of(ds)
    b = ds["b"].values
    keep = b[b >= b_min]
    if keep.size < 2:
        raise ExperimentError(f"only {keep.size} b-value(s) >= {b_min} s/mm² in {b.tolist()}; need 2")

    def compute():
        bare = _bare(ds)
        bg = background_mask(bare, label=noise_label) if noise_label is not None else None
        maps = adc(bare["signal"].sel(b=keep), method=method, background=bg, mask=bare["roi"].isin(list(labels)))
        return compute_with_progress(maps, label=f"fitting ADC (b = {keep.tolist()}) on {int(ds['acquired'].sum())} scans")

    cache = get_cache(study, manifest, cache_dir)
    maps = cache.get_or_compute("adc_maps", compute, inputs=[manifest_rows(manifest, study=study, kinds=["DWI", "roi"])],
                                params=dict(b=keep.tolist(), method=method, labels=list(labels),
                                            noise_label=noise_label),
                                description="ADC maps (fit.adc, b >= b_min) inside the ROIs")
    return _with_design(maps.load(), ds)


def analyse_collagen_adc(manifest, study: str = "collagen_adc", *, b_min: float = 200.0, n_boot: int = 2000,
                         seed: int = 0, alpha: float = 0.05, cache_dir=None, verify: bool = True) -> ExperimentResult:
    """The whole ``collagen_adc`` analysis: ADC maps -> tumour ADC per animal -> vs collagen I (histology)."""
    from .io import load_histology, load_study

    if verify:
        require_verified(manifest)
    ds = load_study(manifest, study, "DWI")
    maps = fit_adc_maps(ds, b_min=b_min, cache_dir=cache_dir, study=study)
    summary, sessions = roi_tables(maps, ds, variables=["adc"])
    histology = load_histology(manifest, study)
    animals = animal_table(sessions, histology)
    col = histology_column(histology, ("collagen",))
    corr = correlation_effect(animals, "adc", col, n_boot=n_boot, seed=seed, alpha=alpha)
    slope = regression_slope(animals, col, "adc", x_scale=0.01, alpha=alpha)
    truth = load_truth(manifest, study)
    conclusions = conclusions_collagen(corr, slope, truth, alpha=alpha)
    return ExperimentResult(study, sessions, conclusions, maps=maps, animals=animals,
                            extras=dict(summary=summary, correlation=corr, slope=slope, truth=truth))


# ----------------------------------------------------------------------------- Ktrans and hypoxia

def other_correlations(animals: pd.DataFrame, x: str, histology: pd.DataFrame, *, exclude: Sequence[str] = (),
                       n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Correlation of ``x`` with every other numeric histology endpoint (e.g. MVD, IFP), bootstrap CIs.

    Returns
    -------
    DataFrame: ``endpoint, r, ci_low, ci_high, p, n`` (p not corrected; these are context, not findings).
    """
    skip = {"animal", "group", "model", "sex", "study", "day", "endpoint_day", "region", *exclude}
    cols = [c for c in histology.columns if c not in skip and pd.api.types.is_numeric_dtype(histology[c])]
    rows = []
    for c in cols:
        if c not in animals.columns:
            continue
        r = correlation_effect(animals, x, c, n_boot=n_boot, seed=seed, alpha=alpha)
        rows.append(dict(endpoint=c, r=r["estimate"], ci_low=r["ci_low"], ci_high=r["ci_high"], p=r["p"], n=r["n"]))
    return pd.DataFrame(rows, columns=["endpoint", "r", "ci_low", "ci_high", "p", "n"])


def conclusions_ktrans(corr: Mapping, slope: Mapping, truth: Mapping, *, hist_col: str = "hypoxic_fraction_pct",
                       alpha: float = 0.05) -> pd.DataFrame:
    """Conclusions of ``ktrans_hypoxia``: r(Ktrans, hypoxic fraction) and the Ktrans slope per fraction."""
    study = "ktrans_hypoxia"
    rows = [
        correlation_row(f"r(tumour Ktrans, {hist_col})", corr, expected_sign=-1,
                        truth=true_correlation(truth, f"tumour_ktrans_vs_{hist_col}"), study=study, alpha=alpha),
        effect_row("tumour Ktrans slope per hypoxic fraction", slope, expected_sign=-1,
                   truth=true_effect(truth, "ktrans_slope_per_min_per_hypoxic_fraction"), units="1/min per fraction",
                   study=study, alpha=alpha),
    ]
    return conclusions_table(rows)


def _attr(ds: xr.Dataset, value, key: str, what: str):
    if value is not None:
        return value
    if key in ds.attrs:
        return ds.attrs[key]
    raise ExperimentError(f"{what}: not given and the sidecars have no common '{key}'; pass it explicitly")


def baseline_frames(dce: xr.Dataset, n_baseline: int | None = None) -> int:
    """Number of pre-contrast frames: given, or every frame before the sidecar's ``BolusArrivalTime_s``."""
    t = np.asarray(dce["t"].values, dtype=float)
    if n_baseline is None:
        bat = _attr(dce, None, "BolusArrivalTime_s", "n_baseline (pre-contrast frames)")
        n_baseline = int(np.sum(t < float(bat)))
    n_baseline = int(n_baseline)
    if not 1 <= n_baseline < t.size:
        raise ExperimentError(f"n_baseline must be between 1 and {t.size - 1} frames, got {n_baseline}")
    return n_baseline


def fit_dce_maps(vfa: xr.Dataset, dce: xr.Dataset, *, model: str = "extended_tofts", aif_source: str = "cohort",
                 n_baseline: int | None = None, t1_method: str = "nonlinear", labels: Sequence[int] = (1, 2),
                 vessel_label: int = 3, r1_per_mM_s: float | None = None, hematocrit: float | None = None,
                 cache_dir=None, study: str | None = None) -> tuple[xr.Dataset, xr.DataArray]:
    """Pre-contrast T1, concentration, measured AIF and tracer-kinetic maps, with Dask and cached.

    1. T10 from the VFA series (:func:`studylib.fit.relaxometry.t1_vfa`, DESPOT1) in tumour, muscle
       and vessel voxels;
    2. SPGR signal -> concentration, ``C = (R1 - R10) / r1`` (:func:`studylib.fit.dce.signal_to_concentration`,
       baseline = the frames before the bolus arrives);
    3. each animal's AIF from its vessel ROI (label 3), with the blood T10 = median VFA T1 there and the
       haematocrit (:func:`studylib.fit.dce.aif_from_roi`); ``aif_source="cohort"`` fits every animal
       with the mean of those AIFs (less noise when vessel ROIs are a few voxels), ``"animal"`` with
       its own;
    4. :func:`studylib.fit.dce.dce` (``model``) in the ROI ``labels``.

    r1 and haematocrit default to the sidecars' ``Relaxivity_per_mM_per_s`` and ``Hematocrit``.

    Returns
    -------
    (maps, aif): maps (animal, day, z, y, x) with ``ktrans`` (1/min), ``kep``, ``ve``, ``vp``, ``t1``
    (ms), fit quality and ``fit_ok``; ``aif(animal, t)`` the measured plasma AIFs (mM) of the animals
    with a usable vessel ROI (their mean over ``animal`` is the cohort AIF).
    """
    from .cache import manifest_rows
    from .fit.dce import aif_from_roi, dce as dce_fit, signal_to_concentration
    from .fit.relaxometry import t1_vfa

    if aif_source not in ("cohort", "animal"):
        raise ExperimentError(f"aif_source must be 'cohort' or 'animal', got {aif_source!r}")
    study = study or dce.attrs.get("study")
    manifest = _manifest_of(dce)
    for c in ("animal", "day"):
        if not np.array_equal(np.asarray(vfa[c].values), np.asarray(dce[c].values)):
            raise ExperimentError(f"VFA and DCE scans differ in '{c}': {vfa[c].values.tolist()} vs "
                                  f"{dce[c].values.tolist()}")
    fa = float(_attr(dce, None, "FlipAngle", "DCE flip angle"))
    tr = float(_attr(dce, None, "tr_ms", "DCE repetition time"))
    r1 = float(_attr(dce, r1_per_mM_s, "Relaxivity_per_mM_per_s", "r1_per_mM_s (agent relaxivity)"))
    hct = float(_attr(dce, hematocrit, "Hematocrit", "hematocrit"))
    nb = baseline_frames(dce, n_baseline)
    params = dict(model=model, aif_source=aif_source, n_baseline=nb, t1_method=t1_method, labels=list(labels),
                  vessel_label=vessel_label, r1=r1, hematocrit=hct, fa=fa, tr=tr)

    def compute():
        v, d = _bare(vfa), _bare(dce)
        t1 = t1_vfa(v["signal"], tr_ms=vfa.attrs.get("tr_ms"), method=t1_method,
                    mask=v["roi"].isin([*labels, vessel_label]))
        t1 = compute_with_progress(t1, label=f"T1 (VFA, {t1_method}) on {int(vfa['acquired'].sum())} scans")
        vessel = d["roi"] == vessel_label
        aifs, names = [], []
        for a in d["animal"].values:
            for day in d["day"].values:
                if not bool(dce["acquired"].sel(animal=a, day=day)):
                    continue
                ves = vessel.sel(animal=a, day=day).compute()
                if int(ves.sum()) == 0:
                    continue
                t1b = float(t1["t1"].sel(animal=a, day=day).where(ves & t1["fit_ok"].sel(animal=a, day=day))
                            .median(skipna=True))
                if not np.isfinite(t1b):
                    continue
                aifs.append(aif_from_roi(d["signal"].sel(animal=a, day=day), ves, t10_blood_ms=t1b, fa_deg=fa,
                                         tr_ms=tr, r1_per_mM_s=r1, hematocrit=hct, baseline=nb))
                names.append(str(a))
        if not aifs:
            raise ExperimentError(f"no animal has a usable vessel ROI (label {vessel_label}): cannot measure the AIF")
        aif = compute_with_progress(xr.concat(aifs, dim=xr.DataArray(names, dims="animal", name="animal")),
                                    label=f"AIFs from {len(names)} vessel ROIs")
        aif = aif.transpose("animal", "t")
        cohort = aif.mean("animal")
        ct = signal_to_concentration(d["signal"], t10_ms=t1["t1"].where(t1["fit_ok"]), fa_deg=fa, tr_ms=tr,
                                     r1_per_mM_s=r1, baseline=nb)
        mask = d["roi"].isin(list(labels))
        if aif_source == "cohort":
            maps = dce_fit(ct, cohort.reset_coords(drop=True), model=model, mask=mask)
        else:
            parts = []
            for a in d["animal"].values:
                use = aif.sel(animal=str(a)) if str(a) in names else cohort
                parts.append(dce_fit(ct.sel(animal=[a]), use.reset_coords(drop=True), model=model,
                                     mask=mask.sel(animal=[a])))
            maps = xr.concat(parts, dim="animal")
        maps = compute_with_progress(maps, label=f"fitting {model} on {int(dce['acquired'].sum())} scans")
        maps["t1"] = t1["t1"].where(mask)
        maps["aif"] = aif.rename(animal="aif_animal")
        maps["aif_cohort"] = cohort
        return maps

    cache = get_cache(study, manifest, cache_dir)
    out = cache.get_or_compute("dce_maps", compute,
                               inputs=[manifest_rows(manifest, study=study, kinds=["VFA", "DCE", "roi"])],
                               params=params, description=f"T1, AIFs and {model} maps")
    out = out.load()
    aif = out["aif"].rename(aif_animal="animal")
    aif.attrs = {"units": "mM", "long_name": "plasma AIF (vessel ROI)", "hematocrit": hct,
                 "used": "cohort mean" if aif_source == "cohort" else "each animal's own"}
    maps = _with_design(out.drop_vars(["aif", "aif_cohort", "aif_animal", "t"], errors="ignore"), dce)
    return maps, aif


def analyse_ktrans_hypoxia(manifest, study: str = "ktrans_hypoxia", *, model: str = "extended_tofts",
                           aif_source: str = "cohort", n_baseline: int | None = None, n_boot: int = 2000,
                           seed: int = 0, alpha: float = 0.05, cache_dir=None, verify: bool = True) -> ExperimentResult:
    """The whole ``ktrans_hypoxia`` analysis: VFA + DCE -> Ktrans maps -> tumour Ktrans vs hypoxic fraction."""
    from .io import load_histology, load_study

    if verify:
        require_verified(manifest)
    vfa = load_study(manifest, study, "VFA")
    dce = load_study(manifest, study, "DCE")
    maps, aif = fit_dce_maps(vfa, dce, model=model, aif_source=aif_source, n_baseline=n_baseline,
                             cache_dir=cache_dir, study=study)
    variables = [v for v in ("ktrans", "kep", "ve", "vp", "t1") if v in maps]
    summary, sessions = roi_tables(maps, dce, variables=variables)
    histology = load_histology(manifest, study)
    animals = animal_table(sessions, histology)
    hyp = histology_column(histology, ("hypoxic",))
    corr = correlation_effect(animals, "ktrans", hyp, n_boot=n_boot, seed=seed, alpha=alpha)
    slope = regression_slope(animals, hyp, "ktrans", x_scale=0.01, alpha=alpha)
    truth = load_truth(manifest, study)
    conclusions = conclusions_ktrans(corr, slope, truth, hist_col=hyp, alpha=alpha)
    return ExperimentResult(study, sessions, conclusions, maps=maps, animals=animals,
                            extras=dict(summary=summary, aif=aif, correlation=corr, slope=slope, truth=truth))
