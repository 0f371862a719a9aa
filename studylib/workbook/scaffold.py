"""``studylib new``: a lab's own study folder, with a generic notebook for one biomarker.

:func:`new_study` writes, into a new or empty folder::

    data_manifest.csv        the manifest header (studylib.manifest's schema); `studylib import` fills it
    animals.csv              the header of :data:`studylib.workbook.animals.ANIMAL_COLUMNS` (one row per
                             animal: group, sex, strain, age, weight, randomisation, exclusion)
    study.json               the study's facts for the report's methods and ARRIVE section
                             (:data:`studylib.workbook.animals.STUDY_FIELDS`)
    notebooks/<study>.py     the generic notebook (jupytext percent format) for the biomarker

The notebook is the template ``studylib/templates/notebook.py.tmpl`` filled with the recipe of its
biomarker (:data:`BIOMARKERS`): verify -> load -> fit -> QC -> ROI table -> longitudinal mixed model
(``--design longitudinal``) or endpoint comparison (``--design endpoint``) -> imaging vs histology (when a
histology file is listed) -> conclusions against the study's own hypothesis.  It calls only the
:mod:`studylib` facade and :mod:`studylib.plots`, the same steps as the experiment notebooks, and names no
paper and no simulated truth.

``study.json`` is read by :func:`studylib.workbook.animals.read_study_info`, which takes only non-empty
values of its :data:`~studylib.workbook.animals.STUDY_FIELDS`: ``studylib new`` writes the facts it knows
(the experimental unit, the primary endpoint and outcome measure the notebook analyses) and the lab adds the
others (design, sample-size rationale, randomisation, blinding, ... the ARRIVE 2.0 Essential 10, Percie
du Sert et al., PLoS Biol 2020;18:e3000410); an item left out is reported as "not reported".

A study folder (one holding ``study.json`` and ``notebooks/``) is what ``studylib run --manifest <folder>/data_manifest.csv``
and ``studylib status`` recognise: their notebooks come from ``<folder>/notebooks`` and their reports go to
``<folder>/reports`` unless ``--notebooks``/``--reports`` say otherwise (:func:`study_folder_defaults`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..catalog import EXPERIMENTS
from ..errors import WorkbookError
from .animals import ANIMAL_COLUMNS, STUDY_FILE

__all__ = ["BIOMARKERS", "DESIGNS", "Recipe", "NewStudy", "new_study", "render_notebook", "study_folder_defaults",
           "study_facts"]

#: the designs a notebook can analyse
DESIGNS = ("longitudinal", "endpoint")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Recipe:
    """The biomarker-specific cells of the generic notebook.

    ``load`` leaves the Dataset ``ds`` (with the ROI labels and the ``group`` coordinate) and ``fit``
    the Dataset ``maps`` of fitted maps with ``fit_ok``; ``variable`` is the primary map, ``variables``
    the maps tabulated per ROI.
    """

    words: str
    kinds: tuple[str, ...]
    variable: str
    variables: tuple[str, ...]
    units: str
    axis_label: str
    parameters: str
    load: str
    fit: str
    fit_words: str
    cmap: str = "magma"


_DESIGN_COORDS = ('maps = maps.assign_coords({c: ds.coords[c] for c in ("group", "sex", "model", "acquired") '
                  'if c in ds.coords})')



def _keep(kind: str, name: str) -> str:
    """The cell lines keeping maps computed in the notebook for ``studylib export`` (analysis.keep_maps)."""
    return ("\n# the maps computed here, kept for `studylib export` (cached fit steps are exported on their own)\n"
            f'sl.keep_maps(study, manifest, cache_dir, maps=maps[[v for v in [*variables, "fit_ok"] if v in maps]],\n'
            f'             source_kind={kind}, name="{name}")')


#: biomarker -> :class:`Recipe`
BIOMARKERS: dict[str, Recipe] = {
    "r2star": Recipe(
        "R2*", ("MEGRE",), "r2star", ("r2star", "t2star"), "1/s", "tumour R2* (1/s)",
        'fit_method = "auto"  # T2* fit: "auto" (noise-floor aware), "loglinear", "nonlinear"',
        'ds = sl.load_study(manifest, study, "MEGRE")',
        "maps = sl.fit_relaxation_maps(ds, method=fit_method, cache_dir=cache_dir, study=study)",
        "Mono-exponential T2\\*/R2\\* per voxel inside the ROIs; the default fit models the Rician noise "
        "floor (noise SD from the background ROI, label 5), so short T2\\* is not biased upward. The maps "
        "are cached: a rerun reads them back."),
    "t2": Recipe(
        "R2 (T2)", ("MSME",), "r2", ("r2", "t2"), "1/s", "tumour R2 (1/s)",
        'fit_method = "auto"  # T2 fit: "auto" (noise-floor aware), "loglinear", "nonlinear"\n'
        "drop_first_echo = False  # discard the first echo (stimulated-echo contamination)\n"
        "fit_labels = [1, 2]  # ROI labels fitted (1 tumour, 2 muscle)",
        'ds = sl.load_study(manifest, study, "MSME")',
        'fit = sl.t2(ds["signal"].reset_coords(drop=True), method=fit_method,\n'
        '            background=sl.background_mask(ds).reset_coords(drop=True),\n'
        '            mask=ds["roi"].isin(fit_labels).reset_coords(drop=True), drop_first_echo=drop_first_echo)\n'
        'maps = sl.compute_with_progress(fit, label="fitting T2")\n' + _DESIGN_COORDS + _keep('"MSME"', "t2_maps"),
        "Mono-exponential T2/R2 per voxel of the multi-spin-echo train inside `fit_labels`, noise SD from "
        "the background ROI (label 5)."),
    "t1": Recipe(
        "R1 (T1)", ("VFA", "IR"), "r1", ("r1", "t1"), "1/s", "tumour R1 (1/s)",
        't1_kind = "VFA"  # "VFA" (variable flip angle SPGR) or "IR" (inversion recovery)\n'
        'vfa_method = "linear"  # VFA fit: "linear" (DESPOT1) or "nonlinear"\n'
        "fit_labels = [1, 2]  # ROI labels fitted (1 tumour, 2 muscle)",
        "ds = sl.load_study(manifest, study, t1_kind)",
        'signal = ds["signal"].reset_coords(drop=True)\n'
        'mask = ds["roi"].isin(fit_labels).reset_coords(drop=True)\n'
        'fit = (sl.t1_vfa(signal, tr_ms=ds.attrs.get("tr_ms"), method=vfa_method, mask=mask) if t1_kind == "VFA"\n'
        "       else sl.t1_ir(signal, mask=mask))\n"
        'maps = sl.compute_with_progress(fit, label=f"fitting T1 ({t1_kind})")\n' + _DESIGN_COORDS
        + _keep("t1_kind", "t1_maps"),
        "T1/R1 per voxel inside `fit_labels`: DESPOT1 from the variable-flip-angle series (nominal "
        "angles: a flip-angle error b gives T1 ~ b² T1) or a three-parameter inversion-recovery fit.",
        cmap="viridis"),
    "adc": Recipe(
        "ADC", ("DWI",), "adc", ("adc",), "µm²/ms", "tumour ADC (µm²/ms)",
        "b_min = 200.0  # lowest b-value (s/mm²) used for ADC (excludes perfusion)",
        'ds = sl.load_study(manifest, study, "DWI")',
        "maps = sl.fit_adc_maps(ds, b_min=b_min, cache_dir=cache_dir, study=study)",
        "Mono-exponential ADC per voxel from the b-values ≥ `b_min` (leaving out the perfusion "
        "contribution), noise-floor aware; cached.", cmap="viridis"),
    "ktrans": Recipe(
        "Ktrans", ("VFA", "DCE"), "ktrans", ("ktrans", "kep", "ve", "vp", "t1"), "1/min", "tumour Ktrans (1/min)",
        'dce_model = "extended_tofts"  # "tofts", "extended_tofts" or "patlak"\n'
        'aif_source = "cohort"  # "cohort": mean of the measured vessel AIFs; "animal": each animal\'s own\n'
        "n_baseline = None  # pre-contrast frames; None: before the bolus arrival\n"
        "r1_per_mM_s = None  # agent r1 (1/(s mM)); None: the sidecars' value, else the agent's tabulated r1\n"
        "hematocrit = None  # None: the sidecars' value, else the default",
        'vfa = sl.load_study(manifest, study, "VFA")\nds = sl.load_study(manifest, study, "DCE")',
        "maps, aif = sl.fit_dce_maps(vfa, ds, model=dce_model, aif_source=aif_source, n_baseline=n_baseline,\n"
        "                            r1_per_mM_s=r1_per_mM_s, hematocrit=hematocrit, cache_dir=cache_dir, "
        "study=study)\n"
        "variables = [v for v in variables if v in maps]\n"
        'fig = plots.time_curves(aif, title=f"arterial input function (plasma, {aif_source})")',
        "Pre-contrast T1 from the VFA series, signal → concentration, each animal's AIF from its vessel ROI "
        "(label 3), then the tracer-kinetic model per voxel; cached.", cmap="inferno"),
    "cest": Recipe(
        "MTRasym", ("CEST", "WASSR"), "mtr_asym", ("mtr_asym",), "%", "tumour MTRasym (%)",
        "delta_ppm = 0.4  # offset of the exchanging pool from water (ppm): set it for your contrast\n"
        'b0_from = "WASSR"  # B0 map from "WASSR" scans, from the "CEST" spectra themselves, or "none"\n'
        "fit_labels = [1, 2]  # ROI labels analysed (1 tumour, 2 muscle)",
        'ds = sl.load_study(manifest, study, "CEST")',
        'signal = ds["signal"].sortby("offset").reset_coords(drop=True)\n'
        'analysed = ds["roi"].isin(fit_labels).reset_coords(drop=True)\n'
        'b0_signal = (sl.load_study(manifest, study, "WASSR")["signal"].sortby("offset").reset_coords(drop=True)\n'
        '             if b0_from == "WASSR" else signal)\n'
        'b0 = sl.cest_b0_map(b0_signal, mask=analysed) if b0_from != "none" else None\n'
        'res = sl.mtr_asym(signal, ds["m0"].reset_coords(drop=True), b0_ppm=None if b0 is None else b0["b0_ppm"],\n'
        "                  deltas_ppm=(delta_ppm,), mask=analysed)\n"
        'maps = sl.compute_with_progress(res, label="B0 and MTRasym").sel(delta=delta_ppm, drop=True)\n'
        + _DESIGN_COORDS + _keep('"CEST"', "cest_maps"),
        "MTR asymmetry 100·[Z(−Δ) − Z(+Δ)] at `delta_ppm`, with each voxel's water shift (B0) from the "
        "WASSR scans (maximum-symmetry centre frequency) unless `b0_from` says otherwise.", cmap="viridis"),
    "f19": Recipe(
        "19F", ("F19",), "fluorine_mM", ("fluorine_mM",), "mM", "tumour 19F (mM)",
        "false_positive_rate = 0.005  # per-voxel false-positive rate of the 19F detection threshold in noise",
        'ds = sl.load_study(manifest, study, "F19")',
        "quant = sl.fluorine_quantify(ds, false_positive_rate=false_positive_rate)\n"
        'maps = sl.compute_with_progress(quant, label="19F quantification")\n' + _DESIGN_COORDS
        + _keep('"F19"', "f19_maps"),
        "19F nuclei per voxel against the reference tube (label 4), counted where the signal exceeds the "
        "detection threshold set by `false_positive_rate` in Rician noise (noise SD from the background "
        "ROI, label 5); the tumour mean concentration counts undetected voxels as 0.", cmap="inferno"),
}

_LONGITUDINAL = '''# %% [markdown]
# ## 6. Longitudinal mixed model
# Tumour {words} with a mean per group and day and a random intercept per animal
# (`day_model="categorical"`: no shape imposed on the time course); the coefficient of `treated` is the
# treated − control difference on `effect_day`, tested with Satterthwaite degrees of freedom (small
# groups make z-tests too liberal). `day_model="linear"` fits a random intercept and slope per animal
# instead. Any convergence or singular-fit diagnosis is printed below the table.

# %% tags=["key-figure"]
fig = plots.spaghetti(sessions, variable, ylabel="{axis}", title="tumour {words} per animal")

# %%
effect = sl.longitudinal_effect(sessions, variable, control=control, treated=treated, at_day=effect_day,
                                day_model=day_model, alpha=alpha)
effect_finding = f"tumour {{variable}} {{treated}} − {{control}}, day {{effect['at_day']:g}}"
print(sl.model_diagnostics(effect))
effect["model"].fixed'''

_ENDPOINT = '''# %% [markdown]
# ## 6. Endpoint comparison
# One value per animal: its tumour mean on `effect_day` (None: each animal's last imaging day);
# treated − control with Welch's t-test (unequal variances) and its CI.

# %% tags=["key-figure"]
animals = sl.animal_table(sessions, day=effect_day)
fig = plots.group_strips(animals, {{variable: "{axis}"}}, group="group", order=[control, treated])

# %%
effect = sl.group_difference(animals, variable, control=control, treated=treated, alpha=alpha)
effect_finding = (f"tumour {{variable}} {{treated}} − {{control}}, "
                  + ("last imaging day" if effect_day is None else f"day {{effect_day:g}}"))
print(effect["method"])
animals'''



@dataclass(frozen=True)
class NewStudy:
    """What :func:`new_study` wrote: the folder, the study name, the notebook and every file."""

    folder: Path
    study: str
    notebook: Path
    files: tuple[Path, ...]


def _template() -> str:
    return (resources.files("studylib") / "templates" / "notebook.py.tmpl").read_text(encoding="utf-8")


def _check(biomarker, design, study) -> None:
    if biomarker not in BIOMARKERS:
        raise WorkbookError(f"biomarker {biomarker!r} is not known; choose one of {', '.join(BIOMARKERS)}")
    if design not in DESIGNS:
        raise WorkbookError(f"design {design!r} is not known; choose one of {', '.join(DESIGNS)}")
    if not isinstance(study, str) or not _NAME.match(study) or "+" in study:
        raise WorkbookError(f"study name {study!r} is not valid: letters, digits, '_', '.', '-' (not first), "
                            "e.g. --study lab_r2star_2026")
    if study in EXPERIMENTS:
        raise WorkbookError(f"study name {study!r} is one of the catalogued experiments; choose another "
                            "with --study")


def render_notebook(study: str, biomarker: str, design: str = "longitudinal") -> str:
    """The text of the generic notebook (jupytext percent format) of ``study`` for ``biomarker`` and ``design``.

    Raises
    ------
    WorkbookError
        an unknown biomarker or design, or a study name that is not a plain name.
    """
    _check(biomarker, design, study)
    r = BIOMARKERS[biomarker]
    effect = (_LONGITUDINAL if design == "longitudinal" else _ENDPOINT).format(words=r.words, axis=r.axis_label)
    design_params = ('day_model = "categorical"  # "categorical": a mean per group and day; "linear": random '
                     "intercept + slope per animal") if design == "longitudinal" else ""
    params = (f"{r.parameters}\nvariable = {json.dumps(r.variable)}  # the primary map\n"
              f"variables = {json.dumps(list(r.variables))}  # maps tabulated per ROI")
    fills = {"STUDY": study, "BIOMARKER_WORDS": r.words, "DESIGN_WORDS": f"{design} design",
             "PARAMETERS": params, "DESIGN_PARAMETERS": design_params, "EXPECTED_SIGN": "1", "LOAD": r.load,
             "FIT": r.fit, "FIT_WORDS": r.fit_words, "MAP_TITLE": f"tumour {r.words}", "CMAP": r.cmap,
             "AXIS_LABEL": r.axis_label, "UNITS": r.units, "CI_PERCENT": "(1 − alpha)·100", "EFFECT_CELLS": effect}
    text = _template()
    if not design_params:
        text = text.replace("{{DESIGN_PARAMETERS}}\n", "")
    for key, value in fills.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:  # pragma: no cover - a template edited without its fill
        raise WorkbookError(f"notebook template: unfilled placeholder(s) {sorted(set(left))}")
    return text


def new_study(folder, *, biomarker: str, design: str = "longitudinal", study: str | None = None) -> NewStudy:
    """Write a new study folder (see the module docstring) and return what was written.

    Parameters
    ----------
    folder : a folder that does not exist or is empty.
    biomarker : one of :data:`BIOMARKERS` (``r2star``, ``t2``, ``t1``, ``adc``, ``ktrans``, ``cest``, ``f19``).
    design : ``"longitudinal"`` (a mixed model over imaging days) or ``"endpoint"`` (one value per animal).
    study : the study name (the manifest's ``study`` value and the notebook's name); default the folder's name.

    Raises
    ------
    WorkbookError
        an unknown biomarker or design, an invalid study name, or a folder that is a file or not empty.
    """
    from ..manifest import REQUIRED_COLUMNS, write_manifest
    import pandas as pd

    folder = Path(folder).expanduser()
    study = folder.resolve().name if study is None else study
    _check(biomarker, design, study)
    if folder.exists() and not folder.is_dir():
        raise WorkbookError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise WorkbookError(f"{folder}: the folder is not empty; `studylib new` writes only into a new or empty "
                            "folder (nothing was written)")
    r = BIOMARKERS[biomarker]
    text = render_notebook(study, biomarker, design)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notebooks").mkdir()
    nb = folder / "notebooks" / f"{study}.py"
    nb.write_text(text, encoding="utf-8")
    manifest = write_manifest(pd.DataFrame(columns=list(REQUIRED_COLUMNS)), folder / "data_manifest.csv")
    animals = folder / "animals.csv"
    animals.write_text(",".join(c for c in ANIMAL_COLUMNS if c != "study") + "\n", encoding="utf-8")
    info = folder / STUDY_FILE
    info.write_text(json.dumps(study_facts(biomarker, design), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return NewStudy(folder, study, nb, (manifest, animals, info, nb))


def study_facts(biomarker: str, design: str = "longitudinal") -> dict:
    """The ``study.json`` facts the generic notebook fixes: its unit of analysis, primary endpoint and
    outcome measure (every other :data:`~studylib.workbook.animals.STUDY_FIELDS` item is the lab's to add)."""
    _check(biomarker, design, "x")
    r = BIOMARKERS[biomarker]
    test = ("a linear mixed model with a mean per group and imaging day and a random intercept per animal, "
            "Satterthwaite degrees of freedom" if design == "longitudinal" else
            "Welch's t-test on one value per animal")
    facts = {"experimental_unit": "the animal (each animal's tumour mean per imaging day)",
             "primary_endpoint": f"tumour {r.words} ({r.units}): treated minus control on the last imaging day, "
                                 f"{test}",
             "outcome_measures": [f"tumour {r.words} ({r.units}) per animal and imaging day (MRI, "
                                  f"{', '.join(r.kinds)} scans)"]}
    return facts


def study_folder_defaults(manifest) -> tuple[Path, Path] | None:
    """``(notebooks, reports)`` of the study folder holding ``manifest`` (a folder with ``study.json``
    and a ``notebooks/`` folder, as :func:`new_study` writes), or None for any other manifest."""
    if manifest is None:
        return None
    base = Path(manifest).expanduser().resolve().parent
    if (base / STUDY_FILE).is_file() and (base / "notebooks").is_dir():
        return base / "notebooks", base / "reports"
    return None
