"""Diffusion fit adapters: ADC (mono-exponential) and segmented IVIM, ``b`` dim in s/mm^2."""

from __future__ import annotations

import numpy as np

from ..errors import FitInputError
from ..models import diffusion as _dw
from ._adapter import Output, apply_kernel, check_axis
from .relaxometry import _monoexp_fit

__all__ = ["adc", "ivim"]


def adc(signal, *, method="auto", noise_sigma=None, background=None, mask=None, n_coils=None):
    """ADC map from diffusion-weighted magnitude data (``b`` dim, s/mm^2; b = 0 optional).

    ``method``: ``"auto"`` = ``"squared"`` when a noise level is available (``noise_sigma``,
    ``background`` mask or ``signal.attrs["noise_sigma"]``; unbiased at low SNR), else the weighted
    log-linear fit (weights ``S^2``); or explicitly ``"loglinear"``, ``"nonlinear"``, ``"squared"``
    (per-voxel fitted noise offset when no sigma), ``"rician"``.
    ``n_coils``: receive channels combined by root-sum-of-squares (default: the sidecar's
    ``ReceiveCoilChannels``, else 1); the squared model's floor is then ``2 L sigma^2`` and a
    ``background`` sigma uses the L-channel estimator, as in :func:`studylib.fit.t2star`.

    Returns Dataset ``adc`` (um^2/ms = 1e-3 mm^2/s), ``s0``, ``rmse``, ``noise_sigma``, ``fit_ok``.
    """
    if method == "auto":
        has = noise_sigma is not None or background is not None or "noise_sigma" in getattr(signal, "attrs", {})
        method = "squared" if has else "loglinear"
    outputs = [Output("adc", "um^2/ms", "apparent diffusion coefficient"), Output("s0", "a.u.", "signal at b = 0"),
               Output("rmse", "a.u.", "root mean square residual"),
               Output("noise_sigma", "a.u.", "noise SD per channel used by the fit"),
               Output("fit_ok", "", "voxel fitted", bool)]
    names = {"rate": "adc"}
    return _monoexp_fit(signal, "b", "b-values (s/mm^2)", method, noise_sigma, background, mask, names,
                        outputs, {"fit": "adc", "model": "S0 exp(-b ADC)"}, x_scale=_dw.UM2_PER_MS_TO_MM2_PER_S,
                        n_coils=n_coils)


def _ivim_kernel(y, x, *, b_threshold):
    return _dw.fit_ivim_segmented(y, x, b_threshold=b_threshold)


def ivim(signal, *, b_threshold=200.0, mask=None):
    """Segmented IVIM (D from b >= ``b_threshold``, then f, then D*), ``b`` dim in s/mm^2.

    Needs b = 0, at least two b-values >= ``b_threshold`` and one strictly between 0 and it.
    Returns Dataset ``d``, ``dstar`` (um^2/ms), ``f`` (fraction), ``s0``, ``rmse``, ``fit_ok``.
    """
    b = check_axis(signal, "b", what="b-values (s/mm^2)", min_points=4)
    if b[0] != 0:
        raise FitInputError(f"ivim needs a b = 0 volume; b-values are {b.tolist()}")
    if (b >= b_threshold).sum() < 2 or ((b > 0) & (b < b_threshold)).sum() < 1:
        raise FitInputError(f"ivim needs >= 2 b-values >= {b_threshold} and >= 1 in (0, {b_threshold}); "
                            f"got {b.tolist()}; use adc() instead")
    outputs = [Output("d", "um^2/ms", "tissue diffusion coefficient D"),
               Output("dstar", "um^2/ms", "pseudo-diffusion coefficient D*"),
               Output("f", "1", "perfusion fraction"), Output("s0", "a.u.", "signal at b = 0"),
               Output("rmse", "a.u.", "root mean square residual"), Output("fit_ok", "", "voxel fitted", bool)]
    return apply_kernel(_ivim_kernel, signal, "b", outputs, x=b, mask=mask,
                        kernel_kwargs={"b_threshold": float(b_threshold)},
                        attrs={"fit": "ivim", "method": "segmented", "b_threshold": float(b_threshold)})
