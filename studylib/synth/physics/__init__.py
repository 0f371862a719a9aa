"""Independent forward physics for synthetic studies: none of it is the fits' code.

The fits (:mod:`studylib.models`, :mod:`studylib.fit`) invert simplified signal models; data made
with those same functions cannot show the fits' model or discretisation error.  This package
computes the signals from more complete physics, with its own code (a test reads the imports and
refuses any of ``studylib.models`` or ``studylib.fit``):

* :mod:`.dephasing` -- multi-echo gradient echo from magnetised spheres (iron-laden cells) by
  Monte Carlo over spin positions, static dephasing regime (Gaussian at short TE, exponential with
  ``R2' = 2 pi zeta dw_s / (3 sqrt 3)`` at long TE; Yablonskiy & Haacke 1994); truth ``R2* = R2 + R2'``.
* :mod:`.perfusion` -- DCE: a per-animal plasma AIF (population shape, animal-level variation), the
  extended Tofts model convolved in continuous time (closed form or a <= 0.1 s trapezoid grid),
  SPGR signal with a relative flip-angle (B1) map.
* :mod:`.cest` -- Z-spectra from the Bloch-McConnell equations (water, one exchanging solute,
  a semisolid MT pool), steady state or finite saturation, and the Zaiss-Bachert R1rho
  approximation to compare with.
* :mod:`.acquisition` -- smooth fields, L-channel complex noise combined by root-sum-of-squares,
  partial volume by rendering at 4x in-plane and averaging down, and a simple threshold +
  largest-component segmentation giving a lab-like ROI.

Expensive physics (the Monte Carlo, Bloch-McConnell) runs once per tissue class; voxel images are
rendered from the class signals (:func:`.acquisition.render_partial_volume`).  The validation of
the library's fits against this physics, with the measured biases, is
``tests/test_independent_physics.py``.
"""

from . import acquisition, cest, dephasing, diffusion, perfusion, spin_echo, ssfp

__all__ = ["acquisition", "cest", "dephasing", "diffusion", "perfusion", "spin_echo", "ssfp"]
