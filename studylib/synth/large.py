"""A lazy, never-written study far larger than memory (the ``large`` preset for scaling work).

:func:`lazy_study` returns an :class:`xarray.Dataset` in exactly the layout of
:func:`studylib.io.load_study` -- ``signal(animal, day, te|t, z, y, x)`` float32,
``roi(animal, day, z, y, x)`` int16, ``acquired(animal, day)``, ``group``/``sex`` along
``animal``, units in attrs -- whose Dask chunks (one per scan, like ``load_study``) are
*synthesised on compute* from the forward models of :mod:`studylib.models` instead of read
from disk.  Nothing is written and nothing is held: a chunk exists only while a task uses it,
so a 16x study of tens of GB can be fitted and reduced on a laptop (or spread over a Dask
cluster, where each worker synthesises its own chunks from the task's few arguments).

Sizes (float32 signal, default ``shape=(20, 128, 128)``)::

    kind   echoes/frames  scan (chunk)   40 animals x 6 days (scale=1)   scale=4   scale=16
    MEGRE  12 echoes      15.7 MB        3.8 GB                          15 GB     60 GB
    DCE    75 frames      98 MB          24 GB (use a smaller shape)     94 GB     377 GB

``scale`` multiplies the number of animals (``n_animals * scale``) and keeps the chunk size,
so memory per task stays constant as the study grows.  Animal ``k`` is identical whatever
the scale (its random stream does not depend on ``scale``), so a 4x study contains the 1x
one as its first animals.

Determinism: every scan draws from ``numpy.random.default_rng([seed, crc32(kind),
stream, animal_index, day_index])`` (stream 1 = animal biology, 2 = voxel heterogeneity
and noise of a session), so the same arguments give bit-identical values on any scheduler,
any worker, in any order -- which is what the scheduler and fault-tolerance tests rely on.

Physics (plausible values, chosen here; see ``/work/shared/science.md``)
-------------------------------------------------------------------------
Geometry: :mod:`studylib.synth._phantom` (FOV 16 x 16 mm, 0.5 mm slices; body ellipse,
muscle, for DCE a vessel; one flank tumour whose volume grows ``V(d) = V0 exp(g d)``,
``V0 = 60 mm^3 x LN(0.3)``, ``g = 0.06 / day x LN(0.3)``, capped at 400 mm^3).  Groups
``control`` and ``treated`` alternate; sexes alternate.  About 1 animal in 4 leaves at a
humane endpoint before the last day: its later sessions are NaN with ``acquired=False``.

``MEGRE`` (ferumoxytol-enhanced multi-gradient echo, 9.4 T, TR 1.2 s, 12 echoes, TE 3..36 ms):
``S(TE) = S0 exp(-TE R2*)`` (:func:`studylib.models.relaxometry.monoexp_signal`) with Rician
noise sigma 10 (:func:`studylib.models.noise.add_rician_noise`).  Tumour R2* =
``(35 + dR2*(d)) x LN(0.08)`` 1/s with ``dR2*(d) = 15 (1 - exp(-d / 5))`` (control) or
``30 (1 - exp(-d / 5))`` (treated: more iron-laden macrophages, cf. Yang et al.,
Neuro-Oncology 2017;19:364, doi:10.1093/neuonc/now163); rim 1.3 : core 0.7 voxel pattern
with 10 % log-normal jitter; S0 1000.  Muscle R2* 30 1/s, S0 800; other tissue 40 1/s, S0 850;
air 0 (noise only).

``DCE`` (7 T, 3-D SPGR 15 deg, TR 4 ms, 75 frames every 4 s, gadoterate r1 2.8 /s/mM,
Hct 0.42): each animal its own plasma AIF, as the ``ktrans_hypoxia`` simulator draws them
(:func:`studylib.synth.physics.perfusion.animal_aifs`: the chosen mouse population shape
:data:`~studylib.synth.physics.perfusion.MOUSE_AIF_SHAPE` arriving at 40 s, with animal-level
amplitude, arrival, width and washout; from stream 3 of the animal, so independent of ``scale`` and of
the other animals; :func:`animal_aif` returns it); the vessel (label 3) holds whole blood =
plasma x (1 - Hct); extended Tofts tissue curves in continuous time with that AIF
(:func:`studylib.synth.physics.perfusion.tissue_concentration`, closed form, sampled at the frames),
``R1 = 1/T10 + r1 C``, :func:`studylib.models.relaxometry.spgr_signal`, Rician sigma 20.  A fit with
one population AIF for every animal therefore carries the animals' AIF differences; measure each
animal's AIF in the vessel (:func:`studylib.fit.aif_from_roi`, label 3).
Tumour Ktrans = ``0.25 x LN(0.15)`` /min, falling to ``x (1 - 0.4 (1 - exp(-d / 5)))``
for ``treated`` (an anti-angiogenic response); ve 0.3, vp 0.03; T10 per label (tumour 1900,
muscle 1600, other tissue 1500, blood 2200 ms; :func:`t10_map` gives them, because a
DCE study alone has no VFA scan).  The attrs carry acquisition parameters only: the simulated
r1, haematocrit, bolus arrival and T10 are truth, in :data:`DCE` (pass them explicitly where a
test or benchmark needs the exact values).

Example
-------
>>> from studylib.synth.large import lazy_study
>>> ds = lazy_study(n_animals=4, n_days=2, shape=(2, 16, 16))
>>> ds.signal.dims
('animal', 'day', 'te', 'z', 'y', 'x')
>>> ds.signal.data.numblocks[:2]
(4, 2)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import replace

import numpy as np
import pandas as pd
import xarray as xr

from ..conventions import ROI_LABELS
from ..errors import LargeStudyError
from ..models.noise import add_rician_noise
from ..models.relaxometry import monoexp_signal, spgr_signal
from ._phantom import Body, Grid, Tumour, label_map, lognormal_mean1, spatial_pattern
from .physics import perfusion as perf

__all__ = ["lazy_study", "animal_table", "animal_aif", "scan_arrays", "t10_map", "KINDS", "MEGRE", "DCE",
           "nominal_nbytes"]

KINDS = ("MEGRE", "DCE")

#: MEGRE acquisition and biology (see the module docstring)
MEGRE = dict(field_T=9.4, tr_ms=1200.0, flip_deg=60.0, te_ms=[3.0 * (k + 1) for k in range(12)], sigma=10.0,
             agent="ferumoxytol", r2s_tumour=35.0, r2s_sd=0.08, dr2s_control=15.0, dr2s_treated=30.0, tau_days=5.0,
             r2s_muscle=30.0, r2s_tissue=40.0, s0_tumour=1000.0, s0_muscle=800.0, s0_tissue=850.0,
             w_rim=1.3, w_core=0.7, jitter=0.10)

#: DCE acquisition and biology (see the module docstring)
DCE = dict(field_T=7.0, tr_ms=4.0, flip_deg=15.0, dt_s=4.0, n_frames=75, bolus_arrival_s=40.0, agent="gadoterate",
           r1_per_s_per_mM=2.8, hematocrit=0.42, sigma=20.0, ktrans=0.25, ktrans_sd=0.15, treated_drop=0.4,
           tau_days=5.0, ve=0.30, vp=0.03, w_rim=1.3, w_core=0.7, jitter=0.10,
           t10_ms={1: 1900.0, 2: 1600.0, 3: 2200.0, 0: 1500.0}, tissue=dict(ktrans=0.05, ve=0.20, vp=0.02),
           muscle=dict(ktrans=0.04, ve=0.12, vp=0.02), m0=30000.0, m0_muscle=26000.0, m0_tissue=28000.0,
           m0_blood=32000.0)

_FOV_XY_MM = 16.0
_SLICE_MM = 0.5
_GROUPS = ("control", "treated")


def _check_args(n_animals, n_days, shape, kind, seed, scale) -> tuple[int, int, tuple[int, int, int], str, int, int]:
    def _pos_int(v, what):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise LargeStudyError(f"lazy_study: {what} must be a positive integer, got {v!r}")
        return int(v)

    n_animals = _pos_int(n_animals, "n_animals")
    n_days = _pos_int(n_days, "n_days")
    scale = _pos_int(scale, "scale")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise LargeStudyError(f"lazy_study: seed must be a non-negative integer, got {seed!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise LargeStudyError(f"lazy_study: shape must be (nz, ny, nx), got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise LargeStudyError(f"lazy_study: shape must be three positive sizes (nz, ny, nx), got {shape!r}")
    if kind not in KINDS:
        raise LargeStudyError(f"lazy_study: kind must be one of {KINDS}, got {kind!r}")
    return n_animals, n_days, shape, kind, int(seed), scale


def _days(n_days: int) -> list[int]:
    """Imaging days 0, 4, 7, 11, 14, 18, ... (twice a week)."""
    return [int(np.floor(3.5 * k + 0.5)) for k in range(n_days)]


def _rng(seed: int, kind: str, stream: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), stream, *[int(i) + 10_000 for i in ids]])


def _grid(shape) -> Grid:
    nz, ny, nx = shape
    return Grid(nx, ny, nz, _FOV_XY_MM, _FOV_XY_MM, nz * _SLICE_MM)


def _animal(ia: int, n_days: int, kind: str, seed: int) -> dict:
    """Per-animal biology (independent of scale and of the other animals)."""
    r = _rng(seed, kind, 1, ia)
    group = _GROUPS[ia % 2]
    v0 = float(60.0 * lognormal_mean1(r, 0.3))
    growth = float(0.06 * lognormal_mean1(r, 0.3))
    cx, cy = float(2.2 + 0.3 * r.standard_normal()), float(0.5 + 0.3 * r.standard_normal())
    level = float(lognormal_mean1(r, MEGRE["r2s_sd"] if kind == "MEGRE" else DCE["ktrans_sd"]))
    # humane endpoint: about one animal in four misses its last one or two sessions
    leave = n_days
    if n_days > 2 and r.random() < 0.25:
        leave = n_days - 1 - int(r.random() < 0.5)
    return dict(index=ia, id=f"L{ia + 1:04d}", group=group, sex="F" if ia % 2 == 0 else "M", v0=v0,
                growth=growth, cx=cx, cy=cy, level=level, n_sessions=leave)


def _tumour_value(a: dict, day: int, kind: str) -> float:
    if kind == "MEGRE":
        p = MEGRE
        d = p["dr2s_treated"] if a["group"] == "treated" else p["dr2s_control"]
        return (p["r2s_tumour"] + d * (1.0 - np.exp(-day / p["tau_days"]))) * a["level"]
    p = DCE
    f = 1.0 - (p["treated_drop"] * (1.0 - np.exp(-day / p["tau_days"])) if a["group"] == "treated" else 0.0)
    return p["ktrans"] * a["level"] * f


def animal_aif(ia: int, *, seed: int = 0) -> perf.AifShape:
    """The plasma AIF of DCE animal ``ia`` (0-based): the truth of its vessel curve.

    :func:`studylib.synth.physics.perfusion.animal_aifs` (default animal-level variation, as the
    ``ktrans_hypoxia`` simulator) around the mouse population shape arriving at ``DCE["bolus_arrival_s"]``,
    drawn from the animal's own stream 3 (the same whatever ``scale`` or ``n_animals``).  Plasma
    concentration: :func:`studylib.synth.physics.perfusion.plasma_aif`.
    """
    population = replace(perf.MOUSE_AIF_SHAPE, arrival_s=DCE["bolus_arrival_s"])
    return perf.animal_aifs(1, _rng(int(seed), "DCE", 3, int(ia)), shape=population)[0]


def _volume(a: dict, day: int) -> float:
    return float(min(a["v0"] * np.exp(a["growth"] * day), 400.0))


def animal_table(n_animals=40, n_days=6, *, kind="MEGRE", seed=0, scale=1) -> pd.DataFrame:
    """The known truth of :func:`lazy_study`: one row per (animal, day).

    Columns ``animal, group, sex, day, acquired, tumour_volume_mm3`` and
    ``tumour_r2star_per_s`` (MEGRE) or ``tumour_ktrans_per_min`` (DCE): the animal-level
    value; the voxel pattern has mean exactly 1 over the tumour, so this is the exact
    tumour-ROI mean of the true map.
    """
    n_animals, n_days, _, kind, seed, scale = _check_args(n_animals, n_days, (1, 1, 1), kind, seed, scale)
    col = "tumour_r2star_per_s" if kind == "MEGRE" else "tumour_ktrans_per_min"
    rows = []
    for ia in range(n_animals * scale):
        a = _animal(ia, n_days, kind, seed)
        for iday, d in enumerate(_days(n_days)):
            rows.append({"animal": a["id"], "group": a["group"], "sex": a["sex"], "day": d,
                         "acquired": iday < a["n_sessions"], "tumour_volume_mm3": _volume(a, d),
                         col: float(_tumour_value(a, d, kind))})
    return pd.DataFrame(rows)


def _session_maps(shape, kind: str, seed: int, ia: int, iday: int, n_days: int):
    """(label map, per-voxel rng) of one session: geometry and heterogeneity, no signal yet."""
    a = _animal(ia, n_days, kind, seed)
    day = _days(n_days)[iday]
    grid = _grid(shape)
    body = Body(vessel=(-1.0, -4.3, 0.5, 0.5)) if kind == "DCE" else Body()
    tmask, rim = Tumour(a["cx"], a["cy"], _volume(a, day)).masks(grid)
    lab = label_map(grid, body.masks(grid), [(1, tmask)])
    return a, day, lab, tmask, rim


def scan_arrays(ia: int, iday: int, *, n_days=6, shape=(20, 128, 128), kind="MEGRE", seed=0):
    """Synthesise one scan now: ``(signal (n, z, y, x) float32, roi (z, y, x) int16)``.

    This is what one chunk of :func:`lazy_study` computes.  A session after the animal's
    humane endpoint is all NaN (roi 0), as ``load_study`` gives a missing scan.
    """
    n_axis = len(MEGRE["te_ms"]) if kind == "MEGRE" else DCE["n_frames"]
    a, day, lab, tmask, rim = _session_maps(shape, kind, seed, ia, iday, n_days)
    if iday >= a["n_sessions"]:
        return np.full((n_axis,) + tuple(shape), np.nan, np.float32), np.zeros(shape, np.int16)
    r = _rng(seed, kind, 2, ia, iday)
    if kind == "MEGRE":
        p = MEGRE
        w = spatial_pattern(tmask, rim, p["w_rim"], p["w_core"], p["jitter"], r)
        r2s = np.where(tmask, _tumour_value(a, day, kind) * w,
                       np.where(lab == 2, p["r2s_muscle"], p["r2s_tissue"]))
        s0 = np.where(tmask, p["s0_tumour"], np.where(lab == 2, p["s0_muscle"], p["s0_tissue"]))
        s0 = np.where(lab == 5, 0.0, s0)
        clean = monoexp_signal(p["te_ms"], s0, 1000.0 / r2s)  # (z, y, x, n)
        noisy = add_rician_noise(clean, p["sigma"], r)
    else:
        p = DCE
        t = np.arange(p["n_frames"]) * p["dt_s"]
        aif = animal_aif(ia, seed=seed)
        cb = perf.plasma_aif(t, aif) * (1.0 - p["hematocrit"])  # whole blood in the vessel
        wk = spatial_pattern(tmask, rim, p["w_rim"], p["w_core"], p["jitter"], r)

        def by_label(tum, mus, tis):
            return np.where(tmask, tum, np.where(lab == 2, mus, tis))

        ktrans = by_label(_tumour_value(a, day, kind) * wk, p["muscle"]["ktrans"], p["tissue"]["ktrans"])
        ve = by_label(p["ve"], p["muscle"]["ve"], p["tissue"]["ve"])
        vp = by_label(p["vp"], p["muscle"]["vp"], p["tissue"]["vp"])
        t10 = np.where(tmask, p["t10_ms"][1], np.where(lab == 2, p["t10_ms"][2],
                                                        np.where(lab == 3, p["t10_ms"][3], p["t10_ms"][0])))
        m0 = np.where(tmask, p["m0"], np.where(lab == 2, p["m0_muscle"],
                                                np.where(lab == 3, p["m0_blood"], p["m0_tissue"])))
        m0 = np.where(lab == 5, 0.0, m0)
        ct = np.zeros(tuple(shape) + (t.size,), dtype=np.float64)
        # extended Tofts in continuous time with the animal's own AIF (closed form), sampled at the frames: per
        # tumour voxel, and once each for muscle and the rest of the body (one set of kinetics each)
        tissue = (lab != 5) & (lab != 3)
        tum = tissue & tmask
        ct[tum] = perf.tissue_concentration(t, ktrans[tum], ve[tum], vp[tum], aif)
        for m_, kin in ((tissue & ~tmask & (lab == 2), p["muscle"]), (tissue & ~tmask & (lab != 2), p["tissue"])):
            ct[m_] = perf.tissue_concentration(t, kin["ktrans"], kin["ve"], kin["vp"], aif)
        ct[lab == 3] = cb
        r1 = 1000.0 / t10[..., None] + p["r1_per_s_per_mM"] * ct
        del ct
        clean = spgr_signal([p["flip_deg"]], m0[..., None], 1000.0 / r1, p["tr_ms"])[..., 0]
        del r1
        noisy = add_rician_noise(clean, p["sigma"], r)
    del clean
    sig = np.moveaxis(noisy.astype(np.float32), -1, 0)
    return np.ascontiguousarray(sig), lab.astype(np.int16)


def _signal_block(ia, iday, n_days, shape, kind, seed):
    return scan_arrays(ia, iday, n_days=n_days, shape=shape, kind=kind, seed=seed)[0][None, None]


def _roi_block(ia, iday, n_days, shape, kind, seed):
    a, _, lab, _, _ = _session_maps(shape, kind, seed, ia, iday, n_days)
    if iday >= a["n_sessions"]:
        return np.zeros((1, 1) + tuple(shape), np.int16)
    return lab.astype(np.int16)[None, None]


def _spec(n_animals, n_days, shape, kind, seed, scale) -> dict:
    return {"generator": "studylib.synth.large.lazy_study", "n_animals": n_animals, "n_days": n_days,
            "shape": list(shape), "kind": kind, "seed": seed, "scale": scale}


def nominal_nbytes(n_animals=40, n_days=6, shape=(20, 128, 128), kind="MEGRE", scale=1) -> int:
    """Bytes the float32 ``signal`` would take if loaded eagerly."""
    n_axis = len(MEGRE["te_ms"]) if kind == "MEGRE" else DCE["n_frames"]
    return int(n_animals * scale * n_days * n_axis * int(np.prod(shape)) * 4)


def _array(fn, name: str, n_an: int, n_days: int, inner: tuple[int, ...], dtype, args: tuple):
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    n_inner = len(inner)
    dsk = {}
    for ia in range(n_an):
        for iday in range(n_days):
            dsk[(name, ia, iday) + (0,) * n_inner] = (fn, ia, iday, *args)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    chunks = ((1,) * n_an, (1,) * n_days) + tuple((s,) for s in inner)
    return da.Array(graph, name, chunks, meta=np.empty((0,) * (2 + n_inner), dtype=dtype))


def lazy_study(n_animals=40, n_days=6, shape=(20, 128, 128), kind="MEGRE", seed=0, scale=1) -> xr.Dataset:
    """A synthetic study in ``load_study``'s layout whose scans are synthesised on compute.

    Parameters
    ----------
    n_animals : int
        Animals at ``scale=1`` (groups ``control``/``treated`` alternate).
    n_days : int
        Imaging days (0, 4, 7, 11, 14, 18, ...).
    shape : (nz, ny, nx)
        Matrix of every scan (FOV 16 x 16 mm in-plane, 0.5 mm slices).
    kind : {"MEGRE", "DCE"}
        Multi-gradient echo (``te`` in ms, 12 echoes) or DCE (``t`` in s, 75 frames).
    seed : int
        Seed of every per-scan random stream (see the module docstring).
    scale : int
        Multiplies the number of animals (``n_animals * scale``); chunk size is unchanged.

    Returns
    -------
    xarray.Dataset
        ``signal(animal, day, te|t, z, y, x)`` float32 (a.u.) and ``roi(animal, day, z, y, x)``
        int16, Dask-backed with one chunk per scan (one task each, no inputs); coordinates
        ``animal`` (``L0001``...), ``day`` (units ``day``), ``te`` (ms) or ``t`` (s),
        ``group``, ``sex``, ``acquired(animal, day)``; ``attrs``: ``study`` (``large_megre`` /
        ``large_dce``), ``kind``, ``voxel_size_mm`` (x, y, z), ``field_T``, ``tr_ms``, ``agent``,
        ``noise_sigma`` (the optional ``NoiseSigma`` sidecar key: the noise SD a noise-only prescan
        measures), ``FlipAngle``, ``manifest`` (``""``: nothing on disk),
        ``manifest_sha256`` (sha256 of the generator spec, so cache keys still change
        with any argument), ``files`` (acquired scans), ``synthetic`` (the spec as JSON).
        Acquisition parameters only: the simulated r1, haematocrit, bolus arrival and T10 are in
        :data:`DCE` and :func:`t10_map`, never in attrs.  The attrs are copied onto ``signal`` as
        ``load_study`` does.

    Raises
    ------
    LargeStudyError
        (a :class:`~studylib.errors.StudyError`) for a bad argument, naming it.
    """
    n_animals, n_days, shape, kind, seed, scale = _check_args(n_animals, n_days, shape, kind, seed, scale)
    n_an = n_animals * scale
    days = _days(n_days)
    animals = [_animal(ia, n_days, kind, seed) for ia in range(n_an)]
    acquired = np.array([[iday < a["n_sessions"] for iday in range(n_days)] for a in animals], dtype=bool)
    spec = _spec(n_animals, n_days, shape, kind, seed, scale)
    spec_json = json.dumps(spec, sort_keys=True)
    token = hashlib.sha256(spec_json.encode()).hexdigest()
    if kind == "MEGRE":
        dim, vals = "te", np.asarray(MEGRE["te_ms"], dtype=np.float64)
        dim_attrs = {"units": "ms", "long_name": "echo time"}
        p = MEGRE
    else:
        dim, vals = "t", np.arange(DCE["n_frames"]) * DCE["dt_s"]
        dim_attrs = {"units": "s", "long_name": "frame time"}
        p = DCE
    args = (n_days, shape, kind, seed)
    signal = _array(_signal_block, f"large-signal-{token[:32]}", n_an, n_days, (vals.size,) + shape, np.float32,
                    args)
    roi = _array(_roi_block, f"large-roi-{token[:32]}", n_an, n_days, shape, np.int16, args)
    grid = _grid(shape)
    coords = {
        "animal": ("animal", np.asarray([a["id"] for a in animals], dtype=object)),
        "day": ("day", np.asarray(days, dtype=np.int64), {"units": "day", "long_name": "days from first treatment"}),
        dim: (dim, vals, dim_attrs),
        "group": ("animal", np.asarray([a["group"] for a in animals], dtype=object)),
        "sex": ("animal", np.asarray([a["sex"] for a in animals], dtype=object)),
        "acquired": (("animal", "day"), acquired, {"long_name": "scan of this kind was acquired"}),
    }
    ds = xr.Dataset(coords=coords)
    ds["signal"] = xr.DataArray(signal, dims=("animal", "day", dim, "z", "y", "x"),
                                attrs={"long_name": f"{kind} signal", "units": "a.u."})
    labels = {k: ROI_LABELS[k] for k in ((1, 2, 3, 5) if kind == "DCE" else (1, 2, 5))}
    ds["roi"] = xr.DataArray(roi, dims=("animal", "day", "z", "y", "x"),
                             attrs={"long_name": "ROI labels", "flag_values": sorted(labels),
                                    "flag_meanings": " ".join(labels[k] for k in sorted(labels))})
    attrs = {"study": f"large_{kind.lower()}", "kind": kind,
             "voxel_size_mm": [round(float(v), 6) for v in grid.voxel_mm],
             "field_T": p["field_T"], "tr_ms": p["tr_ms"], "agent": p["agent"], "noise_sigma": p["sigma"],
             "FlipAngle": p["flip_deg"], "manifest": "", "manifest_sha256": token,
             "files": int(acquired.sum()), "synthetic": spec_json}
    ds.attrs.update(attrs)
    ds["signal"].attrs.update(attrs)
    ds["roi"].attrs["voxel_size_mm"] = attrs["voxel_size_mm"]
    return ds


def t10_map(ds: xr.Dataset) -> xr.DataArray:
    """The true pre-contrast T1 (ms) of a DCE :func:`lazy_study`, from its ROI labels (lazy, like ``roi``).

    The simulator uses one T10 per label (``DCE["t10_ms"]``: truth, so it is not in the attrs); a real
    DCE study would take it from a VFA fit (``fit.t1_vfa``).  Background (label 5) is NaN.
    """
    if ds.attrs.get("kind") != "DCE" or not str(ds.attrs.get("study", "")).startswith("large_"):
        raise LargeStudyError("t10_map: expected a DCE lazy_study (attrs 'kind' == 'DCE', 'study' large_dce)")
    table = {int(k): float(v) for k, v in DCE["t10_ms"].items()}
    out = xr.full_like(ds.roi, table[0], dtype=np.float64)
    for lab, v in table.items():
        if lab:
            out = xr.where(ds.roi == lab, v, out)
    out = xr.where(ds.roi == 5, np.nan, out)
    out.attrs = {"units": "ms", "long_name": "pre-contrast T1 (T10) by ROI label"}
    return out.rename("t10_ms")
