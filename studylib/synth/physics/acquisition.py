"""Acquisition realism: smooth fields, multi-channel receive noise, partial volume, a simple segmentation.

* :func:`smooth_field` -- a smooth random map (B1 transmit error, coil phase): Gaussian-filtered
  white noise, scaled to a given RMS deviation.
* :func:`coil_sensitivities` and :func:`add_coil_noise_rss` -- L receive channels with smooth
  sensitivities ``c_l(r)``, complex Gaussian noise (SD ``sigma`` per real and imaginary part, per
  channel), root-sum-of-squares combination ``|S| = sqrt(sum_l |c_l m + n_l|^2)``.  With
  ``sum_l |c_l|^2 = 1`` (normalised sensitivities) the noiseless combination is ``|m|`` and the
  magnitude follows a non-central chi distribution with 2L degrees of freedom:
  ``E[S^2] = |m|^2 + 2 L sigma^2`` and, in signal-free background, ``E[S] = sigma sqrt(pi/2)
  (2L-1)!! / (2^(L-1) (L-1)!)`` (Constantinides et al., MRM 1997;38:852,
  doi:10.1002/mrm.1910380524).  L = 1 gives Rician noise.
* :func:`render_partial_volume` -- a label image drawn at ``factor`` x the in-plane resolution is
  averaged down in ``factor x factor`` blocks: each output voxel mixes the class signals by their
  area fractions (partial volume), with the per-class signal (e.g. a Monte Carlo GRE curve or a
  Bloch-McConnell Z-spectrum, computed once per class) along a trailing axis.
* :func:`partial_volume_fractions` and :func:`mix_partial_volume` -- the same for a whole session whose
  signal varies voxel by voxel: each voxel's class fractions from a ``factor`` x in-plane label map, the
  signal of each class taken from the nearest voxel whose (centre) label is that class, mixed by fraction.
* :func:`segment_largest_component` -- a documented, lab-like ROI: Gaussian smoothing, an Otsu
  threshold (Otsu, IEEE Trans SMC 1979;9:62, doi:10.1109/TSMC.1979.4310076), the largest 2-D
  connected component, holes filled.  On a noisy image its boundary errs by about a voxel.
* :func:`rater_labels` -- the ROI a lab draws by hand: each outlined structure's boundary moved by a smooth
  random signed distance (about a voxel RMS, independent per structure and session), the rest kept.

Everything is vectorised over voxels (block means by reshaping; scipy.ndimage filters).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ...errors import SynthError

__all__ = ["smooth_field", "coil_sensitivities", "add_coil_noise_rss", "chi_background_mean",
           "block_mean", "label_fractions", "render_partial_volume", "partial_volume_fractions",
           "mix_partial_volume", "otsu_threshold",
           "segment_largest_component", "add_coil_noise_rss_zyx", "signed_distance_inplane", "rater_labels",
           "dice"]


def _rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise SynthError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def smooth_field(shape, rng, *, rms, length_vox, mean=1.0):
    """A smooth random field ``mean + rms * g / std(g)`` with ``g`` Gaussian-filtered white noise.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (2-D or 3-D).
    rng : numpy.random.Generator
    rms : float
        RMS deviation from ``mean`` over the grid (e.g. 0.10 for a 10 % B1 error).
    length_vox : float
        Gaussian filter SD in voxels (correlation length).
    mean : float
        Field mean (1 for a relative flip angle).

    Returns
    -------
    ndarray ``shape`` (dimensionless).
    """
    if not (length_vox > 0 and rms >= 0):
        raise SynthError(f"length_vox must be positive and rms >= 0, got {length_vox!r}, {rms!r}")
    g = ndi.gaussian_filter(_rng(rng).standard_normal(tuple(int(s) for s in shape)), length_vox, mode="wrap")
    sd = g.std()
    return mean + (rms * (g - g.mean()) / sd if sd > 0 else 0.0 * g)


def coil_sensitivities(shape_yx, n_coils, *, distance=0.7, width=0.6, phase_cycles=0.5, normalize=True):
    """Smooth complex sensitivities of ``n_coils`` surface coils around the field of view.

    Coil ``l`` sits at angle ``2 pi l / L`` on a circle of radius ``distance`` (in units of the half
    field of view) around the centre; its magnitude falls off as ``1 / (1 + (d / width)^2)^(3/2)``
    (the on-axis field of a loop of radius ``width``, Biot-Savart) with distance ``d`` from the coil,
    and its phase is a linear ramp of ``phase_cycles`` cycles across the field of view along the coil's
    direction.  With ``normalize`` the set is scaled so that ``sum_l |c_l|^2 = 1`` in every voxel.
    ``n_coils = 1`` gives a uniform, real sensitivity of 1.

    Returns
    -------
    ndarray complex, shape ``(n_coils, ny, nx)``.
    """
    if int(n_coils) != n_coils or n_coils < 1:
        raise SynthError(f"n_coils must be a whole number >= 1, got {n_coils!r}")
    ny, nx = (int(s) for s in shape_yx)
    if n_coils == 1:
        return np.ones((1, ny, nx), dtype=complex)
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    ang = 2 * np.pi * np.arange(int(n_coils)) / n_coils
    cy, cx = distance * np.sin(ang), distance * np.cos(ang)
    d2 = (y[None] - cy[:, None, None]) ** 2 + (x[None] - cx[:, None, None]) ** 2
    mag = 1.0 / (1.0 + d2 / width ** 2) ** 1.5
    ph = np.pi * phase_cycles * (x[None] * np.cos(ang)[:, None, None] + y[None] * np.sin(ang)[:, None, None])
    c = mag * np.exp(1j * ph)
    if normalize:
        c = c / np.sqrt((np.abs(c) ** 2).sum(axis=0, keepdims=True))
    return c


def add_coil_noise_rss(image, sigma, rng, sensitivities):
    """Root-sum-of-squares magnitude of L noisy receive channels.

    Parameters
    ----------
    image : array_like, shape ``(ny, nx, ...)``
        Noiseless (real or complex) image; trailing axes (echoes, frames, offsets) share the
        sensitivities of their voxel.
    sigma : float
        Noise SD per channel, per real/imaginary part (same units as ``image``).
    rng : numpy.random.Generator
    sensitivities : ndarray complex ``(L, ny, nx)`` (:func:`coil_sensitivities`)

    Returns
    -------
    ndarray float, shape of ``image``: ``sqrt(sum_l |c_l m + n_l|^2)``.
    """
    m = np.asarray(image)
    c = np.asarray(sensitivities)
    if c.ndim != 3 or m.shape[:2] != c.shape[1:]:
        raise SynthError(f"sensitivities of shape {c.shape} do not match image of shape {m.shape} "
                         "(expected (L, ny, nx) with the image's first two dims)")
    if not sigma >= 0:
        raise SynthError(f"sigma must be >= 0, got {sigma!r}")
    r = _rng(rng)
    cb = c.reshape(c.shape + (1,) * (m.ndim - 2))
    if np.iscomplexobj(m):
        ch = cb * m[None]
        ch = ch + sigma * (r.standard_normal(ch.shape) + 1j * r.standard_normal(ch.shape))
        return np.sqrt((np.abs(ch) ** 2).sum(axis=0))
    # a real image: real arithmetic, one channel at a time (same draws, in the same order, as above)
    m = m.astype(float, copy=False)
    n_re = sigma * r.standard_normal((c.shape[0],) + m.shape)
    n_im = sigma * r.standard_normal((c.shape[0],) + m.shape)
    acc = np.zeros(m.shape)
    for l in range(c.shape[0]):  # a loop over channels only
        acc += (cb[l].real * m + n_re[l]) ** 2
        acc += (cb[l].imag * m + n_im[l]) ** 2
    return np.sqrt(acc)


def add_coil_noise_rss_zyx(image, sigma, rng, sensitivities):
    """:func:`add_coil_noise_rss` for a ``(z, y, x[, n])`` volume, one slice at a time.

    Every slice sees the same in-plane sensitivities ``(L, ny, nx)`` (a coil array around the body,
    uniform along z over a thin slab); slices draw their noise from ``rng`` in order, so the memory
    held at once is ``L`` complex copies of one slice.  ``sigma`` is the SD per channel, per real and
    imaginary part (:func:`add_coil_noise_rss`).

    Returns
    -------
    ndarray float, shape of ``image``.
    """
    m = np.asarray(image, dtype=float)
    if m.ndim < 3:
        raise SynthError(f"add_coil_noise_rss_zyx expects a (z, y, x[, n]) volume, got shape {m.shape}")
    return np.stack([add_coil_noise_rss(m[k], sigma, rng, sensitivities) for k in range(m.shape[0])])


def chi_background_mean(sigma, n_coils):
    """Mean of a central chi magnitude with 2L degrees of freedom: ``sigma sqrt(pi/2) (2L-1)!! / (2^(L-1) (L-1)!)``.

    (L = 1: the Rayleigh mean ``sigma sqrt(pi/2)``; L = 4: 2.7416 sigma.)
    """
    L = int(n_coils)
    if L != n_coils or L < 1:
        raise SynthError(f"n_coils must be a whole number >= 1, got {n_coils!r}")
    dfact = np.prod(np.arange(2 * L - 1, 0, -2, dtype=float))
    fact = np.prod(np.arange(1, L, dtype=float))
    return float(sigma) * np.sqrt(np.pi / 2) * dfact / (2.0 ** (L - 1) * fact)


def block_mean(a, factor):
    """Mean over ``factor x factor`` blocks of the first two axes (``(fy*ny, fx*nx, ...) -> (ny, nx, ...)``)."""
    a = np.asarray(a)
    f = int(factor)
    if f != factor or f < 1 or a.ndim < 2 or a.shape[0] % f or a.shape[1] % f:
        raise SynthError(f"block_mean: factor {factor!r} must be a positive integer dividing the first two dims "
                         f"of shape {a.shape}")
    ny, nx = a.shape[0] // f, a.shape[1] // f
    return a.reshape((ny, f, nx, f) + a.shape[2:]).mean(axis=(1, 3))


def label_fractions(labels_hr, labels, factor):
    """Area fraction of each label in every low-resolution voxel, shape ``(n_labels, ny, nx)``."""
    lab = np.asarray(labels_hr)
    return np.stack([block_mean((lab == v).astype(float), factor) for v in labels])  # loop over labels only


def render_partial_volume(labels_hr, class_signals, factor=4):
    """Low-resolution image from a high-resolution label image and one signal per class.

    Parameters
    ----------
    labels_hr : ndarray int, shape ``(factor*ny, factor*nx)``
        Labels ``0 .. n_classes-1`` drawn at ``factor`` x the in-plane resolution.
    class_signals : array_like ``(n_classes,)`` or ``(n_classes, n)``
        Signal of each class (a number, or a curve along a trailing axis: echoes, frames, offsets).
    factor : int
        Super-sampling factor (4 by default).

    Returns
    -------
    ndarray ``(ny, nx)`` or ``(ny, nx, n)``: ``sum_k fraction_k(voxel) * signal_k``.  Mixing is
    linear in the complex/magnitude signal of each class (voxel signals add before noise).
    """
    lab = np.asarray(labels_hr)
    sig = np.asarray(class_signals)
    n_cls = sig.shape[0]
    if lab.min() < 0 or lab.max() >= n_cls or not np.issubdtype(lab.dtype, np.integer):
        raise SynthError(f"labels_hr must hold integer class indices 0..{n_cls - 1}, got range "
                         f"{lab.min()}..{lab.max()} ({lab.dtype})")
    frac = label_fractions(lab, range(n_cls), factor)
    return np.tensordot(np.moveaxis(frac, 0, -1), sig, axes=([-1], [0]))


def partial_volume_fractions(labels_hr, factor):
    """Area fraction of every class in each voxel of a ``(z, y, x)`` volume from its refined label map.

    Parameters
    ----------
    labels_hr : ndarray int, shape ``(nz, factor*ny, factor*nx)``
        The anatomy at ``factor`` x the in-plane resolution (2-D slices: z not refined).
    factor : int

    Returns
    -------
    (classes, fractions) : ndarray int ``(n_cls,)`` (the labels present, sorted) and ndarray float
    ``(n_cls, nz, ny, nx)``: ``f_c(v) = #{sub-voxels of v labelled c} / factor^2``; they sum to 1 in each voxel.
    """
    lab = np.asarray(labels_hr)
    f = int(factor)
    if (lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer) or f != factor or f < 1
            or lab.shape[1] % f or lab.shape[2] % f):
        raise SynthError(f"partial_volume_fractions: labels_hr must be an integer (z, y, x) map whose y and x sizes "
                         f"the factor {factor!r} divides, got {lab.dtype} of shape {lab.shape}")
    nz, ny, nx = lab.shape[0], lab.shape[1] // f, lab.shape[2] // f
    lo = int(lab.min())
    n_vox = nz * ny * nx
    # one histogram of (class, voxel) pairs: sub-voxel (k, f*y + i, f*x + j) belongs to voxel (k, y, x)
    vox = ((np.arange(nz)[:, None, None] * ny + (np.arange(lab.shape[1]) // f)[None, :, None]) * nx
           + (np.arange(lab.shape[2]) // f)[None, None, :])
    counts = np.bincount(((lab.astype(np.int64) - lo) * n_vox + vox).ravel(),
                         minlength=(int(lab.max()) - lo + 1) * n_vox).reshape(-1, nz, ny, nx)
    present = np.flatnonzero(counts.reshape(counts.shape[0], -1).any(axis=1))
    return present + lo, counts[present] / float(f * f)


def mix_partial_volume(signal, labels, labels_hr, factor, voxel_mm_zyx, *, fractions=None):
    """Partial volume of a session: each voxel's class signals mixed by their area fractions.

    ``S'(v) = sum_c f_c(v) S(n_c(v))``, with ``f_c(v)`` the area fraction of class ``c`` in voxel ``v``
    (:func:`partial_volume_fractions` of the refined anatomy) and ``n_c(v)`` the voxel nearest to ``v``
    (Euclidean distance in mm, ``scipy.ndimage.distance_transform_edt`` with the voxel size as sampling,
    in 3-D) whose centre label is ``c`` -- ``v`` itself when ``v`` is labelled ``c`` -- so each class
    brings the planner's own, spatially varying signal from next door.  A class present in the refined
    anatomy but on no voxel centre (a structure thinner than a voxel) lends its fraction to the voxel's
    own label.  Pure voxels (``f_{label(v)}(v) = 1``) are returned unchanged, bit for bit.  The mixing
    is of the noise-free magnitudes (compartments in phase), before any receive noise: the signals of the
    tissues in a voxel add.

    Parameters
    ----------
    signal : ndarray float, shape ``(nz, ny, nx[, n])``
        Noise-free signal of each voxel (trailing axis: echoes, frames, offsets).
    labels : ndarray int ``(nz, ny, nx)``
        Voxel-centre labels (the session's label map).
    labels_hr : ndarray int ``(nz, factor*ny, factor*nx)``
        The same anatomy at ``factor`` x the in-plane resolution.
    factor : int
    voxel_mm_zyx : sequence of 3 float
        Voxel size (dz, dy, dx) in mm (the distance metric).
    fractions : (classes, fractions), optional
        :func:`partial_volume_fractions` of ``labels_hr`` when already computed (several scans of a session).

    Returns
    -------
    (mixed, classes, fractions) : ndarray of ``signal``'s shape; the classes and their fractions
    ``(n_cls, nz, ny, nx)`` (:func:`partial_volume_fractions`).

    Notes
    -----
    This is the discrete form of the partial-volume effect ``S_voxel = sum_c f_c S_c`` (e.g. Tofts et
    al., Quantitative MRI of the Brain, 2003, ch. 4; Gonzalez Ballester et al., Med Image Anal
    2002;6:389, doi:10.1016/S1361-8415(02)00061-0); taking ``S_c`` from the nearest voxel of class ``c``
    is this simulator's choice.
    """
    sig = np.asarray(signal, dtype=float)
    lab = np.asarray(labels)
    if lab.ndim != 3 or sig.shape[:3] != lab.shape or not np.issubdtype(lab.dtype, np.integer):
        raise SynthError(f"mix_partial_volume: signal {sig.shape} must start with the integer label map's shape "
                         f"{lab.shape} (z, y, x)")
    f = int(factor)
    if np.asarray(labels_hr).shape != (lab.shape[0], lab.shape[1] * f, lab.shape[2] * f):
        raise SynthError(f"mix_partial_volume: labels_hr of shape {np.asarray(labels_hr).shape} is not the label map "
                         f"{lab.shape} refined {factor!r}x in-plane")
    sampling = tuple(float(v) for v in voxel_mm_zyx)
    if len(sampling) != 3 or not all(v > 0 for v in sampling):
        raise SynthError(f"mix_partial_volume: voxel_mm_zyx must be 3 positive sizes, got {voxel_mm_zyx!r}")
    classes, frac = partial_volume_fractions(labels_hr, f) if fractions is None else fractions
    centre = np.unique(lab)
    fr = dict(zip(classes.tolist(), frac))
    zero = np.zeros(lab.shape)
    # fraction of each voxel carried by its own (centre) label, incl. classes on no voxel centre
    own = sum(np.where(lab == c, fr.get(c, zero), 0.0) for c in centre.tolist())
    own = own + sum(fc for c, fc in fr.items() if c not in set(centre.tolist()))
    impure = own < 1.0
    out = sig.copy()
    if not impure.any():
        return out, classes, frac
    iz, iy, ix = np.nonzero(impure)
    mixed = np.zeros((iz.size,) + sig.shape[3:])
    for c in centre.tolist():  # a few EDTs per session: one per class on a voxel centre
        w = np.where(lab == c, own, fr.get(c, zero))[iz, iy, ix]
        if not w.any():
            continue
        _, (nz_, ny_, nx_) = ndi.distance_transform_edt(lab != c, sampling=sampling, return_indices=True)
        src = sig[nz_[iz, iy, ix], ny_[iz, iy, ix], nx_[iz, iy, ix]]
        mixed += w.reshape(w.shape + (1,) * (sig.ndim - 3)) * src
    out[iz, iy, ix] = mixed
    return out, classes, frac


def otsu_threshold(values, bins=256):
    """Otsu's threshold of a 1-D sample (maximum between-class variance over a histogram)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2 or v.min() == v.max():
        raise SynthError("otsu_threshold needs at least two distinct finite values")
    h, edges = np.histogram(v, bins=bins)
    mid = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(h)
    w1 = w0[-1] - w0
    s0 = np.cumsum(h * mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = s0 / w0
        mu1 = (s0[-1] - s0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][np.nanargmax(np.where((w0 > 0) & (w1 > 0), between, np.nan))])


def segment_largest_component(image, *, sigma_vox=1.0, threshold=None, within=None):
    """A lab-like ROI: smooth, threshold, keep the largest connected component, fill holes.

    Parameters
    ----------
    image : ndarray (ny, nx)
        A noisy anatomical magnitude image in which the object is brighter than its surroundings.
    sigma_vox : float
        SD (voxels) of the Gaussian smoothing before thresholding (0: none).
    threshold : float, optional
        Intensity threshold; default Otsu's threshold of the smoothed image (inside ``within``).
    within : ndarray bool, optional
        Only these voxels can belong to the ROI (e.g. a box drawn around the tumour), and the
        Otsu threshold is computed from them.

    Returns
    -------
    ndarray bool (ny, nx).  Empty if nothing is above the threshold.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 2:
        raise SynthError(f"segment_largest_component expects a 2-D image, got shape {img.shape}")
    sm = ndi.gaussian_filter(img, sigma_vox) if sigma_vox > 0 else img
    region = np.ones(img.shape, bool) if within is None else np.asarray(within, bool)
    if region.shape != img.shape:
        raise SynthError(f"within has shape {region.shape}, the image {img.shape}")
    thr = otsu_threshold(sm[region]) if threshold is None else float(threshold)
    fg = (sm > thr) & region
    lab, n = ndi.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())[1:]
    return ndi.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


def signed_distance_inplane(mask):
    """In-plane signed distance (voxels) to the boundary of ``mask``, slice by slice: < 0 inside, > 0 outside.

    ``d = edt(~mask) - 1/2`` outside and ``d = -(edt(mask) - 1/2)`` inside, with ``edt`` the Euclidean
    distance transform within each ``(y, x)`` slice, so the boundary (half-way between an inside and an
    outside voxel) is ``d = 0`` and the voxels either side of it are at ``+-1/2``.  A slice without the
    structure is ``+inf``; a slice filled with it ``-inf``.

    Parameters
    ----------
    mask : ndarray bool, shape ``(z, y, x)``

    Returns
    -------
    ndarray float ``(z, y, x)`` in voxel units.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise SynthError(f"signed_distance_inplane expects a (z, y, x) mask, got shape {m.shape}")
    d = np.empty(m.shape)
    for k in range(m.shape[0]):  # a loop over slices: the EDT of each is vectorised
        sl = m[k]
        if not sl.any():
            d[k] = np.inf
        elif sl.all():
            d[k] = -np.inf
        else:
            d[k] = np.where(sl, -(ndi.distance_transform_edt(sl) - 0.5), ndi.distance_transform_edt(~sl) - 0.5)
    return d


def rater_labels(labels, rng, *, drawn, protect=(), rms_vox=1.0, length_vox=2.0):
    """The label map a rater draws by hand: each outlined structure's boundary moved by a smooth random amount.

    For each label ``v`` in ``drawn`` the rater's outline is ``{r : d_v(r) + e_v(r) < 0}``, with ``d_v`` the
    in-plane signed distance to the true boundary (:func:`signed_distance_inplane`, voxels, < 0 inside) and
    ``e_v`` a smooth random field per slice: white noise Gaussian-filtered in-plane with SD ``length_vox``
    (the correlation length along the outline), scaled to zero mean and RMS ``rms_vox`` within each slice.
    Where ``e_v > 0`` the outline is drawn ``e_v`` voxels inside the true boundary, where ``e_v < 0``
    ``|e_v|`` outside: the boundary error is a signed displacement of ``rms_vox`` RMS, independent between
    structures, slices and calls (sessions).  A structure the rater would miss entirely keeps its
    most-inside voxel (``argmin d_v + e_v``): a rater always draws something where the truth has a
    structure.

    The map is then assembled: the true voxels of every ``drawn`` label take the label of the nearest voxel
    (in-plane) that belongs to no drawn or protected label (surrounding tissue, or air), the drawn outlines are painted in
    the order of ``drawn`` (later ones on top), and the ``protect`` labels (e.g. a vessel or reference-tube
    ROI placed on a few obvious voxels) are put back exactly as they are.  Other labels are unchanged where
    no outline covers them.

    Parameters
    ----------
    labels : ndarray int, shape ``(z, y, x)``
        The true label map.
    rng : numpy.random.Generator
    drawn : sequence of int
        The labels the rater outlines (e.g. tumours, muscle).
    protect : sequence of int
        Labels kept exactly (neither moved nor painted over).
    rms_vox : float
        RMS boundary displacement (voxels).
    length_vox : float
        In-plane correlation length of the displacement (Gaussian SD, voxels).

    Returns
    -------
    ndarray, dtype and shape of ``labels``.

    Notes
    -----
    Manual tumour outlines on MRI differ between raters mostly at the boundary; the model here is a
    smooth displacement of the true boundary, not a published rater model, and its parameters are
    chosen (about one voxel RMS, the width of the partial-volume band an outline has to cross).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise SynthError(f"labels must be an integer (z, y, x) map, got {lab.dtype} of shape {lab.shape}")
    if not (rms_vox >= 0 and length_vox > 0):
        raise SynthError(f"rms_vox must be >= 0 and length_vox > 0, got {rms_vox!r}, {length_vox!r}")
    r = _rng(rng)
    drawn = [int(v) for v in drawn]
    protect = [int(v) for v in protect]
    if set(drawn) & set(protect):
        raise SynthError(f"a label cannot be both drawn and protected: {sorted(set(drawn) & set(protect))}")
    in_drawn = np.isin(lab, drawn)
    not_source = in_drawn | np.isin(lab, protect)
    out = lab.copy()
    if in_drawn.any():  # the true structures' voxels take the nearest label neither drawn nor protected
        for k in range(lab.shape[0]):
            if not in_drawn[k].any() or not_source[k].all():
                continue
            _, (iy, ix) = ndi.distance_transform_edt(not_source[k], return_indices=True)
            out[k] = np.where(in_drawn[k], lab[k][iy, ix], lab[k])
    for v in drawn:
        m = lab == v
        if not m.any():
            continue
        g = ndi.gaussian_filter(r.standard_normal(lab.shape), (0, length_vox, length_vox), mode="reflect")
        g = g - g.mean(axis=(1, 2), keepdims=True)
        sd = np.sqrt((g ** 2).mean(axis=(1, 2), keepdims=True))
        e = rms_vox * np.divide(g, sd, out=np.zeros_like(g), where=sd > 0)
        score = signed_distance_inplane(m) + e
        outline = score < 0
        if not outline.any():
            outline.flat[int(np.argmin(np.where(m, score, np.inf)))] = True
        out[outline] = v
    for v in protect:
        out[lab == v] = v
    return out


def dice(a, b):
    """Dice coefficient ``2 |A & B| / (|A| + |B|)`` of two masks (1 for two empty masks)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise SynthError(f"dice: masks of shapes {a.shape} and {b.shape}")
    n = a.sum() + b.sum()
    return 1.0 if n == 0 else float(2.0 * (a & b).sum() / n)
