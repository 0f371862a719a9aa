"""19F MRI: quantification of fluorine content against a reference tube.

The 19F signal of a perfluorocarbon (PFC) is proportional to the number of 19F
nuclei in a voxel (no background 19F in tissue).  Forward model first; the
quantification kernels follow in this module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["AVOGADRO", "fluorine_signal"]

AVOGADRO = 6.02214076e23  # 1/mol


def fluorine_signal(fluorine_mM, signal_per_mM):
    """Noise-free 19F signal ``S = k [19F]`` with ``k`` the scanner's signal per mM of 19F nuclei.

    With identical coil loading and relaxation weighting for tissue and reference tube,
    ``k`` is the same for both, which is what reference-tube quantification relies on
    (Srinivas et al., Trends Immunol 2010;31:223, doi:10.1016/j.it.2010.03.004).
    """
    return np.asarray(fluorine_mM, dtype=float) * float(signal_per_mM)
