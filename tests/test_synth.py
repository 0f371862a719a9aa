"""Tests of the synthetic study generator (studylib.synth) and the studylib.testing helpers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from studylib.errors import StudyError
from studylib.manifest import read_manifest, verify_manifest
from studylib.synth import PRESETS, STUDIES, STUDY_KINDS, SynthError, generate, plan
from studylib.synth._phantom import Grid, Tumour, rng_for, spatial_pattern, tumour_semi_axes_mm
from studylib.synth._write import json_bytes, write_npz
from studylib import testing

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- helpers
def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _zyx(path: Path) -> tuple[np.ndarray, float]:
    """Image in (z, y, x[, n]) order and its scl_slope."""
    img = nib.load(str(path))
    a = np.asarray(img.get_fdata())
    slope = img.header.get_slope_inter()[0] or 1.0
    return np.transpose(a, (2, 1, 0) + tuple(range(3, a.ndim))), float(slope)


def _maps(out: Path, study: str, animal: str, day: int) -> dict[str, np.ndarray]:
    with np.load(out / "truth" / study / "maps" / f"{animal}_day{day:02d}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ci_clean(tmp_path_factory) -> Path:
    """ci preset written without noise (the physics check), all studies."""
    out = tmp_path_factory.mktemp("ci_clean")
    generate("ci", out=out, noise=False)
    return out


# --------------------------------------------------------------------------------------------- determinism
def test_ci_bytes_identical_across_runs(ci_study, tmp_path, capsys):
    """Regenerating the ci preset (here through the CLI) gives byte-identical files."""
    from studylib.cli import main

    other = tmp_path / "again"
    assert main(["synth", "--preset", "ci", "--out", str(other)]) == 0
    assert "data_manifest.csv" in capsys.readouterr().out
    a, b = _tree_hashes(ci_study.parent), _tree_hashes(other)
    assert set(a) == set(b)
    assert len(a) > 500
    differing = [k for k in a if a[k] != b[k]]
    assert differing == []


def test_ci_size_and_seed_changes_bytes(ci_study, tmp_path):
    size = sum(p.stat().st_size for p in ci_study.parent.rglob("*") if p.is_file())
    assert size < 20e6
    m = generate("ci", out=tmp_path / "s1", seed=1, studies=["collagen_adc"])
    other = pd.read_csv(m, dtype=str, keep_default_na=False)
    base = pd.read_csv(ci_study, dtype=str, keep_default_na=False)
    base = base[base.study == "collagen_adc"]
    assert set(other.path) == set(base.path)
    assert set(other.sha256) != set(base.sha256)  # a different seed gives different data


# --------------------------------------------------------------------------------------------- manifest
def test_manifest_rows_exist_with_right_sha256(ci_study):
    df = pd.read_csv(ci_study, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["study", "animal", "group", "day", "kind", "path", "sha256", "sex", "model", "notes"]
    root = ci_study.parent
    for rel, sha in zip(df.path, df.sha256):
        assert not rel.startswith("/") and ".." not in rel.split("/")
        p = root / rel
        assert p.is_file(), rel
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, rel
    assert verify_manifest(ci_study) == []
    assert set(df.study) == set(STUDIES)
    # every image has its sidecar row and every session its roi
    imgs = df[df.path.str.endswith(".nii.gz")]
    assert set(imgs.path.str.replace(".nii.gz", ".json")) <= set(df.path)
    hist = df[df.kind == "histology"]
    assert len(hist) == len(STUDIES) and (hist.animal == "").all() and (hist.day == "").all()
    # truth is never listed
    assert not df.path.str.contains("truth/").any()


def test_manifest_kinds_sessions_and_missing_days(ci_study):
    df = read_manifest(ci_study)
    img = df[df.path.str.endswith(".nii.gz")]
    for study, kinds in STUDY_KINDS.items():
        s = img[img.study == study]
        pl = plan(study, "ci")
        # the sessions the planner yields: every imaging day, plus Amp B's pre-contrast day before each
        expected = {(x.animal.id, x.day) for x in pl.sessions()}
        assert {(a.id, d) for a in pl.animals for d in a.days} <= expected, study
        for kind in kinds + ("roi",):
            got = {(r.animal, int(r.day)) for r in s[s.kind == kind].itertuples()}
            assert got == expected, (study, kind)
        days = sorted({d for a in pl.animals for d in a.days})
        if len(days) > 1 and study != "lactate_cest":  # longitudinal: someone misses the last day
            assert any(days[-1] not in a.days for a in pl.animals), study


def test_committed_demo_manifest_matches_the_demo_design():
    path = REPO / "data_manifest.csv"
    df = read_manifest(path)
    assert df.path.str.startswith("data/demo/raw/").all()
    img = df[df.path.str.endswith(".nii.gz")]
    for study, kinds in STUDY_KINDS.items():
        pl = plan(study, "demo")
        expected = {(x.animal.id, x.day) for x in pl.sessions()}  # + Amp B's pre-contrast days
        for kind in kinds:
            got = {(r.animal, int(r.day)) for r in img[(img.study == study) & (img.kind == kind)].itertuples()}
            assert got == expected, (study, kind)
    assert (df.sha256.str.fullmatch(r"[0-9a-f]{64}")).all()


# --------------------------------------------------------------------------------------------- sidecars
def test_sidecars_have_the_keys_the_loader_needs(ci_study):
    from studylib.io.load import load_study
    from studylib.io.sidecar import read_sidecar

    df = pd.read_csv(ci_study, dtype=str, keep_default_na=False)
    root = ci_study.parent
    need = {"MEGRE": ["EchoTime", "RepetitionTime", "MagneticFieldStrength"],
            "T2w": ["EchoTime", "RepetitionTime", "MagneticFieldStrength"],
            "DWI": ["bValue", "MagneticFieldStrength"],
            "VFA": ["FlipAngle", "RepetitionTime", "MagneticFieldStrength"],
            "B1map": ["MagneticFieldStrength"],
            "DCE": ["FrameTimes", "FlipAngle", "RepetitionTime", "Agent", "ContrastDose_mmol_per_kg",
                    "MagneticFieldStrength"],
            "F19": ["Nucleus", "ReferenceTubePFC_mM", "ReferenceTubeFluorinesPerMolecule", "MagneticFieldStrength",
                    "FlipAngle", "RepetitionTime", "EchoTime"],
            "CEST": ["SaturationOffsets_ppm", "ReferenceVolumes", "SaturationB1_uT", "SaturationTime"],
            "WASSR": ["SaturationOffsets_ppm", "ReferenceVolumes"],
            "roi": ["Labels"]}
    n_axis = {"MEGRE": "EchoTime", "DWI": "bValue", "VFA": "FlipAngle", "DCE": "FrameTimes",
              "CEST": "SaturationOffsets_ppm", "WASSR": "SaturationOffsets_ppm"}
    seen = set()
    for r in df[df.path.str.endswith(".json")].itertuples():
        sc = read_sidecar(root / r.path)  # validates types and ranges
        missing = [k for k in need[r.kind] if k not in sc]
        assert missing == [], (r.path, missing)
        shape = nib.load(str(root / r.path.replace(".json", ".nii.gz"))).shape
        if r.kind in n_axis:
            assert len(shape) == 4 and shape[3] == len(sc[n_axis[r.kind]]), r.path
        else:
            assert len(shape) == 3, r.path
        if r.kind == "roi":
            labels = np.unique(np.asarray(nib.load(str(root / r.path.replace(".json", ".nii.gz"))).dataobj))
            assert {int(k) for k in sc["Labels"]} >= {int(v) for v in labels if v != 0}, r.path
        if r.kind == "MEGRE":
            assert all(0 < t < 0.1 for t in sc["EchoTime"])  # seconds
        seen.add(r.kind)
    assert seen == set(need)
    ds = load_study(ci_study, "lactate_cest", "CEST")  # the reference volume becomes m0
    assert "m0" in ds and float(ds["offset"].min()) == -2.0 and float(ds["offset"].max()) == 2.0


# --------------------------------------------------------------------------------------------- no truth in sidecars
#: sidecar keys that are acquisition parameters: what the experimenter sets or knows at the scanner, so a
#: sidecar may carry them even where truth.json records the same number (the design repeats the protocol).
#: ``ReferenceTube_mM`` / ``ReferenceTubePFC_mM`` + ``ReferenceTubeFluorinesPerMolecule``: the 19F reference tube is
#: made up at a known concentration of a known compound -- an experimental fact; ``ExcitationBandwidth_Hz`` is the pulse.
#: Everything else (bolus arrival, haematocrit, r1, T1, noise SD, any biology) must never reach a sidecar.
ACQUISITION_KEYS = frozenset({
    "MagneticFieldStrength", "RepetitionTime", "EchoTime", "FlipAngle", "InversionTime", "FrameTimes", "bValue",
    "SaturationOffsets_ppm", "ReferenceVolumes", "SaturationB1_uT", "SaturationTime", "ContrastDose_mmol_per_kg",
    "NumberOfAverages", "PhaseCycles", "PixelBandwidth_Hz", "ReferenceTube_mM", "ReceiveCoilChannels",
    "ReferenceTubePFC_mM", "ReferenceTubeFluorinesPerMolecule", "ExcitationBandwidth_Hz",
})


def _numbers(obj, where=""):
    """Every number in a JSON value, recursively, with its path (booleans are not numbers)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield where, float(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")


def _truth_leaks(sidecar: dict, truth: dict) -> list[str]:
    """Sidecar values (outside :data:`ACQUISITION_KEYS`) equal to a number anywhere in ``truth``.

    Sidecars are written to 10 significant digits and truth.json to 7, so "equal" is a relative
    difference below 1e-6 (exact for zero)."""
    values = sorted({v for _, v in _numbers(truth)})
    arr = np.asarray(values)
    leaks = []
    for key, value in sidecar.items():
        if key in ACQUISITION_KEYS:
            continue
        for path, x in _numbers(value, key):
            i = int(np.searchsorted(arr, x))
            near = [arr[j] for j in (i - 1, i) if 0 <= j < arr.size]
            hit = [t for t in near if (t == x if x == 0 else abs(t - x) <= 1e-6 * abs(x))]
            if hit:
                where = next(p for p, v in _numbers(truth) if v == hit[0])
                leaks.append(f"{path} = {x:g} is truth.json{where}")
    return leaks


def test_no_sidecar_carries_a_value_from_the_truth(ci_study):
    """Issue 14: every number in every sidecar of the ci study is compared with every number in its study's
    truth.json (recursively); a match is allowed only for an acquisition parameter (ACQUISITION_KEYS)."""
    root = ci_study.parent
    df = pd.read_csv(ci_study, dtype=str, keep_default_na=False)
    checked, leaks = 0, []
    for study in STUDIES:
        truth = json.loads((root / "truth" / study / "truth.json").read_text())
        for rel in df.path[(df.study == study) & df.path.str.endswith(".json")]:
            sidecar = json.loads((root / rel).read_text())
            leaks += [f"{rel}: {x}" for x in _truth_leaks(sidecar, truth)]
            checked += 1
    assert checked > 100 and leaks == []
    dce = json.loads((root / df.path[(df.study == "ktrans_hypoxia") & (df.kind == "DCE")
                                     & df.path.str.endswith(".json")].iloc[0]).read_text())
    assert not {"BolusArrivalTime_s", "Hematocrit", "Relaxivity_per_mM_per_s"} & set(dce)


def test_the_sidecar_truth_check_finds_a_planted_value():
    """The check above is not vacuous: the values issue 14 removed, planted back, are each found -- also
    nested in a list -- while acquisition parameters equal to a truth number are allowed."""
    truth = {"design": {"bolus_arrival_s": 40.0, "hematocrit": 0.42, "r1_per_s_per_mM": 2.8, "tr_ms": 4.0,
                        "fa_vfa_deg": [2.0, 5.0]}, "sessions": [{"tumour_t1_ms": 1893.2571}]}
    clean = {"FlipAngle": [2.0, 5.0], "FrameTimes": [0.0, 40.0], "Agent": "gadoterate", "Nucleus": "1H"}
    assert _truth_leaks(clean, truth) == []
    for key, value in [("BolusArrivalTime_s", 40.0), ("Hematocrit", 0.42), ("Relaxivity_per_mM_per_s", 2.8),
                       ("T1_ms", [1000.0, 1893.257104])]:
        found = _truth_leaks(dict(clean, **{key: value}), truth)
        assert len(found) == 1 and found[0].startswith(key), (key, found)


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module a source file imports (relative imports resolved; ``from a import b``
    gives both ``a`` and ``a.b``, since ``b`` may be a module), and of string arguments to
    ``importlib.import_module`` / ``__import__``."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = package.split(".")
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                out.add(node.args[0].value)
    return out


def _imports_fit(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "studylib.fit" or m.startswith("studylib.fit."))


def test_no_synth_module_imports_a_fit_kernel(tmp_path):
    """Issue 14: the simulator never shares the fits' code.  Every module under studylib/synth (physics
    included), read with ast, imports nothing of studylib.fit.  (The planners still take forward functions
    from studylib.models; the independent physics in studylib/synth/physics is to replace them.)"""
    import studylib.synth as synth_pkg

    root = Path(synth_pkg.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 10
    bad = {}
    for f in files:
        rel = f.relative_to(root.parent.parent).with_suffix("")
        parts = list(rel.parts)
        package = ".".join(parts if parts[-1] == "__init__" else parts[:-1]).replace(".__init__", "")
        hits = _imports_fit(_imported_modules(f, package))
        if hits:
            bad[str(rel)] = hits
    assert bad == {}
    # and the check sees each way of writing such an import
    sub = tmp_path / "studylib" / "synth"
    sub.mkdir(parents=True)
    for src in ("from ..fit.dce import dce", "from .. import fit", "import studylib.fit.relaxometry",
                "from studylib.fit import t2star", "import importlib\nimportlib.import_module('studylib.fit')"):
        (sub / "x.py").write_text(src + "\n")
        assert _imports_fit(_imported_modules(sub / "x.py", "studylib.synth")), src
    (sub / "x.py").write_text("from ..models.dce import extended_tofts_ct\nfrom ..fitting_notes import x\n")
    assert _imports_fit(_imported_modules(sub / "x.py", "studylib.synth")) == []


# --------------------------------------------------------------------------------------------- physics
def _sessions(out: Path, study: str) -> pd.DataFrame:
    return pd.read_csv(out / "truth" / study / "sessions.csv", dtype={"animal": str})


def test_noise_free_megre_matches_forward_model_and_fit(ci_clean):
    for study in ("ampb_ferumoxytol", "blz945_femri", "ferumoxytol_therapy"):
        row = _sessions(ci_clean, study).iloc[-1]
        folder = ci_clean / "raw" / study / row.animal / f"day{int(row.day):02d}"
        sig, slope = _zyx(folder / "MEGRE.nii.gz")
        te = np.array(json.loads((folder / "MEGRE.json").read_text())["EchoTime"]) * 1000
        m = _maps(ci_clean, study, row.animal, int(row.day))
        # the images are the static-dephasing physics (checked against it in tests/test_dephasing_voxelwise.py):
        # a log-linear fit of the noise-free tumour trains reads the true R2* = R2 + R2' slightly low, never high
        roi, _ = _zyx(folder / "roi.nii.gz")
        np.testing.assert_array_equal(roi, m["roi"])
        tum = roi == 1
        fit = -np.polyfit(te, np.log(sig[tum].T), 1)[0] * 1000
        ratio = fit / m["r2star_per_s"][tum]
        assert np.all((ratio > 0.95) & (ratio < 1.005)), (study, ratio.min(), ratio.max())
        key = "left_tumour_r2star_per_s" if study == "ferumoxytol_therapy" else "tumour_r2star_per_s"
        np.testing.assert_allclose(row[key], m["r2star_per_s"][tum].mean(), rtol=1e-5)


# collagen_adc: the DWI is the independent kurtosis + IVIM physics (studylib.synth.physics.diffusion), checked voxel
# by voxel against the truth maps, with the library's ADC fit on it, in tests/test_synth_dwi_physics.py.
# ktrans_hypoxia: VFA, DCE and B1 map from the independent physics (per-animal AIF, continuous-time extended
# Tofts, SPGR under a B1 field), checked voxel by voxel in tests/test_synth_dce_physics.py


def test_noise_free_f19_and_cest_match_forward_models(ci_clean):
    from studylib.synth._molecular import CEST, F19, F19_RELAXATION
    from studylib.synth.physics import ssfp

    row = _sessions(ci_clean, "fluorine19_pfc").iloc[-1]
    f = ci_clean / "raw" / "fluorine19_pfc" / row.animal / "day01"
    sig, slope = _zyx(f / "F19.nii.gz")
    m = _maps(ci_clean, "fluorine19_pfc", row.animal, 1)
    sc = json.loads((f / "F19.json").read_text())
    # the 19F image is the bSSFP Bloch steady state of each class (tests/test_synth_f19_physics.py has the rest)
    expect = np.zeros(sig.shape)
    for cls, mask in (("tumour", m["roi"] == 1), ("tube", m["roi"] == 4)):
        t1, t2 = F19_RELAXATION[cls]
        expect[mask] = F19["gain_per_mM"] * ssfp.pfc_bssfp_signal(
            m["pfc_mM"][mask], ssfp.PFCE, t1_ms=t1, t2_ms=t2, tr_ms=sc["RepetitionTime"] * 1e3,
            te_ms=sc["EchoTime"] * 1e3, flip_deg=sc["FlipAngle"], field_t=sc["MagneticFieldStrength"],
            excitation_bandwidth_hz=sc["ExcitationBandwidth_Hz"], b0_ppm=m["b0_ppm"][mask],
            n_cycles=sc["PhaseCycles"])
    assert np.max(np.abs(sig - expect)) <= 0.51 * slope + 1e-4
    tube = m["roi"] == 4
    np.testing.assert_allclose(m["f19_mM"][tube], sc["ReferenceTubePFC_mM"] * sc["ReferenceTubeFluorinesPerMolecule"])
    assert m["f19_mM"][(m["roi"] == 2) | (m["roi"] == 5)].max() == 0  # no 19F background
    assert sig[(m["roi"] == 2) | (m["roi"] == 5)].max() == 0

    row = _sessions(ci_clean, "lactate_cest").iloc[-1]
    f = ci_clean / "raw" / "lactate_cest" / row.animal / f"day{int(row.day):02d}"
    sig, slope = _zyx(f / "CEST.nii.gz")
    sc = json.loads((f / "CEST.json").read_text())
    m = {k: v.astype(float) for k, v in _maps(ci_clean, "lactate_cest", row.animal, int(row.day)).items()}
    ref = sc["ReferenceVolumes"]
    assert ref == [0]
    np.testing.assert_allclose(sig[..., 0], m["m0"], atol=0.51 * slope)
    # the spectra are Bloch-McConnell physics (studylib.synth.physics.cest); checked voxel by voxel in
    # tests/test_synth_cest_physics.py.  Here: unsaturated at 300 ppm, saturated (Z < 1) elsewhere in the body
    body = m["roi"] != 5
    assert np.all(sig[body][:, 1:] < sig[body][:, :1] + 0.51 * slope)
    body = m["roi"] != 5
    assert np.abs(m["b0_shift_ppm"][body]).max() <= CEST["b0_max_ppm"] + 1e-6


def test_ferumoxytol_therapy_has_two_labelled_tumours(ci_clean):
    st_ = _sessions(ci_clean, "ferumoxytol_therapy")
    for r in st_.itertuples():
        m = _maps(ci_clean, "ferumoxytol_therapy", r.animal, r.day)
        vv = np.prod(json.loads((ci_clean / "truth" / "ferumoxytol_therapy" / "truth.json").read_text())
                     ["grid"]["voxel_mm_xyz"])
        assert np.isclose((m["roi"] == 1).sum() * vv, r.left_tumour_volume_roi_mm3)
        assert np.isclose((m["roi"] == 6).sum() * vv, r.right_tumour_volume_roi_mm3)
    roi_json = json.loads((ci_clean / "raw" / "ferumoxytol_therapy" / st_.animal[0] / "day00" / "roi.json").read_text())
    assert roi_json["Labels"]["1"] == "tumour_left" and roi_json["Labels"]["6"] == "tumour_right"


# --------------------------------------------------------------------------------------------- effects in the truth
def _truth(root: Path, study: str) -> dict:
    return testing.load_truth(study, root)


@pytest.mark.parametrize("preset_root", ["ci"])
def test_effect_directions_in_truth(ci_study, preset_root):
    root = ci_study.parent
    e = _truth(root, "blz945_femri")["effects"]
    for k in ("tumour_r2star_per_s_blz945_minus_control_last_day",
              "tumour_r2star_per_s_blz945_minus_control_last_day_TS1",
              "tumour_r2star_per_s_blz945_minus_control_last_day_99LN"):
        assert e[k]["population"] < 0 and e[k]["sample"] < 0, k
    e = _truth(root, "ampb_ferumoxytol")["effects"]["tumour_r2star_per_s_ampb_minus_vehicle_last_day"]
    assert e["population"] > 5 and e["sample"] > 0
    e = _truth(root, "ferumoxytol_therapy")["effects"]
    assert e["log_volume_growth_per_day_ferumoxytol_minus_control"]["population"] < 0
    assert e["log_volume_growth_per_day_ferumoxytol_minus_control"]["sample"] < 0
    assert e["tumour_r2star_per_s_ferumoxytol_minus_control_day1"]["sample"] > 0
    assert e["cd80_pct_ferumoxytol_minus_control"]["sample"] > 0 > e["cd206_pct_ferumoxytol_minus_control"]["sample"]
    t = _truth(root, "collagen_adc")
    assert t["correlations"]["tumour_adc_vs_collagen_i_area_pct"] < -0.5
    t = _truth(root, "ktrans_hypoxia")
    assert t["correlations"]["tumour_ktrans_vs_hypoxic_fraction_pct"] < -0.5
    assert abs(t["correlations"]["tumour_ktrans_vs_ifp_mmHg"]) < abs(
        t["correlations"]["tumour_ktrans_vs_hypoxic_fraction_pct"])
    f = _truth(root, "fluorine19_pfc")["effects"]["tumour_f19_mM_line_means"]["sample"]
    assert f["67NR"] < f["168FARN"] < f["4T1"]
    c = _truth(root, "lactate_cest")["effects"]["tumour_mtrasym_0p4_pct_post_minus_pre"]
    # Bloch-McConnell physics: ~0.015 % MTRasym per mM lactate, a 40 % rise of ~20 mM -> ~0.1 %
    assert c["sample"] > 0 and all(d > 0 for d in c["per_animal"]) and 0.05 < c["population"] < 0.5
    pre = _truth(root, "lactate_cest")["effects"]["tumour_mtrasym_0p4_pct_by_day"]["sample"]
    # the semisolid MT pool's asymmetry makes MTRasym(0.4 ppm) small or negative; the post scan is higher
    assert -1.0 < pre["0"] < 1.0 and -1.0 < pre["1"] < 1.2 and pre["1"] > pre["0"]


def test_truth_table_and_sessions_agree(ci_study):
    root = ci_study.parent
    tab = testing.truth_table("blz945_femri", root)
    t = testing.load_truth("blz945_femri", root)
    assert len(tab) == len(t["sessions"])
    last = tab.day.max()
    g = tab[tab.day == last].groupby("group").tumour_r2star_per_s.mean()
    assert np.isclose(g["blz945"] - g["control"],
                      t["effects"]["tumour_r2star_per_s_blz945_minus_control_last_day"]["sample"], rtol=1e-5)


# --------------------------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(w_rim=st.floats(0.1, 5), w_core=st.floats(0.1, 5), jitter=st.floats(0, 0.5), seed=st.integers(0, 2**31),
       vol=st.floats(5, 180))
def test_spatial_pattern_has_unit_roi_mean(w_rim, w_core, jitter, seed, vol):
    grid = Grid(16, 16, 4, 16.0, 16.0, 6.0)
    mask, rim = Tumour(2.0, 0.5, vol).masks(grid)
    w = spatial_pattern(mask, rim, w_rim, w_core, jitter, np.random.default_rng(seed))
    assert mask.any()
    assert np.isclose(w[mask].mean(), 1.0, rtol=1e-12)
    assert np.all(w[~mask] == 1.0) and np.all(w > 0)


@settings(max_examples=40, deadline=None)
@given(vol=st.floats(0.01, 1e4))
def test_tumour_semi_axes_give_the_volume(vol):
    a, b, c = tumour_semi_axes_mm(vol)
    assert np.isclose(4.0 / 3.0 * np.pi * a * b * c, vol, rtol=1e-10)
    assert a > b > c > 0


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-10**6, 10**6),
                                 st.lists(st.floats(-1e6, 1e6), max_size=4), st.text(max_size=5)), max_size=6))
def test_json_bytes_is_canonical(d):
    raw = json_bytes(d)
    assert raw == json_bytes(dict(reversed(list(d.items()))))  # key order does not matter
    back = json.loads(raw)
    assert list(back) == sorted(back)
    for k, v in d.items():
        if isinstance(v, float):
            assert np.isclose(back[k], v, rtol=1e-6, atol=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50))
def test_npz_is_deterministic_and_loadable(tmp_path_factory, seed, n):
    d = tmp_path_factory.mktemp("npz")
    arr = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    p1, p2 = write_npz(d / "a.npz", {"x": arr, "lab": np.arange(n, dtype=np.int16)}), d / "b.npz"
    write_npz(p2, {"lab": np.arange(n, dtype=np.int16), "x": arr})
    assert p1.read_bytes() == p2.read_bytes()
    with np.load(p1) as z:
        np.testing.assert_array_equal(z["x"], arr)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**40), a=st.integers(0, 500), d=st.integers(-30, 60))
def test_rng_streams_are_reproducible_and_distinct(seed, a, d):
    x = rng_for(seed, "blz945_femri", 2, a, d).normal(size=4)
    np.testing.assert_array_equal(x, rng_for(seed, "blz945_femri", 2, a, d).normal(size=4))
    assert not np.array_equal(x, rng_for(seed, "blz945_femri", 2, a, d + 1).normal(size=4))
    assert not np.array_equal(x, rng_for(seed, "ampb_ferumoxytol", 2, a, d).normal(size=4))


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="huge"), "preset must be one of"),
    (dict(preset="ci", seed=-1), "seed must be a non-negative integer"),
    (dict(preset="ci", seed=1.5), "seed must be a non-negative integer"),
    (dict(preset="ci", seed=True), "seed must be a non-negative integer"),
    (dict(preset="ci", studies=["nope"]), "studies must be a non-empty subset"),
    (dict(preset="ci", studies=[]), "studies must be a non-empty subset"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(SynthError, match=match):
        generate(out=tmp_path / "o", manifest=tmp_path / "m.csv", **kwargs)
    assert not (tmp_path / "m.csv").exists()


def test_generate_rejects_bad_paths(tmp_path):
    with pytest.raises(StudyError, match="must be inside the manifest's folder"):
        generate("ci", out=tmp_path / "data", manifest=tmp_path / "sub" / "m.csv")
    with pytest.raises(SynthError, match="must be a .csv path"):
        generate("ci", out=tmp_path / "data", manifest=tmp_path / "m.txt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SynthError, match="exists and is not a folder"):
        generate("ci", out=tmp_path / "file", manifest=tmp_path / "m.csv")
    with pytest.raises(SynthError, match="study must be one of"):
        plan("nope")


def test_cli_reports_bad_paths_in_one_line(tmp_path, capsys):
    from studylib.cli import main

    rc = main(["synth", "--preset", "ci", "--out", str(tmp_path / "d"), "--manifest", str(tmp_path / "x" / "m.csv")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out ") and len(err.strip().splitlines()) == 1


def test_presets_are_sized_as_documented():
    assert (PRESETS["ci"].nxy, PRESETS["ci"].nz) == (16, 2)
    assert (PRESETS["demo"].nxy, PRESETS["demo"].nz) == (64, 6)
    assert all(3 <= n <= 8 for n in PRESETS["demo"].animals_per_group.values())
    assert all(n == 3 for n in PRESETS["ci"].animals_per_group.values())


# --------------------------------------------------------------------------------------------- studylib.testing
def test_make_study_and_load_truth(tmp_path):
    m = testing.make_study(tmp_path, studies=["fluorine19_pfc"])
    assert m == (tmp_path / "data_manifest.csv").resolve()
    assert set(pd.read_csv(m).study) == {"fluorine19_pfc"}
    assert testing.load_truth("fluorine19_pfc", tmp_path)["study"] == "fluorine19_pfc"
    with pytest.raises(StudyError, match="no truth for study 'collagen_adc'"):
        testing.load_truth("collagen_adc", tmp_path)


def test_synthetic_megre_truth_and_noise():
    sig, truth = testing.synthetic_megre((3, 4, 5), t2star_ms=np.linspace(10, 40, 5), snr=None,
                                         te_ms=[2, 4, 8, 16, 32], seed=0)
    assert sig.dims == ("z", "y", "x", "te") and sig["te"].attrs["units"] == "ms"
    fit = -1.0 / np.polyfit(sig["te"].values, np.log(sig.values.reshape(-1, 5).T), 1)[0]
    testing.assert_close_to_truth(fit, truth["t2star_ms"].ravel(), rtol=1e-9, what="T2*")
    noisy, tr = testing.synthetic_megre((2000,), 25.0, 20.0, [2, 4, 8], seed=1)
    resid = noisy.isel(te=0).values - tr["s0"] * np.exp(-2 / 25)
    assert np.isclose(np.std(resid), 1000 / 20, rtol=0.1)  # sigma = S0 / snr
    with pytest.raises(AssertionError, match="relative error"):
        testing.assert_close_to_truth(fit * 1.2, truth["t2star_ms"].ravel(), rtol=0.05)


def test_synthetic_dwi_vfa_dce_cest_shapes_and_truth():
    dwi, t = testing.synthetic_dwi((4,), [0.5, 1.0, 1.5, 2.0], None, [0, 500, 1000], seed=0)
    np.testing.assert_allclose(-np.log(dwi.values[:, 2] / dwi.values[:, 0]) / 1.0, t["adc_um2_per_ms"])
    vfa, t = testing.synthetic_vfa((2, 2), 1500.0, 100.0, [2, 10, 20], 5.0, seed=0)
    assert vfa.dims == ("y", "x", "fa")
    dce, t = testing.synthetic_dce((3,), [0.1, 0.2, 0.3], 0.3, 0.03, None, np.arange(0, 300, 5.0), seed=0)
    assert dce.dims == ("x", "t")
    assert np.all(dce.values[:, -1] > dce.values[:, 0])  # enhancement
    cest, t = testing.synthetic_cest((2,), [0.5, 1.0], 0.0, None, np.linspace(-2, 2, 81), seed=0)
    assert t["mtrasym_pct"][1] > t["mtrasym_pct"][0]
    shifted, _ = testing.synthetic_cest((1,), 0.5, 0.2, None, np.linspace(-2, 2, 81), seed=0)
    assert abs(float(shifted["offset"][np.argmin(shifted.values[0])]) - 0.2) < 0.03  # water dip moves with B0


def test_synthetic_study_is_load_study_shaped():
    ds, truth = testing.synthetic_study(animals_per_group=2, days=(0, 7), missing=((0, 1),), seed=3)
    assert ds.signal.dims == ("animal", "day", "te", "z", "y", "x")
    assert ds.signal.chunks is not None and ds.roi.dtype == np.int16
    assert not bool(ds.acquired.values[0, 1]) and bool(ds.acquired.values[1, 1])
    assert np.isnan(ds.signal.isel(animal=0, day=1).values).all()
    assert len(truth) == 7 and set(truth.group) == {"control", "treated"}  # 4 animals x 2 days - 1 missing


@pytest.mark.parametrize("call, match", [
    (lambda: testing.synthetic_megre((1, 2, 3, 4), 20, 10, [1, 2], 0), "shape must be up to 3"),
    (lambda: testing.synthetic_megre((2,), 20, -1, [1, 2], 0), "snr must be positive"),
    (lambda: testing.synthetic_megre((2,), [20, 30, 40], 10, [1, 2], 0), "does not broadcast"),
    (lambda: testing.synthetic_megre((2,), 0.0, 10, [1, 2], 0), "t2star_ms must be finite and positive"),
    (lambda: testing.synthetic_dwi((2,), 1.0, 10, [0, -100], 0), "b_s_per_mm2 must be non-negative"),
    (lambda: testing.synthetic_vfa((2,), 1000, 10, [2, 10], -4, 0), "tr_ms must be positive"),
    (lambda: testing.synthetic_cest((2,), 0.5, 0, 10, [1, 0, -1], 0), "strictly increasing"),
    (lambda: testing.synthetic_study(shape=(4, 4)), r"shape must be \(z, y, x\)"),
])
def test_testing_helpers_reject_bad_input(call, match):
    with pytest.raises(StudyError, match=match):
        call()


@pytest.mark.slow
def test_regenerated_demo_matches_the_committed_manifest(demo_manifest):
    """Issue 2: ``studylib synth --preset demo`` reproduces the committed manifest byte for byte (on a
    fresh clone the fixture regenerates the demo), and every file it lists verifies."""
    from studylib.manifest import verify_manifest

    committed = REPO / "data_manifest.csv"
    assert demo_manifest.read_bytes() == committed.read_bytes()
    assert verify_manifest(demo_manifest) == []


def test_synth_never_overwrites_a_lab_study_without_force(tmp_path):
    """`studylib synth --out <existing study>` used to overwrite the lab's manifest and edited sidecars
    (issue 16): a non-empty folder synth did not write, or a manifest it did not write, is refused."""
    from studylib.cli import main

    lab = tmp_path / "lab"
    (lab / "raw").mkdir(parents=True)
    (lab / "raw" / "my_roi.json").write_text('{"Labels": {"1": "tumour"}}')
    (lab / "data_manifest.csv").write_text("study,animal,group,day,kind,path,sha256\n")
    before = {p: p.read_bytes() for p in lab.rglob("*") if p.is_file()}
    with pytest.raises(SynthError, match="not empty and not a studylib synthetic study .*pass --force"):
        generate("ci", out=lab, studies=["collagen_adc"])
    assert main(["synth", "--preset", "ci", "--out", str(lab)]) == 1
    assert {p: p.read_bytes() for p in lab.rglob("*") if p.is_file()} == before
    with pytest.raises(SynthError, match="manifest .*exists and belongs to no synthetic study"):
        generate("ci", out=lab / "synth", manifest=lab / "data_manifest.csv", studies=["collagen_adc"])
    other = tmp_path / "fresh"
    # a folder synth wrote itself may be regenerated; --force writes anyway
    m = generate("ci", out=other, studies=["collagen_adc"])
    assert generate("ci", out=other, studies=["collagen_adc"]) == m
    generate("ci", out=lab, studies=["collagen_adc"], force=True)
    assert (lab / "raw" / "my_roi.json").is_file()  # force writes synth's files, it deletes nothing
