"""Test helpers with known truth: a synthetic study on disk, in-memory signals, a small study Dataset.

Used by the test suite, the notebook smoke runs and anyone writing a fit:

>>> sig, truth = synthetic_megre((4, 4), t2star_ms=25.0, snr=100, te_ms=[2, 5, 10, 20], seed=0)
>>> sig.dims, sig["te"].attrs["units"]
(('y', 'x', 'te'), 'ms')
>>> float(truth["t2star_ms"].mean())
25.0

Every ``synthetic_*`` function uses the forward models of :mod:`studylib.models` and
Rician noise from :func:`studylib.models.noise.add_rician_noise` with
``numpy.random.default_rng(seed)``; ``snr`` is the noise-free S0 (or M0) divided by the
noise sigma (``snr=None`` or ``inf``: no noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import xarray as xr

from .models.cest import zspectrum
from .models.dce import blood_to_plasma, extended_tofts_ct, mcgrath_rat_aif
from .models.diffusion import adc_signal
from .models.noise import add_rician_noise
from .models.relaxometry import monoexp_signal, spgr_signal
from .synth import DEFAULT_SEED, SynthError, generate

__all__ = [
    "make_study",
    "load_truth",
    "truth_table",
    "synthetic_megre",
    "synthetic_dwi",
    "synthetic_vfa",
    "synthetic_dce",
    "synthetic_cest",
    "synthetic_study",
    "assert_close_to_truth",
]

_SPATIAL = ("z", "y", "x")


# --------------------------------------------------------------------------------------------- on disk
def make_study(tmp_dir, preset: str = "ci", *, seed: int | None = None, studies: Iterable[str] | None = None,
               noise: bool = True) -> Path:
    """Generate a synthetic study into ``tmp_dir`` (raw/, truth/, data_manifest.csv); return the manifest path.

    ``studies`` limits it to some experiments (faster); ``preset="ci"`` takes about a second
    per experiment.
    """
    tmp_dir = Path(tmp_dir)
    return generate(preset, out=tmp_dir, seed=seed, manifest=tmp_dir / "data_manifest.csv", studies=studies,
                    noise=noise)


def _truth_dir(study: str, out) -> Path:
    d = Path(out) / "truth" / study
    if not (d / "truth.json").is_file():
        raise SynthError(f"{d / 'truth.json'}: no truth for study {study!r} under {out} "
                         f"(generate it with studylib.synth.generate)")
    return d


def load_truth(study: str, out) -> dict:
    """The ``truth.json`` of ``study`` in a generated study folder ``out`` (e.g. ``data/demo``)."""
    return json.loads((_truth_dir(study, out) / "truth.json").read_text())


def truth_table(study: str, out):
    """The per-(animal, day) true ROI means (``truth/<study>/sessions.csv``) as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(_truth_dir(study, out) / "sessions.csv", dtype={"animal": str})


# --------------------------------------------------------------------------------------------- in memory
def _spatial(shape) -> tuple[tuple[int, ...], tuple[str, ...]]:
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if len(shape) > 3 or any(s < 1 for s in shape):
        raise SynthError(f"shape must be up to 3 positive sizes (z, y, x), got {shape}")
    return shape, _SPATIAL[3 - len(shape):]


def _axis(values, name: str, *, positive=False) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    if v.size < 1 or not np.all(np.isfinite(v)):
        raise SynthError(f"{name} must be finite numbers, got {values!r}")
    if np.any(v < 0) or (positive and np.any(v <= 0)):
        raise SynthError(f"{name} must be {'positive' if positive else 'non-negative'}, got {v.tolist()}")
    return v


def _param(value, shape, name: str, *, positive=True) -> np.ndarray:
    try:
        v = np.broadcast_to(np.asarray(value, dtype=float), shape).copy()
    except ValueError:
        raise SynthError(f"{name} of shape {np.shape(value)} does not broadcast to the shape {shape}") from None
    if not np.all(np.isfinite(v)) or (positive and np.any(v <= 0)):
        raise SynthError(f"{name} must be finite{' and positive' if positive else ''}")
    return v


def _noisy(clean: np.ndarray, scale: np.ndarray, snr, seed) -> tuple[np.ndarray, np.ndarray]:
    if snr is None or np.isinf(snr):
        return clean, np.zeros(np.shape(scale))
    if not np.isfinite(snr) or snr <= 0:
        raise SynthError(f"snr must be positive (or None for no noise), got {snr!r}")
    sigma = np.asarray(scale, float) / float(snr)
    return add_rician_noise(clean, sigma[..., None], np.random.default_rng(seed)), sigma


def _da(data, dims, axis_name, axis_values, units, long_name) -> xr.DataArray:
    da = xr.DataArray(np.asarray(data, dtype=np.float64), dims=dims + (axis_name,),
                      coords={axis_name: (axis_name, np.asarray(axis_values, float), {"units": units,
                                                                                         "long_name": long_name})})
    return da


def synthetic_megre(shape, t2star_ms, snr, te_ms, seed, *, s0=1000.0):
    """Multi-echo magnitude ``S0 exp(-TE / T2*)`` + Rician noise (sigma = S0 / snr).

    Returns ``(signal, truth)``: ``signal`` with dims ``(..spatial, "te")`` and a ``te``
    coordinate in ms; ``truth`` a dict of arrays ``t2star_ms``, ``r2star_per_s``, ``s0``,
    ``sigma``.  Also usable for T2 (multi-spin-echo) signals.
    """
    shape, dims = _spatial(shape)
    te = _axis(te_ms, "te_ms")
    t2s = _param(t2star_ms, shape, "t2star_ms")
    s0a = _param(s0, shape, "s0")
    y, sigma = _noisy(monoexp_signal(te, s0a, t2s), s0a, snr, seed)
    return (_da(y, dims, "te", te, "ms", "echo time"),
            {"t2star_ms": t2s, "r2star_per_s": 1000.0 / t2s, "s0": s0a, "sigma": sigma})


def synthetic_dwi(shape, adc_um2_per_ms, snr, b_s_per_mm2, seed, *, s0=1000.0):
    """Diffusion-weighted ``S0 exp(-b ADC)`` (ADC in um^2/ms, b in s/mm^2) + Rician noise; dims ``(.., "b")``."""
    shape, dims = _spatial(shape)
    b = _axis(b_s_per_mm2, "b_s_per_mm2")
    adc = _param(adc_um2_per_ms, shape, "adc_um2_per_ms")
    s0a = _param(s0, shape, "s0")
    y, sigma = _noisy(adc_signal(b, s0a, adc), s0a, snr, seed)
    return _da(y, dims, "b", b, "s/mm^2", "b-value"), {"adc_um2_per_ms": adc, "s0": s0a, "sigma": sigma}


def synthetic_vfa(shape, t1_ms, snr, fa_deg, tr_ms, seed, *, m0=1000.0):
    """Variable-flip-angle SPGR signal (dims ``(.., "fa")``, degrees); sigma = M0 / snr."""
    shape, dims = _spatial(shape)
    fa = _axis(fa_deg, "fa_deg", positive=True)
    t1 = _param(t1_ms, shape, "t1_ms")
    m0a = _param(m0, shape, "m0")
    if not np.isfinite(tr_ms) or tr_ms <= 0:
        raise SynthError(f"tr_ms must be positive, got {tr_ms!r}")
    y, sigma = _noisy(spgr_signal(fa, m0a, t1, tr_ms), m0a, snr, seed)
    return _da(y, dims, "fa", fa, "degree", "flip angle"), {"t1_ms": t1, "m0": m0a, "sigma": sigma,
                                                            "tr_ms": float(tr_ms)}


def synthetic_dce(shape, ktrans_per_min, ve, vp, snr, t_s, seed, *, t1_ms=1900.0, m0=1000.0, fa_deg=15.0,
                  tr_ms=4.0, r1_per_s_per_mM=2.8, hematocrit=0.42, delay_s=40.0):
    """DCE SPGR signal of extended-Tofts tissue with the McGrath mouse AIF (dims ``(.., "t")``, s).

    ``R1(t) = 1/T1 + r1 Ct(t)``, ``Ct = vp Cp + Ktrans (Cp * exp(-kep t))``, ``Cp = Cb / (1 - Hct)``.
    ``truth`` holds the parameter maps and ``cb_mM``/``cp_mM`` at the frame times.
    """
    shape, dims = _spatial(shape)
    t = _axis(t_s, "t_s")
    kt = _param(ktrans_per_min, shape, "ktrans_per_min", positive=False)
    ve_a = _param(ve, shape, "ve")
    vp_a = _param(vp, shape, "vp", positive=False)
    t1 = _param(t1_ms, shape, "t1_ms")
    m0a = _param(m0, shape, "m0")
    cb = mcgrath_rat_aif(t, delay_s=delay_s)
    cp = blood_to_plasma(cb, hematocrit)
    ct = extended_tofts_ct(t, cp, kt, ve_a, vp_a)
    r1 = 1000.0 / t1[..., None] + r1_per_s_per_mM * ct
    clean = spgr_signal([fa_deg], m0a[..., None], 1000.0 / r1, tr_ms)[..., 0]
    y, sigma = _noisy(clean, m0a, snr, seed)
    return _da(y, dims, "t", t, "s", "frame time"), {
        "ktrans_per_min": kt, "ve": ve_a, "vp": vp_a, "t1_ms": t1, "m0": m0a, "sigma": sigma, "cb_mM": cb,
        "cp_mM": cp, "ct_mM": ct, "fa_deg": fa_deg, "tr_ms": tr_ms, "r1_per_s_per_mM": r1_per_s_per_mM,
        "hematocrit": hematocrit}


def synthetic_cest(shape, lactate_pct, b0_shift_ppm, snr, offsets_ppm, seed, *, m0=1000.0,
                   water=(0.85, 0.0, 0.9), mt=(0.10, -2.0, 25.0), lactate_center_ppm=0.4, lactate_fwhm_ppm=0.5):
    """Z-spectrum signal ``M0 Z(offset)`` with water, MT and a lactate pool (dims ``(.., "offset")``, ppm).

    Pools are ``(amplitude, centre ppm, FWHM ppm)``; ``lactate_pct`` is the lactate pool
    amplitude in % of M0; the whole spectrum is shifted by ``b0_shift_ppm``.  ``truth``
    holds ``m0`` (the unsaturated reference), ``b0_shift_ppm``, ``lactate_pct`` and the
    B0-free ``mtrasym_pct`` at the lactate offset.
    """
    from .synth._molecular import mtrasym_pct

    shape, dims = _spatial(shape)
    offs = np.asarray(offsets_ppm, dtype=float).ravel()
    if offs.size < 2 or not np.all(np.isfinite(offs)) or np.any(np.diff(offs) <= 0):
        raise SynthError(f"offsets_ppm must be finite and strictly increasing, got {offs.tolist()}")
    lac = _param(lactate_pct, shape, "lactate_pct", positive=False) / 100.0
    b0 = _param(b0_shift_ppm, shape, "b0_shift_ppm", positive=False)
    m0a = _param(m0, shape, "m0")
    shp = shape + (3,)
    amps = np.stack([np.full(shape, water[0]), np.full(shape, mt[0]), lac], -1)
    cens = np.broadcast_to([water[1], mt[1], lactate_center_ppm], shp)
    fw = np.broadcast_to([water[2], mt[2], lactate_fwhm_ppm], shp)
    y, sigma = _noisy(m0a[..., None] * zspectrum(offs, amps, cens, fw, b0), m0a, snr, seed)
    sym = np.concatenate([-offs[::-1], offs])
    sym = np.unique(np.round(sym, 9))
    mtr = mtrasym_pct(sym, zspectrum(sym, amps, cens, fw, 0.0), lactate_center_ppm)
    return _da(y, dims, "offset", offs, "ppm", "saturation offset"), {
        "m0": m0a, "b0_shift_ppm": b0, "lactate_pct": lac * 100, "mtrasym_pct": mtr, "sigma": sigma}


# --------------------------------------------------------------------------------------------- study dataset
def synthetic_study(*, groups: Sequence[str] = ("control", "treated"), animals_per_group: int = 2,
                    days: Sequence[int] = (0, 7), shape=(2, 8, 8), te_ms=(2.0, 5.0, 10.0, 15.0, 20.0, 30.0),
                    r2star_per_s=40.0, effect_per_s_per_day=-1.0, animal_sd_per_s=2.0, snr=50.0,
                    missing: Sequence[tuple[int, int]] = ((0, -1),), seed: int = DEFAULT_SEED, chunks: bool = True):
    """A tiny multi-animal MEGRE study shaped like ``load_study`` output, with its truth.

    Every animal has a box tumour (label 1) in the centre of each slice, muscle (2) in
    one corner and background air (5) on the border.  Tumour R2* of animal ``a`` on day
    ``d`` is ``r2star_per_s + u_a + effect_per_s_per_day * d * [group != groups[0]]`` with
    ``u_a ~ N(0, animal_sd_per_s)``; muscle 45 /s.

    Returns ``(ds, truth)``: ``ds`` with ``signal(animal, day, te, z, y, x)`` float32
    (Dask-backed, one chunk per scan, if ``chunks``), ``roi(animal, day, z, y, x)`` int16,
    coordinate ``acquired(animal, day)`` and ``group``/``sex``/``model`` along ``animal``;
    ``missing`` lists (animal index, day index) sessions that are NaN with
    ``acquired=False``.  ``truth`` is a pandas DataFrame with one row per acquired session:
    ``animal, group, day, tumour_r2star_per_s``.
    """
    import pandas as pd

    shape, _ = _spatial(shape)
    if len(shape) != 3:
        raise SynthError(f"shape must be (z, y, x), got {shape}")
    if animals_per_group < 1 or not groups or not days:
        raise SynthError("need at least one group, one animal per group and one day")
    te = _axis(te_ms, "te_ms")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    roi = np.full(shape, 5, dtype=np.int16)
    roi[:, 1:ny - 1, 1:nx - 1] = 0
    roi[:, ny // 4: ny - ny // 4, nx // 4: nx - nx // 4] = 1
    roi[:, 1:1 + max(1, ny // 8), 1:1 + max(1, nx // 8)] = 2
    animals = [f"m{i + 1:02d}" for i in range(len(groups) * animals_per_group)]
    agroup = [groups[i % len(groups)] for i in range(len(animals))]
    u = rng.normal(0.0, animal_sd_per_s, len(animals))
    sig = np.full((len(animals), len(days), te.size) + shape, np.nan, dtype=np.float32)
    rois = np.zeros((len(animals), len(days)) + shape, dtype=np.int16)
    acq = np.ones((len(animals), len(days)), dtype=bool)
    for ai, di in missing:
        acq[ai, di] = False
    rows = []
    for ai, a in enumerate(animals):
        for di, d in enumerate(days):
            if not acq[ai, di]:
                continue
            r2 = r2star_per_s + u[ai] + (effect_per_s_per_day * d if agroup[ai] != groups[0] else 0.0)
            r2map = np.where(roi == 1, r2, 45.0)
            s0 = np.where(roi == 5, 0.0, 1000.0)
            clean = monoexp_signal(te, s0, 1000.0 / r2map)
            noisy = clean if snr is None else add_rician_noise(clean, 1000.0 / snr, rng)
            sig[ai, di] = np.moveaxis(noisy, -1, 0)
            rois[ai, di] = roi
            rows.append(dict(animal=a, group=agroup[ai], day=int(d), tumour_r2star_per_s=float(r2)))
    ds = xr.Dataset(
        {"signal": (("animal", "day", "te", "z", "y", "x"), sig, {"units": "a.u."}),
         "roi": (("animal", "day", "z", "y", "x"), rois)},
        coords={"animal": np.array(animals, dtype=object), "day": np.asarray(days, dtype=int),
                "te": ("te", te, {"units": "ms"}), "group": ("animal", np.array(agroup, dtype=object)),
                "sex": ("animal", np.array(["F"] * len(animals), dtype=object)),
                "model": ("animal", np.array(["synthetic"] * len(animals), dtype=object)),
                "acquired": (("animal", "day"), acq)},
        attrs={"study": "synthetic", "kind": "MEGRE", "voxel_size_mm": (0.2, 0.2, 1.0), "field_T": 7.0})
    ds["day"].attrs["units"] = "day"
    if chunks:
        ds = ds.chunk({"animal": 1, "day": 1, "te": -1, "z": -1, "y": -1, "x": -1})
    return ds, pd.DataFrame(rows)


def assert_close_to_truth(estimate, truth, *, rtol: float = 0.05, atol: float = 0.0, mask=None,
                          statistic: str = "median", what: str = "estimate") -> None:
    """Assert that ``statistic(|estimate - truth| / |truth|)`` over ``mask`` is within ``rtol`` (+ ``atol``).

    Robust to a few bad voxels (median by default); NaN estimates inside the mask count
    as failures when more than half of the voxels are NaN.
    """
    e = np.asarray(getattr(estimate, "values", estimate), dtype=float)
    t = np.asarray(getattr(truth, "values", truth), dtype=float)
    e, t = np.broadcast_arrays(e, t)
    m = np.ones(e.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), e.shape)
    if not m.any():
        raise AssertionError(f"{what}: mask selects no voxels")
    e, t = e[m], t[m]
    nan_frac = float(np.mean(~np.isfinite(e)))
    if nan_frac > 0.5:
        raise AssertionError(f"{what}: {nan_frac:.0%} of the voxels are NaN")
    ok = np.isfinite(e)
    err = np.abs(e[ok] - t[ok]) - atol
    rel = np.maximum(err, 0) / np.maximum(np.abs(t[ok]), 1e-300)
    stat = {"median": np.median, "mean": np.mean, "max": np.max}[statistic](rel)
    if not stat <= rtol:
        raise AssertionError(f"{what}: {statistic} relative error {stat:.4g} > rtol {rtol} "
                             f"(estimate median {np.median(e[ok]):.4g}, truth median {np.median(t[ok]):.4g})")
