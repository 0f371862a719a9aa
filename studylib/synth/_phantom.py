"""Digital mouse phantoms: grid, body, tumour ellipsoids with rim/core, muscle, vessel, tube.

Geometry is defined in millimetres, independent of the matrix, so the same animal looks
the same in the ``ci`` (coarse) and ``demo`` (fine) presets.  Voxel membership is decided
at the voxel centre, which makes the truth per voxel exact; a :class:`Geometry` evaluates the
same label map on any grid (e.g. :meth:`Grid.refined`, 4x in-plane), from which the writer mixes
the class signals of each voxel by their area fractions (partial volume).

Arrays here are numpy arrays in ``(z, y, x)`` order (``(z, y, x, n)`` with a fitted axis);
the writer transposes to NIfTI's ``(x, y, z, n)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from ..conventions import ROI_LABELS
from ..errors import SynthError

__all__ = [
    "LABELS",
    "Grid",
    "Body",
    "Tumour",
    "tumour_semi_axes_mm",
    "spatial_pattern",
    "label_map",
    "Geometry",
    "study_key",
    "rng_for",
    "lognormal_mean1",
]

#: ROI label values (docs/conventions.md): :data:`studylib.conventions.ROI_LABELS`
LABELS = ROI_LABELS

#: tumour ellipsoid aspect (x : y : z) -- flank tumours are flattened against the body
TUMOUR_ASPECT = (1.2, 1.0, 0.75)


def study_key(study: str) -> int:
    """Stable 32-bit integer for a study name (seed stream id)."""
    return zlib.crc32(study.encode("utf-8"))


def rng_for(seed: int, study: str, stream: int, *ids: int) -> np.random.Generator:
    """Explicit generator for (seed, study, stream, ids...); the same on every machine.

    ``stream`` separates uses: 1 = animal biology, 2 = image noise per (animal, day),
    3 = voxel heterogeneity per (animal, day), 4 = study-level choices (planners use further
    streams of their own, 5-7 so far), 20 = the simulated rater's ROI per (animal, day) (the writer's
    :func:`~studylib.synth.physics.acquisition.rater_labels`).
    """
    return np.random.default_rng([int(seed), study_key(study), int(stream), *[int(i) + 10_000 for i in ids]])


def lognormal_mean1(rng: np.random.Generator, sd: float, size=None):
    """Multiplicative factor ``exp(N(-sd^2/2, sd))`` with mean exactly 1."""
    return np.exp(rng.normal(-0.5 * sd * sd, sd, size))


@dataclass(frozen=True)
class Grid:
    """Image grid: matrix ``(nz, ny, nx)`` over a field of view in mm, centred at 0."""

    nx: int
    ny: int
    nz: int
    fov_x_mm: float
    fov_y_mm: float
    fov_z_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.nz, self.ny, self.nx)

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """Voxel size (dx, dy, dz) in mm."""
        return (self.fov_x_mm / self.nx, self.fov_y_mm / self.ny, self.fov_z_mm / self.nz)

    @property
    def voxel_volume_mm3(self) -> float:
        dx, dy, dz = self.voxel_mm
        return dx * dy * dz

    def centres(self):
        """Voxel-centre coordinates ``z (nz,1,1), y (1,ny,1), x (1,1,nx)`` in mm."""
        dx, dy, dz = self.voxel_mm
        x = (np.arange(self.nx) + 0.5 - self.nx / 2) * dx
        y = (np.arange(self.ny) + 0.5 - self.ny / 2) * dy
        z = (np.arange(self.nz) + 0.5 - self.nz / 2) * dz
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def refined(self, factor: int) -> "Grid":
        """The same field of view at ``factor`` x the in-plane resolution (z unchanged: 2-D slices).

        Voxel ``(k, y, x)`` of this grid is covered by the refined voxels ``(k, factor*y + i, factor*x + j)``,
        ``0 <= i, j < factor`` (the fields of view are centred, so the blocks tile each voxel exactly).
        """
        f = int(factor)
        if f != factor or f < 1:
            raise SynthError(f"refined: factor must be a positive integer, got {factor!r}")
        return Grid(self.nx * f, self.ny * f, self.nz, self.fov_x_mm, self.fov_y_mm, self.fov_z_mm)

    def affine(self) -> np.ndarray:
        """NIfTI voxel (i=x, j=y, k=z) -> mm affine, centred on the field of view."""
        dx, dy, dz = self.voxel_mm
        a = np.diag([dx, dy, dz, 1.0])
        a[:3, 3] = [(0.5 - self.nx / 2) * dx, (0.5 - self.ny / 2) * dy, (0.5 - self.nz / 2) * dz]
        return a

    def nearest_voxel(self, x_mm: float, y_mm: float, z_mm: float) -> tuple[int, int, int]:
        dx, dy, dz = self.voxel_mm
        ix = int(np.clip(np.floor(x_mm / dx + self.nx / 2), 0, self.nx - 1))
        iy = int(np.clip(np.floor(y_mm / dy + self.ny / 2), 0, self.ny - 1))
        iz = int(np.clip(np.floor(z_mm / dz + self.nz / 2), 0, self.nz - 1))
        return iz, iy, ix


def _cylinder(grid: Grid, cx, cy, rx, ry, *, min_one_per_slice=False) -> np.ndarray:
    """Elliptic cylinder along z; optionally force at least the nearest voxel in every slice."""
    z, y, x = grid.centres()
    m = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    m = np.broadcast_to(m, grid.shape).copy()
    if min_one_per_slice:
        _, iy, ix = grid.nearest_voxel(cx, cy, 0.0)
        m[:, iy, ix] = True
    return m


@dataclass(frozen=True)
class Body:
    """The animal cross-section (elliptic cylinder along z) and its fixed structures.

    All positions in mm relative to the FOV centre.  ``muscle`` and ``vessel`` are
    elliptic cylinders ``(cx, cy, rx, ry)``; ``tube`` is the 19F reference tube in air.
    """

    rx: float = 7.0
    ry: float = 6.0
    muscle: tuple = (-3.9, -1.6, 1.5, 1.3)
    vessel: tuple | None = None
    tube: tuple | None = None

    def masks(self, grid: Grid) -> dict[str, np.ndarray]:
        out = {"body": _cylinder(grid, 0.0, 0.0, self.rx, self.ry)}
        out["muscle"] = _cylinder(grid, *self.muscle, min_one_per_slice=True) & out["body"]
        if self.vessel is not None:
            out["vessel"] = _cylinder(grid, *self.vessel, min_one_per_slice=True) & out["body"]
        if self.tube is not None:
            out["tube"] = _cylinder(grid, *self.tube, min_one_per_slice=True) & ~out["body"]
        return out


def tumour_semi_axes_mm(volume_mm3: float) -> tuple[float, float, float]:
    """Semi-axes (a, b, c) of the tumour ellipsoid of the given volume (``V = 4/3 pi a b c``)."""
    ax, ay, az = TUMOUR_ASPECT
    r = (float(volume_mm3) / (4.0 / 3.0 * np.pi * ax * ay * az)) ** (1.0 / 3.0)
    return ax * r, ay * r, az * r


@dataclass(frozen=True)
class Tumour:
    """An ellipsoidal tumour centred at ``(cx, cy, 0)`` mm of the given volume.

    ``rho`` is the normalised ellipsoidal radius (0 centre, 1 surface); voxels with
    ``rho > rim_start`` form the rim (the macrophage-rich, well-perfused periphery), the
    rest the core.
    """

    cx: float
    cy: float
    volume_mm3: float
    rim_start: float = 0.75

    def rho(self, grid: Grid) -> np.ndarray:
        a, b, c = tumour_semi_axes_mm(self.volume_mm3)
        z, y, x = grid.centres()
        return np.sqrt(((x - self.cx) / a) ** 2 + ((y - self.cy) / b) ** 2 + (z / c) ** 2)

    def masks(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(tumour mask, rim mask); the tumour has at least one voxel."""
        rho = self.rho(grid)
        m = rho <= 1.0
        if not m.any():
            m[grid.nearest_voxel(self.cx, self.cy, 0.0)] = True
        rim = m & (rho > self.rim_start)
        return m, rim


def spatial_pattern(mask: np.ndarray, rim: np.ndarray, w_rim: float, w_core: float, jitter_sd: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Voxel weights with mean exactly 1 over ``mask``: rim/core weights x log-normal jitter.

    Outside the mask the pattern is 1.  With it, ``animal_value * pattern`` has the animal
    value as its exact ROI mean.
    """
    w = np.where(rim, w_rim, w_core) * lognormal_mean1(rng, jitter_sd, mask.shape)
    w = np.where(mask, w, 1.0)
    if mask.any():
        w = np.where(mask, w / w[mask].mean(), 1.0)
    return w


def label_map(grid: Grid, body_masks: dict[str, np.ndarray], tumours: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """int16 label map: background 5 outside the body, tube 4, muscle 2, vessel 3, tumours on top."""
    lab = np.zeros(grid.shape, dtype=np.int16)
    lab[~body_masks["body"]] = 5
    if "tube" in body_masks:
        lab[body_masks["tube"]] = 4
    lab[body_masks["muscle"]] = 2
    if "vessel" in body_masks:
        lab[body_masks["vessel"]] = 3
    for value, m in tumours:
        lab[m] = value
    return lab


@dataclass(frozen=True)
class Geometry:
    """A session's anatomy, evaluable on any grid: ``geometry(grid)`` is :func:`label_map` of it.

    ``tumours`` are ``(label, Tumour)`` pairs painted in order.  On the session's own grid it gives
    exactly the session's label map; on :meth:`Grid.refined` it gives the sub-voxel anatomy the writer
    uses for partial volume.
    """

    body: Body
    tumours: tuple = field(default_factory=tuple)

    def __call__(self, grid: Grid) -> np.ndarray:
        return label_map(grid, self.body.masks(grid), [(int(v), t.masks(grid)[0]) for v, t in self.tumours])
