"""The data conventions every layer shares (docs/conventions.md), in one place.

ROI label values and their meanings, the background (noise) label, the words that mark a control
group, and the units of each fitted map.  Import them from here; never restate them.

>>> ROI_LABELS[1], BACKGROUND_LABEL
('tumour', 5)
>>> is_control_name("Vehicle (PBS)")
True
"""

from __future__ import annotations

__all__ = ["ROI_LABELS", "BACKGROUND_LABEL", "TUMOUR_LABEL", "CONTROL_WORDS", "MAP_UNITS", "QUALITY_NAMES",
           "LABEL_SYNONYMS", "is_control_name", "label_mapping", "relabel"]

#: ROI label value -> meaning (0 is nothing).  ROI sidecars may restate or rename them
#: (``{"Labels": {"1": "tumour"}}``).
ROI_LABELS: dict[int, str] = {1: "tumour", 2: "muscle", 3: "vessel", 4: "reference_tube", 5: "background",
                              6: "tumour_rim", 7: "tumour_core"}

#: other names a lab writes for the conventional regions (lower case, spaces as underscores)
LABEL_SYNONYMS: dict[str, str] = {"tumor": "tumour", "noise": "background", "air": "background",
                                  "reference": "reference_tube", "tube": "reference_tube", "artery": "vessel",
                                  "aif": "vessel", "tumor_rim": "tumour_rim", "tumor_core": "tumour_core"}

#: the label of the tumour ROI
TUMOUR_LABEL = 1

#: the label of the signal-free background ROI (noise estimate)
BACKGROUND_LABEL = 5

#: a group whose name contains one of these words (case-insensitive) is a control group (English and
#: German lab usage: PBS/saline vehicles, Kontrolle, Vehikel, mock/naive animals)
CONTROL_WORDS: tuple[str, ...] = ("vehicle", "control", "untreated", "sham", "placebo", "saline", "pbs",
                                  "vehikel", "kontroll", "mock", "naive")

#: map variable -> units, for every map a fit in :mod:`studylib.fit` returns
MAP_UNITS: dict[str, str] = {
    "t2star": "ms", "r2star": "1/s", "t2": "ms", "r2": "1/s", "t1": "ms", "r1": "1/s",
    "adc": "µm²/ms", "d": "µm²/ms", "d_star": "µm²/ms", "f": "1",
    "ktrans": "1/min", "kep": "1/min", "ve": "1", "vp": "1",
    "mtr_asym": "%", "f19_mM": "mM", "s0": "a.u.", "m0": "a.u.",
}

#: goodness-of-fit variables a fit may return, in order of preference
QUALITY_NAMES: tuple[str, ...] = ("rmse", "nrmse", "rel_rmse", "rmse_mM", "r2", "r_squared", "chi2", "residual_sd")


def is_control_name(group: str) -> bool:
    """Whether ``group`` names a control group (contains one of :data:`CONTROL_WORDS`)."""
    g = str(group).lower()
    return any(w in g for w in CONTROL_WORDS)


def label_mapping(labels: dict, *, source: str = "ROI sidecar") -> tuple[dict[int, int], dict[int, str]]:
    """Map an ROI file's label values to the conventional ones by what they mean.

    ``labels`` is a sidecar's ``{"value": "name"}``.  A name of a conventional region (or a synonym,
    :data:`LABEL_SYNONYMS`) gets that region's value in :data:`ROI_LABELS`; any other name (a study's own
    region, e.g. ``tumour_left``) keeps its value.  Returns ``(lut, meanings)``: ``lut`` the file values that
    change (file value -> conventional value) and ``meanings`` the final value -> name.

    >>> label_mapping({"1": "muscle", "2": "Tumor"})
    ({1: 2, 2: 1}, {2: 'muscle', 1: 'tumour'})

    Raises
    ------
    StudyError
        two file values that mean the same region.
    """
    from .errors import DataFileError

    by_name = {name: value for value, name in ROI_LABELS.items()}
    lut, meanings = {}, {}
    for key, name in labels.items():
        v = int(key)
        norm = str(name).strip().lower().replace(" ", "_").replace("-", "_")
        norm = LABEL_SYNONYMS.get(norm, norm)
        final = by_name.get(norm, v)
        if final in meanings:
            raise DataFileError(f"{source}: labels {key!r} and another both mean {meanings[final]!r}")
        meanings[final] = norm if norm in by_name else str(name)
        if final != v:
            lut[v] = final
    return lut, meanings


def relabel(block, *, lut: dict[int, int]):
    """``block`` (an integer label array) with every value ``v`` in ``lut`` replaced by ``lut[v]`` at once."""
    out = block.copy()
    for old, new in lut.items():
        out[block == old] = new
    return out
