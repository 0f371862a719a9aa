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


# ---------------------------------------------------------------------------
# Quantification kernels (pure numpy, vectorised across voxels)
# ---------------------------------------------------------------------------

__all__ += [
    "F_ATOMS_PER_MACROPHAGE",
    "rayleigh_sigma",
    "detection_k",
    "false_positive_rate",
    "rician_correct",
    "reference_signal",
    "fluorine_atoms",
    "fluorine_quantify_kernel",
    "apparent_cell_number",
]

#: Fluorine atoms taken up per macrophage (apparent-cell-number conversion).  In vitro
#: labelling of immune cells with PFC emulsions gives of order 1e11-1e13 19F atoms per
#: cell, measured by 19F NMR of pelleted cells (Ahrens et al., Nat Biotechnol
#: 2005;23:983, doi:10.1038/nbt1121; Srinivas et al., Trends Immunol 2010;31:223,
#: doi:10.1016/j.it.2010.03.004).  1e12 is the middle of that range; in vivo uptake by
#: tumour-associated macrophages is not measured per cell, so the resulting "apparent
#: macrophage number" is a relative burden, useful for comparing tumours, not a count.
F_ATOMS_PER_MACROPHAGE = 1.0e12


def rayleigh_sigma(background):
    """Noise SD ``sigma`` of each channel from magnitude values of a signal-free region.

    In a region with no signal the magnitude is Rayleigh distributed with
    ``E[M^2] = 2 sigma^2``, so the maximum-likelihood estimate is
    ``sigma = sqrt(mean(M^2) / 2)`` (Gudbjartsson & Patz, MRM 1995;34:910,
    doi:10.1002/mrm.1910340618).  NaNs are ignored; the last axis is reduced.

    Parameters
    ----------
    background : array (..., n_voxels) magnitude values of background voxels.

    Returns
    -------
    ndarray (...): sigma in the image's units; NaN if no finite value.
    """
    b = np.asarray(background, dtype=float)
    with np.errstate(invalid="ignore"):
        n = np.sum(np.isfinite(b), axis=-1)
        ms = np.nansum(b**2, axis=-1) / np.where(n > 0, n, 1)
    return np.where(n > 0, np.sqrt(ms / 2.0), np.nan)


def detection_k(false_positive_rate=0.005):
    """Threshold multiple ``k`` of sigma giving a chosen per-voxel false-positive rate.

    In noise-only voxels the magnitude is Rayleigh: ``P(M > k sigma) = exp(-k^2 / 2)``,
    hence ``k = sqrt(-2 ln p)``.  ``p = 0.005`` gives ``k = 3.26``; the common 19F rule
    of thumb "SNR > 3.5" (e.g. Srinivas et al. 2010) corresponds to ``p = 0.0022``.
    The default keeps the false-positive rate below 1 % even when sigma is
    under-estimated by 5 % (``exp(-(0.95 k)^2 / 2) = 0.8 %``).
    """
    from ..errors import FitInputError

    p = float(false_positive_rate)
    if not (0.0 < p < 1.0):
        raise FitInputError(f"false_positive_rate must be in (0, 1), got {false_positive_rate!r}")
    return float(np.sqrt(-2.0 * np.log(p)))


def false_positive_rate(k):
    """Inverse of :func:`detection_k`: Rayleigh tail ``P(M > k sigma) = exp(-k^2/2)``."""
    k = np.asarray(k, dtype=float)
    return np.exp(-(k**2) / 2.0)


def rician_correct(magnitude, sigma, method="power"):
    """Remove the Rician noise bias of magnitude values.

    Parameters
    ----------
    magnitude : array (...) magnitude values ``M``.
    sigma : array broadcastable to ``M``: noise SD per channel.
    method : ``"power"`` (default) ``A = sqrt(max(M^2 - 2 sigma^2, 0))`` -- unbiased for
        ``A^2`` since ``E[M^2] = A^2 + 2 sigma^2``; or ``"mean"``: the ``A`` whose Rician
        mean :func:`studylib.models.noise.rician_mean` equals ``M`` (0 below the noise
        floor ``sigma sqrt(pi/2)``), inverted by interpolation in a table of the
        (monotonic) Rician mean for ``A/sigma`` in 0..40 and ``sqrt(M^2 - sigma^2)`` above.

    Returns
    -------
    ndarray: bias-corrected amplitude, same units as ``M``; NaN where input is NaN.

    Notes
    -----
    Gudbjartsson & Patz, MRM 1995;34:910 (doi:10.1002/mrm.1910340618).  Summing
    uncorrected magnitudes over many low-SNR voxels adds ``~sigma sqrt(pi/2)`` per voxel
    even with no 19F; both corrections remove this floor.  Per voxel, ``"mean"`` is the
    less biased amplitude at low SNR (mean ratio to the truth 0.93 / 0.95 / 0.98 / 1.00 at
    SNR 1.5 / 2 / 3 / 4 versus 0.80 / 0.85 / 0.93 / 0.96 for ``"power"``, and 1.25 / 1.14 /
    1.06 / 1.03 for the raw magnitude), hence the default of the quantification kernel.
    """
    from ..errors import FitInputError

    m = np.asarray(magnitude, dtype=float)
    s = np.broadcast_to(np.asarray(sigma, dtype=float), m.shape)
    if method == "power":
        with np.errstate(invalid="ignore"):
            return np.sqrt(np.maximum(m**2 - 2.0 * s**2, 0.0)) + 0.0 * m
    if method != "mean":
        raise FitInputError(f"method must be 'power' or 'mean', got {method!r}")
    a_grid, m_grid = _rician_table()
    with np.errstate(invalid="ignore", divide="ignore"):
        r = m / s
        big = np.sqrt(np.maximum(r**2 - 1.0, 0.0))  # E|M| -> sqrt(A^2 + sigma^2) for A >> sigma
        out = s * np.where(r > m_grid[-1], big, np.interp(r, m_grid, a_grid))  # 0 below the floor
    return np.where(np.isfinite(m) & np.isfinite(s), out, np.nan)


_RICIAN_TABLE = None


def _rician_table():
    """``(A/sigma, E|M|/sigma)`` on a fine grid (0..40, step 0.005) to invert the Rician mean."""
    global _RICIAN_TABLE
    if _RICIAN_TABLE is None:
        from .noise import rician_mean

        a = np.linspace(0.0, 40.0, 8001)
        _RICIAN_TABLE = (a, rician_mean(a, 1.0))
    return _RICIAN_TABLE


def reference_signal(tube_values, sigma):
    """Bias-free mean signal of the reference tube from its voxel magnitudes.

    ``S_ref = sqrt(mean(M^2) - 2 sigma^2)`` over the tube voxels (last axis), which is
    exact for a uniform tube with Rician noise.  NaN if no finite voxel or if the tube is
    not above the noise (``mean(M^2) <= 2 sigma^2``).
    """
    t = np.asarray(tube_values, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    with np.errstate(invalid="ignore"):
        n = np.sum(np.isfinite(t), axis=-1)
        ms = np.nansum(t**2, axis=-1) / np.where(n > 0, n, 1)
        a2 = ms - 2.0 * sigma**2
    return np.where((n > 0) & (a2 > 0), np.sqrt(np.where(a2 > 0, a2, 0.0)), np.nan)


def fluorine_atoms(signal, ref_signal, ref_mM, voxel_volume_mm3):
    """Fluorine atoms in a voxel from its (bias-corrected) signal and a reference tube.

    ``n_F = S / S_ref * [F]_ref * V * N_A`` with ``[F]_ref`` the tube's 19F-nucleus
    concentration in mM (mmol/L) and ``V`` in mm^3 (1 mm^3 = 1e-6 L), i.e.
    ``n_F = S / S_ref * ref_mM * 1e-3 * V_mm3 * 1e-6 * N_A``.
    (Srinivas et al., Trends Immunol 2010;31:223, doi:10.1016/j.it.2010.03.004.)
    """
    ratio = np.asarray(signal, dtype=float) / np.asarray(ref_signal, dtype=float)
    return ratio * float(ref_mM) * 1e-3 * float(voxel_volume_mm3) * 1e-6 * AVOGADRO


def fluorine_quantify_kernel(y, x=None, *, sigma, ref_signal, ref_mM, voxel_volume_mm3, k=None,
                             false_positive_rate=0.005, correction="mean"):
    """Voxelwise 19F quantification from the magnitude ``M``, ``sigma`` and ``S_ref`` of each voxel.

    ``y`` holds the voxel magnitudes ``M``, shape ``(n_vox, 1)`` (a length-1 "fitted" axis, as
    :func:`studylib.fit.apply_kernel` passes it) or ``(n_vox,)``; ``x`` is ignored.
    ``sigma`` is the noise SD of the voxel's scan (from a background ROI,
    :func:`rayleigh_sigma`) and ``ref_signal`` the scan's bias-free reference-tube signal
    ``S_ref`` (:func:`reference_signal`), each ``(n_vox,)`` or one number.  A voxel counts as
    detected when ``M > k sigma`` with
    ``k`` from :func:`detection_k` (or given); its amplitude is Rician-bias corrected
    (:func:`rician_correct`) and converted with :func:`fluorine_atoms`.  Undetected
    voxels contribute 0 atoms.

    Returns
    -------
    dict of (n_vox,) arrays: ``fluorine_atoms`` (atoms per voxel, 0 where not
    detected), ``fluorine_atoms_all`` (the same from every voxel's corrected amplitude,
    no threshold: for ROI totals of diffuse low-SNR uptake, which the threshold would
    discard), ``fluorine_mM``
    (19F-nucleus concentration, mM), ``snr`` (``M / sigma``), ``detected`` (bool) and
    ``fit_ok`` (False where M, sigma or S_ref is not finite or sigma/S_ref not positive).
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 2 and y.shape[1] != 1:
        raise ValueError(f"y must be (n_vox,) or (n_vox, 1) magnitudes, got shape {y.shape}")
    m = y.reshape(-1)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), m.shape)
    sref = np.broadcast_to(np.asarray(ref_signal, dtype=float), m.shape)
    kk = detection_k(false_positive_rate) if k is None else float(k)
    ok = np.isfinite(m) & np.isfinite(sigma) & np.isfinite(sref) & (sigma > 0) & (sref > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = m / sigma
        detected = ok & (snr > kk)
        amp_all = rician_correct(m, sigma, correction)
        amp = np.where(detected, amp_all, 0.0)
        conc = amp / sref * float(ref_mM)
        atoms = fluorine_atoms(amp, sref, ref_mM, voxel_volume_mm3)
        atoms_all = fluorine_atoms(amp_all, sref, ref_mM, voxel_volume_mm3)
    nan = np.nan
    return {
        "fluorine_atoms": np.where(ok, atoms, nan),
        "fluorine_atoms_all": np.where(ok, atoms_all, nan),
        "fluorine_mM": np.where(ok, conc, nan),
        "snr": np.where(ok, snr, nan),
        "detected": detected,
        "fit_ok": ok,
    }


def apparent_cell_number(atoms, f_atoms_per_cell=F_ATOMS_PER_MACROPHAGE):
    """Apparent macrophage number ``N = n_F / F_c`` (see :data:`F_ATOMS_PER_MACROPHAGE`)."""
    from ..errors import FitInputError

    fc = float(f_atoms_per_cell)
    if not (np.isfinite(fc) and fc > 0):
        raise FitInputError(f"f_atoms_per_cell must be a positive number, got {f_atoms_per_cell!r}")
    return np.asarray(atoms, dtype=float) / fc


# ---------------------------------------------------------------------------
# The reference tube as PFC concentration x fluorines per molecule; bSSFP relaxation weighting
# ---------------------------------------------------------------------------

__all__ += ["PFC_FLUORINES_PER_MOLECULE", "reference_fluorine_mM", "bssfp_signal", "bssfp_weight_ratio"]

#: 19F nuclei per molecule that resonate as one line, for perfluorocarbons whose whole 19F spectrum is
#: a single resonance (so every fluorine of the molecule lies in any excitation band that covers it).
#: PFCE, perfluoro-15-crown-5 ether (C10F20O5): 20 magnetically equivalent fluorines (Schweighardt &
#: Rubertone, US patent 5,196,348, 1993: "perfluoro 15-crown-5 ether which has 20 magnetically similar
#: fluorine").  PFOB, perfluorooctyl bromide (Br-CF2-(CF2)6-CF3, 17 fluorines), is deliberately *not*
#: listed: its CF3, CF2Br and CF2 groups resonate at different shifts (its "complex spectrum" with
#: several peaks is what causes chemical-shift artefacts in PFOB 19F imaging), so how many of the 17
#: fluorines count depends on the excitation pulse and bandwidth of the protocol: the user states it.
PFC_FLUORINES_PER_MOLECULE = {"PFCE": 20}


def reference_fluorine_mM(pfc_mM, fluorines_per_molecule):
    """19F-nucleus concentration of a reference tube from its PFC concentration.

    ``[19F]_ref = [PFC] * n_F`` with ``[PFC]`` in mM of molecules and ``n_F`` the number of fluorines per
    molecule *within the excited band* (PFCE: 20, :data:`PFC_FLUORINES_PER_MOLECULE`; a multi-peak PFC
    such as PFOB: only the fluorines of the excited peaks).

    Parameters
    ----------
    pfc_mM : positive number, mM of PFC molecules in the tube.
    fluorines_per_molecule : whole number >= 1.

    Returns
    -------
    float: mM of 19F nuclei that contribute signal.

    >>> reference_fluorine_mM(10.0, 20)
    200.0
    """
    from .._checks import positive_number
    from ..errors import FitInputError

    c = positive_number(pfc_mM, "ref_pfc_mM (reference tube PFC concentration, mM of molecules)")
    try:
        n = float(fluorines_per_molecule)
    except (TypeError, ValueError):
        raise FitInputError(f"fluorines_per_molecule must be a whole number >= 1, got {fluorines_per_molecule!r}") \
            from None
    if not (np.isfinite(n) and n >= 1 and n == int(n)):
        raise FitInputError(f"fluorines_per_molecule (19F per PFC molecule in the excited band) must be a whole "
                            f"number >= 1, got {fluorines_per_molecule!r}")
    return c * int(n)


def bssfp_signal(t1_ms, t2_ms, tr_ms, flip_deg, *, te_ms=None):
    """On-resonance balanced-SSFP steady-state signal per unit M0 (the relaxation weighting ``w``).

    ``w = sin(a) (1 - E1) / (1 - (E1 - E2) cos(a) - E1 E2)`` with ``E1 = exp(-TR/T1)``,
    ``E2 = exp(-TR/T2)`` (transverse magnetisation just after the pulse; Scheffler & Lehnhardt,
    Eur Radiol 2003;13:2409, doi:10.1007/s00330-003-1957-x; Scheffler, Concepts Magn Reson
    1999;11:291).  With ``te_ms`` the echo amplitude ``w exp(-TE/T2)`` is returned (on resonance
    the balanced echo at ``TE = TR/2`` refocuses static dephasing, so T2, not T2*, applies).
    Perfect spoiling is not assumed; off-resonance (banding) and finite-pulse effects are ignored.

    Parameters
    ----------
    t1_ms, t2_ms : arrays (broadcastable), positive relaxation times in ms.
    tr_ms : positive repetition time in ms.
    flip_deg : flip angle in degrees, 0 < a < 180.
    te_ms : optional echo time in ms, 0 <= TE <= TR.

    Returns
    -------
    ndarray: ``w`` (dimensionless, the signal for M0 = 1), shape of the broadcast T1/T2.

    For ``TR << T1, T2`` this tends to ``sin(a) / (1 + cos(a) + (1 - cos(a)) T1/T2)``; with
    ``T1 = T2`` and 90 degrees, ``1 / (1 + E2)``, about half of M0:

    >>> round(float(bssfp_signal(1000.0, 1000.0, 5.0, 90.0)), 4)
    0.5012
    """
    from .._checks import positive_number
    from ..errors import FitInputError

    tr = positive_number(tr_ms, "tr_ms (repetition time, ms)")
    try:
        a = float(flip_deg)
    except (TypeError, ValueError):
        raise FitInputError(f"flip_deg must be a number of degrees in (0, 180), got {flip_deg!r}") from None
    if not (np.isfinite(a) and 0.0 < a < 180.0):
        raise FitInputError(f"flip_deg (bSSFP flip angle) must be in (0, 180) degrees, got {flip_deg!r}")
    t1 = np.asarray(t1_ms, dtype=float)
    t2 = np.asarray(t2_ms, dtype=float)
    for name, v in (("t1_ms (T1, ms)", t1), ("t2_ms (T2, ms)", t2)):
        if not np.all(np.isfinite(v) & (v > 0)):
            raise FitInputError(f"{name} must be positive and finite, got {v.tolist()!r}")
    te = None
    if te_ms is not None:
        try:
            te = float(te_ms)
        except (TypeError, ValueError):
            raise FitInputError(f"te_ms must be a number of ms in [0, TR], got {te_ms!r}") from None
        if not (np.isfinite(te) and 0.0 <= te <= tr):
            raise FitInputError(f"te_ms (echo time) must be in [0, TR = {tr:g}] ms, got {te_ms!r}")
    ar = np.deg2rad(a)
    e1 = np.exp(-tr / t1)
    e2 = np.exp(-tr / t2)
    w = np.sin(ar) * (1.0 - e1) / (1.0 - (e1 - e2) * np.cos(ar) - e1 * e2)
    if te is not None:
        w = w * np.exp(-te / t2)
    return w


def bssfp_weight_ratio(*, t1_ref_ms, t2_ref_ms, t1_tissue_ms, t2_tissue_ms, tr_ms, flip_deg, te_ms=None):
    """Relaxation correction ``w_ref / w_tissue`` of reference-tube quantification with bSSFP.

    With ``S = k M0 w(T1, T2)`` for tube and tissue (same coil, same sequence), the tissue's
    19F concentration is ``c_tissue = c_ref (S_tissue / S_ref) (w_ref / w_tissue)``, each ``w`` from
    :func:`bssfp_signal`.  Without the correction a tissue whose 19F relaxes so that
    ``w_tissue > w_ref`` is over-read by the factor ``w_tissue / w_ref``.

    Returns
    -------
    ndarray (broadcast of the tissue T1/T2; a float for numbers): ``w_ref / w_tissue``.
    """
    w_ref = bssfp_signal(t1_ref_ms, t2_ref_ms, tr_ms, flip_deg, te_ms=te_ms)
    w_tis = bssfp_signal(t1_tissue_ms, t2_tissue_ms, tr_ms, flip_deg, te_ms=te_ms)
    r = w_ref / w_tis
    return float(r) if np.ndim(r) == 0 else r
