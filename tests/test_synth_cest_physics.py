"""The lactate CEST planner makes its Z-spectra with the independent Bloch-McConnell physics.

The lookup table (:func:`studylib.synth.physics.cest.zspectrum_table`) is checked against direct
:func:`~studylib.synth.physics.cest.zspectrum` calls, the planner's imports are read (it must not use the
fit's Lorentzian ``zspectrum``), and the written images are compared voxel by voxel with direct
Bloch-McConnell spectra at the voxel's lactate and B0 shift from the truth maps.
"""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from studylib.errors import SynthError
from studylib.synth import generate
from studylib.synth._molecular import CEST, CEST_TISSUES
from studylib.synth.physics import cest as bm

from test_independent_physics import ROOT, _imports

OFFS = np.asarray(CEST["offsets_ppm"])
SAT = dict(b0_T=9.4, b1_uT=0.8, t_sat_s=3.0)


def test_planner_imports_no_cest_fit_kernel():
    found = _imports(ROOT / "studylib" / "synth" / "_molecular.py")
    assert "studylib.synth.physics.cest" in found or "studylib.synth.physics" in found
    bad = sorted(m for m in found if m.startswith(("studylib.models.cest", "studylib.fit")))
    assert not bad, f"the CEST planner imports the fit's code: {bad}"


@pytest.mark.parametrize("t_sat", [3.0, None])
def test_table_matches_direct_bloch_mcconnell(t_sat):
    tissue = replace(bm.LACTATE_PRESET, **CEST_TISSUES["tumour"])
    tab = bm.zspectrum_table(tissue, concentration_mM=(0.0, 60.0), grid_ppm=(-2.4, 2.4), n_concentration=4,
                             b0_T=9.4, b1_uT=0.8, t_sat_s=t_sat)
    rng = np.random.default_rng(3)
    c, b0 = rng.uniform(0, 60, 12), rng.uniform(-0.35, 0.35, 12)
    z = tab(OFFS, c, b0)
    direct = np.stack([bm.zspectrum(OFFS, replace(tissue, solute_mM=ci), b0_T=9.4, b1_uT=0.8, t_sat_s=t_sat,
                                    b0_shift_ppm=bi) for ci, bi in zip(c, b0)])
    # measured max |dZ| 1e-8 (steady state and 3 s): far below the noise (0.004 of M0) and the lactate
    # effect (1.5e-4 per mM)
    assert np.abs(z - direct).max() < 1e-6
    ref = tab.reference_z(c)
    np.testing.assert_allclose(ref, [bm.zspectrum([300.0], replace(tissue, solute_mM=ci), b0_T=9.4, b1_uT=0.8,
                                                  t_sat_s=t_sat)[0] for ci in c], atol=1e-9)
    assert z.shape == (12, OFFS.size) and tab(OFFS, c.reshape(3, 4), 0.0).shape == (3, 4, OFFS.size)


def test_table_refuses_queries_outside_its_range():
    tab = bm.zspectrum_table(bm.LACTATE_PRESET, concentration_mM=(0.0, 10.0), grid_ppm=(-1.0, 1.0), step_ppm=0.02)
    with pytest.raises(SynthError, match="concentration_mM"):
        tab([0.0], 11.0)
    with pytest.raises(SynthError, match="outside the table"):
        tab([0.9], 5.0, -0.2)
    with pytest.raises(SynthError, match="concentration_mM"):
        bm.zspectrum_table(concentration_mM=(5.0, 1.0))
    fixed = bm.zspectrum_table(bm.LACTATE_PRESET, concentration_mM=(4.0, 4.0), grid_ppm=(-1.0, 1.0), step_ppm=0.02)
    direct = bm.zspectrum([0.4], replace(bm.LACTATE_PRESET, solute_mM=4.0))
    assert fixed([0.4], 4.0)[0] == pytest.approx(direct[0], abs=1e-7)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("cest_clean")
    generate("ci", out=out, studies=["lactate_cest"], noise=False)
    return out


def test_written_spectra_are_bloch_mcconnell_at_each_voxel(clean):
    sessions = (clean / "truth" / "lactate_cest" / "sessions.csv").read_text().splitlines()
    animal, day = sessions[-1].split(",")[0], int(sessions[-1].split(",")[4])
    folder = clean / "raw" / "lactate_cest" / animal / f"day{day:02d}"
    with np.load(clean / "truth" / "lactate_cest" / "maps" / f"{animal}_day{day:02d}.npz") as f:
        m = {k: f[k].astype(float) for k in f.files}
    for kind, b1_key in (("CEST", "b1_uT"), ("WASSR", "wassr_b1_uT")):
        img = nib.load(str(folder / f"{kind}.nii.gz"))
        zyx = np.transpose(np.asarray(img.get_fdata()), (2, 1, 0, 3))
        step = float(img.header.get_slope_inter()[0] or 1.0)
        sc = json.loads((folder / f"{kind}.json").read_text())
        offs = np.asarray(sc["SaturationOffsets_ppm"])
        assert sc["SaturationB1_uT"] == CEST[b1_key] and sc["ReferenceVolumes"] == [0]
        for label, cls in ((1, "tumour"), (2, "muscle")):
            idx = np.argwhere(m["roi"] == label)
            tissue = replace(bm.LACTATE_PRESET, **CEST_TISSUES[cls])
            for z, y, x in idx[np.linspace(0, len(idx) - 1, 4).astype(int)]:
                t = replace(tissue, solute_mM=m["lactate_mM"][z, y, x])
                want = m["m0"][z, y, x] * bm.zspectrum(offs, t, b0_T=9.4, b1_uT=sc["SaturationB1_uT"],
                                                      t_sat_s=sc["SaturationTime"],
                                                      b0_shift_ppm=m["b0_shift_ppm"][z, y, x])
                # stored with a scale: half a stored step, plus float32 truth maps (lactate, B0) and the table
                assert np.abs(zyx[z, y, x] - want).max() <= 0.51 * step + 0.05, (kind, cls, (z, y, x))


def test_truth_is_the_physics_and_rises_with_lactate(clean):
    truth = json.loads((clean / "truth" / "lactate_cest" / "truth.json").read_text())
    eff = truth["effects"]
    assert eff["tumour_lactate_mM_post_minus_pre"]["sample"] > 0
    assert eff["tumour_mtrasym_0p4_pct_post_minus_pre"]["sample"] > 0
    cal = truth["calibration"]
    tissue = replace(bm.LACTATE_PRESET, **CEST_TISSUES["tumour"])
    lo, hi = cal["range_mM"]
    mtr = [100 * np.subtract(*bm.zspectrum([-0.4, 0.4], replace(tissue, solute_mM=c), **SAT))
           / bm.zspectrum([300.0], replace(tissue, solute_mM=c), **SAT)[0] for c in (lo, hi)]
    assert cal["tumour_mtrasym_0p4_pct_per_mM"] == pytest.approx((mtr[1] - mtr[0]) / (hi - lo), rel=1e-4)
    # the maps' per-voxel MTRasym is the direct physics at the voxel's lactate
    name = sorted((clean / "truth" / "lactate_cest" / "maps").glob("*.npz"))[0]
    m = np.load(name)
    z, y, x = np.argwhere(m["roi"] == 1)[0]
    t = replace(tissue, solute_mM=float(m["lactate_mM"][z, y, x]))
    zz = bm.zspectrum([-0.4, 0.4, 300.0], t, **SAT)
    assert m["mtrasym_0p4_pct"][z, y, x] == pytest.approx(100 * (zz[0] - zz[1]) / zz[2], abs=1e-5)
