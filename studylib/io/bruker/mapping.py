"""ParaVision parameters -> BIDS-keyed sidecar (SI units) and the studylib kind of a scan.

Every key names its source parameter(s), first found wins (``docs/conventions.md`` has the
table).  Times in ParaVision are ms, frequencies MHz (``PVM_FrqWork``, ``BF1``) or Hz
(``PVM_ppgFreqList1``), saturation amplitude µT (``PVM_MagTransPower``).

* ``EchoTime`` (s): ``VisuAcqEchoTime`` (visu_pars) -> ``EffectiveTE`` -> ``EchoTime`` (method)
  -> ``ACQ_echo_time`` / ``PVM_EchoTime`` for non-EPI methods only: in EPI methods
  ``PVM_EchoTime`` is a per-shot timing, not the echo time of the image.
* ``RepetitionTime`` (s): ``VisuAcqRepetitionTime`` -> ``PVM_RepetitionTime`` ->
  ``ACQ_repetition_time``.  For CEST it is the readout TR between the excitations of the image
  train (``RepetitionTimeExcitation``, with a note), not the saturation-to-saturation period.
* ``FlipAngle`` (deg): ``VisuAcqFlipAngle`` -> ``ACQ_flip_angle`` -> ``ExcPulse1``/``ExcPulse`` field 3.
* ``MagneticFieldStrength`` (T): working frequency ``PVM_FrqWork[0]`` (MHz; absent in PV 5.1)
  -> ``BF1`` (acqp) -> ``VisuAcqImagingFrequency``, divided by the nucleus' gyromagnetic ratio.
* ``SaturationOffsets_ppm``: ``PVM_ppgFreqList1`` (Hz) -> ``PVM_MagTransFL`` -> ``PVM_SatTransFreqValues``,
  divided by the same frequency in MHz, tiled over the repetitions (offset loop fastest);
  ``ReferenceVolumes``: volumes saturated at least :data:`REFERENCE_MIN_PPM` from water.
"""

from __future__ import annotations

import numpy as np

from ...errors import DataFileError
from ..sidecar import acquisition_axis, validate_sidecar
from .scan import FrameGroup, ParaVisionScan

__all__ = ["GAMMA_MHZ_PER_T", "REFERENCE_MIN_PPM", "KIND_RULES", "nucleus", "spectrometer_mhz",
           "paravision_sidecar", "detect_kind", "check_kind"]

#: gyromagnetic ratio γ/2π in MHz/T: 1H CODATA 2018 (42.577 478 518); others Harris et al., Pure Appl.
#: Chem. 73:1795 (2001), https://doi.org/10.1351/pac200173111795 (frequency ratios Ξ × 42.577 MHz/T)
GAMMA_MHZ_PER_T = {"1H": 42.577478, "19F": 40.0776, "31P": 17.2352, "13C": 10.7084, "23Na": 11.2689,
                   "2H": 6.5359, "129Xe": 11.7777, "3He": 32.4341}
#: a CEST volume saturated this far (ppm) from water or farther is an unsaturated (M0) reference
REFERENCE_MIN_PPM = 50.0
#: how the kind is recognised, in the order tried (for the listing and the docs)
KIND_RULES = (
    ("19F nucleus", "F19"), ("method name contains 'cest'", "CEST"), ("'wassr'", "WASSR"),
    ("MGE", "MEGRE"), ("MSME", "MSME"), ("RAREVTR / RARE-VTR / RARE_VTR", "VTR"),
    ("DtiEpi, DtiStandard, DtiSpiral, or an EPI method with diffusion preparation", "DWI"),
    ("FLASH with repetitions (FG_CYCLE / FG_REPETITION)", "DCE"), ("RARE (one volume)", "T2w"),
)
_NOTE_CEST_TR = ("RepetitionTime is the readout TR between excitations of the image train "
                 "(PVM_RepetitionTime), not the period of the saturation modules")


def _arr(v) -> np.ndarray | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        try:
            a = np.asarray(v, dtype=float).ravel()
        except (TypeError, ValueError):
            return None
    elif isinstance(v, str):
        return None
    else:
        a = np.atleast_1d(np.asarray(v, dtype=float)).ravel()
    return a if a.size else None


def _first(scan: ParaVisionScan, *names):
    for name in names:
        a = _arr(scan.get(name))
        if a is not None:
            return a, name
    return None, None


def _word(v) -> str:
    if isinstance(v, tuple):
        v = v[0] if v else ""
    return str(v or "").strip().strip("<>").strip()


def nucleus(scan: ParaVisionScan) -> str:
    """Imaged nucleus (``1H``, ``19F``...): ``PVM_Nucleus1`` -> ``VisuAcqImagedNucleus`` -> ``NUC1``."""
    for src, name in ((scan.method, "PVM_Nucleus1"), (scan.visu, "VisuAcqImagedNucleus"), (scan.acqp, "NUC1")):
        w = _word(src.get(name))
        if w and w.lower() != "off":
            return w
    return "1H"


def spectrometer_mhz(scan: ParaVisionScan) -> tuple[float | None, str | None]:
    """Working frequency of channel 1 (MHz) and its source.

    ``PVM_FrqWork[0]`` (method) -> ``BF1`` (acqp; PV 5.1 has no ``PVM_FrqWork``) -> ``VisuAcqImagingFrequency``.
    """
    for src, name in ((scan.method, "PVM_FrqWork"), (scan.acqp, "BF1"), (scan.visu, "VisuAcqImagingFrequency")):
        a = _arr(src.get(name))
        if a is not None and a[0] > 0:
            return float(a[0]), name
    return None, None


def _is_epi(scan: ParaVisionScan) -> bool:
    return ("epi" in scan.method_name.lower() or str(scan.visu.get("VisuAcqIsEpiSequence", "No")) == "Yes"
            or "PVM_EpiNShots" in scan.method)


def _echo_times_ms(scan: ParaVisionScan, n_echo: int):
    names = ["VisuAcqEchoTime", "EffectiveTE", "EchoTime"]
    if not _is_epi(scan):
        names += ["ACQ_echo_time", "PVM_EchoTime"]
    fallback = None
    for name in names:
        a = _arr(scan.get(name))
        if a is None or a[0] <= 0:
            continue
        if len(a) >= n_echo:
            return a[:n_echo], name
        fallback = fallback or (a, name)
    return fallback if fallback else (None, None)


def _count(groups: list[FrameGroup], *kinds, comment: str | None = None) -> int:
    n = 1
    for g in groups:
        if g.kind in kinds or (comment and comment in g.comment.lower()):
            n *= g.length
    return n


def _r(x: float, nd: int = 9) -> float:
    return float(round(float(x), nd))


def paravision_sidecar(scan: ParaVisionScan, kind: str | None, n_volumes: int,
                       volume_groups: list[FrameGroup]) -> dict:
    """The BIDS-keyed sidecar of one reconstruction (see the module notes for each key's source).

    Parameters
    ----------
    scan : ParaVisionScan
    kind : str or None
        Manifest kind; selects the acquisition axis (``EchoTime`` list for MEGRE/MSME, ...).
    n_volumes : int
        Volumes along the 4th NIfTI axis.
    volume_groups : list of FrameGroup
        The frame groups along that axis (fastest first).

    Returns
    -------
    dict
        Validated with :func:`studylib.io.sidecar.validate_sidecar`.
    """
    side: dict = {"Manufacturer": "Bruker", "ConversionSoftware": "studylib (ParaVision JCAMP-DX + 2dseq)",
                  "SoftwareVersions": f"ParaVision {scan.software}".strip(), "SequenceName": scan.method_name,
                  "ProtocolName": scan.protocol or scan.method_name, "ScanNumber": scan.number,
                  "ReconstructionNumber": scan.reco}
    if scan.comment:
        side["SeriesDescription"] = scan.comment
    uid = scan.visu.get("VisuUid")
    if isinstance(uid, str) and uid:
        side["SeriesInstanceUID"] = uid
    vm = scan.visu.get("VisuManufacturer")
    if isinstance(vm, str) and vm:
        side["Manufacturer"] = vm
    nuc = nucleus(scan)
    if nuc in ("1H", "19F"):
        side["Nucleus"] = nuc
    f0, f0_src = spectrometer_mhz(scan)
    if f0:
        side["ImagingFrequency"] = _r(f0, 6)
        if nuc in GAMMA_MHZ_PER_T:
            side["MagneticFieldStrength"] = _r(f0 / GAMMA_MHZ_PER_T[nuc], 4)
    n_echo = _count(volume_groups, "FG_ECHO")
    te, _ = _echo_times_ms(scan, n_echo)
    if te is not None:
        vals = [_r(t / 1000.0) for t in te]
        side["EchoTime"] = vals if (n_echo > 1 and len(vals) == n_echo) else vals[0]
    tr, _ = _first(scan, "VisuAcqRepetitionTime", "PVM_RepetitionTime", "ACQ_repetition_time")
    if kind == "VTR":
        trs, _ = _first(scan, "MultiRepTime", "VisuAcqRepetitionTime")
        if trs is not None:
            side["RepetitionTimes"] = [_r(t / 1000.0) for t in trs]
    elif tr is not None and tr[0] > 0:
        side["RepetitionTime"] = _r(tr[0] / 1000.0)
    fa, _ = _first(scan, "VisuAcqFlipAngle", "ACQ_flip_angle")
    if fa is None:
        for name in ("ExcPulse1", "ExcPulse"):
            p = scan.method.get(name)
            if isinstance(p, tuple) and len(p) > 2 and isinstance(p[2], (int, float)):
                fa = np.asarray([float(p[2])])
                break
    if fa is not None and 0 < fa[0] <= 180:
        side["FlipAngle"] = _r(fa[0], 6)
    ti, _ = _first(scan, "VisuAcqInversionTime")
    if ti is not None and ti[0] > 0:
        side["InversionTime"] = _r(ti[0] / 1000.0)
    if kind == "DWI" or "PVM_DwEffBval" in scan.method:
        b = _arr(scan.method.get("PVM_DwEffBval"))
        if b is not None and kind == "DWI":
            side["bValue"] = [_r(x, 3) for x in b]
            dirs = _diffusion_directions(scan, b)
            if dirs is not None:
                side["DiffusionDirection_RAS"] = dirs
    if kind in ("CEST", "WASSR"):
        side.update(_cest(scan, n_volumes, f0))
    if kind == "DCE":
        nr = int(np.atleast_1d(scan.method.get("PVM_NRepetitions", n_volumes))[0])
        st = _arr(scan.method.get("PVM_ScanTime"))
        if st is not None and nr == n_volumes and n_volumes > 1:
            dt = float(st[0]) / nr / 1000.0
            side["FrameTimes"] = [_r(k * dt, 6) for k in range(n_volumes)]
    ftype = scan.visu.get("VisuCoreFrameType")
    if isinstance(ftype, list):
        ftype = ftype[0] if len(set(map(str, ftype))) == 1 else None
    if isinstance(ftype, str):
        side["FrameType"] = ftype
    return validate_sidecar(side, source=f"{scan.scan_dir} ({scan.label}) sidecar")


def _diffusion_directions(scan: ParaVisionScan, b: np.ndarray):
    """Unit gradient directions in RAS from ``VisuAcqDiffusionBMatrix`` (LPS patient frame), one per volume.

    The direction is the principal eigenvector of the b-matrix (sign: largest component positive),
    ``[0, 0, 0]`` below b = 50 s/mm² (where imaging gradients dominate the b-matrix).
    """
    n = len(b)
    bm = _arr(scan.visu.get("VisuAcqDiffusionBMatrix"))
    if bm is None or bm.size != 9 * n:
        return None
    out = []
    for m, bval in zip(bm.reshape(n, 3, 3), b):
        if bval < 50.0:
            out.append([0.0, 0.0, 0.0])
            continue
        w, vecs = np.linalg.eigh((m + m.T) / 2)
        d = vecs[:, -1] * np.array([-1.0, -1.0, 1.0])
        d = d if d[np.argmax(np.abs(d))] > 0 else -d
        out.append([_r(x, 6) for x in d])
    return out


def _cest(scan: ParaVisionScan, n_volumes: int, f0: float | None) -> dict:
    out: dict = {}
    freqs, src = None, None
    for name in ("PVM_ppgFreqList1", "PVM_MagTransFL", "PVM_SatTransFreqValues"):
        a = _arr(scan.method.get(name))
        if a is not None and a.size > 1:
            freqs, src = a, name
            break
    if freqs is None:
        raise DataFileError(f"{scan.scan_dir / 'method'}: {scan.label}: CEST scan without a saturation frequency "
                            "list (PVM_ppgFreqList1 / PVM_MagTransFL / PVM_SatTransFreqValues)")
    if not f0:
        raise DataFileError(f"{scan.scan_dir}: {scan.label}: no spectrometer frequency (PVM_FrqWork / BF1) to "
                            f"convert {src} from Hz to ppm")
    if n_volumes % freqs.size:
        raise DataFileError(f"{scan.scan_dir / 'method'}: {scan.label}: {n_volumes} volumes are not a whole number "
                            f"of repetitions of the {freqs.size} offsets in {src}")
    reps = n_volumes // freqs.size
    declared = scan.method.get("Number_CESTrepetitions")
    if isinstance(declared, int) and declared != reps:
        raise DataFileError(f"{scan.scan_dir / 'method'}: {scan.label}: {n_volumes} volumes / {freqs.size} offsets = "
                            f"{reps} repetitions but Number_CESTrepetitions is {declared}")
    ppm = np.tile(freqs / f0, reps)
    out["SaturationOffsets_ppm"] = [_r(x, 6) for x in ppm]
    out["SaturationOffsets_Hz"] = [_r(x, 3) for x in np.tile(freqs, reps)]
    refs = [int(i) for i in np.flatnonzero(np.abs(ppm) >= REFERENCE_MIN_PPM)]
    if refs:
        out["ReferenceVolumes"] = refs
    out["SaturationRepetitions"] = reps
    b1, _ = _first(scan, "PVM_MagTransPower", "PVM_SatTransPulseAmpl_uT")
    if b1 is not None and b1[0] > 0:
        out["SaturationB1_uT"] = _r(b1[0], 6)
    pulse = scan.method.get("PVM_MagTransPulse1")
    if isinstance(pulse, tuple) and pulse and isinstance(pulse[0], (int, float)) and pulse[0] > 0:
        npulse = int(np.atleast_1d(scan.method.get("PVM_MagTransPulsNumb", 1))[0])
        gap = float(np.atleast_1d(scan.method.get("PVM_MagTransInterDelay", 0.0))[0])
        out["SaturationTime"] = _r((npulse * float(pulse[0]) + (npulse - 1) * gap) / 1000.0, 6)
    tr = _arr(scan.get("PVM_RepetitionTime"))
    if tr is not None:
        out["RepetitionTimeExcitation"] = _r(tr[0] / 1000.0)
        out["RepetitionTimeNote"] = _NOTE_CEST_TR
    return out


def detect_kind(scan: ParaVisionScan, n_volumes: int, volume_groups: list[FrameGroup]) -> tuple[str | None, str]:
    """The manifest kind of a scan from its method (:data:`KIND_RULES`), or ``(None, reason)``."""
    m = scan.method_name.lower().replace("-", "").replace("_", "")
    bare = m[3:] if m.startswith("mic") else m  # PV5 micro-imaging methods: mic_flash, mic_mge...
    if nucleus(scan) == "19F":
        return "F19", "19F nucleus"
    if "cest" in m:
        return "CEST", f"method {scan.method_name}"
    if "wassr" in m:
        return "WASSR", f"method {scan.method_name}"
    if bare.startswith("mge"):
        return "MEGRE", f"method {scan.method_name}"
    if bare.startswith("msme"):
        return "MSME", f"method {scan.method_name}"
    if "rarevtr" in bare:
        return "VTR", f"method {scan.method_name}"
    diff_on = str(scan.method.get("PVM_DiffPrepOnOff", "Off")) == "On"
    if bare.startswith("dti") or bare.startswith("dwi") or ("epi" in bare and diff_on):
        return "DWI", f"method {scan.method_name}"
    reps = _count(volume_groups, "FG_CYCLE", "FG_REPETITION", "FG_TIME_COURSE")
    if "flash" in bare:
        if reps > 1 and reps == n_volumes:
            return "DCE", f"method {scan.method_name} repeated {reps}x"
        return None, (f"{scan.method_name} with {n_volumes} volume(s) and no repetitions: no studylib kind "
                      "(give --kind)")
    if bare.startswith("rare"):
        if n_volumes == 1:
            return "T2w", f"method {scan.method_name}"
        return None, f"{scan.method_name} with {n_volumes} volumes: no studylib kind (give --kind)"
    return None, f"unknown method {scan.method_name!r}: no studylib kind (give --kind)"


def check_kind(scan: ParaVisionScan, kind: str, sidecar: dict, n_volumes: int) -> None:
    """The sidecar must describe every volume along ``kind``'s axis (or the kind needs one volume).

    Raises :class:`DataFileError` naming the scan.
    """
    src = f"{scan.scan_dir} ({scan.label})"
    nuc = nucleus(scan)
    if nuc not in ("1H", "19F"):
        raise DataFileError(f"{src}: nucleus {nuc} is not imported (studylib handles 1H and 19F)")
    if kind == "F19" and nuc != "19F":
        raise DataFileError(f"{src}: kind F19 but the nucleus is {nuc}")
    dim, _, _ = acquisition_axis(kind, sidecar, n_volumes=n_volumes, source=src)
    if dim is None and n_volumes > 1:
        raise DataFileError(f"{src}: kind {kind} is one volume but the scan has {n_volumes} "
                            f"(frame groups: repetitions, echoes...); choose a kind with an axis")
