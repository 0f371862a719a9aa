"""Analysis and figure helpers for the two experiments beyond the first five.

``fluorine19_pfc`` (19F PFC macrophage burden in 67NR / 168FARN / 4T1 tumours, Makela et
al., MRM 2018;80:1138) and ``lactate_cest`` (LATEST MTRasym at 0.4 ppm before and after
pyruvate, DeBrosse et al., Sci Rep 2016;6:19517).  Statistics here are small, pure
functions on per-animal tables (the animal is the unit of analysis); figures return the
matplotlib Figure.  The fits themselves live in :mod:`studylib.fit.fluorine` and
:mod:`studylib.fit.cest`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .errors import StudyError

__all__ = [
    "jonckheere_terpstra",
    "kruskal_pairwise",
    "paired_change",
    "fluorine_overlay",
    "fluorine_overlay_grid",
    "cest_map_grid",
    "tumour_rim_core",
    "fluorine_animal_table",
    "cest_session_table",
    "roi_mean_spectra",
]



class AnalysisInputError(StudyError):
    """A table or array handed to an analysis helper is not usable."""


# ----------------------------------------------------------------------------- statistics


def jonckheere_terpstra(groups: Sequence, *, alternative: str = "increasing", n_perm: int = 20000,
                        seed: int = 0) -> dict:
    """Jonckheere-Terpstra test for an ordered trend across k independent groups.

    Parameters
    ----------
    groups : sequence of 1-D arrays, in the hypothesised order (e.g. 67NR, 168FARN, 4T1).
    alternative : ``"increasing"`` (default), ``"decreasing"`` or ``"two-sided"``.
    n_perm : permutations for the p-value (exact enough for the small groups of mouse
        studies, where the normal approximation is poor); 0 uses only the normal approximation.
    seed : random seed of the permutations.

    Returns
    -------
    dict: ``statistic`` (J), ``expected`` (E[J] under H0), ``z`` (normal approximation,
    tie-corrected variance), ``p`` (permutation p-value, or normal when ``n_perm == 0``),
    ``p_normal``, ``n`` (group sizes), ``method``.

    Notes
    -----
    ``J = sum_{i<j} sum_{a in G_i, b in G_j} ([b > a] + [b = a]/2)``;
    ``E[J] = (N^2 - sum n_i^2) / 4``; variance with ties after Hollander & Wolfe,
    *Nonparametric Statistical Methods* (1999), eq. 6.19; Jonckheere, Biometrika
    1954;41:133 (doi:10.1093/biomet/41.1-2.133).
    """
    from scipy import stats as sps

    gs = [np.asarray(g, dtype=float).ravel() for g in groups]
    gs = [g[np.isfinite(g)] for g in gs]
    if len(gs) < 2 or any(g.size == 0 for g in gs):
        raise AnalysisInputError(f"jonckheere_terpstra needs >= 2 groups with finite values, got sizes "
                                 f"{[g.size for g in gs]}")
    if alternative not in ("increasing", "decreasing", "two-sided"):
        raise AnalysisInputError(f"alternative must be 'increasing', 'decreasing' or 'two-sided', got {alternative!r}")
    n = np.array([g.size for g in gs])
    N = int(n.sum())
    labels = np.repeat(np.arange(len(gs)), n)
    pooled = np.concatenate(gs)

    def _j(vals):  # vals (m, N) -> J per row
        tot = np.zeros(vals.shape[0])
        for i in range(len(gs)):
            a = vals[:, labels == i]
            for j in range(i + 1, len(gs)):
                b = vals[:, labels == j]
                d = b[:, None, :] - a[:, :, None]
                tot += np.sum(d > 0, axis=(1, 2)) + 0.5 * np.sum(d == 0, axis=(1, 2))
        return tot

    J = float(_j(pooled[None, :])[0])
    mean = (N**2 - np.sum(n**2)) / 4.0
    _, t = np.unique(pooled, return_counts=True)
    var = ((N * (N - 1) * (2 * N + 5) - np.sum(n * (n - 1) * (2 * n + 5)) - np.sum(t * (t - 1) * (2 * t + 5))) / 72.0
           + np.sum(n * (n - 1) * (n - 2)) * np.sum(t * (t - 1) * (t - 2)) / (36.0 * N * (N - 1) * (N - 2))
           + np.sum(n * (n - 1)) * np.sum(t * (t - 1)) / (8.0 * N * (N - 1)))
    z = (J - mean) / np.sqrt(var) if var > 0 else 0.0
    if alternative == "increasing":
        p_norm = float(sps.norm.sf(z))
    elif alternative == "decreasing":
        p_norm = float(sps.norm.cdf(z))
    else:
        p_norm = float(2 * sps.norm.sf(abs(z)))
    p = p_norm
    method = "Jonckheere-Terpstra, normal approximation"
    if n_perm:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.broadcast_to(pooled, (int(n_perm), N)), axis=1)
        jp = _j(perms)
        if alternative == "increasing":
            hits = np.sum(jp >= J - 1e-9)
        elif alternative == "decreasing":
            hits = np.sum(jp <= J + 1e-9)
        else:
            hits = np.sum(np.abs(jp - mean) >= abs(J - mean) - 1e-9)
        p = float((hits + 1) / (n_perm + 1))
        method = f"Jonckheere-Terpstra, {n_perm} permutations"
    return dict(statistic=J, expected=float(mean), z=float(z), p=p, p_normal=p_norm, n=n.tolist(), method=method)


def kruskal_pairwise(table: pd.DataFrame, y: str, group: str, order: Sequence[str]) -> tuple[dict, pd.DataFrame]:
    """Kruskal-Wallis across groups plus pairwise Mann-Whitney U tests (Holm-adjusted).

    Returns ``(omnibus, pairs)``: ``omnibus`` a dict (``H``, ``p``), ``pairs`` a table with
    ``a, b, n_a, n_b, median_a, median_b, U, p, p_holm``.
    """
    from scipy import stats as sps

    for c in (y, group):
        if c not in table.columns:
            raise AnalysisInputError(f"table lacks column '{c}'; it has {list(table.columns)}")
    data = {g: table.loc[table[group] == g, y].astype(float).dropna().to_numpy() for g in order}
    small = {g: v.size for g, v in data.items() if v.size < 2}
    if small:
        raise AnalysisInputError(f"need at least 2 animals per group for '{y}', got {small}")
    H, p = sps.kruskal(*data.values())
    rows = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            u = sps.mannwhitneyu(data[a], data[b], alternative="two-sided")
            rows.append(dict(a=a, b=b, n_a=data[a].size, n_b=data[b].size, median_a=float(np.median(data[a])),
                             median_b=float(np.median(data[b])), U=float(u.statistic), p=float(u.pvalue)))
    pairs = pd.DataFrame(rows)
    m = len(pairs)
    order_idx = np.argsort(pairs["p"].to_numpy())
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order_idx):
        running = max(running, min(1.0, (m - rank) * pairs["p"].iloc[idx]))
        adj[idx] = running
    pairs["p_holm"] = adj
    return dict(H=float(H), p=float(p), method="Kruskal-Wallis"), pairs


def paired_change(table: pd.DataFrame, y: str, *, pre, post, unit: str = "animal", day: str = "day",
                  alpha: float = 0.05) -> dict:
    """Paired post - pre change of ``y`` per animal: mean, t-based CI, paired t and Wilcoxon p.

    ``table`` has one row per animal and day.  Animals missing either session are dropped
    (and counted in ``n_dropped``).  Returns ``estimate, ci_low, ci_high, p`` (paired t),
    ``p_wilcoxon`` (exact signed-rank), ``n_animals``, ``n_dropped``, ``per_animal``
    (DataFrame with pre, post, change) and ``method``.
    """
    from scipy import stats as sps

    for c in (y, unit, day):
        if c not in table.columns:
            raise AnalysisInputError(f"table lacks column '{c}'; it has {list(table.columns)}")
    wide = table.pivot_table(index=unit, columns=day, values=y, aggfunc="mean")
    for d in (pre, post):
        if d not in wide.columns:
            raise AnalysisInputError(f"day {d!r} not in the table's days {list(wide.columns)}")
    per = pd.DataFrame({"pre": wide[pre], "post": wide[post]})
    n_all = len(per)
    per = per.dropna()
    per["change"] = per["post"] - per["pre"]
    n = len(per)
    if n < 2:
        raise AnalysisInputError(f"need at least 2 animals with both day {pre} and day {post} values of '{y}', got {n}")
    d = per["change"].to_numpy()
    t = sps.ttest_rel(per["post"], per["pre"])
    ci = t.confidence_interval(confidence_level=1 - alpha)
    try:
        pw = float(sps.wilcoxon(d).pvalue)
    except ValueError:
        pw = float("nan")
    return dict(estimate=float(d.mean()), ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue),
                p_wilcoxon=pw, n_animals=n, n_dropped=n_all - n, per_animal=per,
                method=f"paired t-test, df {n - 1}, n = {n} animals")


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not hasattr(matplotlib, "_studylib_backend"):
        pass
    import matplotlib.pyplot as plt

    return plt


def _slice2d(a, name):
    arr = np.asarray(a.values if isinstance(a, xr.DataArray) else a, dtype=float)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise AnalysisInputError(f"{name} must be a 2-D (y, x) image, got shape {arr.shape}")
    return arr


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
    anat = _slice2d(anatomy_1h, "anatomy_1h")
    f = _slice2d(f19, "f19")
    det = (np.isfinite(f) & (f > 0)) if detected is None else _slice2d(detected, "detected").astype(bool)
    if det.shape != f.shape:
        raise AnalysisInputError(f"detected has shape {det.shape} but f19 has {f.shape}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 3.6), constrained_layout=True)
    else:
        fig = ax.figure
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


def _best_slice(mask3d):
    counts = np.asarray(mask3d).reshape(mask3d.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.max() > 0 else mask3d.shape[0] // 2


def fluorine_overlay_grid(anatomy: xr.DataArray, quant: xr.Dataset, roi: xr.DataArray, *,
                          animals_by_group: Mapping[str, str], day=None, variable: str = "fluorine_mM",
                          label: int = 1, title: str | None = None):
    """One 19F-over-1H overlay per group (columns), at the slice with most ``label`` voxels.

    ``anatomy``, ``quant[variable]`` and ``roi`` have dims ``(animal, day, z, y, x)`` on the
    same grid; ``animals_by_group`` maps a column title (e.g. the tumour line) to an animal.
    """
    plt = _plt()
    if not animals_by_group:
        raise AnalysisInputError("animals_by_group is empty")
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
        raise AnalysisInputError("cest_map_grid needs at least one animal and one day")
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


# ----------------------------------------------------------------------------- tables


def tumour_rim_core(roi: xr.DataArray, *, label: int = 1, rim_fraction: float = 0.2,
                    voxel_size_mm=None) -> tuple[xr.DataArray, xr.DataArray]:
    """Split each scan's tumour into a rim (outer ``rim_fraction`` of its depth) and a core.

    Depth is the Euclidean distance (mm, anisotropic voxels honoured) from the tumour's
    boundary (:func:`scipy.ndimage.distance_transform_edt`); the rim is every tumour voxel
    with depth <= ``rim_fraction`` x the scan's maximum depth (at least the boundary layer).
    One call per scan (animal x day), never per voxel.
    """
    from scipy import ndimage

    if not 0 < rim_fraction < 1:
        raise AnalysisInputError(f"rim_fraction must be in (0, 1), got {rim_fraction!r}")
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    vs = voxel_size_mm if voxel_size_mm is not None else (1.0, 1.0, 1.0)
    sampling = {"x": float(vs[0]), "y": float(vs[1]), "z": float(vs[2])}
    r = roi.transpose(..., *space)
    vals = np.asarray(r.values)
    lead = vals.shape[:-len(space)]
    rim = np.zeros(vals.shape, bool)
    flat = vals.reshape((-1,) + vals.shape[-len(space):])
    out = rim.reshape(flat.shape)
    for i in range(flat.shape[0]):
        t = flat[i] == label
        if not t.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(t, 1), sampling=[sampling[d] for d in space])
        depth = depth[tuple(slice(1, -1) for _ in space)]
        cut = max(rim_fraction * depth[t].max(), min(sampling.values()))
        out[i] = t & (depth <= cut)
    rim = out.reshape(lead + vals.shape[-len(space):])
    rim_da = xr.DataArray(rim, dims=r.dims, coords=r.coords)
    core_da = (r == label) & ~rim_da
    return rim_da.transpose(*roi.dims), core_da.transpose(*roi.dims)


def _mM_from_atoms(atoms, n_vox, vol_mm3):
    from .models.fluorine import AVOGADRO

    return atoms / (n_vox * vol_mm3 * 1e-9 * AVOGADRO)


def fluorine_animal_table(quant: xr.Dataset, roi: xr.DataArray, *, label: int = 1, rim_fraction: float = 0.2,
                          voxel_size_mm=None, histology: pd.DataFrame | None = None,
                          f_atoms_per_cell: float | None = None) -> pd.DataFrame:
    """One row per animal (and day) of tumour 19F from :func:`studylib.fit.fluorine.fluorine_quantify`.

    Columns: ``animal, day, group, model`` (when present), ``f19_atoms`` (all voxels,
    Rician-corrected), ``f19_atoms_detected`` (voxels above the threshold), ``f19_mM``
    (tumour-mean 19F, mM, from ``f19_atoms``), ``f19_mM_rim``, ``f19_mM_core``,
    ``rim_over_core``, ``detected_fraction``, ``apparent_macrophages`` (from ``f19_atoms``),
    ``tumour_volume_mm3``, plus the histology columns merged on ``animal``.
    """
    from .fit.fluorine import fluorine_per_roi
    from .models.fluorine import F_ATOMS_PER_MACROPHAGE

    fc = F_ATOMS_PER_MACROPHAGE if f_atoms_per_cell is None else float(f_atoms_per_cell)
    vol = float(quant.attrs["voxel_volume_mm3"])
    tot = fluorine_per_roi(quant, roi, label=label, f_atoms_per_cell=fc)
    rim, core = tumour_rim_core(roi, label=label, rim_fraction=rim_fraction, voxel_size_mm=voxel_size_mm)
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    atoms = quant["fluorine_atoms_all"].where(quant["fit_ok"])
    n_rim, n_core = rim.sum(space), core.sum(space)
    rim_mM = _mM_from_atoms(atoms.where(rim).sum(space), n_rim.where(n_rim > 0), vol)
    core_mM = _mM_from_atoms(atoms.where(core).sum(space), n_core.where(n_core > 0), vol)
    t = xr.Dataset({
        "f19_atoms": tot["fluorine_atoms_total_all"], "f19_atoms_detected": tot["fluorine_atoms_total"],
        "f19_mM": _mM_from_atoms(tot["fluorine_atoms_total_all"], tot["n_voxels"].where(tot["n_voxels"] > 0), vol),
        "f19_mM_rim": rim_mM, "f19_mM_core": core_mM,
        "detected_fraction": tot["detected_fraction"], "apparent_macrophages": tot["apparent_macrophages_all"],
        "tumour_volume_mm3": tot["n_voxels"] * vol,
    }).compute()
    df = t.drop_vars([c for c in t.coords if c not in t.dims and c not in ("group", "model", "sex")]) \
        .to_dataframe().reset_index()
    df["rim_over_core"] = df["f19_mM_rim"] / df["f19_mM_core"]
    if "acquired" in quant.coords:
        acq = quant["acquired"].to_series().rename("acquired").reset_index()
        df = df.merge(acq, on=[c for c in ("animal", "day") if c in acq.columns])
        df = df[df["acquired"]].drop(columns="acquired")
    df = df.dropna(subset=["f19_atoms"])
    if histology is not None and "animal" in histology.columns:
        extra = [c for c in histology.columns if c not in df.columns or c == "animal"]
        df = df.merge(histology[extra], on="animal", how="left")
    return df.reset_index(drop=True)


def cest_session_table(results: Mapping[str, xr.Dataset | xr.DataArray], roi: xr.DataArray, *,
                       labels: Mapping[int, str] = {1: "tumour", 2: "muscle"}) -> pd.DataFrame:
    """ROI means per animal x day of several CEST maps, in tidy form.

    ``results`` maps a column name to a DataArray over ``(animal, day, z, y, x)`` (e.g.
    ``{"mtr_0p4": res.mtr_asym.sel(delta=0.4), "b0_ppm": b0.b0_ppm}``); each ROI label
    gives a ``roi`` value.  Voxels with NaN are ignored; a session without any finite
    voxel gives NaN.
    """
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    frames = []
    for lab, name in labels.items():
        inside = roi == lab
        cols = {}
        for col, da in results.items():
            if not isinstance(da, xr.DataArray):
                raise AnalysisInputError(f"results['{col}'] must be a DataArray, got {type(da).__name__}")
            cols[col] = da.where(inside).mean(space)
        cols["n_voxels"] = inside.sum(space)
        ds = xr.Dataset(cols).compute()
        df = ds.drop_vars([c for c in ds.coords if c not in ds.dims and c not in ("group", "model", "acquired")]) \
            .to_dataframe().reset_index()
        df.insert(0, "roi", name)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    if "acquired" in out.columns:
        out = out[out["acquired"].astype(bool)].drop(columns="acquired")
    return out.reset_index(drop=True)


def roi_mean_spectra(z: xr.DataArray, roi: xr.DataArray, *, label: int = 1, by: str = "day") -> dict:
    """ROI-voxel Z-spectra (``offset`` last) pooled per value of ``by``: ``{"day 0": (n_vox, n_off)}``.

    Voxels with no finite value are dropped (B0-corrected spectra keep NaN at the edge offsets
    that the shift pushes out of the acquired range).

    Input for :func:`studylib.plots.zspectra` (Z as a fraction of S0 there).
    """
    space = [d for d in ("z", "y", "x") if d in roi.dims]
    out = {}
    for v in np.atleast_1d(z[by].values):
        zz = z.sel({by: v}).where(roi.sel({by: v}) == label)
        arr = zz.transpose(..., "offset").values.reshape(-1, z.sizes["offset"])
        arr = arr[np.isfinite(arr).any(axis=1)]  # corrected spectra are NaN only at shifted-out edges
        if arr.size:
            out[f"{by} {v}"] = arr
    _ = space
    return out
