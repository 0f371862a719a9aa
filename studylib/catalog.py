"""The experiment catalogue: one frozen record per experiment notebook, in report order.

Every other module (the runner, the report index, the synthesiser, the conclusions rows) reads
the experiment list, titles and citations from :data:`EXPERIMENTS`.  A lab adds its own experiment
by adding a record here and a notebook ``notebooks/<name>.py``.

>>> EXPERIMENTS["collagen_adc"].kinds
('DWI',)
>>> experiment("nope")
Traceback (most recent call last):
...
studylib.errors.StudyError: unknown experiment 'nope'; known: ampb_ferumoxytol, blz945_femri, ferumoxytol_therapy, collagen_adc, ktrans_hypoxia, fluorine19_pfc, lactate_cest, acidocest_b16
>>> [e.name for e in EXPERIMENTS.values() if e.data == "real"]
['acidocest_b16']
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import StudyError

__all__ = ["Experiment", "EXPERIMENTS", "DATA_KINDS", "experiment", "citation"]

#: where an experiment's data come from: ``studylib synth`` (a simulated study with known truth) or a
#: real scanner study committed with the repository (its own manifest; no truth)
DATA_KINDS = ("synthetic", "real")


@dataclass(frozen=True)
class Experiment:
    """One experiment of the workbook.

    Attributes
    ----------
    name : the notebook's name (``notebooks/<name>.py``) and the manifest's ``study`` value.
    title : a short title for the report index.
    biomarker : what is measured, for the index.
    after : the paper it follows, short form (index).
    citation : the paper, full enough to find it (conclusions tables).
    finding : the paper's finding in one line.
    kinds : the image kinds the notebook reads (besides ``roi`` and ``histology``).
    data : ``"synthetic"`` (default: the study is written by :mod:`studylib.synth`, which has one
        planner per synthetic experiment) or ``"real"`` (scanner data committed under ``data/real/``).
    manifest : for real data, the experiment's own manifest, relative to the project folder
        (:func:`studylib.layout.project_root`); ``studylib run <name>`` uses it unless it is given a
        manifest that lists the study.  Empty for synthetic experiments.
    source : for real data, the vendored scanner folder the manifest's images are imported from
        (relative to the project folder), with its ``LICENSE`` and ``SOURCE.txt``.
    typical_run_s : seconds the notebook took on the demo preset on the 2-core reference machine (serial run of
        ``benchmarks/reports.py``, 2026-12-05): only the order in which ``studylib run --jobs`` starts notebooks
        when no earlier run in the reports folder recorded their times (longest first); 0: unknown.
    """

    name: str
    title: str
    biomarker: str
    after: str
    citation: str
    finding: str
    kinds: tuple[str, ...]
    data: str = "synthetic"
    manifest: str = ""
    source: str = ""
    typical_run_s: float = 0.0

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise StudyError(f"experiment {self.name!r}: data must be one of {DATA_KINDS}, got {self.data!r}")
        if (self.data == "real") != bool(self.manifest):
            raise StudyError(f"experiment {self.name!r}: a real-data experiment needs its manifest (and only it)")


#: name -> :class:`Experiment`, in the order reports are run and listed
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("ampb_ferumoxytol", "Amphotericin B and ferumoxytol in glioma",
               "ferumoxytol ΔR2*/T2*, Amp B vs vehicle", "Yang et al., Neuro-Oncology 2017",
               "Yang et al., Neuro-Oncology 2017;19:364",
               "Amp B raises tumour R2* after ferumoxytol (more iron-laden macrophages) vs vehicle",
               ("MEGRE",), typical_run_s=18.7),
    Experiment("blz945_femri", "BLZ945 and endogenous-iron FeMRI",
               "endogenous-iron R2* (MGE, 16 echoes), BLZ945 vs control", "Leftin et al., Sci Rep 2019",
               "Leftin et al., Sci Rep 2019;9:857",
               "BLZ945 lowers endogenous-iron R2* (FeMRI) as it depletes TAMs; R2* tracks histological iron",
               ("MEGRE",), typical_run_s=14.7),
    Experiment("ferumoxytol_therapy", "Ferumoxytol as tumour therapy",
               "tumour growth and T2* after ferumoxytol vs control", "Zanganeh et al., Nat Nanotechnol 2016",
               "Zanganeh et al., Nat Nanotechnol 2016;11:986 (doi:10.1038/nnano.2016.168)",
               "ferumoxytol suppresses MMTV-PyMT tumour growth and shortens tumour T2*; CD80 up, CD206 down",
               ("T2w", "MEGRE"), typical_run_s=16.7),
    Experiment("collagen_adc", "ADC and collagen I in cervical cancer PDX",
               "ADC (b 200–1000) vs collagen I fraction", "Hauge et al., cervical cancer PDX",
               "Hauge et al., cervical carcinoma PDX (Rofstad lab)",
               "ADC correlates inversely with the collagen I-positive tissue fraction",
               ("DWI",), typical_run_s=10.0),
    Experiment("ktrans_hypoxia", "DCE-MRI Ktrans and hypoxia",
               "Ktrans (Tofts / extended Tofts) vs hypoxic fraction", "Hauge et al., J Transl Med 2017",
               "Hauge et al., J Transl Med 2017;15:225",
               "Ktrans correlates inversely with the pimonidazole hypoxic fraction",
               ("VFA", "DCE", "B1map"), typical_run_s=22.5),
    Experiment("fluorine19_pfc", "19F perfluorocarbon imaging of macrophages",
               "19F PFC signal vs metastatic potential (67NR/168FARN/4T1)", "Makela et al., MRM 2018",
               "Makela et al., MRM 2018;80:1138 (doi:10.1002/mrm.27081)",
               "19F (PFC-labelled macrophage) signal rises with metastatic potential: 67NR < 168FARN < 4T1",
               ("F19", "T2w"), typical_run_s=9.9),
    Experiment("lactate_cest", "Lactate CEST (LATEST) after pyruvate",
               "MTRasym at 0.4 ppm, pre vs post pyruvate", "DeBrosse et al., Sci Rep 2016",
               "DeBrosse et al., Sci Rep 2016;6:19517 (doi:10.1038/srep19517)",
               "LATEST (lactate CEST, MTRasym at 0.4 ppm) rises after pyruvate infusion",
               ("CEST", "WASSR"), typical_run_s=14.2),
    Experiment("acidocest_b16", "acidoCEST tumour pHe in one B16F10 mouse (real scanner data)",
               "extracellular pH from the iopamidol CEST ratio 4.2/5.5 ppm, tumour pixels",
               "Chen et al., MRM 2014 (method); real data: 1 mouse, PV 6.0.1, 7 T",
               "Chen LQ, Howison CM, Jeffery JJ, Robey IF, Kuo PH, Pagel MD. Evaluations of extracellular pH "
               "within in vivo tumors using acidoCEST MRI. Magn Reson Med 2014;72:1408-1417",
               "acidoCEST measures an acidic tumour extracellular pH (about 6.5-7.0; normal tissue ~7.4)",
               ("CEST", "T2w"), data="real", manifest="data/real/acidocest_b16/data_manifest.csv",
               source="data/real/bruker_pv601_mouse_cest", typical_run_s=8.9),
]}


def experiment(name: str) -> Experiment:
    """The catalogue record of ``name``; :class:`~studylib.errors.StudyError` naming the known ones otherwise."""
    try:
        return EXPERIMENTS[name]
    except (KeyError, TypeError):
        raise StudyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}") from None


def citation(name: str) -> str:
    """The citation of a catalogued experiment, or ``""`` for a lab's own, uncatalogued one."""
    e = EXPERIMENTS.get(name)
    return e.citation if e is not None else ""
