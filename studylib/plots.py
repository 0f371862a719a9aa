"""Figures for the experiment notebooks (matplotlib + seaborn); every function returns the Figure.

The functions take xarray objects with the design's dimension names (``animal, day, z, y, x``,
``group`` along ``animal``) or tidy pandas tables (one row per animal x day, as
:func:`studylib.roi.summarize` and :mod:`studylib.analysis` produce), never file paths.
Nothing here computes a fit or a statistic beyond what a figure shows (means, bootstrap
CIs drawn by seaborn).  Units are always printed on the colourbar or the axis label; an axis named by a
column gets its words and units from :func:`studylib.conventions.axis_label` (``prussian_blue_area_pct`` ->
"Prussian blue area (%)"), the one table of variable labels.

Functions
---------
map_over_anatomy      one quantitative map over a grey anatomical image, with colourbar and units
representative_maps   one representative animal per group (rows) x day (columns), map over anatomy
fit_quality_maps      goodness-of-fit map per group x day, failed voxels (fit_ok False) outlined
spaghetti             per-animal trajectories over days, thin lines, plus group mean with 95 % CI
correlation_scatter   imaging vs histology scatter with OLS line, 95 % CI band and r annotated
zspectra              CEST Z-spectra (and MTR asymmetry) per group/session
effect_vs_truth       forest plot of estimated effects with CIs, the simulated truth and zero marked
time_curves           concentration-time curves (e.g. AIFs per animal and their mean)
fluorine_overlay      19F map (detected voxels) in hot colours over a 1H image; ``_grid``: one per group
cest_map_grid         a CEST map inside the ROI over anatomy, animals x days
snr_histograms        per-voxel SNR density inside an ROI per group, threshold marked
group_strips          one dot per animal and the group mean, per column, groups in a given order
paired_lines          each animal's value before and after
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .conventions import VARIABLE_LABELS, axis_label
from .errors import PlotInputError

__all__ = [
    "PlotInputError",
    "map_over_anatomy",
    "representative_animals",
    "representative_maps",
    "fit_quality_maps",
    "spaghetti",
    "correlation_scatter",
    "zspectra",
    "effect_vs_truth",
    "time_curves",
    "fluorine_overlay",
    "fluorine_overlay_grid",
    "cest_map_grid",
    "snr_histograms",
    "group_strips",
    "paired_lines",
]


def _plt():
    # matplotlib falls back to Agg without a display; notebooks keep their inline backend.
    import matplotlib.pyplot as plt

    return plt


def _figure_and_axes(plt, ax, figsize):
    """``(ax.figure, ax)`` for a given axes, else a new figure of ``figsize`` inches with one axes."""
    if ax is None:
        return plt.subplots(figsize=figsize, constrained_layout=True)
    return ax.figure, ax


def _as2d(a, name: str) -> np.ndarray:
    arr = np.asarray(a.values if isinstance(a, xr.DataArray) else a, dtype=float)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise PlotInputError(f"{name} must be a 2-D image (y, x) after squeezing, got shape {arr.shape}")
    return arr


def _label(da, units: str | None, label: str | None) -> tuple[str, str]:
    if isinstance(da, xr.DataArray):
        units = units if units is not None else da.attrs.get("units", "")
        label = label if label is not None else (da.attrs.get("long_name")
                                                 or VARIABLE_LABELS.get(str(da.name), (da.name or "",))[0])
    return label or "", units or ""


def _robust_limits(values: np.ndarray, vmin, vmax) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (0.0 if vmin is None else vmin, 1.0 if vmax is None else vmax)
    lo = float(np.percentile(v, 2)) if vmin is None else float(vmin)
    hi = float(np.percentile(v, 98)) if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    return lo, hi


def _draw_map(ax, anat: np.ndarray, overlay: np.ndarray, mask: np.ndarray | None, *, cmap, vmin, vmax,
              alpha: float):
    a = anat[np.isfinite(anat)]
    alo, ahi = (np.percentile(a, [1, 99.5]) if a.size else (0.0, 1.0))
    ax.imshow(anat, cmap="gray", vmin=alo, vmax=ahi if ahi > alo else alo + 1, origin="lower",
              interpolation="nearest")
    ov = np.array(overlay, dtype=float)
    if mask is not None:
        ov = np.where(mask, ov, np.nan)
    im = ax.imshow(np.ma.masked_invalid(ov), cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, origin="lower",
                   interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def map_over_anatomy(anatomy, overlay, *, mask=None, units: str | None = None, label: str | None = None,
                     title: str | None = None, cmap: str = "magma", vmin: float | None = None,
                     vmax: float | None = None, alpha: float = 0.85, ax=None):
    """Draw a quantitative map over a grey anatomical image with a colourbar naming the units.

    Parameters
    ----------
    anatomy : array_like or DataArray, 2-D (y, x)
        Background image (e.g. the first echo, b = 0 or a pre-contrast frame).
    overlay : array_like or DataArray, 2-D (y, x)
        The map (e.g. R2* in 1/s). Its ``attrs["units"]`` and ``long_name`` label the colourbar.
    mask : array_like of bool, 2-D, optional
        Show the overlay only inside the mask (e.g. the tumour ROI); the anatomy shows elsewhere.
    units, label : str, optional
        Override the colourbar label (default from the DataArray attrs).
    vmin, vmax : float, optional
        Colour limits (default: 2nd and 98th percentile of the shown values).
    ax : matplotlib Axes, optional
        Draw into this axes; otherwise a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    label, units = _label(overlay, units, label)
    anat = _as2d(anatomy, "anatomy")
    ov = _as2d(overlay, "overlay")
    if anat.shape != ov.shape:
        raise PlotInputError(f"anatomy shape {anat.shape} differs from overlay shape {ov.shape}")
    m = None
    if mask is not None:
        m = _as2d(mask, "mask").astype(bool)
        if m.shape != ov.shape:
            raise PlotInputError(f"mask shape {m.shape} differs from overlay shape {ov.shape}")
    fig, ax = _figure_and_axes(plt, ax, (4, 3.6))
    vmin, vmax = _robust_limits(ov if m is None else ov[m], vmin, vmax)
    im = _draw_map(ax, anat, ov, m, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(f"{label} ({units})" if units else label)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _check_dims(da: xr.DataArray, name: str, dims=("animal", "day", "z", "y", "x")):
    if not isinstance(da, xr.DataArray):
        raise PlotInputError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise PlotInputError(f"{name} lacks dims {missing}; its dims are {tuple(da.dims)}")


def representative_animals(acquired: xr.DataArray, group: Sequence | xr.DataArray | None = None) -> dict:
    """Pick one animal per group: the one scanned on the most days (ties: first in order).

    Parameters
    ----------
    acquired : DataArray of bool (animal, day)
        Which sessions exist (the loader's ``acquired`` coordinate).
    group : the group of each animal (default: the ``group`` coordinate of ``acquired``).

    Returns
    -------
    dict ``{group: animal}`` in order of first appearance of the group.
    """
    _check_dims(acquired, "acquired", ("animal", "day"))
    if group is None:
        if "group" not in acquired.coords:
            raise PlotInputError("acquired has no 'group' coordinate along 'animal'; pass group=")
        group = acquired["group"].values
    group = np.asarray(getattr(group, "values", group))
    n_days = np.asarray(acquired.sum("day").values)
    animals = np.asarray(acquired["animal"].values)
    out: dict = {}
    for g in pd.unique(group):
        idx = np.flatnonzero(group == g)
        best = idx[np.argmax(n_days[idx])]
        out[g] = animals[best]
    return out


def _best_slice(mask3d: np.ndarray) -> int:
    counts = mask3d.reshape(mask3d.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.max() > 0 else mask3d.shape[0] // 2


def _grid_inputs(maps: xr.DataArray, anatomy: xr.DataArray, roi: xr.DataArray | None, acquired, days):
    _check_dims(maps, "maps")
    _check_dims(anatomy, "anatomy")
    if acquired is None:
        acquired = maps.notnull().any(("z", "y", "x")) if "acquired" not in maps.coords else maps["acquired"]
    acquired = acquired.astype(bool)
    if "group" not in acquired.coords and "group" in maps.coords:
        acquired = acquired.assign_coords(group=maps["group"])
    reps = representative_animals(acquired)
    days = list(maps["day"].values) if days is None else list(days)
    if not days:
        raise PlotInputError("no days to show")
    return reps, days, acquired


def _panel_grid(plt, reps: dict, days: list, acq: np.ndarray, region: np.ndarray, *, row_height: float):
    """A figure with one row per representative animal and one column per day.

    Labels every row with its group, animal and slice (the slice with most ``region`` voxels on the
    animal's last acquired day) and marks panels of sessions not acquired.  Returns
    ``(fig, axes, panels)`` with ``panels`` the ``(ax, i, j, z)`` of every acquired session.
    """
    nr, nc = len(reps), len(days)
    fig, axes = plt.subplots(nr, nc, figsize=(2.3 * nc + 1.2, row_height * nr + 0.4), squeeze=False,
                             constrained_layout=True)
    panels = []
    for i, (g, animal) in enumerate(reps.items()):
        acq_days = np.flatnonzero(acq[i])
        zsl = _best_slice(region[i, acq_days[-1]]) if acq_days.size else region.shape[2] // 2
        for j in range(nc):
            ax = axes[i, j]
            if j == 0:
                ax.set_ylabel(f"{g}\n{animal} (z={zsl})", fontsize=8)
            if acq[i, j]:
                panels.append((ax, i, j, zsl))
                continue
            ax.text(0.5, 0.5, "not acquired", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig, axes, panels


def representative_maps(maps: xr.DataArray, anatomy: xr.DataArray, roi: xr.DataArray | None = None, *,
                        labels: Sequence[int] = (1,), acquired: xr.DataArray | None = None,
                        days: Sequence | None = None, units: str | None = None, label: str | None = None,
                        cmap: str = "magma", vmin: float | None = None, vmax: float | None = None,
                        title: str | None = None):
    """Map over anatomy for one representative animal per group (rows) and each day (columns).

    The slice shown is the one with the most ROI voxels of that animal on its last acquired day;
    colour limits are shared by every panel (2nd-98th percentile of the shown ROI values unless
    given), so groups and days compare by eye.

    Parameters
    ----------
    maps : DataArray (animal, day, z, y, x)
        A fitted map (e.g. ``r2star`` in 1/s) with ``group`` along ``animal``; may be Dask-backed
        (only the shown animals are computed).
    anatomy : DataArray (animal, day, z, y, x)
        Background image on the same grid.
    roi : DataArray (animal, day, z, y, x) of int labels, optional
        The overlay is shown inside ``labels`` only (default: tumour, label 1).
    acquired : DataArray (animal, day) of bool, optional (default: the ``acquired`` coordinate).

    Returns
    -------
    matplotlib.figure.Figure with one axes per (group, day) and a shared colourbar.
    """
    plt = _plt()
    reps, days, acquired = _grid_inputs(maps, anatomy, roi, acquired, days)
    label, units = _label(maps, units, label)
    sel = list(reps.values())
    m = maps.sel(animal=sel, day=days).transpose("animal", "day", "z", "y", "x")
    a = anatomy.sel(animal=sel, day=days).transpose("animal", "day", "z", "y", "x")
    m_np, a_np = np.asarray(m.values, dtype=float), np.asarray(a.values, dtype=float)
    if roi is not None:
        _check_dims(roi, "roi")
        r_np = np.isin(np.asarray(roi.sel(animal=sel, day=days).transpose("animal", "day", "z", "y", "x").values),
                       list(labels))
    else:
        r_np = np.isfinite(m_np)
    acq = np.asarray(acquired.sel(animal=sel, day=days).values, dtype=bool)
    shown = m_np[r_np & acq[:, :, None, None, None]]
    vmin, vmax = _robust_limits(shown, vmin, vmax)
    fig, axes, panels = _panel_grid(plt, reps, days, acq, r_np, row_height=2.2)
    for j, d in enumerate(days):
        axes[0, j].set_title(f"day {d}", fontsize=9)
    im = None
    for ax, i, j, zsl in panels:
        im = _draw_map(ax, a_np[i, j, zsl], m_np[i, j, zsl], r_np[i, j, zsl], cmap=cmap, vmin=vmin, vmax=vmax,
                       alpha=0.85)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label(f"{label} ({units})" if units else label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def fit_quality_maps(quality: xr.DataArray, fit_ok: xr.DataArray, anatomy: xr.DataArray,
                     roi: xr.DataArray | None = None, *, labels: Sequence[int] = (1, 2),
                     days: Sequence | None = None, units: str | None = None, label: str | None = None,
                     cmap: str = "viridis", title: str | None = None):
    """Goodness-of-fit map (e.g. RMSE or R^2) for a representative animal per group and day.

    Voxels inside the ROI where the fit failed (``fit_ok`` False) are painted red, so a reader sees
    at a glance where and how often the fit gives up; each panel's title gives the failed fraction.

    Parameters
    ----------
    quality : DataArray (animal, day, z, y, x), the fit's goodness-of-fit map.
    fit_ok : DataArray of bool, same dims.
    anatomy : DataArray, same dims, background image.
    roi : label map, optional; quality is shown inside ``labels`` (default tumour and muscle).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap

    reps, days, acquired = _grid_inputs(quality, anatomy, roi, None, days)
    _check_dims(fit_ok, "fit_ok")
    label, units = _label(quality, units, label)
    sel = list(reps.values())
    order = ("animal", "day", "z", "y", "x")
    q = np.asarray(quality.sel(animal=sel, day=days).transpose(*order).values, dtype=float)
    ok = np.asarray(fit_ok.sel(animal=sel, day=days).transpose(*order).values, dtype=bool)
    a = np.asarray(anatomy.sel(animal=sel, day=days).transpose(*order).values, dtype=float)
    if roi is not None:
        _check_dims(roi, "roi")
        r = np.isin(np.asarray(roi.sel(animal=sel, day=days).transpose(*order).values), list(labels))
    else:
        r = np.ones_like(ok)
    acq = np.asarray(acquired.sel(animal=sel, day=days).values, dtype=bool)
    vmin, vmax = _robust_limits(q[r & ok & acq[:, :, None, None, None]], None, None)
    fig, axes, panels = _panel_grid(plt, reps, days, acq, r, row_height=2.3)
    red = ListedColormap(["red"])
    im = None
    for ax, i, j, zsl in panels:
        rr = r[i, j, zsl]
        im = _draw_map(ax, a[i, j, zsl], q[i, j, zsl], rr & ok[i, j, zsl], cmap=cmap, vmin=vmin, vmax=vmax,
                       alpha=0.9)
        bad = rr & ~ok[i, j, zsl]
        ax.imshow(np.ma.masked_where(~bad, np.ones_like(q[i, j, zsl])), cmap=red, origin="lower",
                  interpolation="nearest", vmin=0, vmax=1)
        n_roi = int(r[i, j].sum())
        frac = float((r[i, j] & ~ok[i, j]).sum()) / n_roi if n_roi else float("nan")
        ax.set_title(f"day {days[j]}: {100 * frac:.1f}% failed", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label(f"{label} ({units})" if units else label)
    fig.suptitle(title or "fit quality (red: fit failed)", fontsize=10)
    return fig


def _need_columns(df: pd.DataFrame, cols, name="data"):
    if not isinstance(df, pd.DataFrame):
        raise PlotInputError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise PlotInputError(f"{name} lacks columns {missing}; it has {list(df.columns)}")
    if df.empty:
        raise PlotInputError(f"{name} is empty")


def spaghetti(data: pd.DataFrame, y: str, *, x: str = "day", group: str = "group", unit: str = "animal",
              ylabel: str | None = None, xlabel: str | None = None, logy: bool = False,
              title: str | None = None, palette=None, seed: int = 0):
    """Per-animal trajectories (thin lines) and the group mean with a 95 % bootstrap CI (thick).

    Parameters
    ----------
    data : tidy DataFrame, one row per animal x day (e.g. tumour mean R2* per session).
    y : column to plot; ``ylabel`` (e.g. ``"tumour R2* (1/s)"``) defaults to its
        :func:`~studylib.conventions.axis_label`, as ``xlabel`` does for ``x``.
    x, group, unit : column names for the day, the treatment group and the animal.
    logy : log-scale y (tumour volumes).
    seed : seed of seaborn's bootstrap, so the figure is reproducible.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    import seaborn as sns

    _need_columns(data, [x, y, group, unit])
    d = data[[x, y, group, unit]].dropna()
    if d.empty:
        raise PlotInputError(f"no finite values of '{y}' to plot")
    groups = list(pd.unique(d[group]))
    pal = dict(zip(groups, sns.color_palette(palette, len(groups))))
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for (g, a), sub in d.sort_values(x).groupby([group, unit], sort=False):
        ax.plot(sub[x], sub[y], color=pal[g], alpha=0.35, lw=0.8, marker=".", ms=3)
    sns.lineplot(data=d, x=x, y=y, hue=group, hue_order=groups, palette=pal, errorbar=("ci", 95),
                 n_boot=1000, seed=seed, lw=2.5, marker="o", ax=ax, err_style="band")
    ax.set_xlabel(xlabel or axis_label(x))
    ax.set_ylabel(ylabel or axis_label(y))
    if logy:
        ax.set_yscale("log")
    ax.legend(title=axis_label(group), fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def correlation_scatter(data: pd.DataFrame, x: str, y: str, *, hue: str | None = None,
                        xlabel: str | None = None, ylabel: str | None = None, r: float | None = None,
                        r_ci: tuple[float, float] | None = None, title: str | None = None, seed: int = 0):
    """Scatter of an imaging biomarker against a histology endpoint, OLS line and 95 % CI band.

    Parameters
    ----------
    data : DataFrame, one row per animal (or tumour).
    x, y : columns; ``xlabel``/``ylabel`` default to their :func:`~studylib.conventions.axis_label`.
    hue : optional column colouring the points (e.g. the PDX model).
    r, r_ci : the correlation and its CI to print in the corner (computed by the caller, e.g.
        :func:`studylib.stats` bootstrap); default: Pearson r of the plotted points.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    import seaborn as sns

    _need_columns(data, [x, y, hue])
    d = data.dropna(subset=[x, y])
    if len(d) < 3:
        raise PlotInputError(f"need at least 3 finite ({x}, {y}) pairs for a correlation plot, got {len(d)}")
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    sns.regplot(data=d, x=x, y=y, scatter=False, ci=95, n_boot=1000, seed=seed, color="0.3", ax=ax,
                line_kws=dict(lw=1.5))
    sns.scatterplot(data=d, x=x, y=y, hue=hue, ax=ax, s=40, edgecolor="k", linewidth=0.4)
    if r is None:
        r = float(np.corrcoef(d[x].astype(float), d[y].astype(float))[0, 1])
    txt = f"r = {r:.2f}"
    if r_ci is not None:
        txt += f" [{r_ci[0]:.2f}, {r_ci[1]:.2f}]"
    txt += f", n = {len(d)}"
    ax.text(0.02, 0.98, txt, transform=ax.transAxes, va="top", fontsize=9,
            bbox=dict(boxstyle="round", fc="white", alpha=0.8))
    ax.set_xlabel(xlabel or axis_label(x))
    ax.set_ylabel(ylabel or axis_label(y))
    if hue is not None and ax.get_legend() is not None:
        ax.get_legend().set_title(axis_label(hue))
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def zspectra(offset_ppm, z: Mapping[str, np.ndarray] | np.ndarray, *, labels: Sequence[str] | None = None,
             mtrasym: bool = True, highlight_ppm: float | None = None, title: str | None = None):
    """CEST Z-spectra (water saturation, %, offset axis reversed as is customary) and MTR asymmetry.

    Parameters
    ----------
    offset_ppm : (n,) saturation offsets in ppm.
    z : dict ``{label: Z[..., n]}`` or an array ``(k, n)``; Z as a fraction of S0. Extra leading dims
        are averaged (mean over voxels) with a shaded +/- SD band.
    labels : names for the rows of an array ``z``.
    mtrasym : also plot ``MTRasym(d) = Z(-d) - Z(+d)`` (in % of S0) for d > 0 on a second axes;
        needs offsets symmetric about 0 (interpolated linearly otherwise).
    highlight_ppm : mark this offset (e.g. 0.4 ppm for lactate).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    off = np.asarray(offset_ppm, dtype=float)
    if off.ndim != 1 or off.size < 3:
        raise PlotInputError(f"offset_ppm must be 1-D with at least 3 offsets, got shape {off.shape}")
    if not isinstance(z, Mapping):
        arr = np.asarray(z, dtype=float)
        if arr.ndim == 1:
            arr = arr[None]
        labels = list(labels) if labels is not None else [f"spectrum {i}" for i in range(arr.shape[0])]
        if len(labels) != arr.shape[0]:
            raise PlotInputError(f"{len(labels)} labels for {arr.shape[0]} spectra")
        z = dict(zip(labels, arr))
    if not z:
        raise PlotInputError("no spectra given")
    order = np.argsort(off)
    offs = off[order]
    ncols = 2 if mtrasym else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.8), squeeze=False, constrained_layout=True)
    ax = axes[0, 0]
    pos = offs[offs > 0]
    for name, spec in z.items():
        s = np.asarray(spec, dtype=float)
        if s.shape[-1] != off.size:
            raise PlotInputError(f"spectrum '{name}' has {s.shape[-1]} offsets, offset_ppm has {off.size}")
        s = s.reshape(-1, off.size)[:, order] * 100.0
        mean, sd = np.nanmean(s, axis=0), (np.nanstd(s, axis=0) if s.shape[0] > 1 else None)
        (line,) = ax.plot(offs, mean, marker=".", label=str(name))
        if sd is not None:
            ax.fill_between(offs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        if mtrasym and pos.size:
            neg = np.interp(-pos, offs, mean)
            asym = neg - np.interp(pos, offs, mean)
            axes[0, 1].plot(pos, asym, marker=".", color=line.get_color(), label=str(name))
    ax.invert_xaxis()
    ax.set_xlabel("saturation offset (ppm)")
    ax.set_ylabel("Z = S/S0 (%)")
    ax.legend(fontsize=8)
    if mtrasym:
        a2 = axes[0, 1]
        a2.axhline(0, color="0.6", lw=0.8)
        a2.set_xlabel("offset (ppm)")
        a2.set_ylabel("MTRasym (% of S0)")
        if highlight_ppm is not None:
            a2.axvline(highlight_ppm, color="0.4", ls="--", lw=0.8)
    if highlight_ppm is not None:
        ax.axvline(highlight_ppm, color="0.4", ls="--", lw=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def effect_vs_truth(table: pd.DataFrame, *, label: str = "finding", estimate: str = "estimate",
                    ci_low: str = "ci_low", ci_high: str = "ci_high", truth: str = "truth",
                    units: str | None = "units", direction: str | None = "paper_direction",
                    title: str | None = None, row_height: float = 1.1, width: float = 6.0):
    """Forest plot: each estimated effect with its CI, the simulated truth (red x), zero (grey) and the
    side of zero the paper reports (shaded green).

    Parameters
    ----------
    table : a conclusions table (:func:`studylib.analysis.conclusions_table`), one row per finding with the
        estimate, CI bounds, truth (may be NaN), units and the paper's direction (``"increase / positive"``,
        ``"decrease / negative"``; another or no value: no shading).
    row_height, width : inches per row and figure width.

    Returns
    -------
    matplotlib.figure.Figure, one axes per row, each on the effect's own scale (effects have different units).
    """
    plt = _plt()
    _need_columns(table, [label, estimate, ci_low, ci_high], "table")
    n = len(table)
    fig, axes = plt.subplots(n, 1, figsize=(width, row_height * n + 0.7), squeeze=False, constrained_layout=True)
    handles = {}
    for ax, (_, row) in zip(axes[:, 0], table.iterrows()):
        est, lo, hi = float(row[estimate]), float(row[ci_low]), float(row[ci_high])
        tr = float(row[truth]) if truth in table.columns and row[truth] is not None else float("nan")
        ends = [v for v in (lo, hi, 0.0, tr) if np.isfinite(v)]
        pad = 0.08 * ((max(ends) - min(ends)) or 1.0)
        left, right = min(ends) - pad, max(ends) + pad
        ax.set_xlim(left, right)
        sign = _direction_sign(row[direction]) if direction and direction in table.columns else 0
        if sign:
            handles["paper's direction"] = ax.axvspan(*((0, right) if sign > 0 else (left, 0)), color="C2", alpha=0.12,
                                                        lw=0)
        ax.axvline(0, color="0.6", lw=0.8)
        handles["estimate, 95% CI"] = ax.errorbar([est], [0], xerr=[[est - lo], [hi - est]], fmt="o", color="C0",
                                                  capsize=4)
        if np.isfinite(tr):
            (handles["simulated truth"],) = ax.plot([tr], [0], "x", color="red", ms=9, mew=2)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        u = f" ({row[units]})" if units and units in table.columns and isinstance(row[units], str) and row[units] else ""
        ax.set_title(f"{row[label]}{u}", fontsize=8, loc="left")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _direction_sign(text) -> int:
    """+1 for a paper direction "increase / positive", -1 for "decrease / negative", else 0."""
    t = str(text or "").lower()
    up, down = ("increase" in t or "positive" in t), ("decrease" in t or "negative" in t)
    return int(up) - int(down)


def time_curves(curves: xr.DataArray, *, dim: str = "t", hue: str | None = None, mean: bool = True,
                units: str | None = None, label: str | None = None, time_units: str | None = None,
                title: str | None = None):
    """Curves over time (e.g. measured AIFs, one per animal, and their mean in bold).

    Parameters
    ----------
    curves : DataArray with the time dim ``dim`` (s) and optionally one more dim (``hue``), e.g.
        ``aif(animal, t)`` in mM.
    hue : the dim whose entries are drawn as separate thin lines (default: the other dim, if any).
    mean : also draw the mean over ``hue`` in bold.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    if not isinstance(curves, xr.DataArray) or dim not in curves.dims:
        raise PlotInputError(f"curves must be a DataArray with a '{dim}' dim, got "
                             f"{getattr(curves, 'dims', type(curves).__name__)}")
    other = [d for d in curves.dims if d != dim]
    if len(other) > 1:
        raise PlotInputError(f"curves may have one dim besides '{dim}', got {other}")
    hue = hue or (other[0] if other else None)
    label, units = _label(curves, units, label)
    t = np.asarray(curves[dim].values, dtype=float)
    tu = time_units if time_units is not None else curves[dim].attrs.get("units", "s")
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    if hue is None:
        ax.plot(t, np.asarray(curves.values, dtype=float), lw=2)
    else:
        c = curves.transpose(hue, dim)
        vals = np.asarray(c.values, dtype=float)
        for name, row in zip(c[hue].values, vals):
            ax.plot(t, row, lw=0.8, alpha=0.5, label=str(name) if len(vals) <= 8 else None)
        if mean and len(vals) > 1:
            ax.plot(t, np.nanmean(vals, axis=0), color="k", lw=2.2, label="mean")
        ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel(axis_label(dim, units=tu))
    ax.set_ylabel(f"{label} ({units})" if units else label)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def fluorine_overlay(anatomy_1h, f19, *, detected=None, units: str = "mM", label: str = "19F",
                     title: str | None = None, vmax: float | None = None, ax=None, extent=None):
    """19F map in hot colours over the 1H anatomy (grey); only detected voxels are coloured.

    Parameters
    ----------
    anatomy_1h : 2-D (y, x) 1H image.
    f19 : 2-D (y, x) 19F map (e.g. ``fluorine_mM``); may have a coarser matrix than the
        1H image: both are drawn over the same field of view (``extent``).
    detected : 2-D bool, same shape as ``f19``: voxels above the detection threshold
        (default: ``f19 > 0``).
    extent : (left, right, bottom, top) in mm, default the 1H matrix in pixels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    anat = _as2d(anatomy_1h, "anatomy_1h")
    f = _as2d(f19, "f19")
    det = (np.isfinite(f) & (f > 0)) if detected is None else _as2d(detected, "detected").astype(bool)
    if det.shape != f.shape:
        raise PlotInputError(f"detected has shape {det.shape} but f19 has {f.shape}")
    fig, ax = _figure_and_axes(plt, ax, (4, 3.6))
    ext = extent if extent is not None else (-0.5, anat.shape[1] - 0.5, anat.shape[0] - 0.5, -0.5)
    lo, hi = np.nanpercentile(anat, [1, 99.5]) if np.isfinite(anat).any() else (0, 1)
    ax.imshow(anat, cmap="gray", vmin=lo, vmax=hi, extent=ext, interpolation="nearest")
    shown = np.where(det, f, np.nan)
    top = vmax if vmax is not None else (np.nanpercentile(shown, 99) if np.isfinite(shown).any() else 1.0)
    im = ax.imshow(np.ma.masked_invalid(shown), cmap="hot", vmin=0, vmax=top if top > 0 else 1.0, extent=ext,
                   interpolation="nearest", alpha=0.9)
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label(f"{label} ({units})")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def fluorine_overlay_grid(anatomy: xr.DataArray, quant: xr.Dataset, roi: xr.DataArray, *,
                          animals_by_group: Mapping[str, str], day=None, variable: str = "fluorine_mM",
                          label: int = 1, title: str | None = None):
    """One 19F-over-1H overlay per group (columns), at the slice with most ``label`` voxels.

    ``anatomy``, ``quant[variable]`` and ``roi`` have dims ``(animal, day, z, y, x)`` on the
    same grid; ``animals_by_group`` maps a column title (e.g. the tumour line) to an animal.
    """
    plt = _plt()
    if not animals_by_group:
        raise PlotInputError("animals_by_group is empty")
    days = list(np.atleast_1d(quant["day"].values)) if "day" in quant.dims else [None]
    d = days[-1] if day is None else day
    fig, axes = plt.subplots(1, len(animals_by_group), figsize=(3.6 * len(animals_by_group), 3.4),
                             squeeze=False, constrained_layout=True)
    vals = quant[variable]
    vmax = float(np.nanpercentile(vals.where(quant["detected"]).values, 99)) if bool(quant["detected"].any()) else 1.0
    for ax, (name, animal) in zip(axes[0], animals_by_group.items()):
        sel = {"animal": animal}
        if d is not None:
            sel["day"] = d
        r = np.asarray(roi.sel(sel).values)
        z = _best_slice(r == label)
        fluorine_overlay(anatomy.sel(sel).isel(z=z), vals.sel(sel).isel(z=z), detected=quant["detected"].sel(sel)
                         .isel(z=z), units=vals.attrs.get("units", ""), title=f"{name} ({animal})", vmax=vmax, ax=ax)
        ax.contour(r[z] == label, levels=[0.5], colors="cyan", linewidths=0.7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def cest_map_grid(maps: xr.DataArray, anatomy: xr.DataArray, roi: xr.DataArray, *, animals: Sequence[str],
                  days: Sequence, label: int = 1, units: str = "%", title: str | None = None,
                  vmin: float | None = None, vmax: float | None = None, cmap: str = "RdBu_r"):
    """MTRasym (or any) map inside the ROI over anatomy: animals in rows, days in columns."""
    plt = _plt()
    if not animals or not days:
        raise PlotInputError("cest_map_grid needs at least one animal and one day")
    inside = maps.where(roi == label)
    finite = inside.values[np.isfinite(inside.values)]
    if vmin is None or vmax is None:
        lim = float(np.nanpercentile(np.abs(finite), 98)) if finite.size else 1.0
        vmin, vmax = (-lim, lim) if vmin is None and vmax is None else (vmin, vmax)
    fig, axes = plt.subplots(len(animals), len(days), figsize=(3.1 * len(days), 2.8 * len(animals)),
                             squeeze=False, constrained_layout=True)
    im = None
    for i, a in enumerate(animals):
        for j, d in enumerate(days):
            ax = axes[i, j]
            sel = {"animal": a, "day": d}
            r = np.asarray(roi.sel(sel).values)
            z = _best_slice(r == label)
            an = np.asarray(anatomy.sel(sel).isel(z=z).values, dtype=float)
            if np.isfinite(an).any():
                lo, hi = np.nanpercentile(an, [1, 99.5])
                ax.imshow(an, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            m = np.asarray(inside.sel(sel).isel(z=z).values, dtype=float)
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{a}, day {d}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label(f"{maps.attrs.get('long_name', maps.name or '')} ({units})")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def snr_histograms(snr: xr.DataArray, roi: xr.DataArray, groups: Mapping[str, Sequence[str]], *,
                   threshold: float | None = None, label: int = 1, bins: int = 60,
                   xlabel: str = "tumour voxel SNR (M / sigma)"):
    """Density histograms of a per-voxel map inside ROI ``label``, one line per group of animals.

    Parameters
    ----------
    snr, roi : (animal, day, z, y, x) map and label map on the same grid.
    groups : group name -> the animals pooled for its histogram.
    threshold : drawn as a dashed vertical line (e.g. the 19F detection threshold k).
    """
    plt = _plt()
    if not groups:
        raise PlotInputError("snr_histograms needs at least one group of animals")
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    for name, ids in groups.items():
        ids = list(ids)
        v = np.asarray(snr.sel(animal=ids).where(roi.sel(animal=ids) == label).values, dtype=float).ravel()
        ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", density=True, label=str(name))
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return fig


def group_strips(data: pd.DataFrame, columns: Mapping[str, str], *, group: str, order: Sequence[str]):
    """One strip plot per column: each animal a dot, its group's mean a bar, groups in ``order``.

    ``columns`` maps a column of ``data`` to its axis label (with units).
    """
    plt = _plt()
    _need_columns(data, [group, *columns])
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, (col, lab) in zip(axes[0], columns.items()):
        for i, g in enumerate(order):
            v = data.loc[data[group] == g, col].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, s=18)
            if v.size:
                ax.hlines(v.mean(), i - 0.25, i + 0.25, color="k")
        ax.set_xticks(range(len(order)), list(order))
        ax.set_ylabel(lab)
    return fig


def paired_lines(per_animal: pd.DataFrame, *, pre: str = "pre", post: str = "post",
                 xticklabels: Sequence[str] = ("pre", "post"), ylabel: str = ""):
    """Each animal's value before and after (columns ``pre`` and ``post``, one row per animal)."""
    plt = _plt()
    _need_columns(per_animal, [pre, post], "per_animal")
    fig, ax = plt.subplots(figsize=(4.2, 3.4), constrained_layout=True)
    for a, r in per_animal.iterrows():
        ax.plot([0, 1], [r[pre], r[post]], marker="o", label=str(a))
    ax.set_xticks([0, 1], list(xticklabels))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return fig
