"""DCE-MRI forward physics in continuous time: per-animal AIF, extended Tofts tissue curves, SPGR signal.

Nothing here is shared with the fit side (``studylib.models.dce``/``convolution``/``aif``): the
tissue curve is the exact continuous-time convolution (closed form, :func:`tissue_concentration`
with ``method="analytic"``) or a trapezoid convolution on a fine grid (``method="trapezoid"``,
step <= 0.1 s), sampled at the frame times (instantaneously or averaged over each frame's
acquisition window).  A fit that discretises differently (frames, piecewise-linear AIF) then shows
its discretisation error instead of cancelling it.

AIF shape (plasma, ``tau = t - t_arrival`` >= 0, rates per minute)::

    Cp(tau) = A1 tau exp(-m1 tau) + A2 (exp(-m2 tau) - exp(-m1 tau))          [mM]

a gamma-variate first pass (peak at ``tau = 1/m1``) on a mono-exponential washout: the functional
form of Orton et al.'s exponential AIF (Phys Med Biol 2008; ``A_B, mu_B, A_G, mu_G``, as in dcemriS4's
``aif.orton.exp``), chosen because its convolution with ``exp(-kep t)`` has a closed form.  It is *not*
the form of the fit side's McGrath model B (linear rise, bi-exponential decay).  The *parameter
values* of :data:`MOUSE_AIF_SHAPE` are chosen for a 0.1 mmol/kg tail-vein bolus in a mouse (peak
plasma ~3.5 mM ~8 s after arrival, ~1.1 mM after 2 min, washing out with a ~9 min half-life);
they are plausible, not fitted to a published mouse
AIF (the search corpus holds Loveless et al., MRM 2012;67:226, doi:10.1002/mrm.22988, but not its
fitted values).  :func:`animal_aifs` draws animal-level variation of amplitude, arrival time,
first-pass width and washout.

Extended Tofts (Tofts et al., JMRI 1999;10:223)::

    Ct(t) = vp Cp(t) + Ktrans int_0^t Cp(u) exp(-kep (t - u)) du,     kep = Ktrans / ve.

SPGR steady state::

    S = M0 sin(b1 a) (1 - E1) / (1 - cos(b1 a) E1),  E1 = exp(-TR R1),  R1 = R10 + r1 C,

with ``b1`` the relative flip angle (actual / nominal) of a smooth transmit field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...errors import SynthError

__all__ = ["AifShape", "MOUSE_AIF_SHAPE", "animal_aifs", "plasma_aif", "tissue_concentration",
           "spgr_signal", "fine_grid", "gain_drift", "motion_events", "displace_frames"]


@dataclass(frozen=True)
class AifShape:
    """Parameters of the plasma AIF ``A1 tau e^{-m1 tau} + A2 (e^{-m2 tau} - e^{-m1 tau})``.

    ``a1_mM_per_min`` (mM/min), ``m1_per_min`` (1/min), ``a2_mM`` (mM), ``m2_per_min`` (1/min),
    ``arrival_s`` (bolus arrival time, s, on the scan clock).
    """

    a1_mM_per_min: float
    m1_per_min: float
    a2_mM: float
    m2_per_min: float
    arrival_s: float


#: chosen population shape of a mouse plasma AIF after 0.1 mmol/kg Gd (see the module notes)
MOUSE_AIF_SHAPE = AifShape(a1_mM_per_min=60.0, m1_per_min=8.0, a2_mM=1.2, m2_per_min=0.08, arrival_s=30.0)


def animal_aifs(n_animals, rng, *, shape=MOUSE_AIF_SHAPE, amplitude_sd=0.20, arrival_sd_s=3.0, width_sd=0.15,
                washout_sd=0.25):
    """Per-animal AIF parameters: the population shape with animal-level variation.

    Amplitudes (``A1``, ``A2`` together) scale by ``LN(amplitude_sd)`` (injected dose per blood
    volume, cardiac output), the arrival time shifts by ``N(0, arrival_sd_s)`` (injection timing),
    ``m1`` (first-pass width) by ``LN(width_sd)`` and ``m2`` (renal washout) by ``LN(washout_sd)``;
    log-normal factors have median 1.  The SDs are chosen, not from the literature.

    Returns a list of :class:`AifShape`.
    """
    if int(n_animals) != n_animals or n_animals < 1:
        raise SynthError(f"n_animals must be a positive integer, got {n_animals!r}")
    if not isinstance(rng, np.random.Generator):
        raise SynthError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    z = rng.standard_normal((int(n_animals), 4))
    out = []
    for a, t, w, k in z:  # one record per animal (a handful), not per voxel
        amp = float(np.exp(amplitude_sd * a))
        out.append(replace(shape, a1_mM_per_min=shape.a1_mM_per_min * amp, a2_mM=shape.a2_mM * amp,
                           arrival_s=shape.arrival_s + arrival_sd_s * float(t),
                           m1_per_min=shape.m1_per_min * float(np.exp(width_sd * w)),
                           m2_per_min=shape.m2_per_min * float(np.exp(washout_sd * k))))
    return out


def _times(t_s, name="t_s"):
    t = np.asarray(t_s, dtype=float)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise SynthError(f"{name} must be a 1-D array of finite times in s, got shape {t.shape}")
    return t


def fine_grid(t_end_s, dt_s=0.05):
    """A uniform time grid ``0, dt, ..., >= t_end`` (s) with ``dt <= 0.1 s``."""
    if not 0 < dt_s <= 0.1:
        raise SynthError(f"dt_s must be in (0, 0.1] s for a fine-grid convolution, got {dt_s!r}")
    return np.arange(0.0, float(t_end_s) + dt_s, dt_s)


def plasma_aif(t_s, shape=MOUSE_AIF_SHAPE):
    """Plasma concentration Cp(t) (mM) of an :class:`AifShape` at times ``t_s`` (s); 0 before arrival."""
    t = _times(t_s)
    tau = np.maximum(t - shape.arrival_s, 0.0) / 60.0
    cp = shape.a1_mM_per_min * tau * np.exp(-shape.m1_per_min * tau) + shape.a2_mM * (
        np.exp(-shape.m2_per_min * tau) - np.exp(-shape.m1_per_min * tau))
    return np.where(t > shape.arrival_s, cp, 0.0)


def _interp_last(grid, values, q):
    """Linear interpolation of ``values`` (..., n_grid) on the uniform ``grid`` at times ``q`` (all voxels at once)."""
    q = np.clip(np.asarray(q, dtype=float), grid[0], grid[-1])
    j = np.clip(np.searchsorted(grid, q, side="right"), 1, grid.size - 1)
    w = (q - grid[j - 1]) / (grid[j] - grid[j - 1])
    return values[..., j - 1] * (1.0 - w) + values[..., j] * w


def _e(m, k, tau):
    """``int_0^tau e^{-m u} e^{-k (tau - u)} du`` (stable for k ~ m), broadcast."""
    x = (k - m) * tau
    small = np.abs(x) < 1e-4
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = (np.exp(-m * tau) - np.exp(-k * tau)) / np.where(small, 1.0, k - m)
    series = np.exp(-m * tau) * tau * (1.0 - x / 2.0 + x * x / 6.0)
    return np.where(small, series, direct)


def _g(m, k, tau):
    """``int_0^tau u e^{-m u} e^{-k (tau - u)} du`` (stable for k ~ m), broadcast."""
    d = k - m
    x = d * tau
    small = np.abs(x) < 1e-2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dd = np.where(small, 1.0, d)
        direct = (np.exp(-m * tau) * (x - 1.0) + np.exp(-k * tau)) / (dd * dd)
    series = np.exp(-m * tau) * tau * tau * (0.5 - x / 6.0 + x * x / 24.0 - x ** 3 / 120.0)
    return np.where(small, series, direct)


def _check_kinetics(ktrans, ve, vp):
    kt, v, p = (np.asarray(a, dtype=float) for a in (ktrans, ve, vp))
    try:
        kt, v, p = np.broadcast_arrays(kt, v, p)
    except ValueError:
        raise SynthError(f"ktrans, ve, vp must broadcast together, got shapes {kt.shape}, {v.shape}, {p.shape}") from None
    if np.any(~np.isfinite(kt) | (kt < 0)):
        raise SynthError("ktrans must be finite and >= 0 (1/min)")
    if np.any(~np.isfinite(v) | (v <= 0) | (v > 1)):
        raise SynthError("ve must be in (0, 1]")
    if np.any(~np.isfinite(p) | (p < 0) | (p >= 1)):
        raise SynthError("vp must be in [0, 1)")
    return kt, v, p


def tissue_concentration(t_s, ktrans_per_min, ve, vp, shape=MOUSE_AIF_SHAPE, *, method="analytic", dt_s=0.05,
                         frame_window_s=None):
    """Extended Tofts tissue concentration (mM) at the frame times, from the continuous-time model.

    Parameters
    ----------
    t_s : array_like (n_t,)
        Frame times (s), e.g. the centre of k-space of each frame.
    ktrans_per_min, ve, vp : array_like, broadcastable (voxel shape ``V``)
        Ktrans (1/min), ve, vp (fractions).
    shape : AifShape
        The animal's plasma AIF.
    method : {"analytic", "trapezoid"}
        ``"analytic"``: the exact convolution of the AIF's closed form with ``e^{-kep t}``
        (``int u e^{-mu} e^{-k(t-u)} du`` and ``int e^{-mu} e^{-k(t-u)} du`` in closed form).
        ``"trapezoid"``: the trapezoid rule on a uniform grid of step ``dt_s`` (<= 0.1 s), as the
        recursion ``I_{n+1} = e^{-k dt} I_n + dt/2 (e^{-k dt} Cp_n + Cp_{n+1})`` (a loop over the fine
        time steps, vectorised over voxels), then linear interpolation to ``t_s``.  The two agree to
        ~1e-4 relative at 0.05 s (the trapezoid error is O(dt^2), largest at the kink of the bolus
        arrival); the test suite checks it.
    frame_window_s : float, optional
        If given, each frame is the mean of the curve over ``[t - w/2, t + w/2]`` on the fine grid
        (an acquisition window; bolus-peak blurring that an instantaneous-sampling fit ignores).

    Returns
    -------
    ndarray, shape ``V + (n_t,)`` (mM).
    """
    t = _times(t_s)
    kt, ve_, vp_ = _check_kinetics(ktrans_per_min, ve, vp)
    if method not in ("analytic", "trapezoid"):
        raise SynthError(f"method must be 'analytic' or 'trapezoid', got {method!r}")
    if frame_window_s is not None:
        w = float(frame_window_s)
        if not w > 0:
            raise SynthError(f"frame_window_s must be positive (s), got {frame_window_s!r}")
        grid = fine_grid(float(t.max()) + w, dt_s)
        fine = tissue_concentration(grid, kt, ve_, vp_, shape, method=method, dt_s=dt_s)
        cs = np.concatenate([np.zeros(fine.shape[:-1] + (1,)), np.cumsum(
            0.5 * (fine[..., 1:] + fine[..., :-1]) * dt_s, axis=-1)], axis=-1)  # running integral
        lo = np.clip(t - w / 2, 0.0, None)
        hi = t + w / 2
        return (_interp_last(grid, cs, hi) - _interp_last(grid, cs, lo)) / (hi - lo)
    kep = kt / ve_ / 60.0  # 1/s
    if method == "analytic":
        k = kep[..., None]
        tau = np.maximum(t - shape.arrival_s, 0.0)
        m1, m2 = shape.m1_per_min / 60.0, shape.m2_per_min / 60.0
        a1 = shape.a1_mM_per_min / 60.0  # mM/s
        conv = a1 * _g(m1, k, tau) + shape.a2_mM * (_e(m2, k, tau) - _e(m1, k, tau))  # mM s
        conv = np.where(t > shape.arrival_s, conv, 0.0)
    else:
        grid = fine_grid(float(t.max()), dt_s)
        cp = plasma_aif(grid, shape)
        decay = np.exp(-kep * dt_s)
        acc = np.zeros(kep.shape)
        hist = np.empty(kep.shape + (grid.size,))
        hist[..., 0] = 0.0
        for n in range(grid.size - 1):  # over fine time steps; every voxel at once
            acc = decay * acc + 0.5 * dt_s * (decay * cp[n] + cp[n + 1])
            hist[..., n + 1] = acc
        conv = _interp_last(grid, hist, t)
    return vp_[..., None] * plasma_aif(t, shape) + (kt[..., None] / 60.0) * conv


def spgr_signal(m0, r1_per_s, fa_deg, tr_ms, b1=1.0):
    """Spoiled gradient-echo steady-state signal (a.u.).

    ``S = M0 sin(b1 a) (1 - E1) / (1 - cos(b1 a) E1)``, ``E1 = exp(-TR R1)`` (Ernst; e.g. Haacke et
    al., *Magnetic Resonance Imaging*, 1999, ch. 18).  ``b1`` is the relative flip angle (actual /
    nominal; a smooth field from :func:`studylib.synth.physics.acquisition.smooth_field`).
    All arguments broadcast (``fa_deg`` may carry the flip-angle axis, ``r1_per_s`` the time axis).
    """
    tr = float(tr_ms)
    if not tr > 0:
        raise SynthError(f"tr_ms must be positive (ms), got {tr_ms!r}")
    r1 = np.asarray(r1_per_s, dtype=float)
    if np.any(~np.isfinite(r1) | (r1 <= 0)):
        raise SynthError("r1_per_s must be finite and positive (1/s)")
    b1 = np.asarray(b1, dtype=float)
    if np.any(~np.isfinite(b1) | (b1 <= 0)):
        raise SynthError("b1 (relative flip angle) must be finite and positive")
    a = np.deg2rad(np.asarray(fa_deg, dtype=float)) * b1
    e1 = np.exp(-tr * 1e-3 * r1)
    return np.asarray(m0, dtype=float) * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1)


def gain_drift(t_s, drift_fraction):
    """Receiver-gain drift over a dynamic series: a multiplicative factor per frame.

    ``g(t) = 1 + drift_fraction (t - t_0) / (t_end - t_0)``: linear from 1 at the first frame to
    ``1 + drift_fraction`` at the last (scanner gain and B0 drift are slow over a few minutes; linear is
    the first-order model, cf. the baseline-drift corrections of DCE toolkits).  ``t_s`` shape ``(n,)``;
    returns ``(n,)``.  A drift that the analysis does not model is read as enhancement.
    """
    t = _times(t_s)
    d = float(drift_fraction)
    if not np.isfinite(d) or abs(d) >= 0.5:
        raise SynthError(f"drift_fraction must be a finite fraction with |d| < 0.5, got {drift_fraction!r}")
    span = t[-1] - t[0]
    return 1.0 + d * ((t - t[0]) / span if span > 0 else np.zeros_like(t))


def motion_events(n_frames, n_events, rng, *, first=1, max_shift_vox=1):
    """Frames corrupted by bulk motion and their in-plane displacement (whole voxels).

    Draws ``n_events`` distinct frames from ``first .. n_frames-1`` and, for each, a shift
    ``(dy, dx)`` with components in ``-max_shift_vox .. max_shift_vox``, not both zero.
    Returns ``(frames (k,) int, shifts (k, 2) int)``, frames sorted.
    """
    n, k, lo, m = int(n_frames), int(n_events), int(first), int(max_shift_vox)
    if n < 1 or k < 0 or not 0 <= lo < n or k > n - lo or m < 1:
        raise SynthError(f"motion_events: need 0 <= first < n_frames, 0 <= n_events <= n_frames - first and "
                         f"max_shift_vox >= 1, got n_frames={n_frames!r}, n_events={n_events!r}, first={first!r}, "
                         f"max_shift_vox={max_shift_vox!r}")
    if not isinstance(rng, np.random.Generator):
        raise SynthError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    frames = np.sort(rng.choice(np.arange(lo, n), size=k, replace=False))
    choices = np.array([(dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1) if (dy, dx) != (0, 0)])
    shifts = choices[rng.integers(0, len(choices), size=k)] if k else np.zeros((0, 2), int)
    return frames.astype(int), shifts.astype(int)


def displace_frames(signal, frames, shifts):
    """Copy of ``signal`` ``(z, y, x, n)`` with frame ``frames[i]`` moved by ``shifts[i] = (dy, dx)`` voxels.

    The object moves rigidly in-plane for the duration of that frame (bulk motion); the voxels that
    enter the field of view repeat the edge value (the FOV edge is background in the phantoms).
    """
    s = np.array(signal, dtype=float, copy=True)
    fr = np.asarray(frames, dtype=int).ravel()
    sh = np.asarray(shifts, dtype=int).reshape(-1, 2)
    if s.ndim != 4 or fr.size != sh.shape[0] or (fr.size and (fr.min() < 0 or fr.max() >= s.shape[-1])):
        raise SynthError(f"displace_frames: signal must be (z, y, x, n) and frames/shifts matching indices into n; "
                         f"got signal {s.shape}, frames {fr.tolist()}, shifts {sh.tolist()}")
    ny, nx = s.shape[1:3]
    for f, (dy, dx) in zip(fr, sh):  # a handful of frames, each moved whole (no voxel loop)
        yi = np.clip(np.arange(ny) - dy, 0, ny - 1)
        xi = np.clip(np.arange(nx) - dx, 0, nx - 1)
        s[..., f] = signal[..., f][:, yi][:, :, xi]
    return s
