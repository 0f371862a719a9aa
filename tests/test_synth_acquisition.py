"""Acquisition realism of the synthetic studies (issue 14): L-channel receive noise and the simulated rater's ROI.

The writer (``studylib.synth._generate``) adds complex noise on each scan's receive channels
(root-sum-of-squares, ``ReceiveCoilChannels`` in the sidecar) and writes ``roi.nii.gz`` as a rater draws it
(:func:`studylib.synth.physics.acquisition.rater_labels`); the true label map stays in the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from studylib.fit.relaxometry import noise_sigma_from_background
from studylib.io.load import load_study
from studylib.models.noise import add_rician_noise
from studylib.synth import STUDIES, SynthError, generate, plan
from studylib.synth._common import RATER, Scan, receive_channels
from studylib.synth._generate import _write_study
from studylib.synth.physics import acquisition as acq


@pytest.fixture(scope="module")
def ci(tmp_path_factory) -> Path:
    """The ci preset of four studies (both coil set-ups, two tumours, vessel and tube) with noise and rater."""
    out = tmp_path_factory.mktemp("ci_acq")
    return generate("ci", out=out, studies=["ampb_ferumoxytol", "ferumoxytol_therapy", "ktrans_hypoxia",
                                            "fluorine19_pfc"])


def _zyx(path: Path) -> np.ndarray:
    a = np.asarray(nib.load(str(path)).get_fdata())
    return np.transpose(a, (2, 1, 0) + tuple(range(3, a.ndim)))


# --------------------------------------------------------------------------------------------- receive noise
def test_one_channel_is_exactly_the_rician_noise_it_replaces():
    m = np.random.default_rng(0).uniform(0, 100, (12, 10, 5))
    a = add_rician_noise(m, 7.0, np.random.default_rng(42))
    b = acq.add_coil_noise_rss(m, 7.0, np.random.default_rng(42), acq.coil_sensitivities((12, 10), 1))
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_coils", [1, 4])
def test_rss_of_normalised_channels_keeps_the_signal_and_sigma_per_channel(n_coils):
    """E[S^2] = m^2 + 2 L sigma^2 in every voxel (normalised sensitivities keep |m|), and the background
    estimate of the fits, told L, returns the per-channel sigma."""
    rng = np.random.default_rng(1)
    sens = acq.coil_sensitivities((16, 16), n_coils)
    np.testing.assert_allclose((np.abs(sens) ** 2).sum(axis=0), 1.0, rtol=1e-12)
    m = np.zeros((40, 16, 16, 50))
    m[:, 4:12, 4:12] = 100.0
    s = acq.add_coil_noise_rss_zyx(m, 10.0, rng, sens)
    inside = s[:, 4:12, 4:12]
    np.testing.assert_allclose((inside ** 2).mean(), 100.0 ** 2 + 2 * n_coils * 10.0 ** 2, rtol=0.01)
    bg = np.zeros(m.shape[:3], bool)
    bg[:, :3] = True
    np.testing.assert_allclose(s[bg].mean(), acq.chi_background_mean(10.0, n_coils), rtol=0.01)
    est = noise_sigma_from_background(s, bg, n_coils=n_coils)
    np.testing.assert_allclose(est, 10.0, rtol=0.01)


def test_sidecars_carry_the_receive_channels_and_the_fits_recover_sigma_per_channel(ci):
    df = pd.read_csv(ci, dtype=str, keep_default_na=False)
    root = ci.parent
    for study, kind, n_coils, sigma in [("ampb_ferumoxytol", "MEGRE", 4, 20.0),
                                        ("ferumoxytol_therapy", "MEGRE", 4, 20.0),
                                        ("fluorine19_pfc", "F19", 1, 1.0)]:
        rows = df[(df.study == study) & (df.kind == kind) & df.path.str.endswith(".json")]
        assert {json.loads((root / p).read_text())["ReceiveCoilChannels"] for p in rows.path} == {n_coils}
        truth = json.loads((root / "truth" / study / "truth.json").read_text())
        assert truth["acquisition"]["receive_coil_channels"][kind] == n_coils
        ds = load_study(ci, study, kind)
        assert ds.signal.attrs["ReceiveCoilChannels"] == n_coils  # io.load copies common sidecar keys
        est = noise_sigma_from_background(ds.signal, ds.roi == 5, n_coils=ds.signal.attrs["ReceiveCoilChannels"])
        np.testing.assert_allclose(float(est.mean()), sigma, rtol=0.03)
        if n_coils > 1:  # ignoring L would over-estimate sigma by f_L / sqrt(pi/2) (2.19x for L = 4)
            naive = noise_sigma_from_background(ds.signal, ds.roi == 5, n_coils=1)
            assert float(naive.mean()) > 2.0 * sigma


def test_a_planner_may_set_its_own_channels_and_a_conflicting_sidecar_is_refused(tmp_path):
    sc = Scan("DWI", np.zeros((1, 2, 2)), 1.0, {})
    assert receive_channels("collagen_adc", sc) == 4 and receive_channels("fluorine19_pfc", sc) == 1
    assert receive_channels("collagen_adc", Scan("DWI", np.zeros((1, 2, 2)), 1.0, {}, receive_channels=8)) == 8
    pl = plan("collagen_adc", "ci")
    first = next(iter(pl.sessions()))
    first.scans[0].sidecar["ReceiveCoilChannels"] = 2  # the sidecar says 2, the scan (default) 4
    pl.sessions = lambda: iter([first])
    with pytest.raises(SynthError, match="ReceiveCoilChannels 2 differs"):
        _write_study(pl, tmp_path, tmp_path, 1, "ci", True)


# --------------------------------------------------------------------------------------------- the rater
def _disc(n=96, r=25.0):
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    lab = np.full((1, n, n), 5, np.int16)
    lab[0][x ** 2 + y ** 2 <= 40.0 ** 2] = 0
    lab[0][x ** 2 + y ** 2 <= r ** 2] = 1
    return lab


def test_rater_without_error_draws_the_truth_and_with_error_moves_the_boundary_about_a_voxel():
    lab = _disc()
    np.testing.assert_array_equal(acq.rater_labels(lab, np.random.default_rng(0), drawn=[1], rms_vox=0.0), lab)
    true = lab == 1
    n = lab.shape[1]
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    radius, angle = np.hypot(x, y), np.arctan2(y, x)
    sectors = [(angle >= a) & (angle < b) for a, b in zip(np.linspace(-np.pi, np.pi, 121)[:-1],
                                                         np.linspace(-np.pi, np.pi, 121)[1:])]
    dv, dc, shift = [], [], []
    for k in range(20):
        d = acq.rater_labels(lab, np.random.default_rng(k), drawn=[1], **RATER) == 1
        dv.append(int(d.sum()) - int(true.sum()))
        dc.append(acq.dice(true, d))
        # changed voxels lie on the boundary band: within 4 voxels (4 x the RMS) of the true outline
        assert (d ^ true).any() and np.all(np.abs(acq.signed_distance_inplane(true)[d ^ true]) < 4.0)
        shift += [radius[d[0] & s].max() - radius[true[0] & s].max() for s in sectors]
    # the outline moves about one voxel RMS (1.16 measured: 1 voxel plus the voxel grid's quantisation),
    # with no systematic shift, so a large disc keeps its area (< 1 %)
    assert 0.9 < np.sqrt(np.mean(np.square(shift))) < 1.4 and abs(np.mean(shift)) < 0.25
    assert abs(np.mean(dv)) < 0.01 * true.sum()
    assert 0.9 < np.mean(dc) < 0.99


def test_rater_keeps_protected_labels_and_fills_undrawn_truth_with_its_surroundings():
    lab = _disc()
    lab[0, 10:12, 10:12] = 4  # a tube in air
    lab[0, 47:49, 47:49] = 3  # a vessel inside the "tumour"
    out = acq.rater_labels(lab, np.random.default_rng(3), drawn=[1], protect=[3, 4], rms_vox=2.0)
    np.testing.assert_array_equal(out == 3, lab == 3)
    np.testing.assert_array_equal(out == 4, lab == 4)
    lost = (lab == 1) & (out != 1)
    assert lost.any() and set(np.unique(out[lost])) <= {0}  # a tumour voxel left out is surrounding tissue
    with pytest.raises(SynthError, match="both drawn and protected"):
        acq.rater_labels(lab, np.random.default_rng(0), drawn=[1, 3], protect=[3])
    with pytest.raises(SynthError, match="integer"):
        acq.rater_labels(lab.astype(float), np.random.default_rng(0), drawn=[1])


def test_a_tiny_structure_is_never_lost():
    lab = np.zeros((2, 8, 8), np.int16)
    lab[:, 4, 4] = 1
    for k in range(20):
        out = acq.rater_labels(lab, np.random.default_rng(k), drawn=[1], rms_vox=3.0)
        assert (out == 1).any()


def test_written_roi_is_the_raters_and_the_truth_keeps_the_true_labels(ci):
    root = ci.parent
    for study in ("ampb_ferumoxytol", "ferumoxytol_therapy", "ktrans_hypoxia", "fluorine19_pfc"):
        truth = json.loads((root / "truth" / study / "truth.json").read_text())
        sessions = pd.read_csv(root / "truth" / study / "sessions.csv", dtype={"animal": str})
        grid_vv = float(np.prod(truth["grid"]["voxel_mm_xyz"]))
        dices, differs = [], 0
        for r in sessions.itertuples():
            with np.load(root / "truth" / study / "maps" / f"{r.animal}_day{int(r.day):02d}.npz") as z:
                true = z["roi"]
            drawn = _zyx(root / "raw" / study / r.animal / f"day{int(r.day):02d}" / "roi.nii.gz").astype(int)
            differs += int((drawn != true).any())
            for v in (3, 4):  # vessel and reference tube kept exactly
                np.testing.assert_array_equal(drawn == v, true == v)
            # background (air: no outline crosses the skin), drawn clear of the partial-volume edge: the true
            # background voxels without any body or tube sub-voxel
            with np.load(root / "truth" / study / "maps" / f"{r.animal}_day{int(r.day):02d}.npz") as z:
                air = z["pv_fraction_background"]
            np.testing.assert_array_equal(drawn == 5, (true == 5) & (air == 1.0))
            assert ((true == 5) & (air < 1.0)).any()  # the body's edge is partial volume
            key = "left_tumour_volume_roi_mm3" if study == "ferumoxytol_therapy" else "tumour_volume_roi_mm3"
            if key in sessions.columns:  # the truth's volume is the true mask's, not the drawn one's
                np.testing.assert_allclose(getattr(r, key), (true == 1).sum() * grid_vv, rtol=1e-6)
            dices.append(acq.dice(true == 1, drawn == 1))
        assert differs == len(sessions)  # every session's ROI carries rater error
        assert 0.5 < np.mean(dices) < 0.95  # 1 mm voxels at ci: tumours of a few voxels per slice
        by = truth["rater"]["by_roi"]
        name = "tumour_left" if study == "ferumoxytol_therapy" else "tumour"
        np.testing.assert_allclose(by[name]["dice_mean"], np.mean(dices), rtol=1e-6)
        assert truth["rater"]["rms_vox"] == RATER["rms_vox"]


def test_generation_is_deterministic_with_rater_and_coils(ci, tmp_path):
    again = generate("ci", out=tmp_path / "again", studies=["ktrans_hypoxia"])
    for rel in ("raw/ktrans_hypoxia/m01/day00/roi.nii.gz", "raw/ktrans_hypoxia/m01/day00/DCE.nii.gz"):
        assert (again.parent / rel).read_bytes() == (ci.parent / rel).read_bytes()
    assert set(STUDIES) >= {"ktrans_hypoxia"}
