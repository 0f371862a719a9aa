"""Readers and writers of raw study files, and :func:`load_study`.

NIfTI + JSON sidecar (nibabel) is the studylib on-disk format; the DICOM (pydicom) and Bruker
ParaVision (own JCAMP-DX parameter reader, :mod:`studylib.io.bruker`) converters write that format, and
:mod:`studylib.io.importer` is ``studylib import``.
"""

from .load import load_histology, load_study
from .nifti import NiftiInfo, read_header, read_nifti, read_nifti_lazy, write_nifti
from .sidecar import acquisition_axis, read_sidecar, sidecar_path

__all__ = [
    "load_study", "load_histology", "write_nifti", "read_header", "read_nifti", "read_nifti_lazy",
    "NiftiInfo", "read_sidecar", "acquisition_axis", "sidecar_path",
]
