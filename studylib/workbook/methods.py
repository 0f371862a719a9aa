"""The report sections a journal asks for, built from the data and the run (never from the notebook text):
a **methods section**, the **ARRIVE 2.0 Essential 10** and the **animal flow** (CONSORT-style table and
a per-animal timeline figure).

:func:`build_report_sections` reads

* the manifest rows of the experiment's study (:func:`studylib.manifest.read_manifest`),
* every scan's JSON sidecar (:mod:`studylib.io.sidecar`: ``MagneticFieldStrength``, ``EchoTime``,
  ``RepetitionTime``, ``FlipAngle``, ``bValue``, ``FrameTimes``, ``SaturationOffsets_ppm`` ...) and NIfTI
  header (matrix, voxel size; :func:`studylib.io.nifti.read_header`), and the ROI sidecars' ``Labels``,
* the run: its parameters (the notebook's declared defaults updated by the given ones), its cache
  events (each cached map's ``_entry.json`` parameters and the fit's own attributes: model, method,
  noise level), its conclusions rows (finding, estimate, CI, p and the statistical method with its
  formula and degrees of freedom) and the package versions,
* the catalogue (:mod:`studylib.catalog`: biomarker, citation) and the optional ``study.json`` and
  ``animals.csv`` beside the manifest (:mod:`studylib.workbook.animals`).

The methods text follows the idea of fMRIPrep's citation boilerplate (Esteban et al., Nat Methods 2019,
doi:10.1038/s41592-018-0235-4): generated from what was run, with software versions and a reference
list, to be checked and copied into a manuscript.  Values that differ across scans are given as ranges
and say so.  :func:`sections_html` renders the three sections for :func:`studylib.workbook.report.render_report`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..catalog import EXPERIMENTS
from ..conventions import ROI_LABELS
from ..errors import StudyError
from ..io.nifti import read_header
from ..io.sidecar import AXES, read_sidecar, sidecar_path
from ..manifest import read_manifest
from .animals import (ANIMALS_FILE, STUDY_FILE, animal_flow, arrive_items, read_animals, read_study_info)

__all__ = ["REFERENCES", "SECTION_IDS", "build_report_sections", "acquisition_summary", "sections_html",
           "record_sections", "sections_from_record", "study_files_signature"]

#: the HTML ids of the three sections (the table of contents links to them)
SECTION_IDS = {"methods": "studylib-methods", "arrive": "studylib-arrive", "flow": "studylib-animal-flow"}

#: key -> reference, as cited in the docstrings of the code that does the work
REFERENCES: dict[str, str] = {
    "esteban2019": "Esteban O, et al. fMRIPrep: a robust preprocessing pipeline for functional MRI. Nat Methods "
                   "2019. doi:10.1038/s41592-018-0235-4 (the idea of a generated methods boilerplate)",
    "arrive2020": "Percie du Sert N, et al. The ARRIVE guidelines 2.0: updated guidelines for reporting animal "
                  "research. PLoS Biol 2020;18:e3000410. doi:10.1371/journal.pbio.3000410",
    "miller1993": "Miller AJ, Joseph PM. MRI 1993;11:1051. doi:10.1016/0730-725X(93)90225-3",
    "raya2010": "Raya JG, et al. NMR Biomed 2010;23:387. doi:10.1002/nbm.1476",
    "veraart2013": "Veraart J, et al. NeuroImage 2013;81:335. doi:10.1016/j.neuroimage.2013.05.028",
    "marquardt1963": "Marquardt DW. SIAM J Appl Math 1963;11:431. doi:10.1137/0111030",
    "gudbjartsson1995": "Gudbjartsson H, Patz S. Magn Reson Med 1995;34:910. doi:10.1002/mrm.1910340618",
    "constantinides1997": "Constantinides CD, et al. Magn Reson Med 1997;38:852. doi:10.1002/mrm.1910380524",
    "aja2009": "Aja-Fernández S, et al. Magn Reson Imaging 2009. doi:10.1016/j.mri.2009.05.025",
    "lebihan1988": "Le Bihan D, et al. Radiology 1988;168:497. doi:10.1148/radiology.168.2.3393671",
    "tofts1999": "Tofts PS, et al. J Magn Reson Imaging 1999;10:223. "
                 "doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S",
    "patlak1983": "Patlak CS, et al. J Cereb Blood Flow Metab 1983;3:1. doi:10.1038/jcbfm.1983.1",
    "murase2004": "Murase K. Magn Reson Med 2004;51:858. doi:10.1002/mrm.20022",
    "flouri2016": "Flouri D, et al. Magn Reson Med 2016;76:998. doi:10.1002/mrm.25991",
    "deoni2003": "Deoni SCL, et al. Magn Reson Med 2003;49:515. doi:10.1002/mrm.10407",
    "schabel2008": "Schabel MC, Parker DL. Phys Med Biol 2008;53:2345. doi:10.1088/0031-9155/53/9/010",
    "zhou2003": "Zhou J, et al. Nat Med 2003;9:1085. doi:10.1038/nm907",
    "kim2009": "Kim M, et al. Magn Reson Med 2009;61:1441. doi:10.1002/mrm.21873",
    "debrosse2016": "DeBrosse C, et al. Sci Rep 2016;6:19517. doi:10.1038/srep19517",
    "zaiss2011": "Zaiss M, et al. J Magn Reson 2011;211:149. doi:10.1016/j.jmr.2011.05.001",
    "longo2011": "Longo DL, et al. Magn Reson Med 2011;65:202",
    "chen2014": "Chen LQ, et al. Magn Reson Med 2014;72:1408",
    "srinivas2010": "Srinivas M, et al. Trends Immunol 2010;31:223. doi:10.1016/j.it.2010.03.004",
    "satterthwaite1946": "Satterthwaite FE. Biometrics Bulletin 1946;2:110. doi:10.2307/3002019",
    "kuznetsova2017": "Kuznetsova A, et al. J Stat Softw 2017;82(13). doi:10.18637/jss.v082.i13",
    "kenward1997": "Kenward MG, Roger JH. Biometrics 1997. doi:10.2307/2533558",
    "bates2015": "Bates D, et al. J Stat Softw 2015;67(1). doi:10.18637/jss.v067.i01",
    "efron1987": "Efron B. J Am Stat Assoc 1987. doi:10.1080/01621459.1987.10478410",
    "bakdash2017": "Bakdash JZ, Marusich LR. Front Psychol 2017;8:456. doi:10.3389/fpsyg.2017.00456",
    "jonckheere1954": "Jonckheere AR. Biometrika 1954;41:133. doi:10.1093/biomet/41.1-2.133",
    "holm1979": "Holm S. Scand J Stat 1979;6:65",
}

#: words in a statistical method string -> references
_STATS_REFS = (("mixed model", "bates2015"), ("satterthwaite", "satterthwaite1946"), ("satterthwaite", "kuznetsova2017"),
               ("kenward", "kenward1997"), ("bca", "efron1987"), ("repeated-measures", "bakdash2017"),
               ("within", "bakdash2017"), ("rm-corr", "bakdash2017"), ("jonckheere", "jonckheere1954"),
               ("holm", "holm1979"))

#: the mono-exponential fit methods of studylib.models.relaxometry.fit_monoexp: (text, references)
_MONOEXP = {
    "squared": ("the noise-corrected squared magnitude, E[S²] = S0² e^(−2Rx) + 2Lσ² (unbiased at low SNR; "
                "L receive channels)", ["miller1993", "raya2010", "constantinides1997"]),
    "rician": ("least squares against the Rician expectation of |S|", ["gudbjartsson1995"]),
    "nonlinear": ("non-linear least squares on |S| (Levenberg–Marquardt)", ["marquardt1963"]),
    "loglinear": ("a log-linear fit weighted by S²", ["veraart2013"]),
}


def _g(x, digits=4) -> str:
    return f"{float(x):.{digits}g}"


def _span(values, unit="", digits=4) -> str:
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12):
        return f"{_g(lo, digits)}{unit}"
    return f"{_g(lo, digits)}{' to ' if lo < 0 else '–'}{_g(hi, digits)}{unit}"


def _varies(values: list, fmt) -> str:
    """One value, or the range and "differs across scans"."""
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    uniq = sorted(set(vals), key=str)
    if len(uniq) == 1:
        return fmt(uniq[0])
    if all(isinstance(v, (int, float)) for v in uniq):
        return f"{fmt(min(uniq))}–{fmt(max(uniq))} (differs across scans)"
    return " / ".join(fmt(v) for v in uniq) + " (differs across scans)"


def _axis_text(kind: str, axes: list[tuple]) -> tuple[str, dict]:
    """The acquisition axis of ``kind`` over all scans: text and numbers."""
    dim, key, factor, unit, _ = AXES[kind]
    lens = [len(a) for a in axes]
    allv = [v for a in axes for v in a]
    n = _varies(lens, str)
    data = {"key": key, "n": sorted(set(lens)), "min": min(allv) * factor, "max": max(allv) * factor,
            "units": unit.replace("^2", "²")}
    rng = _span([v * factor for v in allv], f" {data['units']}")
    if kind in ("MEGRE", "MSME"):
        steps = {round((b - a) * factor, 6) for ax in axes for a, b in zip(ax, ax[1:])}
        text = f"{n} echoes, TE {rng}" + (f" (spacing {_g(steps.pop())} ms)" if len(steps) == 1 else "")
    elif kind == "DWI":
        bs = sorted({round(v, 3) for v in allv})
        text = f"{n} b-values, b = {', '.join(_g(b) for b in bs)} s/mm²" + (" (differs across scans)" if len(set(map(tuple, axes))) > 1 else "")
    elif kind == "VFA":
        fas = sorted({round(v, 3) for v in allv})
        text = f"{n} flip angles, {', '.join(_g(f) for f in fas)}°"
    elif kind == "DCE":
        dts = [b - a for ax in axes for a, b in zip(ax, ax[1:])]
        text = (f"{n} frames over {_span([ax[-1] - ax[0] for ax in axes], ' s')}, temporal resolution "
                f"{_span(dts, ' s', 3)}")
    elif kind in ("CEST", "WASSR"):
        text = f"{n} saturation offsets, {rng}"
    else:
        text = f"{n} {AXES[kind][4]}s, {rng}"
    return text, data


def acquisition_summary(rows, base) -> tuple[list[dict], list[str]]:
    """Per image kind of the study: its scans' sidecar parameters and header geometry.

    Parameters
    ----------
    rows : manifest rows of one study (pandas.DataFrame).
    base : the manifest's folder.

    Returns
    -------
    (kinds, notes) : ``kinds`` one dict per kind (``kind``, ``n_scans``, ``n_animals``, ``field_T``,
        ``nucleus``, ``sequence``, ``axis`` with ``n``/``min``/``max``/``units``, ``te_ms``, ``tr_ms``,
        ``flip_deg``, ``matrix``, ``voxel_mm``, ``agent``, ``dose``, ``timing``, ``coils``, ``noise_sigma``
        and ``text``); ``notes`` name the files that could not be read.
    """
    base = Path(base)
    notes, out = [], []
    img = rows[~rows["kind"].isin(["roi", "histology"]) & rows["path"].str.contains(r"\.nii(?:\.gz)?$", regex=True)]
    for kind in dict.fromkeys(img["kind"]):
        sel = img[img["kind"] == kind]
        cars, geo = [], []
        for p in sel["path"]:
            try:
                cars.append(read_sidecar(sidecar_path(base / p)))
            except StudyError as err:
                notes.append(str(err))
            try:
                h = read_header(base / p)
                geo.append((tuple(h.shape[:3]), tuple(round(v, 4) for v in h.voxel_size_mm)))
            except StudyError as err:
                notes.append(str(err))
        field = [c.get("MagneticFieldStrength") for c in cars]
        rec = {"kind": kind, "n_scans": len(sel), "n_animals": int(sel["animal"].nunique()),
               "field_T": sorted({f for f in field if f is not None}),
               "nucleus": sorted({c["Nucleus"] for c in cars if c.get("Nucleus")}),
               "sequence": sorted({str(c.get("PulseSequenceType") or c.get("SequenceName") or c.get("ProtocolName"))
                                   for c in cars if c.get("PulseSequenceType") or c.get("SequenceName")
                                   or c.get("ProtocolName")}),
               "acquisition": sorted({c["MRAcquisitionType"] for c in cars if c.get("MRAcquisitionType")})}
        parts = []
        if kind in AXES:
            key = AXES[kind][1]
            axes = []
            for c in cars:
                v = c.get(key)
                if v is None:
                    continue
                v = v if isinstance(v, list) else [v]
                ref = set(c.get("ReferenceVolumes") or []) if kind in ("CEST", "WASSR") else set()
                axes.append([x for i, x in enumerate(v) if i not in ref])
            if axes and all(axes):
                text, rec["axis"] = _axis_text(kind, axes)
                parts.append(text)
        scal = lambda k, f: [c[k] * f for c in cars if isinstance(c.get(k), (int, float))]  # noqa: E731
        rec["te_ms"], rec["tr_ms"] = scal("EchoTime", 1000.0), scal("RepetitionTime", 1000.0)
        rec["flip_deg"] = scal("FlipAngle", 1.0)
        for label, vals, unit in (("TE", rec["te_ms"], " ms"), ("TR", rec["tr_ms"], " ms"), ("flip angle", rec["flip_deg"], "°")):
            if vals:
                parts.append(f"{label} {_varies([round(v, 4) for v in vals], lambda v, u=unit: _g(v) + u)}")
        sat = [c.get("SaturationB1_uT") for c in cars]
        if any(s is not None for s in sat):
            parts.append(f"saturation B1 {_varies(sat, lambda v: _g(v) + ' µT')}")
        st = [c.get("SaturationTime") for c in cars]
        if any(s is not None for s in st):
            parts.append(f"saturation time {_varies(st, lambda v: _g(v) + ' s')}")
        avg = [c.get("NumberOfAverages") for c in cars]
        if any(a is not None for a in avg):
            parts.append(f"{_varies(avg, str)} averages")
        nuc = "/".join(rec["nucleus"])
        if rec["field_T"]:
            parts.append((f"{nuc} " if nuc else "") + f"at {_varies(field, lambda v: _g(v, 3) + ' T')}")
        if geo:
            rec["matrix"] = sorted({g[0] for g in geo})
            rec["voxel_mm"] = sorted({g[1] for g in geo})
            parts.append("matrix " + " / ".join(" × ".join(map(str, m)) for m in rec["matrix"])
                         + ", voxel " + " / ".join(" × ".join(_g(v) for v in vx) for vx in rec["voxel_mm"]) + " mm"
                         + (" (differs across scans)" if len(set(geo)) > 1 else ""))
        rec["agent"] = sorted({c["Agent"] for c in cars if c.get("Agent")})
        rec["dose"] = sorted({c["ContrastDose_mmol_per_kg"] for c in cars if c.get("ContrastDose_mmol_per_kg") is not None})
        rec["timing"] = sorted({c["ContrastTiming"] for c in cars if c.get("ContrastTiming")})
        if rec["agent"]:
            parts.append("contrast agent " + ", ".join(rec["agent"])
                         + (f" ({_span(rec['dose'], ' mmol/kg', 3)})" if rec["dose"] else "")
                         + (f", {'; '.join(rec['timing'])}" if rec["timing"] else ""))
        rec["coils"] = sorted({int(c["ReceiveCoilChannels"]) for c in cars if c.get("ReceiveCoilChannels")})
        rec["noise_sigma"] = sum(c.get("NoiseSigma") is not None for c in cars)
        seq = ", ".join(rec["sequence"] + rec["acquisition"])
        rec["text"] = (f"{kind}" + (f" ({seq})" if seq else "") + ": " + "; ".join(parts)
                       + f"; {rec['n_scans']} scan(s) of {rec['n_animals']} animal(s).")
        out.append(rec)
    return out, notes


def _roi_summary(rows, base: Path) -> tuple[dict, list[str]]:
    """Label value -> {names, sessions} over the study's ROI sidecars."""
    labels, notes = {}, []
    for p in rows[(rows["kind"] == "roi") & rows["path"].str.endswith(".json")]["path"]:
        try:
            car = read_sidecar(base / p)
        except StudyError as err:
            notes.append(str(err))
            continue
        for v, name in (car.get("Labels") or {}).items():
            d = labels.setdefault(int(v), {"names": set(), "sessions": 0})
            d["names"].add(name)
            d["sessions"] += 1
    return {k: {"names": sorted(v["names"]), "sessions": v["sessions"]} for k, v in sorted(labels.items())}, notes


def _cache_entries(prov: dict, params: dict) -> list[dict]:
    """The run's cached steps with their recorded parameters and the result's attributes (fit, model, method)."""
    events = (prov.get("cache") or {}).get("events") or []
    root = params.get("cache_dir")
    out, seen = [], set()
    for ev in events:
        name, key = ev.get("name"), str(ev.get("key") or "")
        if not name or name in seen:
            continue
        seen.add(name)
        rec = {"name": name, "hit": bool(ev.get("hit")), "params": None, "description": None, "attrs": {}}
        if root and key:
            for folder in sorted(Path(root, prov.get("experiment", ""), name).glob(f"{key}*"))[:1]:
                try:
                    meta = json.loads((folder / "_entry.json").read_text(encoding="utf-8"))
                    rec["description"] = meta.get("description")
                    rec["params"] = meta.get("params")
                    z = folder / "data.zarr" / "zarr.json"
                    if z.is_file():
                        rec["attrs"] = json.loads(z.read_text(encoding="utf-8")).get("attributes") or {}
                except (OSError, ValueError):
                    pass
        out.append(rec)
    return out


def _fit_paragraphs(kinds: set, entries: list[dict], params: dict, exp) -> tuple[list[str], set, list[str]]:
    """Fit and noise-handling text from the cached maps' attributes and the run parameters."""
    text, refs, measures = [], set(), []
    fitted = {e["attrs"].get("fit"): e for e in entries if e["attrs"].get("fit")}
    for fit, what, model, extra in (("t2star", "T2*/R2* (R2* = 1000/T2*, 1/s)", "S(TE) = S0·exp(−TE/T2*)", []),
                                    ("adc", "ADC (µm²/ms)", "S(b) = S0·exp(−b·ADC)", ["lebihan1988"])):
        e = fitted.get(fit)
        if e is None:
            continue
        a, p = e["attrs"], e["params"] if isinstance(e["params"], dict) else {}
        m = a.get("method", "")
        desc, r = _MONOEXP.get(m, (f"method {m!r}", []))
        refs |= set(r) | set(extra)
        measures.append(what.split(" (")[0])
        s = f"{what} maps were fitted voxel-wise to {model} by {desc}"
        if fit == "adc" and p.get("b"):
            s += f", using b = {', '.join(_g(b) for b in p['b'])} s/mm²"
        if p.get("labels"):
            s += f", inside ROI label(s) {', '.join(map(str, p['labels']))}"
        noise = a.get("noise_sigma")
        if m in ("squared", "rician") and noise not in (None, "not used"):
            src = (f"estimated per scan from the signal-free background ROI (label {p['noise_label']}), "
                   "sigma = mean|S| / sqrt(π/2) for one channel" if p.get("noise_label") is not None and noise == "map"
                   else ("fitted per voxel as a third parameter" if noise == "per-voxel fitted" else f"{noise}"))
            s += f"; the noise SD was {src}"
            refs |= {"gudbjartsson1995", "aja2009"}
        if a.get("n_coils"):
            s += f" ({a['n_coils']} receive channel(s), root-sum-of-squares)"
        text.append(s + ". Voxels whose fit failed (non-finite or non-physical values) are NaN and flagged (fit_ok).")
    e = fitted.get("dce")
    if e is not None:
        a, p = e["attrs"], e["params"] if isinstance(e["params"], dict) else {}
        model = a.get("model") or p.get("model")
        refs |= {"tofts1999", "murase2004", "flouri2016", "deoni2003", "schabel2008"}
        if model == "patlak":
            refs.add("patlak1983")
        measures.append(f"Ktrans ({model})")
        text.append(f"T1 was mapped from the variable-flip-angle scans ({p.get('t1_method', '')} fit of the SPGR "
                    f"signal); DCE signal was converted to concentration (r1 {p.get('r1')} /(s·mM), TR {p.get('tr')} ms, "
                    f"flip angle {p.get('fa')}°, {p.get('n_baseline')} baseline frames) and fitted voxel-wise with the "
                    f"{model} model ({a.get('method', '')}); arterial input function: {p.get('aif_source')} "
                    f"(vessel ROI label {p.get('vessel_label')}, haematocrit {p.get('hematocrit')}).")
    if "F19" in kinds:
        refs |= {"gudbjartsson1995", "srinivas2010"}
        measures.append("19F concentration")
        s = ("19F signal was quantified against the reference tube (ROI label 4, its 19F concentration from the "
             "sidecar: ReferenceTube_mM, or ReferenceTubePFC_mM x ReferenceTubeFluorinesPerMolecule), with the noise "
             "SD from the background magnitude (ROI label 5)")
        if all(params.get(k) is not None for k in ("t1_ref_ms", "t2_ref_ms", "t1_tissue_ms", "t2_tissue_ms")):
            s += ("; corrected for the bSSFP relaxation weighting of tube and tissue (T1/T2 "
                  f"{params['t1_ref_ms']}/{params['t2_ref_ms']} and {params['t1_tissue_ms']}/{params['t2_tissue_ms']} ms)")
        elif "t1_ref_ms" in params:
            s += "; without a relaxation correction (values are reference-tube equivalent)"
        if "false_positive_rate" in params:
            s += f"; a voxel counts as 19F-positive above the threshold with a per-voxel false-positive rate of {params['false_positive_rate']} in noise"
        if "f_atoms_per_cell" in params:
            s += f"; apparent cell numbers assume {params['f_atoms_per_cell']:g} 19F atoms per cell"
        text.append(s + ".")
    if "CEST" in kinds:
        if "delta_ppm" in params:
            refs |= {"zhou2003", "kim2009", "debrosse2016"}
            s = (f"Z-spectra were normalised by the unsaturated reference volume(s), B0-corrected with the WASSR scan "
                 f"({params.get('b0_method', '')}) and MTRasym = Z(−Δ) − Z(+Δ) was integrated over "
                 f"{params.get('band_ppm')} ppm around Δ = {params['delta_ppm']} ppm")
            if params.get("fit_pools"):
                s += "; water, lactate and MT pools were also fitted as Lorentzians"
                refs.add("zaiss2011")
            measures.append("MTRasym")
            text.append(s + ".")
        elif exp is not None and "pH" in exp.biomarker:
            refs |= {"longo2011", "chen2014"}
            measures.append("CEST ratio / pHe")
            text.append(f"CEST data were analysed as {exp.biomarker} (ratiometric CEST after Longo et al. and Chen et al.).")
        else:
            measures.append("CEST effect")
            text.append("CEST data were analysed as " + (exp.biomarker if exp else "CEST effects")
                        + " (the run recorded no further parameters).")
    return text, refs, measures


def _effective_parameters(prov: dict, declared) -> dict:
    import ast

    out = {}
    for k, v in (declared or {}).items():
        try:
            out[k] = ast.literal_eval(str(v))
        except (ValueError, SyntaxError):
            out[k] = v
    out.update(prov.get("parameters") or {})
    return out


def _findings(prov: dict) -> list[dict]:
    c = prov.get("conclusions")
    if isinstance(c, dict) and "columns" in c and "data" in c:
        return [dict(zip(c["columns"], row)) for row in c["data"]]
    if isinstance(c, list):
        return [r for r in c if isinstance(r, dict)]
    return []


def build_report_sections(manifest, experiment: str, prov: dict | None = None, *, declared=None) -> dict:
    """The methods section, the ARRIVE Essential 10 and the animal flow of one report.

    Parameters
    ----------
    manifest : the manifest the run used (path).
    experiment : the experiment (= the manifest's ``study``).
    prov : the run's provenance record, or a dict with any of ``parameters``, ``cache``, ``conclusions``,
        ``packages``, ``studylib_version``, ``python`` (missing parts are simply not described).
    declared : the notebook's parameters cell, ``{name: default source text}``
        (:func:`studylib.workbook.parameters.declared_parameters`), so defaults count as parameters.

    Returns
    -------
    dict with ``methods`` (``paragraphs``: list of (heading, text), ``text``, ``acquisition``, ``roi_labels``,
    ``statistics``, ``references``), ``arrive`` (the ten items) and ``flow``
    (:func:`studylib.workbook.animals.animal_flow`), and ``notes`` (files not read, inconsistencies).

    Raises
    ------
    DataFileError
        a bad ``animals.csv`` or ``study.json`` (naming the file).
    StudyError
        the manifest cannot be read or lists no rows of ``experiment``.
    """
    prov = dict(prov or {})
    prov.setdefault("experiment", experiment)
    manifest = Path(manifest)
    allrows = read_manifest(manifest)
    base = manifest.parent
    rows = allrows[allrows["study"] == experiment]
    if rows.empty:
        raise StudyError(f"{manifest}: lists no rows of study {experiment!r}")
    studies = sorted(set(allrows["study"]))
    animals = read_animals(base / ANIMALS_FILE, rows, experiment, studies)
    info, notes = read_study_info(base / STUDY_FILE, experiment, studies)
    params = _effective_parameters(prov, declared)
    exp = EXPERIMENTS.get(experiment)
    flow = animal_flow(rows, animals, base=base)
    notes += flow["notes"]
    acq, n1 = acquisition_summary(rows, base)
    labels, n2 = _roi_summary(rows, base)
    notes += n1[:10] + n2[:10]
    entries = _cache_entries(prov, params)
    fit_text, refs, measures = _fit_paragraphs({a["kind"] for a in acq}, entries, params, exp)
    findings = _findings(prov)
    stats = [f"{f.get('finding')}: {f.get('method')}" for f in findings if f.get("method")]
    low = " ".join(stats).lower()
    refs |= {key for word, key in _STATS_REFS if word in low}
    paragraphs = []
    c = flow["table"][0]["counts"]
    groups = ", ".join(f"{g} (n = {c[g]})" for g in flow["groups"])
    intro = (f"This section was generated by studylib {prov.get('studylib_version') or ''} from the data manifest, "
             "the scans' JSON sidecars and NIfTI headers and the record of this run, after fMRIPrep's citation "
             "boilerplate [esteban2019]; check it before copying it into a manuscript.")
    paragraphs.append(("About this section", intro))
    design = f"{c['total']} animals in {len(flow['groups'])} group(s): {groups}"
    if flow["days"]:
        design += f"; imaged on day(s) {', '.join(map(str, flow['days']))} relative to the first treatment"
    if exp is not None:
        design += f". The experiment follows {exp.citation} ({exp.biomarker})"
    paragraphs.append(("Animals and design", design + ". See the animal flow and ARRIVE sections below."))
    acq_text = " ".join(a["text"] for a in acq) or "No image scans are listed."
    paragraphs.append(("Image acquisition (from the sidecars and NIfTI headers)", acq_text))
    if fit_text:
        paragraphs.append(("Parameter maps and noise handling (from the run)", " ".join(fit_text)))
    if entries:
        paragraphs.append(("Cached steps of the run", "; ".join(
            f"{e['name']}" + (f" ({e['description']})" if e["description"] else "")
            + (f" with {json.dumps(e['params'], ensure_ascii=False)}" if e["params"] else "")
            + (" [reused from the cache]" if e["hit"] else " [computed]") for e in entries) + "."))
    roi = "; ".join(f"label {v} = {'/'.join(d['names'])}"
                    + (f" (conventional: {ROI_LABELS[v]})" if v in ROI_LABELS and ROI_LABELS[v] not in d["names"] else "")
                    + f", {d['sessions']} session(s)" for v, d in labels.items())
    paragraphs.append(("Regions of interest", (f"ROI label maps on each scan's grid, label meanings from the ROI "
                                              f"sidecars: {roi}. " if roi else "No ROI files are listed. ")
                       + "How the ROIs were drawn (by whom, blinded or not) is not recorded in the data."))
    alpha = params.get("alpha")
    stat_text = ("; ".join(stats) + "." if stats else "The run recorded no conclusions table, so no statistical "
                 "model can be named.")
    if alpha is not None:
        stat_text += f" Significance level α = {alpha} (two-sided unless the method says otherwise)."
    paragraphs.append(("Statistical analysis (from the run's conclusions table)", stat_text))
    pk = prov.get("packages") or {}
    soft = (f"studylib {prov.get('studylib_version') or '(version unknown)'}"
            + (f" (code sha256 {str(prov.get('studylib_code_sha256'))[:12]})" if prov.get("studylib_code_sha256") else "")
            + (f", Python {prov['python']}" if prov.get("python") else "")
            + (", " + ", ".join(f"{k} {v}" for k, v in pk.items() if v) if pk else "")
            + ". Notebook executed with papermill, report rendered with nbconvert.")
    paragraphs.append(("Software", soft))
    refs.add("esteban2019")
    refs.add("arrive2020")
    ref_list = ([f"{exp.citation} (the study this experiment follows)"] if exp else []) + \
        [f"[{k}] {REFERENCES[k]}" for k in sorted(refs) if k in REFERENCES]
    text = "\n\n".join(f"{h}. {t}" for h, t in paragraphs)
    procedures = [a["text"] for a in acq]
    arrive = arrive_items(rows=rows, animals=animals, info=info, flow=flow, findings=findings, statistics=stats,
                          procedures=procedures, measures=measures, numbers=prov.get("numbers"))
    methods = {"paragraphs": [{"heading": h, "text": t} for h, t in paragraphs], "text": text,
               "acquisition": acq, "roi_labels": {str(k): v for k, v in labels.items()}, "statistics": stats,
               "parameters": {k: v for k, v in params.items() if k not in ("manifest", "reports_dir", "cache_dir")},
               "references": ref_list}
    return {"methods": methods, "arrive": arrive, "flow": flow, "notes": notes,
            "sources": {"animals_csv": animals is not None, "study_json": bool(info)}}


# --------------------------------------------------------------------------- HTML

def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


_NOT_REPORTED = '<span class="sl-not-reported">not reported</span>'
_PALETTE = ("#2c5d8a", "#c2571a", "#1e7a3c", "#7b3fa0", "#9a5b00", "#b3261e", "#4d7f8a", "#666666")


def _timeline_svg(flow: dict) -> str:
    """A per-animal timeline: a dot per scanned day, coloured by group; a red cross where an animal left."""
    days, tl = flow["days"], flow["timeline"]
    if len(days) < 2 or not tl:
        return ""
    order = sorted(tl, key=lambda r: (flow["groups"].index(r["group"]) if r["group"] in flow["groups"] else 99,
                                      r["animal"]))
    left, row_h, width = 90, 11, 420
    height = 30 + row_h * len(order)
    span = max(days[-1] - days[0], 1)
    x = lambda d: left + (width - left - 20) * (d - days[0]) / span  # noqa: E731
    colour = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(flow["groups"])}
    left_day = {e["animal"]: e for e in flow["exclusions"]}
    parts = [f'<svg class="sl-flow-figure" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             "<title>Scans per animal and day; a red cross marks the last scan of an animal that left the study"
             "</title>"]
    for d in days:
        parts.append(f'<line x1="{x(d):.1f}" y1="14" x2="{x(d):.1f}" y2="{height - 4}" stroke="#e3e3e3"/>'
                     f'<text x="{x(d):.1f}" y="10" font-size="9" text-anchor="middle">day {d}</text>')
    for i, r in enumerate(order):
        y = 22 + i * row_h
        c = colour.get(r["group"], "#666")
        parts.append(f'<text x="{left - 6}" y="{y + 3}" font-size="8" text-anchor="end" fill="{c}">'
                     f'{_e(r["animal"])} {_e(r["group"])}</text>')
        if r["days"]:
            parts.append(f'<line x1="{x(r["days"][0]):.1f}" y1="{y}" x2="{x(r["days"][-1]):.1f}" y2="{y}" '
                         f'stroke="{c}" stroke-width="1"/>')
        parts += [f'<circle cx="{x(d):.1f}" cy="{y}" r="3" fill="{c}"/>' for d in r["days"]]
        e = left_day.get(r["animal"])
        if e is not None:
            d = e["day"] if e["day"] is not None and e["source"] != "manifest" else (r["days"][-1] if r["days"] else days[0])
            d = min(max(d, days[0]), days[-1])
            parts.append(f'<text x="{x(d) + 7:.1f}" y="{y + 3}" font-size="9" fill="#b3261e">✕</text>')
    parts.append("</svg>")
    return "".join(parts)


def _entry_html(e: dict) -> str:
    val = _NOT_REPORTED if e["value"] is None else _e(e["value"])
    src = f' <span class="sl-muted">({_e(e["source"])})</span>' if e["value"] is not None and e["source"] else ""
    return f"<li><b>{_e(e['label'])}:</b> {val}{src}</li>"


def sections_html(sections: dict | None, error: str | None = None) -> str:
    """HTML of the methods, ARRIVE and animal-flow sections (:func:`build_report_sections`); with ``error``
    (the sections could not be built) each heading says why.  Every string is escaped."""
    ids = SECTION_IDS
    heads = {"methods": "Methods (generated from the data and the run)", "arrive": "ARRIVE 2.0 Essential 10",
             "flow": "Animal flow"}
    if sections is None:
        msg = f'<div class="sl-banner-failed" role="alert">Not built: {_e(error or "no record")}</div>'
        return ('<section class="sl-sections">' + "".join(f'<h2 id="{ids[k]}">{_e(h)}</h2>{msg}'
                                                          for k, h in heads.items()) + "</section>")
    m, flow = sections["methods"], sections["flow"]
    out = ['<section class="sl-sections">', f'<h2 id="{ids["methods"]}">{_e(heads["methods"])}</h2>']
    for p in m["paragraphs"]:
        out.append(f'<p class="sl-methods"><b>{_e(p["heading"])}.</b> {_e(p["text"])}</p>')
    out.append('<p><b>References</b></p><ol class="sl-refs">'
               + "".join(f"<li>{_e(r)}</li>" for r in m["references"]) + "</ol>")
    out.append(f'<h2 id="{ids["arrive"]}">{_e(heads["arrive"])}</h2>')
    out.append('<p class="sl-muted">Percie du Sert et al., PLoS Biol 2020 (doi:10.1371/journal.pbio.3000410). '
               f"Filled from {STUDY_FILE} and {ANIMALS_FILE} beside the manifest (when present), the manifest and "
               "the run; nothing is inferred.</p>")
    out.append('<table class="sl-table sl-arrive"><thead><tr><th>#</th><th class="sl-left">item</th>'
               '<th class="sl-left">reported</th></tr></thead><tbody>')
    for it in sections["arrive"]:
        out.append(f'<tr><td>{it["number"]}</td><td class="sl-left">{_e(it["title"])}</td><td class="sl-left"><ul>'
                   + "".join(_entry_html(e) for e in it["entries"]) + "</ul></td></tr>")
    out.append("</tbody></table>")
    out.append(f'<h2 id="{ids["flow"]}">{_e(heads["flow"])}</h2>')
    cols = flow["groups"] + ["total"]
    out.append('<table class="sl-table sl-flow"><thead><tr><th class="sl-left">stage</th>'
               + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>")
    for r in flow["table"]:
        out.append(f'<tr><td class="sl-left">{_e(r["stage"])}</td>'
                   + "".join(f"<td>{r['counts'].get(c, 0)}</td>" for c in cols) + "</tr>")
    out.append("</tbody></table>")
    if flow["exclusions"]:
        out.append("<p><b>Left the study or excluded</b></p><ul>" + "".join(
            f"<li>{_e(e['animal'])} ({_e(e['group'])})"
            + (f", day {e['day']}" if e["day"] is not None and e["source"] != "manifest" else "")
            + f": {_e(e['reason'])} <span class=\"sl-muted\">({_e(e['source'])})</span></li>"
            for e in flow["exclusions"]) + "</ul>")
    if not flow.get("animals_file"):
        out.append(f'<p class="sl-muted">No {ANIMALS_FILE} beside the manifest: exclusions are read from the scans '
                   "alone (an animal whose scans stop early), with no reasons.</p>")
    out.append(_timeline_svg(flow))
    notes = sections.get("notes") or []
    if notes:
        out.append('<div class="sl-warnings" role="note"><b>Notes on the study files</b><ul>'
                   + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- the runner's side

def study_files_signature(manifest) -> list[list]:
    """``[name, sha256]`` of ``animals.csv`` / ``study.json`` (and an unread ``study.yaml``) beside the
    manifest, for the run fingerprint: editing them makes the report stale."""
    import hashlib

    base = Path(manifest).parent
    out = []
    for name in (ANIMALS_FILE, STUDY_FILE, "study.yaml", "study.yml"):
        p = base / name
        if p.is_file():
            try:
                out.append([name, hashlib.sha256(p.read_bytes()).hexdigest()])
            except OSError:
                out.append([name, None])
    return out


def record_sections(prov: dict, manifest, experiment: str, src=None) -> dict:
    """Build the report sections of a run into its record: ``prov["methods"]``, ``prov["arrive"]``,
    ``prov["animal_flow"]``.  Never raises: when they cannot be built, ``prov["report_sections_error"]``
    says why and the report's sections say so; a bad ``animals.csv`` or ``study.json`` is also added to the
    run's data warnings and an ``ok`` status becomes ``ok with warnings`` (a manifest that lists no rows of
    the experiment, e.g. a toy notebook, is not a data problem)."""
    declared = None
    if src is not None:
        try:
            from .parameters import declared_parameters

            declared = declared_parameters(Path(src))
        except Exception:  # noqa: BLE001 - the parameters cell is the notebook's business; defaults just go unnamed
            declared = None
    try:
        s = build_report_sections(manifest, experiment, prov, declared=declared)
    except Exception as err:  # noqa: BLE001 - never lose a run because its methods section could not be built
        msg = str(err) if isinstance(err, StudyError) else f"{type(err).__name__}: {err}"
        prov["report_sections_error"] = msg
        base = Path(manifest).parent
        if any(str(base / f) in msg for f in (ANIMALS_FILE, STUDY_FILE)):  # the lab's own file: a data warning
            prov.setdefault("warnings", []).append({"category": type(err).__name__, "count": 1,
                                                    "message": f"methods/ARRIVE/animal flow not built: {msg}"})
            if prov.get("status") == "ok":
                prov["status"] = "ok with warnings"
        return prov
    s["methods"]["notes"] = s["notes"]
    prov["methods"], prov["arrive"], prov["animal_flow"] = s["methods"], s["arrive"], s["flow"]
    return prov


def sections_from_record(prov: dict) -> str:
    """The sections' HTML from a run record (empty for a record made before they existed)."""
    if all(k in prov for k in ("methods", "arrive", "animal_flow")):
        return sections_html({"methods": prov["methods"], "arrive": prov["arrive"], "flow": prov["animal_flow"],
                              "notes": prov["methods"].get("notes") or []})
    if prov.get("report_sections_error"):
        return sections_html(None, prov["report_sections_error"])
    return ""
