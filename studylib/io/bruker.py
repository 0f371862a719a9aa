"""Bruker ParaVision scan folder (brkraw) -> studylib NIfTI + JSON sidecar.

A ParaVision study folder holds numbered scan folders ``<study>/<E>/`` with ``acqp``,
``method`` and reconstructions ``pdata/<R>/2dseq`` + ``visu_pars`` + ``reco``.
:func:`paravision_scan_to_nifti` reads one reconstruction with brkraw (>= 0.5, the
``brkraw.load`` / ``BrukerLoader`` API) and writes our NIfTI + sidecar, mapping method
parameters to BIDS keys in SI units: ``EffectiveTE``/``PVM_EchoTime`` (ms) -> ``EchoTime``
(s), ``PVM_RepetitionTime`` (ms) -> ``RepetitionTime`` (s), ``ACQ_flip_angle`` (deg) ->
``FlipAngle``, ``PVM_DwEffBval`` (s/mm²) -> ``bValue``, ``PVM_FrqWork`` (MHz, 1H) ->
``MagneticFieldStrength`` (T = f / 42.577 MHz/T).

Caveat: no real ParaVision sample data was available offline when this was written, so the
conversion path is written against brkraw's documented API and is untested on real data;
only the input checks (not a ParaVision scan folder) are covered by tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataFileError
from .nifti import write_nifti

__all__ = ["paravision_scan_to_nifti", "check_paravision_scan"]

_GAMMA_1H_MHZ_PER_T = 42.577478


def check_paravision_scan(scan_dir, reco_id: int = 1) -> Path:
    """Check that ``scan_dir`` looks like a ParaVision scan folder; return it as a Path.

    Raises :class:`DataFileError` naming the folder and the missing files.
    """
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise DataFileError(f"{scan_dir}: ParaVision scan folder not found")
    if not scan_dir.name.isdigit():
        raise DataFileError(f"{scan_dir}: not a ParaVision scan folder (its name must be the scan number, "
                            f"e.g. '<study>/5')")
    need = ["acqp", "method", f"pdata/{reco_id}/2dseq", f"pdata/{reco_id}/visu_pars", f"pdata/{reco_id}/reco"]
    missing = [n for n in need if not (scan_dir / n).is_file()]
    if missing:
        raise DataFileError(f"{scan_dir}: not a ParaVision scan folder with reconstruction {reco_id}; "
                            f"missing {', '.join(missing)}")
    return scan_dir


def _num_list(v):
    if v is None:
        return None
    arr = np.atleast_1d(np.asarray(v, dtype=float)).ravel()
    return [float(x) for x in arr] if arr.size else None


def paravision_scan_to_nifti(scan_dir, out_stem, *, reco_id: int = 1, kind: str | None = None,
                             dtype=np.int16) -> tuple[Path, Path]:
    """Convert one ParaVision reconstruction to ``<out_stem>.nii.gz`` + ``<out_stem>.json``.

    Parameters
    ----------
    scan_dir : str or Path
        The scan folder ``<study>/<scan number>``.
    out_stem : str or Path
        Output path without extension.
    reco_id : int
        Reconstruction number (``pdata/<reco_id>``).
    kind : str, optional
        Manifest kind (``MEGRE``, ``MSME``, ``DWI``...): selects which parameter becomes
        the 4th axis when it cannot be inferred from the data shape.
    dtype : numpy.int16 or numpy.uint16

    Returns
    -------
    (nifti_path, sidecar_path)

    Raises
    ------
    DataFileError
        Not a ParaVision scan folder, brkraw cannot read it, several slice packs, or an
        image of more than 4 dimensions after dropping singleton axes.
    """
    scan_dir = check_paravision_scan(scan_dir, reco_id)
    try:
        import brkraw
    except ImportError:
        raise DataFileError("brkraw is not installed; pip install 'studylib[bruker]'") from None
    scan_id = int(scan_dir.name)
    try:
        loader = brkraw.load(str(scan_dir.parent))
        data = loader.get_dataobj(scan_id, reco_id)
        affine = loader.get_affine(scan_id, reco_id, space="subject_ras")
        scan = loader.get_scan(scan_id)
        method = scan.method
        acqp = scan.acqp
    except DataFileError:
        raise
    except Exception as err:
        raise DataFileError(f"{scan_dir}: brkraw cannot read this scan ({type(err).__name__}: {err})") from None
    if data is None:
        raise DataFileError(f"{scan_dir}: brkraw found no reconstructed image for reco {reco_id}")
    if isinstance(data, tuple):
        if len(data) != 1:
            raise DataFileError(f"{scan_dir}: {len(data)} slice packs; convert them one at a time")
        data, affine = data[0], affine[0] if isinstance(affine, tuple) else affine
    data = np.asarray(data)
    if np.iscomplexobj(data):
        data = np.abs(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 5:
        extra = [i for i in (3, 4) if data.shape[i] > 1]
        if len(extra) == 1:
            data = data.reshape(data.shape[:3] + (-1,))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4):
        raise DataFileError(f"{scan_dir}: image of shape {data.shape} has more than one non-spatial axis")
    n = data.shape[3] if data.ndim == 4 else 1

    def mget(key):
        for params in (method, acqp):
            try:
                v = params.get(key)
            except Exception:
                v = None
            if v is not None:
                return v
        return None

    side: dict = {"Manufacturer": "Bruker", "ConversionSoftware": f"brkraw {getattr(brkraw, '__version__', '?')}"}
    te = _num_list(mget("EffectiveTE")) or _num_list(mget("PVM_EchoTime"))
    if te:
        te_s = [t / 1000.0 for t in te]
        side["EchoTime"] = te_s[:n] if (len(te_s) >= n > 1 and kind in (None, "MEGRE", "MSME")) else te_s[0]
    tr = _num_list(mget("PVM_RepetitionTime"))
    if tr:
        side["RepetitionTime"] = tr[0] / 1000.0
    fa = _num_list(mget("ACQ_flip_angle"))
    if fa:
        side["FlipAngle"] = fa[0]
    b = _num_list(mget("PVM_DwEffBval"))
    if b and (kind == "DWI" or (kind is None and len(b) == n > 1)):
        side["bValue"] = b[:n]
    frq = _num_list(mget("PVM_FrqWork"))
    nucleus = str(mget("PVM_Nucleus1") or "").strip("<> ")
    if nucleus:
        side["Nucleus"] = nucleus if nucleus in ("1H", "19F") else nucleus
    if frq and nucleus in ("", "1H"):
        side["MagneticFieldStrength"] = round(frq[0] / _GAMMA_1H_MHZ_PER_T, 3)
    if side.get("Nucleus") not in (None, "1H", "19F"):
        side.pop("Nucleus")
    out_stem = Path(out_stem)
    nii = write_nifti(out_stem.with_name(out_stem.name + ".nii.gz"), data, np.asarray(affine, dtype=float),
                      dtype=dtype, sidecar=side)
    return nii, out_stem.with_name(out_stem.name + ".json")
