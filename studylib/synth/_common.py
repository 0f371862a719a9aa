"""Shared pieces of the study simulators: presets, context, animals, sessions, scans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np

from ._phantom import Grid, rng_for

__all__ = ["Preset", "PRESETS", "Context", "Animal", "Scan", "Session", "StudyPlan", "DEFAULT_SEED",
           "DEFAULT_RECEIVE_CHANNELS", "RECEIVE_CHANNELS", "RATER", "PARTIAL_VOLUME_FACTOR", "receive_channels"]

#: seed used when none is given (the committed demo manifest is generated with it)
DEFAULT_SEED = 20240611


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic study: matrix, animals per group, and whether days are thinned.

    ``animals_per_group`` maps study -> animals per group (per group x model cell where a
    study has both); ``max_days`` keeps at most that many imaging days (first, middle, last);
    the slab covers ``nz * slice_mm`` mm around the tumour centre.
    """

    name: str
    nxy: int
    nz: int
    animals_per_group: Mapping[str, int]
    max_days: int | None = None
    slice_mm: float = 1.0


_DEMO_N = {"ampb_ferumoxytol": 7, "blz945_femri": 6, "ferumoxytol_therapy": 7, "collagen_adc": 8,
           "ktrans_hypoxia": 6, "fluorine19_pfc": 6, "lactate_cest": 3}

PRESETS: dict[str, Preset] = {
    "ci": Preset("ci", 16, 2, {k: 3 for k in _DEMO_N}, max_days=3, slice_mm=1.0),
    "demo": Preset("demo", 64, 6, dict(_DEMO_N), slice_mm=1.0),
    "large": Preset("large", 128, 12, {k: (2 * v if k != "lactate_cest" else 6) for k, v in _DEMO_N.items()},
                    slice_mm=0.5),
}


@dataclass(frozen=True)
class Context:
    """What a study simulator needs from the caller: the preset and the seed."""

    preset: Preset
    seed: int
    study: str

    def grid(self, fov_xy_mm: float = 16.0) -> Grid:
        p = self.preset
        return Grid(p.nxy, p.nxy, p.nz, fov_xy_mm, fov_xy_mm, p.nz * p.slice_mm)

    @property
    def n_per_group(self) -> int:
        return int(self.preset.animals_per_group[self.study])

    def days(self, full: list[int]) -> list[int]:
        m = self.preset.max_days
        if m is None or len(full) <= m:
            return list(full)
        idx = np.unique(np.round(np.linspace(0, len(full) - 1, m)).astype(int))
        return [full[i] for i in idx]

    def rng(self, stream: int, *ids: int) -> np.random.Generator:
        return rng_for(self.seed, self.study, stream, *ids)


@dataclass
class Animal:
    """One animal: id, design factors, and its true biology (``params``, free-form)."""

    id: str
    index: int
    group: str
    sex: str
    model: str | None
    days: list[int]
    params: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # day -> manifest note


#: receive channels L (combined by root-sum-of-squares) of a study's coil when its planner leaves
#: ``Scan.receive_channels`` unset: a 4-channel mouse surface array for the 1H tumour studies; one channel for
#: the 19F study, whose 1H/19F coil is taken to be a single-channel volume coil (the 19F analysis's Rayleigh
#: statistics assume one channel).  Chosen, not taken from the papers.
DEFAULT_RECEIVE_CHANNELS = 4
RECEIVE_CHANNELS: dict[str, int] = {"fluorine19_pfc": 1}

#: the simulated rater who draws ``roi.nii.gz`` (:func:`studylib.synth.physics.acquisition.rater_labels`):
#: RMS boundary displacement and its in-plane correlation length, in voxels
RATER = {"rms_vox": 1.0, "length_vox": 2.0}


#: in-plane super-sampling of the anatomy for partial volume (writer, with noise): each voxel's class fractions
#: are the area fractions of ``factor x factor`` sub-voxels
#: (:func:`studylib.synth.physics.acquisition.mix_partial_volume`)
PARTIAL_VOLUME_FACTOR = 4


def receive_channels(study: str, scan: "Scan") -> int:
    """The scan's receive channels: its own ``receive_channels``, else the study's default."""
    if scan.receive_channels is not None:
        return int(scan.receive_channels)
    return int(RECEIVE_CHANNELS.get(study, DEFAULT_RECEIVE_CHANNELS))


@dataclass
class Scan:
    """One raw image: kind, noise-free signal ``(z, y, x[, n])``, noise sigma, sidecar.

    ``sigma`` is the noise SD per receive channel (per real and imaginary part); ``receive_channels``
    the number L of channels combined by root-sum-of-squares (``None``: the study's default,
    :data:`RECEIVE_CHANNELS`), written to the sidecar as ``ReceiveCoilChannels``.  ``partial_volume``:
    whether the writer mixes the voxel's class signals by area fraction (an image; ``False`` for a derived
    map such as a B1 ratio map, in which a tissue/air edge cancels).  ``motion``: ``(frames, shifts)`` of a dynamic
    series whose frames the object moved in by whole voxels (``shifts (k, 2)``: dy, dx), applied by the writer to
    the rendered image (after partial volume, before the noise: the object moves, the coil does not).
    """

    kind: str
    data: np.ndarray
    sigma: float
    sidecar: dict
    receive_channels: int | None = None
    partial_volume: bool = True
    motion: tuple | None = None


@dataclass
class Session:
    """One (animal, day): scans, label map, ROI-mean truths and true parameter maps.

    ``labels_on`` (optional): the session's anatomy on any grid, ``labels_on(grid) -> int16 (z, y, x)``
    (e.g. a :class:`~studylib.synth._phantom.Geometry`); on the study grid it must give ``roi`` exactly.
    With it the writer renders partial volume (:data:`PARTIAL_VOLUME_FACTOR`); without it voxels stay pure.
    """

    animal: Animal
    day: int
    scans: list[Scan]
    roi: np.ndarray
    roi_labels: dict[int, str]
    truth: dict
    maps: dict[str, np.ndarray]
    labels_on: Callable[[Grid], np.ndarray] | None = None


@dataclass
class StudyPlan:
    """A study ready to write: its grid, animals, session generator, histology and summary."""

    study: str
    grid: Grid
    animals: list[Animal]
    sessions: Callable[[], Iterator[Session]]
    histology_columns: list[str]
    histology_rows: list[dict]
    design: dict
    summarise: Callable[[list[dict]], dict]


def make_animals(ctx: Context, cells: list[tuple[str, str | None]], days: list[int], *, sex="F") -> list[Animal]:
    """Animals ``m01..`` for each (group, model) cell, ``ctx.n_per_group`` per cell, interleaved."""
    n = ctx.n_per_group
    animals = []
    k = 0
    for i in range(n):
        for group, model in cells:
            s = sex if sex in ("F", "M") else ("F" if i % 2 == 0 else "M")  # balanced within each cell
            animals.append(Animal(id=f"m{k + 1:02d}", index=k, group=group, sex=s, model=model, days=list(days)))
            k += 1
    return animals


def drop_last_day(ctx: Context, animals: list[Animal], candidates: list[Animal], reason: str) -> Animal | None:
    """Remove the last imaging day of one animal chosen deterministically among ``candidates``."""
    cands = [a for a in candidates if len(a.days) > 1]
    if not cands:
        return None
    rng = ctx.rng(4, 0)
    a = cands[int(rng.integers(len(cands)))]
    a.days = a.days[:-1]
    a.params["left_study"] = reason
    return a


def roi_mean(mask: np.ndarray, m: np.ndarray) -> float:
    return float(np.mean(m[mask])) if mask.any() else float("nan")


def pearson(x, y) -> float:
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def group_means(rows: list[dict], key: str, by: str = "group", where: Callable[[dict], bool] = lambda r: True) -> dict:
    out: dict[str, list[float]] = {}
    for r in rows:
        if where(r) and np.isfinite(r.get(key, np.nan)):
            out.setdefault(r[by], []).append(r[key])
    return {g: float(np.mean(v)) for g, v in sorted(out.items())}
