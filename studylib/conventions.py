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
           "LABEL_SYNONYMS", "VARIABLE_LABELS", "axis_label", "is_control_name", "label_mapping", "relabel"]

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

#: variable (a map, an ROI-table or histology column) -> (words, units) for axis labels and colourbars: the
#: one home of what a column name means to a reader (``prussian_blue_area_pct`` -> "Prussian blue area (%)").
#: Map units come from :data:`MAP_UNITS`; a column not listed is spelled out by :func:`axis_label`'s suffix rules.
VARIABLE_LABELS: dict[str, tuple[str, str]] = {
    **{k: (w, MAP_UNITS[k]) for k, w in {
        "t2star": "T2*", "r2star": "R2*", "t2": "T2", "r2": "R2", "t1": "T1", "r1": "R1", "adc": "ADC",
        "d": "D", "d_star": "D*", "f": "perfusion fraction f", "ktrans": "Ktrans", "kep": "kep", "ve": "ve",
        "vp": "vp", "mtr_asym": "MTRasym", "f19_mM": "19F concentration", "s0": "S0", "m0": "M0"}.items()},
    "day": ("day", ""), "t": ("time", "s"), "group": ("group", ""), "animal": ("animal", ""), "model": ("tumour model", ""),
    "volume_mm3": ("volume", "mm³"), "tumour_volume_mm3": ("tumour volume", "mm³"),
    "tumour_weight_mg": ("tumour weight", "mg"), "rim_over_core": ("rim / core ratio", ""),
    "prussian_blue_area_pct": ("Prussian blue area", "%"), "collagen_i_area_pct": ("collagen I area", "%"),
    "iba1_cells_per_mm2": ("Iba1+ cells", "1/mm²"), "cd68_cells_per_mm2": ("CD68+ cells", "1/mm²"),
    "hypoxic_fraction_pct": ("hypoxic fraction", "%"), "mvd_cd31_per_mm2": ("microvessel density (CD31)", "1/mm²"),
    "ifp_mmHg": ("interstitial fluid pressure", "mmHg"), "lung_metastases_count": ("lung metastases", "count"),
    "cd80_pct_of_f480": ("CD80+ (M1)", "% of F4/80+"), "cd206_pct_of_f480": ("CD206+ (M2)", "% of F4/80+"),
    "mrs_lactate_ratio_post_over_pre": ("MRS lactate, post / pre", ""),
}

#: a column name's unit suffix -> its units, longest first (``_cells_per_mm2`` before ``_per_mm2``)
_SUFFIX_UNITS: tuple[tuple[str, str, str], ...] = tuple(sorted((
    ("_cells_per_mm2", "+ cells", "1/mm²"), ("_per_mm2", "", "1/mm²"), ("_area_pct", " area", "%"),
    ("_pct", "", "%"), ("_mm3", "", "mm³"), ("_mm2", "", "mm²"), ("_mmHg", "", "mmHg"), ("_mg", "", "mg"),
    ("_mm", "", "mm"), ("_count", "", "count"), ("_per_s", "", "1/s"), ("_per_min", "", "1/min"), ("_ms", "", "ms"),
    ("_s", "", "s"), ("_um", "", "µm"), ("_mM", "", "mM"), ("_uM", "", "µM"), ("_ppm", "", "ppm"), ("_Hz", "", "Hz"),
), key=lambda t: -len(t[0])))


def axis_label(name, units: str | None = None) -> str:
    """The axis label of a variable in words with its units, e.g. ``"Prussian blue area (%)"``.

    ``name`` is looked up in :data:`VARIABLE_LABELS`; a name not there (a lab's own histology column) is spelled
    out from its unit suffix (``_pct`` -> %, ``_per_mm2`` -> 1/mm², ``_mm3`` -> mm³, ``_count`` -> count, ...)
    with underscores as spaces.  ``units`` overrides the units ("" for none).

    >>> axis_label("prussian_blue_area_pct"), axis_label("r2star"), axis_label("cd3_cells_per_mm2")
    ('Prussian blue area (%)', 'R2* (1/s)', 'cd3+ cells (1/mm²)')
    >>> axis_label("day"), axis_label("necrosis_pct")
    ('day', 'necrosis (%)')
    >>> axis_label("tumour_iron_uM"), axis_label("ktrans", units="1/s")
    ('tumour iron (µM)', 'Ktrans (1/s)')
    """
    key = str(name)
    if key in VARIABLE_LABELS:
        words, unit = VARIABLE_LABELS[key]
    else:
        words, unit = key, ""
        for suffix, extra, u in _SUFFIX_UNITS:
            if key.endswith(suffix) and len(key) > len(suffix):
                words, unit = key[: -len(suffix)] + extra, u
                break
        words = words.replace("_", " ").strip()
    unit = unit if units is None else units
    return f"{words} ({unit})" if unit else words


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
