"""Noise models for magnitude MR images."""

from __future__ import annotations

import numpy as np

__all__ = ["add_rician_noise", "rician_mean"]


def add_rician_noise(signal, sigma, rng: np.random.Generator):
    """Magnitude of a complex signal with Gaussian noise in both channels.

    ``|S + n_r + i n_i|`` with ``n_r, n_i ~ N(0, sigma^2)``, which is Rician
    distributed (Gudbjartsson & Patz, MRM 1995;34:910, doi:10.1002/mrm.1910340618).

    Parameters
    ----------
    signal : array_like
        Noise-free (real, non-negative) magnitude.
    sigma : float or array_like
        Standard deviation of the Gaussian noise in each channel (same units as signal).
    rng : numpy.random.Generator
        Explicit random generator (reproducibility).
    """
    signal = np.asarray(signal, dtype=float)
    n_real = rng.normal(0.0, 1.0, signal.shape) * sigma
    n_imag = rng.normal(0.0, 1.0, signal.shape) * sigma
    return np.hypot(signal + n_real, n_imag)


def rician_mean(nu, sigma):
    """Expected magnitude ``E|S + n|`` of a Rician variable with true amplitude ``nu``.

    ``E = sigma * sqrt(pi/2) * L_{1/2}(-nu^2 / (2 sigma^2))`` where ``L_{1/2}`` is the
    Laguerre polynomial, written with exponentially scaled Bessel functions so that
    it is stable for any SNR:
    ``L_{1/2}(-x) = e^{-x/2} [(1 + x) I0(x/2) + x I1(x/2)]``
    (Gudbjartsson & Patz 1995).  For ``nu = 0`` this is the noise floor
    ``sigma * sqrt(pi/2)``; for ``nu >> sigma`` it tends to ``sqrt(nu^2 + sigma^2)``.
    """
    from scipy.special import i0e, i1e

    nu = np.asarray(nu, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    x = nu**2 / (2.0 * sigma**2)
    half = x / 2.0
    lag = (1.0 + x) * i0e(half) + x * i1e(half)  # e^{-x/2} factor folded into i*e
    return sigma * np.sqrt(np.pi / 2.0) * lag
