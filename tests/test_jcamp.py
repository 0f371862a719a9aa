"""The ParaVision JCAMP-DX parser (studylib.io.bruker.jcamp): forms seen in real files, round trips, bad input."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from studylib.errors import DataFileError
from studylib.io.bruker.jcamp import format_jcamp, parse_jcamp, read_jcamp

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"


def test_forms_written_by_paravision():
    text = "\n".join([
        "##TITLE=Parameter List, ParaVision 6.0.1", "##JCAMPDX=4.24", "$$ a comment line",
        "##$PVM_EchoTime=1.335", "##$Ssfp=FID", "##$Method=<User:cestFISP_Pagel5>",
        "##$PVM_Matrix=( 2 )", "64 64",
        "##$VisuCoreOrientation=( 1, 9 )", "1 0 0 0 1 0 0 0 1",
        "##$VisuCoreUnits=( 2, 65 )", "<mm> <mm>",
        "##$PVM_Nucleus1=( 8 )", "<1H>",
        "##$ExcPulse1=(1.05, 3000, 15, Yes, 2, 3150, 0.345530665914437, ",
        "0.266758393471896, 0, 50, 0.0203933235659232, <$ExcPulse1Shape>)",
        "$$ @vis= a comment between the lines of nothing",
        "##$PVM_SliceGeo=( 1 )",
        "(((1 0 0 0 -1 0 0 0 -1, 0 0 -1.92), 38.4 38.4 2, <+R;read> <+P;phase> ",
        "<+S;slice>, 0), 1, 1, 256, 2, 0, No)",
        "##$VisuCoreSlicePacksDef=(0, 3)",
        "##$VisuFGOrderDesc=( 2 )", "(5, <FG_ISA>, <T2 relaxation: y=A+C*exp(-t/T2)>, 0, 2) (3, <FG_SLICE>, <>, 2, 1)",
        "##$VisuStudyDescription=( 2048 )", "<\\", ">",
        "##$ExcPulse=(1, 2740, LIB_EXCITATION, <", "gauss.exc>, conventional)",
        "##$VisuFGElemComment=( 2, 65 )", "<Signal Intensity> <σ of T2 ", "Relaxation Time>",
        "##$VisuCoreDataOffs=( 6 )", "@4*(0) 1.5 @1*(-2)",
        "##END=", "##$After=1",
    ])
    p = parse_jcamp(text, source="x/method")
    assert p.header["TITLE"] == "Parameter List, ParaVision 6.0.1"
    assert p["PVM_EchoTime"] == 1.335 and p["Ssfp"] == "FID" and p["Method"] == "User:cestFISP_Pagel5"
    assert p["PVM_Matrix"].tolist() == [64, 64] and p["PVM_Matrix"].dtype == np.int64
    assert p["VisuCoreOrientation"].shape == (1, 9)
    assert p["VisuCoreUnits"] == ["mm", "mm"] and p["PVM_Nucleus1"] == "1H"
    assert p["ExcPulse1"][2] == 15 and p["ExcPulse1"][3] == "Yes" and p["ExcPulse1"][-1] == "$ExcPulse1Shape"
    geo = p["PVM_SliceGeo"][0]
    assert geo[0][0][0] == [1, 0, 0, 0, -1, 0, 0, 0, -1] and geo[0][0][1] == [0, 0, -1.92]
    assert geo[0][2] == ["+R;read", "+P;phase", "+S;slice"] and geo[-1] == "No"
    assert p["VisuCoreSlicePacksDef"] == (0, 3)
    assert p["VisuFGOrderDesc"][0] == (5, "FG_ISA", "T2 relaxation: y=A+C*exp(-t/T2)", 0, 2)
    assert p["VisuStudyDescription"] == "\n"
    assert p["ExcPulse"][3] == "gauss.exc"  # PV 5.1 wraps inside the string: no character added
    assert p["VisuFGElemComment"] == ["Signal Intensity", "σ of T2 Relaxation Time"]
    assert p["VisuCoreDataOffs"].tolist() == [0, 0, 0, 0, 1.5, -2]  # PV 360 run-length @N*(x)
    assert "After" not in p


@pytest.mark.parametrize("text, what", [
    ("", "no '##' records"),
    ("hello\n##$A=1", "text before the first"),
    ("##$A=1\n##$A=2", "appears twice"),
    ("##$A=(1, <open)", "unterminated"),
    ("##$A=( 2 )\n1 2)", "unbalanced"),
    ("##$A", "no '='"),
])
def test_bad_parameter_files(text, what):
    with pytest.raises(DataFileError, match=what) as err:
        parse_jcamp(text, source="scan/7/method")
    assert "scan/7/method" in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataFileError, match="not found") as err:
        read_jcamp(tmp_path / "5" / "method")
    assert str(tmp_path / "5" / "method") in str(err.value)


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/real (real scanner data) is not beside the checkout")
def test_every_real_parameter_file_parses_and_round_trips():
    names = {"acqp", "method", "visu_pars", "reco", "subject", "AdjStatePerScan", "AdjStatePerStudy", "configscan",
             "result.jcamp", "methreco", "procs", "d3proc", "ResultState"}
    files = [p for p in REAL.rglob("*") if p.name in names]
    assert len(files) >= 40
    for f in files:
        params = read_jcamp(f)
        assert params, f
        _assert_same(parse_jcamp(format_jcamp(params)), params)


# --------------------------------------------------------------------------- hypothesis round trips

_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)
_WORD = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " ,;:()<>$#@*+-=.\\/\n\tµσχ²", max_size=40)
_INT = st.integers(-10**15, 10**15)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_ATOM = st.one_of(_INT, _FLOAT, _WORD, _TEXT)


def _struct(depth=2):
    elem = st.one_of(_ATOM, st.lists(st.one_of(_INT, _FLOAT, _WORD), min_size=2, max_size=4))
    if depth:
        elem = st.one_of(elem, st.deferred(lambda: _struct(depth - 1)))
    return st.lists(elem, max_size=5).map(tuple)


_ARRAY = st.one_of(
    hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
               elements=st.integers(-10**12, 10**12)),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
               elements=st.floats(allow_nan=False, allow_infinity=False)),
)
_VALUE = st.one_of(_INT, _FLOAT, _WORD, _TEXT, _ARRAY, st.lists(_WORD, min_size=1, max_size=6),
                   st.lists(_TEXT, min_size=2, max_size=4), _struct(), st.lists(_struct(1), min_size=1, max_size=3))


def _assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        a, b = got[k], want[k]
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, k
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b and type(a) is type(b), (k, a, b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_NAME, _VALUE, min_size=1, max_size=8))
def test_round_trip_of_generated_parameter_files(params):
    text = format_jcamp(params)
    _assert_same(parse_jcamp(text), params)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 400), elements=st.floats(-1e6, 1e6)), st.integers(1, 5))
def test_long_arrays_wrap_and_rle_expands(values, run):
    text = format_jcamp({"A": values})
    assert all(len(line) <= 80 for line in text.splitlines())
    np.testing.assert_array_equal(parse_jcamp(text)["A"], values)
    rle = f"##$B=( {run + 2} )\n@{run}*({float(values[0])!r}) 1 2\n##END=\n"
    assert parse_jcamp(rle)["B"].tolist() == [values[0]] * run + [1.0, 2.0]
