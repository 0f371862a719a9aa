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
           "is_control_name"]

#: ROI label value -> meaning (0 is nothing).  ROI sidecars may restate or rename them
#: (``{"Labels": {"1": "tumour"}}``).
ROI_LABELS: dict[int, str] = {1: "tumour", 2: "muscle", 3: "vessel", 4: "reference_tube", 5: "background",
                              6: "tumour_rim", 7: "tumour_core"}

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
