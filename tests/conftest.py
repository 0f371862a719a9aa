"""Shared fixtures.

* ``tiny_study`` (function scope): a tiny study written with ``write_nifti`` +
  ``write_manifest`` in ``tmp_path`` — 3 animals, days 0 and 7 (m02 misses day 7),
  MEGRE (4 echoes) and CEST (1 reference + 5 offsets) on a 5 x 4 x 3 grid, ROIs, a
  histology CSV.  Returns the manifest path.  Cheap (~50 ms): tests may corrupt it.
* ``ci_study`` (session scope): ``studylib.synth.generate("ci", out=tmp)``; returns the
  manifest path.  No skip: if synth is missing the tests using it fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY_TE_MS = [2.0, 4.0, 6.0, 8.0]
TINY_OFFSETS_PPM = [-1.0, -0.4, 0.0, 0.4, 1.0]
TINY_SHAPE_XYZ = (5, 4, 3)
TINY_VOXEL_MM = (0.1, 0.1, 0.5)


def make_tiny_study(root: Path, study: str = "tiny") -> Path:
    """Write the tiny study below ``root`` and return its manifest path."""
    from studylib.io.nifti import write_nifti
    from studylib.manifest import write_manifest

    root = Path(root)
    rng = np.random.default_rng(1234)
    aff = np.diag(list(TINY_VOXEL_MM) + [1.0])
    animals = {"m01": ("control", "F"), "m02": ("treated", "F"), "m03": ("treated", "M")}
    sessions = [("m01", 0), ("m01", 7), ("m02", 0), ("m03", 0), ("m03", 7)]  # m02 died before day 7
    te = np.asarray(TINY_TE_MS)
    rows = []
    x, y, z = np.meshgrid(*[np.arange(s) for s in TINY_SHAPE_XYZ], indexing="ij")
    for a, d in sessions:
        folder = f"raw/{study}/{a}/day{d:02d}"
        r2s = 20.0 + 10.0 * rng.random(TINY_SHAPE_XYZ)  # 1/s
        s0 = 1000.0 + 100.0 * rng.random(TINY_SHAPE_XYZ)
        sig = s0[..., None] * np.exp(-te / 1000.0 * r2s[..., None])
        write_nifti(root / folder / "MEGRE.nii.gz", sig, aff,
                    sidecar={"EchoTime": (te / 1000).tolist(), "RepetitionTime": 1.2, "FlipAngle": 60,
                             "MagneticFieldStrength": 9.4, "Agent": "ferumoxytol",
                             "NoiseSigma": 12.0 if (a, d) == ("m03", 7) else 10.0})
        cest = np.concatenate([np.full(TINY_SHAPE_XYZ + (1,), 900.0),
                               800.0 + 50.0 * rng.random(TINY_SHAPE_XYZ + (5,))], axis=-1)
        write_nifti(root / folder / "CEST.nii.gz", cest, aff,
                    sidecar={"SaturationOffsets_ppm": [300.0] + TINY_OFFSETS_PPM, "ReferenceVolumes": [0],
                             "RepetitionTime": 5.0, "MagneticFieldStrength": 9.4, "SaturationB1_uT": 2.0})
        roi = np.zeros(TINY_SHAPE_XYZ)
        roi[1:4, 1:3, :] = 1
        roi[0, 0, :] = 2
        write_nifti(root / folder / "roi.nii.gz", roi, aff, sidecar={"Labels": {"1": "tumour", "2": "muscle"}})
        g, sex = animals[a]
        for kind, name in (("MEGRE", "MEGRE"), ("CEST", "CEST"), ("roi", "roi")):
            for ext in (".nii.gz", ".json"):
                rows.append(dict(study=study, animal=a, group=g, day=d, kind=kind, path=f"{folder}/{name}{ext}",
                                 sex=sex))
    hist = pd.DataFrame({"animal": list(animals), "iron_area_pct": [1.5, 4.0, 3.2]})
    hpath = root / "raw" / study / "histology.csv"
    hist.to_csv(hpath, index=False, lineterminator="\n")
    rows.append(dict(study=study, animal="", group="", day=None, kind="histology",
                     path=f"raw/{study}/histology.csv", sex=""))
    return write_manifest(pd.DataFrame(rows), root / "data_manifest.csv")


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    return make_tiny_study(tmp_path / "tiny")


@pytest.fixture(scope="session")
def ci_study(tmp_path_factory) -> Path:
    from studylib.synth import generate  # no skip: a missing synth must fail the tests

    out = tmp_path_factory.mktemp("ci_study")
    return Path(generate("ci", out=out))


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    """The demo study behind the committed top-level ``data_manifest.csv``.

    The repository's ``data/demo`` when it is present and verifies against the committed manifest
    (a developer's machine after ``make reports``); otherwise (a fresh clone, CI) the demo preset is
    regenerated into a temporary folder with the same relative layout, so its manifest must come out
    byte-identical to the committed one (``tests/test_synth.py`` checks that).
    """
    from studylib.manifest import verify_manifest
    from studylib.synth import generate

    committed = Path(__file__).resolve().parents[1] / "data_manifest.csv"
    if (committed.parent / "data" / "demo").is_dir() and not verify_manifest(committed):
        return committed
    out = tmp_path_factory.mktemp("demo")
    return Path(generate("demo", out=out / "data" / "demo", manifest=out / "data_manifest.csv"))


def run_notebooks(manifest: Path, preset: str, out: Path) -> dict[str, dict]:
    """Execute every experiment notebook on ``manifest`` (papermill, the real runner) into ``out/reports``
    with its cache in ``out/derived``; return each notebook's record (``reports/<name>.json``)."""
    import json

    from studylib import workbook as wb

    names = wb.available()
    assert names, "no experiment notebooks found"
    reports = out / "reports"
    rc = wb.run(names, preset=preset, reports=reports, manifest=manifest, cache_dir=out / "derived", progress=False)
    records = {n: json.loads((reports / f"{n}.json").read_text()) for n in names}
    failed = {n: r["error"] for n, r in records.items() if r["status"] not in ("ok", "ok with warnings")}
    assert rc == 0 and not failed, f"notebooks failed on the {preset} preset: {failed}"
    return records


@pytest.fixture(scope="session")
def ci_reports(ci_study, tmp_path_factory) -> dict:
    """Every notebook executed once on the ``ci`` study: ``{"records": {name: record}, "root": folder}``."""
    out = tmp_path_factory.mktemp("ci_reports")
    return {"records": run_notebooks(ci_study, "ci", out), "root": out, "manifest": ci_study}


@pytest.fixture(scope="session")
def demo_reports(demo_manifest, tmp_path_factory) -> dict:
    """Every notebook executed once on the demo study (the ``make reports`` job, into a temporary folder)."""
    out = tmp_path_factory.mktemp("demo_reports")
    return {"records": run_notebooks(demo_manifest, "demo", out), "root": out, "manifest": demo_manifest}


@pytest.fixture(scope="session")
def ci_reports_no_truth(ci_study, tmp_path_factory) -> dict:
    """Every notebook executed on a copy of the ci study with its ``truth/`` folder deleted (real data has
    none) and the DCE sidecars stripped of the simulator-only keys (bolus arrival, r1, haematocrit)."""
    import json
    import shutil

    from studylib.manifest import read_manifest, sha256_file, write_manifest

    out = tmp_path_factory.mktemp("no_truth")
    src = Path(ci_study).parent
    data = out / "study"
    shutil.copytree(src, data, ignore=shutil.ignore_patterns("derived"))
    shutil.rmtree(data / "truth")
    man = read_manifest(data / Path(ci_study).name)
    for i, rel in enumerate(man["path"]):
        if rel.endswith("DCE.json"):
            p = data / rel
            side = json.loads(p.read_text())
            for k in ("BolusArrivalTime_s", "Relaxivity_per_mM_per_s", "Hematocrit"):
                side.pop(k, None)
            p.write_text(json.dumps(side))
            man.loc[i, "sha256"] = sha256_file(p)
    manifest = write_manifest(man, data / Path(ci_study).name)
    return {"records": run_notebooks(manifest, "ci", out), "root": out, "manifest": manifest}
