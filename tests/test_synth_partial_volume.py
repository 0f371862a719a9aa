"""Partial volume in the synthetic studies (issue 14, acquisition realism).

With noise (the realistic acquisition) the writer renders each scan from the session's anatomy drawn at
4x the in-plane resolution: a voxel's signal is ``sum_c f_c S_c`` (area fraction of each tissue class times
the noise-free signal of the nearest voxel of that class), before the receive noise.  ``noise=False`` stays
the ideal acquisition with pure voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from studylib.synth import STUDIES, SynthError, generate, plan
from studylib.synth import _generate
from studylib.synth._common import PARTIAL_VOLUME_FACTOR
from studylib.synth._phantom import Body, Geometry, Grid, Tumour, label_map
from studylib.synth.physics import acquisition as acq
from studylib.synth.physics.perfusion import displace_frames


def _zyx(path: Path) -> np.ndarray:
    a = np.asarray(nib.load(str(path)).get_fdata())
    return np.transpose(a, (2, 1, 0) + tuple(range(3, a.ndim)))


# --------------------------------------------------------------------------------------------- geometry
def test_refined_grid_tiles_each_voxel_in_plane_and_keeps_the_slices():
    g = Grid(16, 12, 3, 16.0, 12.0, 3.0)
    r = g.refined(4)
    assert r.shape == (3, 48, 64) and r.voxel_mm == (0.25, 0.25, 1.0)
    z, y, x = g.centres()
    zr, yr, xr = r.centres()
    np.testing.assert_allclose(zr, z)
    # the 4 sub-voxel centres of each voxel average to its centre and lie within it
    np.testing.assert_allclose(xr.reshape(16, 4).mean(axis=1), x.ravel())
    assert np.all(np.abs(xr.reshape(16, 4) - x.reshape(16, 1)) < 0.5)
    np.testing.assert_allclose(yr.reshape(12, 4).mean(axis=1), y.ravel())
    with pytest.raises(SynthError, match="factor"):
        g.refined(0)


@pytest.mark.parametrize("study", list(STUDIES))
def test_the_geometry_callable_on_the_study_grid_is_the_sessions_label_map(study):
    pl = plan(study, "ci")
    for k, s in enumerate(pl.sessions()):
        assert s.labels_on is not None
        lab = s.labels_on(pl.grid)
        assert lab.dtype == np.int16
        np.testing.assert_array_equal(lab, s.roi)
        hr = s.labels_on(pl.grid.refined(PARTIAL_VOLUME_FACTOR))
        assert hr.shape == (pl.grid.nz, pl.grid.ny * PARTIAL_VOLUME_FACTOR, pl.grid.nx * PARTIAL_VOLUME_FACTOR)
        assert set(np.unique(hr)) == set(np.unique(s.roi))  # every structure also on the fine grid
        if k == 1:
            break


def test_a_geometry_that_does_not_reproduce_the_label_map_is_refused(tmp_path):
    pl = plan("collagen_adc", "ci")
    first = next(iter(pl.sessions()))
    first.labels_on = Geometry(Body(), ((1, Tumour(-2.0, 0.5, 30.0)),))  # a tumour elsewhere
    pl.sessions = lambda: iter([first])
    with pytest.raises(SynthError, match="labels_on"):
        _generate._write_study(pl, tmp_path, tmp_path, 1, "ci", True)


# --------------------------------------------------------------------------------------------- the mixing
def test_fractions_sum_to_one_and_count_the_sub_voxels():
    g = Grid(16, 16, 2, 16.0, 16.0, 2.0)
    geo = Geometry(Body(vessel=(-1.0, -4.3, 0.5, 0.5)), ((1, Tumour(2.2, 0.5, 60.0)),))
    hr = geo(g.refined(4))
    classes, frac = acq.partial_volume_fractions(hr, 4)
    np.testing.assert_array_equal(classes, np.unique(hr))
    np.testing.assert_allclose(frac.sum(axis=0), 1.0, atol=1e-12)
    # independent count: sub-voxel (k, 4y+i, 4x+j) belongs to voxel (k, y, x)
    k, yy, xx = np.indices(hr.shape)
    for c, fc in zip(classes, frac):
        count = np.zeros(g.shape)
        np.add.at(count, (k[hr == c], yy[hr == c] // 4, xx[hr == c] // 4), 1.0)
        np.testing.assert_array_equal(fc, count / 16.0)
    # the 0.5 mm vessel on 1 mm voxels is nowhere a whole voxel
    assert 0 < frac[list(classes).index(3)].max() < 1.0
    with pytest.raises(SynthError, match="divides"):
        acq.partial_volume_fractions(hr[:, :-1], 4)


def test_a_voxel_half_inside_a_tumour_carries_the_mix_of_the_two_tissues():
    # 1 slice, 3 x 3 voxels of 1 mm; the tumour (class 1) fills voxel column 0 and the left half of column 1,
    # whose centre lies on the boundary and is labelled tissue (0); column 2 is tissue
    lab = np.zeros((1, 3, 3), np.int16)
    lab[0, :, 0] = 1
    hr = np.zeros((1, 12, 12), np.int16)
    hr[0, :, :6] = 1
    rng = np.random.default_rng(0)
    sig = rng.uniform(100, 200, (1, 3, 3, 5))  # every voxel its own curve (the planner's heterogeneity)
    out, classes, frac = acq.mix_partial_volume(sig, lab, hr, 4, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(classes, [0, 1])
    # independent: half its own (tissue) curve, half the curve of the tumour voxel next to it (same row)
    np.testing.assert_allclose(out[0, :, 1], 0.5 * sig[0, :, 1] + 0.5 * sig[0, :, 0], rtol=1e-14)
    # pure voxels unchanged, bit for bit
    np.testing.assert_array_equal(out[0, :, [0, 2]], sig[0, :, [0, 2]])
    # a 3-D label map, no trailing axis: same
    out3, _, _ = acq.mix_partial_volume(sig[..., 0], lab, hr, 4, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(out3[0, :, 1], 0.5 * (sig[0, :, 1, 0] + sig[0, :, 0, 0]), rtol=1e-14)


def test_a_class_on_no_voxel_centre_lends_its_fraction_to_the_voxels_own_label():
    lab = np.zeros((1, 2, 2), np.int16)
    hr = np.zeros((1, 8, 8), np.int16)
    hr[0, 1, 1] = 3  # a sub-voxel structure seen by no voxel centre
    sig = np.arange(4.0).reshape(1, 2, 2) + 1.0
    out, classes, frac = acq.mix_partial_volume(sig, lab, hr, 4, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, sig)
    assert frac[list(classes).index(3)][0, 0, 0] == 1 / 16


def test_bad_inputs_are_refused_with_the_argument_named():
    lab = np.zeros((1, 2, 2), np.int16)
    with pytest.raises(SynthError, match="refined"):
        acq.mix_partial_volume(np.ones((1, 2, 2)), lab, np.zeros((1, 4, 4), np.int16), 4, (1, 1, 1))
    with pytest.raises(SynthError, match="voxel_mm_zyx"):
        acq.mix_partial_volume(np.ones((1, 2, 2)), lab, np.zeros((1, 8, 8), np.int16), 4, (1, 0, 1))
    with pytest.raises(SynthError, match="signal"):
        acq.mix_partial_volume(np.ones((2, 2, 2)), lab, np.zeros((1, 8, 8), np.int16), 4, (1, 1, 1))


# --------------------------------------------------------------------------------------------- the writer
@pytest.fixture(scope="module")
def noiseless_pv(tmp_path_factory):
    """ci DCE study written with partial volume but the receive noise and the rater switched off."""
    mp = pytest.MonkeyPatch()
    mp.setattr(_generate, "add_coil_noise_rss_zyx", lambda img, sigma, rng, c: np.asarray(img, float))
    mp.setattr(_generate, "rater_labels", lambda lab, rng, **kw: np.asarray(lab).copy())
    try:
        out = tmp_path_factory.mktemp("pv")
        generate("ci", out=out, studies=["ktrans_hypoxia"])
    finally:
        mp.undo()
    ideal = tmp_path_factory.mktemp("ideal")
    generate("ci", out=ideal, studies=["ktrans_hypoxia"], noise=False)
    return out, ideal


def test_the_writer_mixes_before_the_noise_and_keeps_pure_voxels(noiseless_pv):
    out, ideal = noiseless_pv
    pl = plan("ktrans_hypoxia", "ci")
    s = next(iter(pl.sessions()))
    folder = f"raw/ktrans_hypoxia/{s.animal.id}/day{s.day:02d}"
    hr = s.labels_on(pl.grid.refined(PARTIAL_VOLUME_FACTOR))
    classes, frac = acq.partial_volume_fractions(hr, PARTIAL_VOLUME_FACTOR)
    pure = np.any([(s.roi == c) & (f == 1.0) for c, f in zip(classes, frac)], axis=0)  # own class fills it
    for scan in s.scans:
        written = _zyx(out / folder / f"{scan.kind}.nii.gz")
        plain = _zyx(ideal / folder / f"{scan.kind}.nii.gz")
        tol = 2e-4 * np.abs(scan.data).max()  # int16 storage with a scale factor
        if not scan.partial_volume:  # the B1 ratio map: no mixing
            np.testing.assert_allclose(written, plain, atol=tol)
            continue
        expect = acq.mix_partial_volume(scan.data, s.roi, hr, PARTIAL_VOLUME_FACTOR, pl.grid.voxel_mm[::-1])[0]
        if scan.motion is not None:  # then the object moves during some frames (both studies), before the noise
            expect = displace_frames(expect, *scan.motion)
        np.testing.assert_allclose(written, expect, atol=tol)
        if scan.motion is not None:  # the moved frames carry neighbouring voxels: compare the others
            keep = np.setdiff1d(np.arange(written.shape[-1]), scan.motion[0])
            written, plain = written[..., keep], plain[..., keep]
        np.testing.assert_allclose(written[pure], plain[pure], atol=tol)  # pure voxels as in the ideal study
        assert np.abs(written[~pure] - plain[~pure]).max() > 100 * tol  # the edges are mixed
        # the vessel voxel (centre inside the lumen, most of it outside): diluted arterial peak
        if scan.kind == "DCE":
            v = s.roi == 3
            f_v = frac[list(classes).index(3)][v]
            assert np.all(f_v < 1.0)
            peak_pv = (written[v] - written[v][..., :1]).max(axis=-1)
            peak_ideal = (plain[v] - plain[v][..., :1]).max(axis=-1)
            assert np.all(peak_pv < peak_ideal)


def test_truth_records_partial_volume_and_the_fraction_maps(noiseless_pv):
    out, ideal = noiseless_pv
    t = json.loads((out / "truth/ktrans_hypoxia/truth.json").read_text())["acquisition"]["partial_volume"]
    assert t["factor"] == PARTIAL_VOLUME_FACTOR and t["scans"] == ["DCE", "VFA"]
    t0 = json.loads((ideal / "truth/ktrans_hypoxia/truth.json").read_text())["acquisition"]["partial_volume"]
    assert t0.startswith("none")
    pl = plan("ktrans_hypoxia", "ci")
    s = next(iter(pl.sessions()))
    with np.load(out / f"truth/ktrans_hypoxia/maps/{s.animal.id}_day{s.day:02d}.npz") as z:
        keys = set(z.files)
        np.testing.assert_array_equal(z["roi"], s.roi)  # the truth's label map is the voxel-centre one
        total = sum(z[k].astype(float) for k in keys if k.startswith("pv_fraction_"))
        tumour = z["pv_fraction_tumour"]
    assert {"pv_fraction_tumour", "pv_fraction_vessel", "pv_fraction_muscle", "pv_fraction_background"} <= keys
    # named structures + the unnamed body tissue (label 0) fill each voxel
    hr = s.labels_on(pl.grid.refined(PARTIAL_VOLUME_FACTOR))
    classes, frac = acq.partial_volume_fractions(hr, PARTIAL_VOLUME_FACTOR)
    np.testing.assert_allclose(total + frac[list(classes).index(0)], 1.0, atol=1e-6)
    assert tumour[s.roi == 1].min() > 0 and (tumour[s.roi != 1] > 0).any()
    with np.load(ideal / f"truth/ktrans_hypoxia/maps/{s.animal.id}_day{s.day:02d}.npz") as z:
        assert not any(k.startswith("pv_fraction_") for k in z.files)


def test_without_noise_the_acquisition_stays_ideal_and_pure(tmp_path):
    """noise=False: no mixing -- each written voxel is its planner signal (pure voxels everywhere)."""
    out = generate("ci", out=tmp_path, studies=["collagen_adc"], noise=False).parent
    pl = plan("collagen_adc", "ci")
    s = next(iter(pl.sessions()))
    written = _zyx(out / f"raw/collagen_adc/{s.animal.id}/day{s.day:02d}/DWI.nii.gz")
    np.testing.assert_allclose(written, s.scans[0].data, atol=2e-4 * s.scans[0].data.max())


def test_label_map_is_the_geometry_of_body_and_tumours():
    g = Grid(16, 16, 2, 16.0, 16.0, 2.0)
    body, tum = Body(tube=(-6.6, 6.2, 0.8, 0.8)), Tumour(2.2, 0.5, 80.0)
    np.testing.assert_array_equal(Geometry(body, ((1, tum),))(g), label_map(g, body.masks(g), [(1, tum.masks(g)[0])]))


# --------------------------------------------------------------------------------------------- AIF from the lumen
def test_vessel_lumen_is_the_in_plane_erosion_or_the_roi_when_too_thin():
    import xarray as xr

    from studylib.analysis.maps import _vessel_lumen

    m = np.zeros((2, 8, 8), bool)
    m[:, 2:6, 2:6] = True  # a 4 x 4 vessel in both slices
    m[1, 0, 0] = True  # and a stray voxel
    v = xr.DataArray(m.transpose(2, 1, 0), dims=("x", "y", "z"))  # any dim order
    lumen, eroded = _vessel_lumen(v)
    assert eroded and lumen.dims == ("x", "y", "z")
    core = np.zeros_like(m)
    core[:, 3:5, 3:5] = True  # not eroded along z (2-D slices)
    np.testing.assert_array_equal(lumen.transpose("z", "y", "x").values, core)
    thin = xr.DataArray(np.eye(3, dtype=bool)[None], dims=("z", "y", "x"))
    same, eroded = _vessel_lumen(thin)
    assert not eroded and same.equals(thin)


@pytest.fixture(scope="module")
def wide_vessel_study(tmp_path_factory):
    """ktrans_hypoxia on the demo's 0.25 mm voxels, one slice, one animal per cell, partial volume, no receive noise:
    the 1 mm vessel is 4 voxels across: its ROI (14 voxels) has a lumen (4 pure voxels) and partial-volume edges."""
    from studylib.synth._common import PRESETS, Preset

    mp = pytest.MonkeyPatch()
    mp.setitem(PRESETS, "pv64", Preset("pv64", 64, 1, {"ktrans_hypoxia": 1}, max_days=1))
    mp.setattr(_generate, "add_coil_noise_rss_zyx", lambda img, sigma, rng, c: np.asarray(img, float))
    mp.setattr(_generate, "rater_labels", lambda lab, rng, **kw: np.asarray(lab).copy())
    try:
        out = tmp_path_factory.mktemp("pv64")
        manifest = generate("pv64", out=out, studies=["ktrans_hypoxia"])
    finally:
        mp.undo()
    return manifest


def test_the_lumen_aif_is_undiluted_and_the_whole_roi_aif_is_diluted(wide_vessel_study, tmp_path):
    import pandas as pd

    import studylib as sl
    from studylib.analysis.maps import fit_dce_maps

    manifest = wide_vessel_study
    study = "ktrans_hypoxia"
    vfa, dce = sl.load_study(manifest, study, "VFA"), sl.load_study(manifest, study, "DCE")
    b1 = sl.load_study(manifest, study, "B1map")
    truth = pd.read_csv(manifest.parent / "truth" / study / "sessions.csv", dtype={"animal": str})
    peaks = {}
    for voxels in ("lumen", "all"):
        _, aif = fit_dce_maps(vfa, dce, aif_source="animal", aif_voxels=voxels, b1=b1, cache_dir=tmp_path / voxels,
                              study=study)
        peaks[voxels] = aif.max("t").to_series()
    hct_assumed = 0.45  # the analysis's default (the sidecars carry no haematocrit)
    # the measured plasma peak is the whole-blood peak / (1 - assumed Hct); the truth's plasma peak / (1 - its Hct)
    expect = truth.set_index("animal").eval("aif_peak_plasma_at_frames_mM * (1 - hematocrit)") / (1 - hct_assumed)
    lumen = peaks["lumen"] / expect[peaks["lumen"].index]
    whole = peaks["all"] / expect[peaks["all"].index]
    np.testing.assert_allclose(lumen, 1.0, atol=0.03)  # pure blood voxels: the AIF as simulated
    assert np.all(whole < 0.95)  # edge voxels mix blood with tissue: a diluted peak
    with pytest.raises(Exception, match="aif_voxels"):
        fit_dce_maps(vfa, dce, aif_voxels="brightest", cache_dir=tmp_path / "x", study=study)
