"""The animals of a study for its report: ``animals.csv`` and ``study.json`` beside the manifest, the
CONSORT-style animal flow and the ARRIVE 2.0 Essential 10.

Two optional files beside ``data_manifest.csv`` say what the manifest cannot (read by
:func:`read_animals` and :func:`read_study_info`; a bad file is a :class:`DataFileError` naming it):

``animals.csv`` (one row per animal; every column but ``animal`` optional)
    ``study`` (required when the manifest lists more than one study), ``animal``, ``group``, ``sex``
    (``F``/``M``), ``strain``, ``age_weeks``, ``weight_g``, ``randomisation`` (the animal's allocation
    record, e.g. a block or random number), ``excluded_day`` (the first imaging day without data from
    the animal: it left the study or was excluded before that day's scan; empty with a reason: excluded
    from the whole analysis), ``exclusion_reason``.  An animal must be one of the manifest's animals of that study,
    unless it has an exclusion (an animal enrolled but never scanned).  Group and sex must agree with
    the manifest.

``study.json`` (PyYAML is not a studylib dependency, so JSON)
    an object of the :data:`STUDY_FIELDS` (strings, or lists of strings), for a manifest with one
    study; or ``{"studies": {"<study>": {...}, ...}}`` for a manifest with several.

Nothing is ever invented: an ARRIVE item without data says "not reported".  The flow counts come from
the manifest (what the notebooks load) and ``animals.csv``; an animal whose scans stop before the
study's last imaging day without a recorded exclusion is listed as "no scan after day d, reason not
recorded".

Reference: Percie du Sert N, et al. The ARRIVE guidelines 2.0: updated guidelines for reporting animal
research. PLoS Biol 2020;18:e3000410 (doi:10.1371/journal.pbio.3000410).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import DataFileError

__all__ = ["ANIMALS_FILE", "STUDY_FILE", "ANIMAL_COLUMNS", "STUDY_FIELDS", "ARRIVE_ITEMS", "read_animals",
           "read_study_info", "study_info", "smallest_effect_of_interest", "animal_flow", "arrive_items"]

ANIMALS_FILE = "animals.csv"
STUDY_FILE = "study.json"

#: the columns ``animals.csv`` may have (``animal`` required)
ANIMAL_COLUMNS: tuple[str, ...] = ("study", "animal", "group", "sex", "strain", "age_weeks", "weight_g",
                                   "randomisation", "excluded_day", "exclusion_reason")

#: the fields ``study.json`` may have, with what each one answers
STUDY_FIELDS: dict[str, str] = {
    "design": "study design: the groups compared, the control, the timeline",
    "experimental_unit": "the experimental unit (animal, tumour, cage)",
    "sample_size_rationale": "how the sample size was decided (e.g. a power calculation)",
    "smallest_effect_of_interest": "the smallest effect of the primary endpoint worth detecting, in its units "
                                   "(a number, or text starting with one: \"5 1/s\"); the report gives the "
                                   "design's power for it",
    "inclusion_criteria": "criteria for including animals or data points",
    "exclusion_criteria": "criteria for excluding animals or data points, set a priori",
    "randomisation": "how animals were allocated to groups and the order of treatments and scans",
    "blinding": "who was aware of the group allocation at each stage (treatment, scanning, ROI drawing, histology)",
    "outcome_measures": "the outcome measures assessed",
    "primary_endpoint": "the primary outcome measure",
    "statistical_assumptions": "how the assumptions of the statistical methods were checked",
    "species": "species",
    "strain": "strain (and substrain)",
    "supplier": "where the animals came from",
    "housing": "housing and husbandry",
    "procedures": "what was done to the animals, when, where and how (anaesthesia, tumour implantation, dosing)",
    "source": "where these facts come from",
}

#: ARRIVE 2.0 Essential 10: (number, title)
ARRIVE_ITEMS: tuple[tuple[int, str], ...] = (
    (1, "Study design"), (2, "Sample size"), (3, "Inclusion and exclusion criteria"), (4, "Randomisation"),
    (5, "Blinding"), (6, "Outcome measures"), (7, "Statistical methods"), (8, "Experimental animals"),
    (9, "Experimental procedures"), (10, "Results"))

_SEX = {"f": "F", "female": "F", "m": "M", "male": "M"}


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=True, encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path}: empty (no header line)") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataFileError(f"{path}: not a valid CSV file: {str(err).strip()}") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read: {err.strerror or err}") from None
    header = [str(h).strip() for h in df.columns]
    if any(h.startswith("Unnamed:") for h in header):
        raise DataFileError(f"{path}: a column has no name in the header")
    return header, [[str(c).strip() for c in r] for r in df.itertuples(index=False, name=None)]


def _number(path, i, col, v, *, integer=False):
    if v == "":
        return None
    try:
        x = int(v) if integer else float(v)
    except ValueError:
        x = None
    if x is None or (not integer and (not math.isfinite(x) or x <= 0)):
        what = "an integer day" if integer else "a positive number"
        raise DataFileError(f"{path}: row {i}: {col} must be {what}, got {v!r}")
    return x


def read_animals(path, rows, study: str, studies=None) -> list[dict] | None:
    """The animals of ``study`` listed in ``animals.csv`` (None when the file does not exist).

    Parameters
    ----------
    path : the ``animals.csv`` file.
    rows : pandas.DataFrame, the manifest rows of ``study`` (``animal``, ``group``, optional ``sex``).
    study : the study (experiment) name.
    studies : every study the manifest lists (default: just ``study``).

    Returns
    -------
    list of dict, one per animal of ``study``, with the :data:`ANIMAL_COLUMNS` (numbers parsed,
    ``None`` where empty) and ``in_manifest``.

    Raises
    ------
    DataFileError
        naming the file (and the row): an unknown or missing column, a row without ``study`` when the
        manifest lists several studies, an unknown study or animal, a duplicate animal, a group or sex
        that contradicts the manifest, a bad number.
    """
    path = Path(path)
    if not path.is_file():
        return None
    header, body = _csv_rows(path)
    studies = set(studies or [study])
    bad = [h for h in header if h not in ANIMAL_COLUMNS]
    if bad:
        raise DataFileError(f"{path}: unknown column(s) {', '.join(map(repr, bad))}; the columns are "
                            f"{', '.join(ANIMAL_COLUMNS)}")
    if "animal" not in header:
        raise DataFileError(f"{path}: no 'animal' column")
    if len(set(header)) != len(header):
        raise DataFileError(f"{path}: a column is repeated in the header")
    if "study" not in header and len(studies) > 1:
        raise DataFileError(f"{path}: no 'study' column, but the manifest lists {len(studies)} studies "
                            f"({', '.join(sorted(studies))}): say which study each animal belongs to")
    known = {}
    for a, g in zip(rows["animal"], rows["group"]):
        if a:
            known.setdefault(a, {"group": g})
    if "sex" in rows.columns:
        for a, s in zip(rows["animal"], rows["sex"]):
            if a and s:
                known[a]["sex"] = s
    out, seen = [], set()
    for i, r in enumerate(body, start=2):
        rec = dict(zip(header, r))
        st = rec.get("study") or (study if "study" not in header else "")
        if st not in studies:
            raise DataFileError(f"{path}: row {i}: unknown study {st!r}; the manifest lists "
                                f"{', '.join(sorted(studies))}")
        if st != study:
            continue
        a = rec["animal"]
        if not a:
            raise DataFileError(f"{path}: row {i}: empty animal")
        if a in seen:
            raise DataFileError(f"{path}: row {i}: animal {a!r} of study {study!r} is listed twice")
        seen.add(a)
        excluded = bool(rec.get("exclusion_reason") or rec.get("excluded_day"))
        if a not in known and not excluded:
            raise DataFileError(f"{path}: row {i}: unknown animal {a!r}: not in the manifest's study {study!r} "
                                "(an animal enrolled but never scanned needs excluded_day or exclusion_reason)")
        sex = rec.get("sex", "")
        if sex:
            if sex.lower() not in _SEX:
                raise DataFileError(f"{path}: row {i}: sex must be F or M, got {sex!r}")
            sex = _SEX[sex.lower()]
        for col, val in (("group", rec.get("group", "")), ("sex", sex)):
            ref = known.get(a, {}).get(col)
            if val and ref and val != ref:
                raise DataFileError(f"{path}: row {i}: animal {a!r} has {col} {val!r}, the manifest says {ref!r}")
        out.append({"study": study, "animal": a,
                    "group": rec.get("group") or known.get(a, {}).get("group") or None,
                    "sex": sex or known.get(a, {}).get("sex") or None,
                    "strain": rec.get("strain") or None,
                    "age_weeks": _number(path, i, "age_weeks", rec.get("age_weeks", "")),
                    "weight_g": _number(path, i, "weight_g", rec.get("weight_g", "")),
                    "randomisation": rec.get("randomisation") or None,
                    "excluded_day": _number(path, i, "excluded_day", rec.get("excluded_day", ""), integer=True),
                    "exclusion_reason": rec.get("exclusion_reason") or None,
                    "in_manifest": a in known})
    return out


def _check_fields(path, obj: dict, where: str) -> dict:
    bad = [k for k in obj if k not in STUDY_FIELDS]
    if bad:
        raise DataFileError(f"{path}: {where}unknown field(s) {', '.join(map(repr, bad))}; the fields are "
                            f"{', '.join(STUDY_FIELDS)}")
    out = {}
    for k, v in obj.items():
        if k == "smallest_effect_of_interest" and isinstance(v, (int, float)) and not isinstance(v, bool):
            if not (math.isfinite(v) and v != 0):
                raise DataFileError(f"{path}: {where}{k} must be a finite non-zero number, got {v!r}")
            out[k] = f"{v:g}"
            continue
        if k == "smallest_effect_of_interest" and isinstance(v, str) and _leading_number(v) is None:
            raise DataFileError(f"{path}: {where}{k} must be a number or text starting with one "
                                f"(e.g. \"5 1/s\"), got {json.dumps(v)[:80]}")
        if isinstance(v, str) and v.strip():
            out[k] = v.strip()
        elif isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v):
            out[k] = [x.strip() for x in v]
        else:
            raise DataFileError(f"{path}: {where}{k} must be a non-empty string or list of strings, got "
                                f"{json.dumps(v)[:80]}")
    return out


def read_study_info(path, study: str, studies=None) -> tuple[dict, list[str]]:
    """The ``study.json`` facts of ``study`` and notes about the files found.

    Returns
    -------
    (info, notes) : ``info`` maps :data:`STUDY_FIELDS` to strings or lists (empty when there is no
        file or it says nothing about ``study``); ``notes`` name a ``study.yaml`` that is not read.

    Raises
    ------
    DataFileError
        naming the file: not JSON, not an object, an unknown field or study, a value that is not text,
        a single-study object beside a manifest of several studies.
    """
    path = Path(path)
    notes = [f"{p}: not read (PyYAML is not a studylib dependency): write the same fields to {path.name}"
             for p in (path.with_name("study.yaml"), path.with_name("study.yml")) if p.is_file()]
    if not path.is_file():
        return {}, notes
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(
            ValueError(f"non-standard JSON constant {c}")))
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path}: cannot read: {err}") from None
    except ValueError as err:
        raise DataFileError(f"{path}: invalid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise DataFileError(f"{path}: must be a JSON object, got {type(doc).__name__}")
    studies = set(studies or [study])
    if "studies" in doc:
        if set(doc) != {"studies"} or not isinstance(doc["studies"], dict):
            raise DataFileError(f"{path}: with 'studies' the file holds only {{\"studies\": {{\"<study>\": {{...}}}}}}")
        unknown = sorted(set(doc["studies"]) - studies)
        if unknown:
            raise DataFileError(f"{path}: unknown study {unknown[0]!r}; the manifest lists {', '.join(sorted(studies))}")
        one = doc["studies"].get(study, {})
        if not isinstance(one, dict):
            raise DataFileError(f"{path}: studies.{study} must be an object")
        return _check_fields(path, one, f"studies.{study}: "), notes
    if len(studies) > 1:
        raise DataFileError(f"{path}: the manifest lists {len(studies)} studies: write "
                            "{\"studies\": {\"<study>\": {...}}} to say which study the facts belong to")
    return _check_fields(path, doc, ""), notes


def _leading_number(text: str) -> float | None:
    import re

    m = re.match(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", str(text))
    if m is None:
        return None
    v = float(m.group(1))
    return v if math.isfinite(v) and v != 0 else None


def study_info(manifest, study: str) -> dict:
    """The ``study.json`` facts of ``study`` beside ``manifest`` (:func:`read_study_info`); ``{}`` without one.

    For a notebook (``sl.study_info(manifest, study)``), e.g. to read the declared smallest effect of
    interest (:func:`smallest_effect_of_interest`).
    """
    from ..manifest import read_manifest

    manifest = Path(manifest)
    rows = read_manifest(manifest)
    info, _ = read_study_info(manifest.parent / STUDY_FILE, study, sorted(set(rows["study"])) or [study])
    return info


def smallest_effect_of_interest(info: dict) -> float | None:
    """The number ``study.json``'s ``smallest_effect_of_interest`` starts with (units of the primary endpoint),
    or None when the study declares none."""
    v = (info or {}).get("smallest_effect_of_interest")
    return None if v is None else _leading_number(v if isinstance(v, str) else str(v))


# --------------------------------------------------------------------------- the animal flow

def _histology_animals(rows, base: Path | None) -> set[str] | None:
    import pandas as pd

    paths = [p for p, k in zip(rows["path"], rows["kind"]) if k == "histology"]
    if not paths or base is None:
        return None
    out = set()
    for p in paths:
        try:
            df = pd.read_csv(base / p, dtype=str)
        except (OSError, ValueError):
            return None
        if "animal" not in df.columns:
            return None
        out |= {a.strip() for a in df["animal"].dropna()}
    return out


def animal_flow(rows, animals: list[dict] | None = None, *, base=None) -> dict:
    """The CONSORT-style flow of the animals of one study.

    Parameters
    ----------
    rows : the manifest rows of the study (pandas.DataFrame, ``day`` nullable integer).
    animals : :func:`read_animals` of the study, or None.
    base : the manifest's folder (to read the histology CSVs' ``animal`` column), or None.

    Returns
    -------
    dict with ``groups``, ``days``, ``table`` (a list of ``{"stage", "counts": {group: n, "total": n}}``:
    enrolled, scanned on each day, left the study or excluded, with histology, analysed),
    ``exclusions`` (animal, group, day, reason, source), ``timeline`` (animal, group, days scanned,
    excluded day) and ``notes``.
    """
    img = rows[~rows["kind"].isin(["roi", "histology"]) & rows["day"].notna() & (rows["animal"] != "")]
    group_of, scanned = {}, {}
    for a, g, d in zip(rows["animal"], rows["group"], rows["day"]):
        if a:
            group_of.setdefault(a, g)
    for a, d in zip(img["animal"], img["day"]):
        scanned.setdefault(a, set()).add(int(d))
    animals = animals or []
    for rec in animals:
        group_of.setdefault(rec["animal"], rec.get("group") or "not reported")
    groups = list(dict.fromkeys(group_of.values()))
    days = sorted(set().union(*scanned.values())) if scanned else []
    last = days[-1] if days else None

    def counts(members) -> dict:
        c = {g: 0 for g in groups}
        for a in members:
            c[group_of[a]] += 1
        c["total"] = len(set(members))
        return c

    exclusions, notes = [], []
    listed = {r["animal"]: r for r in animals}
    for rec in animals:
        if rec["excluded_day"] is None and rec["exclusion_reason"] is None:
            continue
        reason = rec["exclusion_reason"] or "reason not recorded"
        exclusions.append({"animal": rec["animal"], "group": group_of[rec["animal"]], "day": rec["excluded_day"],
                           "reason": reason, "source": ANIMALS_FILE})
        after = sorted(d for d in scanned.get(rec["animal"], ()) if rec["excluded_day"] is None
                       or d >= rec["excluded_day"])
        if after:
            notes.append(f"{ANIMALS_FILE} excludes {rec['animal']}"
                         + (f" from day {rec['excluded_day']}" if rec["excluded_day"] is not None else "")
                         + f", but the manifest lists its scans on day(s) {', '.join(map(str, after))}: the "
                         "notebook analysed them")
    for a in sorted(scanned):
        if a in listed and (listed[a]["excluded_day"] is not None or listed[a]["exclusion_reason"]):
            continue
        d = max(scanned[a])
        if last is not None and d < last:
            exclusions.append({"animal": a, "group": group_of[a], "day": d,
                               "reason": f"no scan after day {d}, reason not recorded", "source": "manifest"})
    enrolled = list(group_of)
    table = [{"stage": "enrolled", "counts": counts(enrolled)}]
    for d in days:
        table.append({"stage": f"scanned on day {d}", "counts": counts([a for a in scanned if d in scanned[a]])})
    table.append({"stage": "left the study or excluded", "counts": counts([e["animal"] for e in exclusions])})
    hist = _histology_animals(rows, Path(base) if base is not None else None)
    if hist is not None:
        table.append({"stage": "with histology", "counts": counts([a for a in enrolled if a in hist])})
    table.append({"stage": "analysed (≥ 1 scan loaded by the notebook)", "counts": counts(list(scanned))})
    if last is not None and len(days) > 1:
        table.append({"stage": f"analysed on the last day ({last})",
                      "counts": counts([a for a in scanned if last in scanned[a]])})
    exc_day = {e["animal"]: e["day"] for e in exclusions if e["source"] == ANIMALS_FILE}
    timeline = [{"animal": a, "group": group_of[a], "days": sorted(scanned.get(a, ())),
                 "excluded_day": exc_day.get(a)} for a in enrolled]
    return {"groups": groups, "days": days, "table": table, "exclusions": exclusions, "timeline": timeline,
            "notes": notes, "animals_file": bool(animals)}


# --------------------------------------------------------------------------- ARRIVE 2.0 Essential 10

def _entry(label: str, value, source: str) -> dict:
    """One line of an ARRIVE item: ``value`` None means "not reported"."""
    if isinstance(value, list):
        value = "; ".join(value) if value else None
    return {"label": label, "value": value, "source": source if value is not None else None}


def _n_text(flow: dict, stage: str = "enrolled") -> str:
    row = next(r for r in flow["table"] if r["stage"].startswith(stage))
    c = row["counts"]
    return ", ".join(f"{g} n = {c[g]}" for g in flow["groups"]) + f" (total {c['total']})"


def _power_text(numbers: dict | None, info: dict) -> tuple[str | None, str | None]:
    """(post-hoc power for the observed effect, power for the smallest effect of interest) from the run's
    recorded numbers (:data:`studylib.analysis.effects.POWER_KEYS`, written by
    :func:`studylib.analysis.effect_power`), or None each when the run recorded none."""
    n = numbers or {}

    def f(v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None

    pw, a = f(n.get("power_observed")), f(n.get("power_alpha"))
    if pw is None:
        return None, None
    u = f" {n['power_units']}" if n.get("power_units") else ""
    ns = int(f(n.get("power_n_sim")) or 0)

    method = str(n.get("power_method") or "").strip()

    def ci(prefix):
        lo, hi = f(n.get(f"{prefix}_ci_low")), f(n.get(f"{prefix}_ci_high"))
        return f" (95 % CI {lo:.2f}–{hi:.2f}, {ns} simulated studies)" if ns and lo is not None and hi is not None \
            else f" ({method or 'exact'})"
    eff = f(n.get("power_observed_effect"))
    how = ("from the fitted model simulated on the study's own design" if ns else
           "computed at the study's own design, not simulated")
    obs = (f"post-hoc power {pw:.2f}{ci('power_observed')} for the observed primary effect"
           + (f" ({eff:.3g}{u})" if eff is not None else "") + (f" at α = {a:g}" if a is not None else "")
           + f", {how}: computed after the data, a function of "
             "the observed p-value, not a prospective sample-size justification")
    ps, es = f(n.get("power_sesoi")), f(n.get("power_sesoi_effect"))
    if ps is None:
        return obs, None
    return obs, (f"power {ps:.2f}{ci('power_sesoi')} for the declared smallest effect of interest ({es:.3g}{u}), "
                 f"{'same simulation' if ns else 'same method'}")


def arrive_items(*, rows, animals, info: dict, flow: dict, findings: list[dict], statistics: list[str],
                 procedures: list[str], measures: list[str], numbers: dict | None = None) -> list[dict]:
    """The ARRIVE 2.0 Essential 10, each item a list of entries (label, value or None, source).

    ``numbers`` are the run's recorded headline numbers; the power of the design (item 2) comes from their
    ``power_*`` keys (:func:`studylib.analysis.effect_power`), the smallest effect of interest from
    ``study.json``.

    ``findings`` are the run's conclusions rows (dicts; a ``role``/``endpoint`` column equal to
    ``"primary"`` marks the primary endpoint), ``statistics`` one line per statistical method the run
    used, ``procedures`` one line per kind of scan (from the sidecars), ``measures`` the fitted maps.
    Values come only from ``study.json`` (``info``), ``animals.csv`` (``animals``), the manifest rows and the
    run; anything else is None ("not reported").
    """
    animals = animals or []
    groups = flow["groups"]
    models = sorted({m for m in rows.get("model", []) if m}) if "model" in rows.columns else []
    sfile, afile = STUDY_FILE, ANIMALS_FILE
    days = ", ".join(map(str, flow["days"]))
    design_data = (f"groups {', '.join(groups)}" + (f"; tumour models {', '.join(models)}" if models else "")
                   + (f"; imaging on day(s) {days} (days from the first treatment)" if days else ""))
    items = {1: [_entry("groups and timeline (manifest)", design_data if groups else None, "manifest"),
                 _entry("design", info.get("design"), sfile),
                 _entry("experimental unit", info.get("experimental_unit"), sfile)]}
    p_obs, p_sesoi = _power_text(numbers, info)
    items[2] = [_entry("animals per group (manifest" + (f", {afile})" if animals else ")"), _n_text(flow), "manifest"),
                _entry("how the sample size was decided", info.get("sample_size_rationale"), sfile),
                _entry("power of the design for the observed effect (post hoc)", p_obs, "run"),
                _entry("smallest effect of interest", info.get("smallest_effect_of_interest"), sfile),
                _entry("power for the smallest effect of interest", p_sesoi, "run")]
    exc = [f"{e['animal']} ({e['group']}): " + (f"day {e['day']}: " if e["day"] is not None and e["source"] != "manifest"
                                                 else "") + e["reason"] for e in flow["exclusions"]]
    items[3] = [_entry("inclusion criteria", info.get("inclusion_criteria"), sfile),
                _entry("exclusion criteria", info.get("exclusion_criteria"), sfile),
                _entry("animals excluded or lost", exc if exc else ("none recorded; every animal scanned until the last "
                                                                  "imaging day" if flow["days"] else None),
                       afile if animals else "manifest"),
                _entry("animals in each analysis", _n_text(flow, "analysed"), "manifest")]
    rnd = [f"{r['animal']}: {r['randomisation']}" for r in animals if r["randomisation"]]
    items[4] = [_entry("method", info.get("randomisation"), sfile),
                _entry("allocation per animal", rnd or None, afile)]
    items[5] = [_entry("awareness of allocation at each stage", info.get("blinding"), sfile)]
    prim = [f.get("finding") for f in findings
            if str(f.get("role", f.get("endpoint", ""))).lower() == "primary"]
    items[6] = [_entry("outcome measures", info.get("outcome_measures"), sfile),
                _entry("measures computed by the run", measures or None, "run"),
                _entry("primary endpoint", info.get("primary_endpoint") or (prim or None),
                       sfile if info.get("primary_endpoint") else "run")]
    items[7] = [_entry("methods per analysis (run)", statistics or None, "run"),
                _entry("how the assumptions were checked", info.get("statistical_assumptions"), sfile)]
    sexes = {}
    for a, s in zip(rows["animal"], rows["sex"] if "sex" in rows.columns else [""] * len(rows)):
        if a and s:
            sexes[a] = s
    for r in animals:
        if r["sex"]:
            sexes[r["animal"]] = r["sex"]
    n_all = len(flow["timeline"])
    sex_text = (", ".join(f"{s} n = {sum(v == s for v in sexes.values())}" for s in sorted(set(sexes.values())))
                + (f"; not recorded for {n_all - len(sexes)}" if n_all > len(sexes) else "")) if sexes else None
    strains = sorted({r["strain"] for r in animals if r["strain"]})
    ages = [r["age_weeks"] for r in animals if r["age_weeks"] is not None]
    weights = [r["weight_g"] for r in animals if r["weight_g"] is not None]
    items[8] = [_entry("species", info.get("species"), sfile),
                _entry("strain", info.get("strain") or (strains or None), sfile if info.get("strain") else afile),
                _entry("sex", sex_text, "manifest" + (f", {afile}" if animals else "")),
                _entry("age", f"{min(ages):g}–{max(ages):g} weeks (n = {len(ages)})" if ages else None, afile),
                _entry("weight", f"{min(weights):g}–{max(weights):g} g (n = {len(weights)})" if weights else None,
                       afile),
                _entry("tumour models (manifest)", models or None, "manifest"),
                _entry("supplier, housing", [v for v in (info.get("supplier"), info.get("housing")) if v] or None,
                       sfile)]
    items[9] = [_entry("imaging (sidecars)", procedures or None, "sidecars"),
                _entry("other procedures", info.get("procedures"), sfile)]
    res = [f"{f.get('finding')}: {_fmt_estimate(f)}" for f in findings if f.get("finding")]
    items[10] = [_entry("estimates with 95% CI (run)", res or None, "run")]
    return [{"number": n, "title": t, "entries": items[n],
             "reported": any(e["value"] is not None for e in items[n])} for n, t in ARRIVE_ITEMS]


def _fmt_estimate(f: dict) -> str:
    def g(v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return "–"
        return f"{v:.3g}" if math.isfinite(v) else "–"

    out = f"{g(f.get('estimate'))}"
    if f.get("units"):
        out += f" {f['units']}"
    if f.get("ci_low") is not None or f.get("ci_high") is not None:
        out += f" [{g(f.get('ci_low'))}, {g(f.get('ci_high'))}]"
    if f.get("p") is not None:
        out += f", p = {g(f.get('p'))}"
    return out
