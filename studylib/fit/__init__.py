"""xarray/dask fit adapters: DataArray in, Dataset of maps (with units) out.

Every adapter works on numpy- or Dask-backed input of any leading dims, honours a
mask, returns lazily for Dask input, and marks voxels it cannot fit with NaN and
``fit_ok=False``.  The numpy kernels live in :mod:`studylib.models`; the one shared
adapter is :func:`apply_kernel`.
"""

from ._adapter import Output, apply_kernel, check_axis
from .cest import (average_repetitions, cest_b0_map, cest_change, corrected_zspectrum, lorentzian_pools,
                   median_filter_map, mtr_asym)
from .dce import aif_from_roi, bolus_arrival_time, dce, population_aif, resample_aif, signal_to_concentration
from .diffusion import adc, ivim
from .fluorine import fluorine_per_roi, fluorine_quantify
from .relaxometry import (delta_r2star, iron_concentration, noise_sigma_from_background, t1_ir, t1_sr, t1_vfa, t2,
                          t2star)

__all__ = [
    "Output", "apply_kernel", "check_axis",
    # relaxometry
    "t2star", "t2", "t1_vfa", "t1_ir", "t1_sr", "delta_r2star", "iron_concentration", "noise_sigma_from_background",
    # diffusion
    "adc", "ivim",
    # DCE
    "dce", "signal_to_concentration", "aif_from_roi", "population_aif", "resample_aif", "bolus_arrival_time",
    # CEST
    "cest_b0_map", "mtr_asym", "lorentzian_pools", "corrected_zspectrum", "cest_change", "average_repetitions",
    "median_filter_map",
    # 19F
    "fluorine_quantify", "fluorine_per_roi",
]
