"""Bulk-motion frames in a DCE series: found, told apart from the bolus, moved back (studylib.models.motion)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings, strategies as st

from studylib.errors import FitInputError
from studylib.fit.dce import correct_motion
from studylib.models.motion import correct_motion_frames, frame_residuals, shift_frame


def _phantom(seed: int, n: int = 60, ny: int = 32, nx: int = 32, sigma: float = 20.0, arrival: int = 10):
    """Body disk (signal 1000) with a tumour that enhances slowly and a small vessel with a sharp bolus;
    independent of the kernel: geometry and curves written out here, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:ny, :nx]
    body = (y - ny / 2) ** 2 + (x - nx / 2) ** 2 <= (0.4 * ny) ** 2
    tumour = (y - ny / 2 - 3) ** 2 + (x - nx / 2 + 2) ** 2 <= (0.15 * ny) ** 2
    vessel = (y - ny / 2 + 8) ** 2 + (x - nx / 2 - 6) ** 2 <= 2.5 ** 2
    t = np.arange(n, dtype=float)
    tau = np.clip(t - arrival, 0, None)
    bolus = 3.0 * tau * np.exp(-tau / 1.5) + 0.8 * (1 - np.exp(-tau / 2.0)) * np.exp(-tau / 80)  # sharp first pass
    uptake = 0.5 * (1 - np.exp(-tau / 12.0))
    img = np.where(body, 1000.0, 0.0)[..., None] * np.ones(n)
    img = img + np.where(tumour, 400.0, 0.0)[..., None] * uptake + np.where(vessel, 900.0, 0.0)[..., None] * bolus
    img = img[None] + rng.normal(0, sigma, (1, ny, nx, n))
    return img, body[None]


def _move(img, moves):
    out = img.copy()
    for f, (dy, dx) in moves.items():
        out[..., f] = shift_frame(img[..., f], dy, dx)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_a_clean_series_with_its_bolus_has_no_moved_frame(seed):
    img, body = _phantom(seed)
    e, z = frame_residuals(img, body)
    assert z.max() > 8  # the bolus is an outlier of the frame-to-neighbours residual ...
    out, dy, dx, _ = correct_motion_frames(img, body)
    assert not dy.any() and not dx.any()  # ... yet nothing is moved: no shift explains an uptake
    np.testing.assert_array_equal(out, img)


def test_moved_frames_found_and_moved_back_including_at_the_bolus_and_side_by_side():
    img, body = _phantom(7)
    moves = {3: (1, 0), 10: (-1, 1), 11: (0, -1), 30: (1, 1), 31: (-1, -1), 59: (2, 0)}  # arrival at 10; the end
    out, dy, dx, z = correct_motion_frames(_move(img, moves), body)
    found = {int(f): (int(dy[f]), int(dx[f])) for f in np.nonzero((dy != 0) | (dx != 0))[0]}
    assert found == moves
    inner = (slice(None), slice(3, -3), slice(3, -3))
    np.testing.assert_array_equal(out[inner], img[inner])  # moved back exactly (away from the FOV edge)
    assert all(z[f] > 8 for f in moves)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), frame=st.integers(1, 58), dy=st.integers(-2, 2), dx=st.integers(-2, 2))
def test_any_single_displacement_is_undone(seed, frame, dy, dx):
    img, body = _phantom(seed)
    moves = {frame: (dy, dx)} if (dy, dx) != (0, 0) else {}
    out, fy, fx, _ = correct_motion_frames(_move(img, moves), body)
    found = {int(f): (int(fy[f]), int(fx[f])) for f in np.nonzero((fy != 0) | (fx != 0))[0]}
    assert found == moves


def test_not_acquired_scan_passes_through_and_bad_input_is_named():
    img, body = _phantom(1)
    img[0, 0, 0, 0] = np.nan
    out, dy, dx, z = correct_motion_frames(img, body)
    assert np.isnan(z).all() and not dy.any() and np.array_equal(out, img, equal_nan=True)
    with pytest.raises(FitInputError, match=r"\(z, y, x, n\)"):
        correct_motion_frames(img[0])
    with pytest.raises(FitInputError, match="max_shift"):
        correct_motion_frames(np.nan_to_num(img), body, max_shift=0)
    with pytest.raises(FitInputError, match="mask"):
        frame_residuals(np.nan_to_num(img), np.zeros_like(body))


def test_xarray_adapter_per_scan_and_lazy():
    scans = []
    moves = [{12: (1, 0)}, {}, {40: (0, -1), 41: (1, 1)}]
    for k, mv in enumerate(moves):
        img, body = _phantom(20 + k)
        scans.append(np.moveaxis(_move(img, mv), -1, 0))  # (t, z, y, x)
    sig = xr.DataArray(np.stack(scans)[:, None], dims=("animal", "day", "t", "z", "y", "x"),
                       coords={"animal": ["a", "b", "c"], "day": [0], "t": np.arange(60) * 4.0}).chunk(
        {"animal": 1, "day": 1})
    mask = xr.DataArray(np.broadcast_to(body, (3, 1) + body.shape), dims=("animal", "day", "z", "y", "x"))
    corrected, motion = correct_motion(sig, mask)
    assert corrected.chunks is not None and corrected.dims == sig.dims
    motion = motion.compute()
    for k, mv in enumerate(moves):
        m = motion.isel(animal=k, day=0)
        found = {int(f): (int(m["dy"][f]), int(m["dx"][f])) for f in np.nonzero((m["dy"].values != 0)
                                                                             | (m["dx"].values != 0))[0]}
        assert found == mv
    np.testing.assert_array_equal(corrected.isel(animal=1).values, sig.isel(animal=1).values)
