"""Manifest schema, path safety, sha256 verification, deterministic writing, and ``studylib verify``."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studylib.analysis import require_verified
from studylib.cli import main as cli_main
from studylib.errors import ManifestError, StudyError
from studylib.manifest import (KINDS, manifest_sha256, read_manifest, resolve_path, sha256_file, verify_manifest,
                               write_manifest)

MEGRE = "raw/tiny/m01/day00/MEGRE.nii.gz"
MEGRE_JSON = "raw/tiny/m01/day00/MEGRE.json"


# --------------------------------------------------------------------------- helpers

def _rows(manifest: Path) -> tuple[list[str], list[list[str]]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write_rows(manifest: Path, header, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    manifest.write_text(buf.getvalue(), encoding="utf-8")


def _edit(manifest: Path, rel: str, **changes) -> int:
    """Change columns of the row listing ``rel``; return its 1-based row number."""
    header, rows = _rows(manifest)
    for i, r in enumerate(rows):
        if r[header.index("path")] == rel:
            for k, v in changes.items():
                r[header.index(k)] = v
            _write_rows(manifest, header, rows)
            return i + 1
    raise AssertionError(f"{rel} not in manifest")


def _rehash(manifest: Path, rel: str) -> int:
    return _edit(manifest, rel, sha256=sha256_file(manifest.parent / rel))


def _verify_exit(manifest: Path, *extra) -> int:
    return cli_main(["verify", "--manifest", str(manifest), *extra])


# --------------------------------------------------------------------------- good manifest

def test_good_manifest_verifies_and_cli_exits_0(tiny_study, capsys):
    assert verify_manifest(tiny_study) == []
    assert verify_manifest(tiny_study, check_hashes=False) == []
    assert _verify_exit(tiny_study) == 0
    assert "OK" in capsys.readouterr().out
    df = read_manifest(tiny_study)
    assert list(df.columns[:7]) == ["study", "animal", "group", "day", "kind", "path", "sha256"]
    assert str(df["day"].dtype) == "Int64"
    hist = df[df["kind"] == "histology"]
    assert len(hist) == 1 and hist["day"].isna().all() and (hist["animal"] == "").all()
    assert set(df.loc[df["kind"] != "histology", "day"].astype(int)) == {0, 7}
    assert df.attrs["path"] == str(tiny_study)


def test_manifest_sha256_is_the_file_hash(tiny_study):
    assert manifest_sha256(tiny_study) == hashlib.sha256(tiny_study.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- every corruption is one named line

def _flip_byte(m: Path):
    p = m.parent / MEGRE
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))
    return MEGRE, "sha256 mismatch: expected "


def _missing(m: Path):
    (m.parent / MEGRE).unlink()
    return MEGRE, "missing file"


def _dotdot(m: Path):
    outside = m.parent.parent / "outside.nii.gz"
    outside.write_bytes((m.parent / MEGRE).read_bytes())
    _edit(m, MEGRE, path="../outside.nii.gz")
    return "../outside.nii.gz", "escapes the manifest folder"


def _absolute(m: Path):
    p = str((m.parent / MEGRE).resolve())
    _edit(m, MEGRE, path=p)
    return p, "is absolute"


def _symlink_escape(m: Path):
    outside = m.parent.parent / "secret.nii.gz"
    outside.write_bytes((m.parent / MEGRE).read_bytes())
    link = m.parent / "raw/tiny/link.nii.gz"
    os.symlink(outside, link)
    _edit(m, MEGRE, path="raw/tiny/link.nii.gz")
    return "raw/tiny/link.nii.gz", "escapes the manifest folder"


def _backslash(m: Path):
    _edit(m, MEGRE, path=MEGRE.replace("/", "\\"))
    return MEGRE.replace("/", "\\"), "backslash"


def _unknown_kind(m: Path):
    _edit(m, MEGRE, kind="XYZ")
    return MEGRE, "unknown kind 'XYZ'"


def _duplicate_row(m: Path):
    header, rows = _rows(m)
    i = [r[header.index("path")] for r in rows].index(MEGRE)
    rows.append(list(rows[i]))
    _write_rows(m, header, rows)
    return MEGRE, f"duplicate row (same as row {i + 1})"


def _duplicate_path(m: Path):
    header, rows = _rows(m)
    i = [r[header.index("path")] for r in rows].index(MEGRE)
    dup = list(rows[i])
    dup[header.index("kind")] = "T2w"
    rows.append(dup)
    _write_rows(m, header, rows)
    return MEGRE, f"duplicate path '{MEGRE}' (also in row {i + 1})"


def _bad_sha_string(m: Path):
    _edit(m, MEGRE, sha256="ABC123")
    return MEGRE, "sha256 'ABC123' is not 64 lowercase hex digits"


def _corrupt_gzip(m: Path):
    p = m.parent / MEGRE
    b = p.read_bytes()
    p.write_bytes(b[: len(b) - 40])  # truncated gzip stream, header intact
    _rehash(m, MEGRE)
    return MEGRE, "corrupt gzip data"


def _garbage_nifti(m: Path):
    p = m.parent / MEGRE
    p.write_bytes(gzip.compress(b"this is not a nifti header" * 20, mtime=0))
    _rehash(m, MEGRE)
    return MEGRE, "NIfTI"


def _bad_json(m: Path):
    (m.parent / MEGRE_JSON).write_text('{"EchoTime": [0.002, 0.004,', encoding="utf-8")
    _rehash(m, MEGRE_JSON)
    return MEGRE_JSON, "invalid JSON at line 1"


def _wrong_types(m: Path):
    (m.parent / MEGRE_JSON).write_text('{"EchoTime": "abc", "RepetitionTime": 1.2}\n', encoding="utf-8")
    _rehash(m, MEGRE_JSON)
    return MEGRE_JSON, "EchoTime must be a non-empty list of positive numbers in seconds"


def _ms_echo_times(m: Path):
    (m.parent / MEGRE_JSON).write_text('{"EchoTime": [2, 4, 6, 8]}\n', encoding="utf-8")
    _rehash(m, MEGRE_JSON)
    return MEGRE_JSON, "milliseconds?"


def _bad_day(m: Path):
    _edit(m, MEGRE, day="seven")
    return MEGRE, "day 'seven' is not an integer"


def _empty_day(m: Path):
    _edit(m, MEGRE, day="")
    return MEGRE, "day is empty (only histology rows may leave it empty)"


def _inconsistent_group(m: Path):
    _edit(m, MEGRE, group="treated")
    return MEGRE, "group 'treated' but row"


def _sidecar_not_listed(m: Path):
    header, rows = _rows(m)
    rows = [r for r in rows if r[header.index("path")] != MEGRE_JSON]
    _write_rows(m, header, rows)
    return MEGRE, "no JSON sidecar row"


CORRUPTIONS = [_flip_byte, _missing, _dotdot, _absolute, _symlink_escape, _backslash, _unknown_kind,
               _duplicate_row, _duplicate_path, _bad_sha_string, _corrupt_gzip, _garbage_nifti, _bad_json,
               _wrong_types, _ms_echo_times, _bad_day, _empty_day, _inconsistent_group, _sidecar_not_listed]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[c.__name__.strip("_") for c in CORRUPTIONS])
def test_each_problem_is_reported_on_a_line_naming_the_file(tiny_study, corrupt, capsys):
    fname, what = corrupt(tiny_study)
    problems = verify_manifest(tiny_study)
    hits = [p for p in problems if fname in p and what in p]
    assert hits, f"expected a line naming {fname!r} with {what!r}; got {problems}"
    assert all(p.startswith("row ") for p in hits)
    assert _verify_exit(tiny_study) == 1
    out = capsys.readouterr()
    assert fname in out.out and "problem(s)" in out.err
    assert "Traceback" not in out.out + out.err


def test_flipped_byte_reports_both_hashes(tiny_study):
    _flip_byte(tiny_study)
    expected = read_manifest(tiny_study).set_index("path").loc[MEGRE, "sha256"]
    got = sha256_file(tiny_study.parent / MEGRE)
    row = read_manifest(tiny_study)["path"].tolist().index(MEGRE) + 1
    assert f"row {row}: {MEGRE}: sha256 mismatch: expected {expected} got {got}" in verify_manifest(tiny_study)
    # without hashes the flipped byte (data region) is not looked for, the rest still is
    assert not [p for p in verify_manifest(tiny_study, check_hashes=False) if "sha256" in p]


def _two_studies(root: Path) -> Path:
    """Two tiny studies (``a`` and ``b``) side by side in one manifest."""
    from conftest import make_tiny_study

    rows = [read_manifest(make_tiny_study(root / s, study=s)) for s in ("a", "b")]
    for s, df in zip(("a", "b"), rows):
        df["path"] = [f"{s}/{p}" for p in df["path"]]
    return write_manifest(pd.concat(rows, ignore_index=True), root / "data_manifest.csv")


def test_a_study_is_verified_alone_with_the_manifests_row_numbers(tmp_path):
    """A notebook checks its own study's files: a corrupt file of another study does not stop it, the
    study's own problems carry the manifest's row numbers, and a study the manifest lacks is refused."""
    m = _two_studies(tmp_path)
    bad = "b/" + MEGRE.replace("/tiny/", "/b/")
    p = tmp_path / bad
    p.write_bytes(p.read_bytes()[:-40])  # truncated, listed hash now wrong too
    row = read_manifest(m)["path"].tolist().index(bad) + 1
    assert verify_manifest(m, study="a") == []
    whole, own = verify_manifest(m), verify_manifest(m, study="b")
    assert own == whole and any(x.startswith(f"row {row}: {bad}: sha256 mismatch") for x in own), own
    assert verify_manifest(m, study="c") == [f"{m}: lists no files of study 'c' (it lists ['a', 'b'])"]
    with pytest.raises(StudyError, match="sha256 mismatch"):
        require_verified(m, "b")
    assert require_verified(m, "a") == len(read_manifest(m).query("study == 'a'"))


def test_a_gzip_stream_that_is_listed_with_its_hash_is_still_inflated_in_full(tiny_study):
    """The sha256 proves the file is the one listed, not that it is whole: a stream truncated (or corrupt)
    before it was listed is found by inflating it in the same read."""
    p = tiny_study.parent / MEGRE
    p.write_bytes(p.read_bytes()[:-40])
    row = _rehash(tiny_study, MEGRE)
    problems = verify_manifest(tiny_study)
    assert [x for x in problems if x.startswith(f"row {row}: {MEGRE}: corrupt gzip data")], problems
    assert not [x for x in problems if "sha256" in x]


def test_a_whole_gzip_stream_of_a_cut_nifti_is_a_truncated_nifti(tiny_study):
    """A .nii.gz whose gzip stream is intact (CRC and length agree) but holds fewer bytes than its header
    needs -- an image cut before it was compressed -- is reported from the length the verify pass inflated."""
    p = tiny_study.parent / MEGRE
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[: len(raw) - 100], mtime=0))
    row = _rehash(tiny_study, MEGRE)
    assert f"row {row}: {MEGRE}: truncated NIfTI: header needs {len(raw)} bytes, the data has {len(raw) - 100}" \
        in verify_manifest(tiny_study)


def test_missing_manifest_is_one_problem_line(tmp_path, capsys):
    m = tmp_path / "nope.csv"
    problems = verify_manifest(m)
    assert len(problems) == 1 and str(m) in problems[0] and "not found" in problems[0]
    assert _verify_exit(m) == 1


@pytest.mark.parametrize("text, what", [
    ("", "empty"),
    ("study,animal\nx,y\n", "missing required column"),
    ("study,animal,group,day,kind,path,sha256,colour\n", "unknown column"),
    ('study,animal,group,day,kind,path,sha256\n"a,b\n', "not a valid CSV file"),
    ("study,animal,group,day,kind,path,sha256\na,b,c\n", "row 1: has 3 fields"),
])
def test_unreadable_manifest_is_one_clear_problem(tmp_path, text, what):
    m = tmp_path / "m.csv"
    m.write_text(text, encoding="utf-8")
    problems = verify_manifest(m)
    assert problems and any(what in p for p in problems), problems
    with pytest.raises(ManifestError, match=what.split(":")[0]):
        read_manifest(m)


def test_binary_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(b"\xff\xfe\x00\x01binary")
    assert len(verify_manifest(m)) == 1
    with pytest.raises(ManifestError, match=str(m)):
        read_manifest(m)


def test_read_manifest_raises_listing_every_problem(tiny_study):
    _edit(tiny_study, MEGRE, kind="XYZ")
    _edit(tiny_study, MEGRE_JSON, sha256="nothex")
    with pytest.raises(ManifestError) as err:
        read_manifest(tiny_study)
    msg = str(err.value)
    assert "unknown kind 'XYZ'" in msg and "'nothex' is not 64 lowercase hex digits" in msg
    assert MEGRE in msg and MEGRE_JSON in msg and str(tiny_study) in msg


# --------------------------------------------------------------------------- paths and hashes

def test_resolve_path_rules(tmp_path):
    base = tmp_path / "study"
    (base / "a").mkdir(parents=True)
    (base / "a/f.nii.gz").write_bytes(b"x")
    assert resolve_path(base, "a/f.nii.gz") == base / "a" / "f.nii.gz"
    assert resolve_path(base, "a/not_yet.nii.gz") == base / "a" / "not_yet.nii.gz"
    for bad, what in [("", "empty"), ("/etc/passwd", "absolute"), ("C:/x", "absolute"), ("a\\f.nii.gz", "backslash"),
                      ("../x", "escapes"), ("a/../../x", "escapes"), (" a/f.nii.gz", "whitespace"),
                      ("~/x", "absolute")]:
        with pytest.raises(ManifestError, match=what):
            resolve_path(base, bad)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", base / "a" / "escape")
    with pytest.raises(ManifestError, match="escapes the manifest folder"):
        resolve_path(base, "a/escape/file.nii.gz")
    os.symlink(base / "a" / "f.nii.gz", base / "inside_link")  # a symlink inside the folder is fine
    assert resolve_path(base, "inside_link").read_bytes() == b"x"


def test_sha256_file_streams_multi_block_files(tmp_path):
    data = np.random.default_rng(0).bytes(2 * (1 << 20) + 12345)
    p = tmp_path / "big.bin"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    with pytest.raises(StudyError, match="big2.bin"):
        sha256_file(tmp_path / "big2.bin")


# --------------------------------------------------------------------------- write_manifest

def test_write_manifest_is_deterministic_and_atomic(tiny_study, tmp_path):
    df = read_manifest(tiny_study)
    shuffled = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
    out = write_manifest(shuffled, tiny_study.parent / "again.csv")
    assert out.read_bytes() == tiny_study.read_bytes()
    assert b"\r" not in out.read_bytes()
    assert sorted(os.listdir(out.parent)) == sorted(["again.csv", "data_manifest.csv", "raw"])  # no temp leftovers
    # sha256 column may be omitted: it is computed from the files
    no_sha = df.drop(columns="sha256")
    assert write_manifest(no_sha, tiny_study.parent / "third.csv").read_bytes() == tiny_study.read_bytes()
    bad = df.copy()
    bad.loc[0, "kind"] = "MRI"
    with pytest.raises(ManifestError, match="unknown kind 'MRI'"):
        write_manifest(bad, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


# --------------------------------------------------------------------------- property tests

_ID = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
_FREE = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=0, max_size=12) \
    .map(str.strip)
_SHA = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@st.composite
def _manifest_tables(draw):
    n_animals = draw(st.integers(1, 4))
    animals = draw(st.lists(_ID, min_size=n_animals, max_size=n_animals, unique=True))
    meta = {a: (draw(_FREE), draw(st.sampled_from(["F", "M", ""]))) for a in animals}
    study = draw(_ID)
    rows = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(KINDS))
        if kind == "histology":
            rows.append(dict(study=study, animal="", group="", day=None, kind=kind, path=f"raw/h{i}.csv",
                             sha256=draw(_SHA), sex="", notes=draw(_FREE)))
        else:
            a = draw(st.sampled_from(animals))
            rows.append(dict(study=study, animal=a, group=meta[a][0], day=draw(st.integers(-30, 400)), kind=kind,
                             path=f"raw/{a}/f{i}.nii.gz", sha256=draw(_SHA), sex=meta[a][1], notes=draw(_FREE)))
    return pd.DataFrame(rows)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_manifest_tables())
def test_valid_rows_round_trip(df):
    with tempfile.TemporaryDirectory() as d:
        path = write_manifest(df, Path(d) / "m.csv")
        first = path.read_bytes()
        back = read_manifest(path)
        # rewriting what was read gives the same bytes
        assert write_manifest(back, Path(d) / "m2.csv").read_bytes() == first
    assert len(back) == len(df)
    key = ["path"]
    a = back.sort_values(key).reset_index(drop=True)
    b = df.sort_values(key).reset_index(drop=True)
    for c in ["study", "animal", "group", "kind", "path", "sha256", "sex", "notes"]:
        assert a[c].tolist() == b[c].tolist(), c
    assert [None if pd.isna(x) else int(x) for x in a["day"]] == [None if pd.isna(x) else int(x) for x in b["day"]]


_GARBAGE_PIECES = st.sampled_from(["study,animal,group,day,kind,path,sha256", ",", "\n", '"', "MEGRE", "histology",
                                   "../x", "/abs", "a" * 64, "0" * 64, "-3", "x.nii.gz", "\r\n", "\\", "\x00",
                                   "é", " ", "roi", "1e3"])


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.lists(_GARBAGE_PIECES, max_size=40).map("".join), st.text(max_size=200),
                 st.binary(max_size=200)))
def test_garbage_never_raises_anything_but_manifest_error(blob):
    with tempfile.TemporaryDirectory() as d:
        m = Path(d) / "m.csv"
        m.write_bytes(blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogatepass"))
        try:
            df = read_manifest(m)
        except ManifestError:
            df = None
        problems = verify_manifest(m)
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
        if df is not None and len(df):
            # a parseable manifest of files that do not exist still has problems
            assert problems
