"""xarray/dask fit adapters: DataArray in, Dataset of maps (with units) out.

Every adapter works on numpy- or Dask-backed input of any leading dims, honours a
mask, returns lazily for Dask input, and marks voxels it cannot fit with NaN and
``fit_ok=False``.  The numpy kernels live in :mod:`studylib.models`.
"""

from ._adapter import Output, apply_kernel, check_axis

__all__ = ["Output", "apply_kernel", "check_axis"]
