"""The truth map averaged over the analysis ROI (drawn by the simulated rater) and over the true ROI.

:func:`studylib.true_map_over_roi` splits an estimate's distance from the tissue truth into the outline's part
(the truth itself averaged over the drawn ROI) and the rest; it reads the simulator's per-session truth maps.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import studylib as sl
from studylib.errors import ExperimentError

STUDY = "blz945_femri"


@pytest.fixture(scope="module")
def megre(ci_study):
    return sl.load_study(ci_study, STUDY, "MEGRE")


def test_true_roi_mean_is_the_simulators_roi_mean_and_drawn_roi_differs(ci_study, megre):
    out = sl.true_map_over_roi(megre, ci_study, STUDY, "r2star_per_s", labels=1)
    sessions = pd.read_csv(ci_study.parent / "truth" / STUDY / "sessions.csv", dtype={"animal": str})
    both = out.merge(sessions, on=["animal", "day"])
    assert len(both) == len(sessions) > 0
    # over the true tumour: exactly the simulator's own ROI-mean truth (float32 maps)
    np.testing.assert_allclose(both["true_over_true_roi"], both["tumour_r2star_per_s"], rtol=1e-5)
    # the simulated rater's outline (boundary error ~1 voxel RMS) is not the tumour: Dice < 1, means differ
    # (ci tumours are a few dozen 1-mm voxels, so a one-voxel boundary error costs a lot: Dice 0.41-0.83 measured)
    assert (both["dice"] < 1).all() and (both["dice"] > 0.3).all() and both["dice"].median() > 0.6
    assert (both["true_over_drawn_roi"] != both["true_over_true_roi"]).any()
    # an independent computation of one session's drawn-ROI mean
    r = both.iloc[0]
    with np.load(ci_study.parent / "truth" / STUDY / "maps" / f"{r.animal}_day{int(r.day):02d}.npz") as z:
        true_map = z["r2star_per_s"].astype(float)
    drawn = megre["roi"].sel(animal=r.animal, day=r.day).values == 1
    assert np.isclose(r.true_over_drawn_roi, true_map[drawn].mean())
    assert r.drawn_voxels == drawn.sum()


def test_with_the_true_roi_the_two_means_agree(ci_study, megre):
    ds = megre.copy()
    roi = ds["roi"].values.copy()
    folder = ci_study.parent / "truth" / STUDY / "maps"
    for i, a in enumerate(ds["animal"].values):
        for j, d in enumerate(ds["day"].values):
            f = folder / f"{a}_day{int(d):02d}.npz"
            if f.is_file():
                with np.load(f) as z:
                    roi[i, j] = z["roi"]
    ds["roi"] = (ds["roi"].dims, roi)
    out = sl.true_map_over_roi(ds, ci_study, STUDY, "r2star_per_s", labels=[1])
    np.testing.assert_allclose(out["true_over_drawn_roi"], out["true_over_true_roi"])
    assert (out["dice"] == 1).all()


def test_real_data_has_none_and_a_missing_map_is_named(ci_study, megre, tmp_path):
    with pytest.raises(ExperimentError, match="no true map 'no_such_map'"):
        sl.true_map_over_roi(megre, ci_study, STUDY, "no_such_map", labels=1)
    copy = tmp_path / "study"
    shutil.copytree(ci_study.parent, copy, ignore=shutil.ignore_patterns("truth", "derived"))
    assert sl.true_map_over_roi(megre, copy / ci_study.name, STUDY, "r2star_per_s", labels=1) is None


def test_outline_contrast_over_true_rois_is_the_simulators_sample_effect(ci_study, tmp_path):
    study = "ferumoxytol_therapy"
    ds = sl.load_study(ci_study, study, "MEGRE")
    truth = sl.load_truth(ci_study, study)
    effect = truth["effects"]["tumour_r2star_per_s_ferumoxytol_minus_control_day1"]
    out = sl.outline_contrast(ds, ci_study, study, "r2star_per_s", regions=[1, 6], day=effect["day"],
                              control="control", treated="ferumoxytol", estimate=1.0, units="1/s")
    # over the true tumours (each averaged on its own, then the two per animal): the simulator's noise-free contrast
    assert out["true"] == pytest.approx(effect["sample"], rel=1e-4)
    assert np.isfinite(out["drawn"]) and out["drawn"] != out["true"]  # the rater's outlines miss rim iron
    assert "from the outlines alone" in out["text"] and "from the truth over its own outlines" in out["text"]
    none = sl.outline_contrast(ds, ci_study, study, "r2star_per_s", regions=[1, 6], day=999, control="control",
                               treated="ferumoxytol")
    assert np.isnan(none["true"]) and "on day 999" in none["text"]
    copy = tmp_path / "study"
    shutil.copytree(ci_study.parent, copy, ignore=shutil.ignore_patterns("truth", "derived"))
    real = sl.outline_contrast(ds, copy / ci_study.name, study, "r2star_per_s", regions=[1, 6], day=effect["day"],
                               control="control", treated="ferumoxytol")
    assert np.isnan(real["drawn"]) and real["text"].startswith("No simulated truth")
