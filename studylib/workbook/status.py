"""``studylib status``: which reports are up to date, which are stale and why, which failed or never ran.

A report is *up to date* when ``studylib run`` with the same options would reuse it: the fingerprint of
what it depends on now (:func:`studylib.workbook.run.fingerprint_parts`) equals the one in its record.
Otherwise the parts that differ are named: the manifest's rows, a data file (its content), the
parameters, the notebook, the studylib code, package versions, python or the kernel.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StudyError, WorkbookError
from ..layout import default_cache_dir, default_manifest, reports_dir
from .parameters import typed_parameters
from .provenance import provenance_base
from .report import OK_STATUSES
from .run import (_check_preset, _notebook_file, _notebooks_dir, _real_manifest, _resolve_experiments,
                  fingerprint_of, fingerprint_parameters, fingerprint_parts)

__all__ = ["ExperimentStatus", "experiment_status", "status"]

_PART_NAMES = {"format": "the report format", "notebook": "the notebook", "parameters": "the parameters",
               "manifest_sha256": "the manifest", "code": "the studylib code", "packages": "package versions",
               "python": "the python version", "kernel": "the Jupyter kernel"}


@dataclass(frozen=True)
class ExperimentStatus:
    """One experiment's state: ``state`` is ``up to date``, ``stale``, ``failed`` or ``never run``."""

    experiment: str
    state: str
    reasons: tuple[str, ...] = field(default_factory=tuple)
    last_run: str | None = None

    def line(self) -> str:
        when = f" (last run {self.last_run})" if self.last_run else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.experiment}: {self.state}{when}{why}"


def _differences(old: dict, new: dict) -> list[str]:
    """What changed between two :func:`fingerprint_parts`, in words."""
    out = []
    for key, words in _PART_NAMES.items():
        if key == "parameters":
            a, b = old.get(key) or {}, new.get(key) or {}
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if changed:
                out.append("parameters changed: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
        elif key == "packages":
            a, b = old.get(key) or {}, new.get(key) or {}
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if changed:
                out.append("package versions changed: " + ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in changed))
        elif old.get(key) != new.get(key):
            out.append(f"{words} changed")
    a = {p: h for p, h in old.get("files") or []}
    b = {p: h for p, h in new.get("files") or []}
    added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    edited = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    if added:
        out.append(f"{len(added)} data file(s) added to the manifest ({', '.join(added[:3])}{' ...' if len(added) > 3 else ''})")
    if removed:
        out.append(f"{len(removed)} data file(s) no longer listed ({', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''})")
    if edited:
        out.append(f"{len(edited)} data file(s) changed content ({', '.join(edited[:3])}{' ...' if len(edited) > 3 else ''})")
    return out


def experiment_status(name: str, *, nbdir: Path, reports: Path, preset: str, manifest, cache_dir,
                      parameters: dict | None, base: dict, kernel_name: str = "python3") -> ExperimentStatus:
    """The state of one experiment's report (see the module docstring)."""
    try:
        rec = json.loads((reports / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ExperimentStatus(name, "never run", (f"no report in {reports}",))
    when = rec.get("started")
    if rec.get("status") not in OK_STATUSES:
        err = rec.get("error") or {}
        return ExperimentStatus(name, "failed", (f"{err.get('ename')}: {str(err.get('evalue'))[:200]}",), when)
    missing = [f for f in (f"{name}.html", f"{name}.ipynb") if not (reports / f).is_file()]
    if missing:
        return ExperimentStatus(name, "stale", (f"{', '.join(missing)} missing",), when)
    src = _notebook_file(name, nbdir)
    real = _real_manifest(name, manifest)
    man = real or (Path(manifest).resolve() if manifest is not None else default_manifest(preset))
    if not man.is_file():
        return ExperimentStatus(name, "stale", (f"its data are missing ({man}): `studylib run` generates them",), when)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(preset, man if real else manifest)
    given = typed_parameters(name, src, dict(parameters or {}))
    parts = fingerprint_parts(src, fingerprint_parameters(name, man, preset, root.resolve(), reports, given),
                              man, base, kernel_name, study=name)
    if fingerprint_of(parts) == rec.get("fingerprint"):
        return ExperimentStatus(name, "up to date", (), when)
    old = rec.get("inputs")
    reasons = _differences(old, parts) if isinstance(old, dict) else ["made by an earlier studylib (no inputs recorded)"]
    return ExperimentStatus(name, "stale", tuple(reasons) or ("its fingerprint changed",), when)


def status(experiments=None, preset: str = "demo", manifest=None, reports=None, *, notebooks_dir=None,
           cache_dir=None, parameters: dict | None = None, kernel_name: str = "python3", file=None) -> int:
    """Print each experiment's state (:class:`ExperimentStatus`); return 0 when every one is up to date, else 1.

    The options mean what they mean for :func:`studylib.workbook.run` (a report is up to date when that
    run would reuse it).  Nothing is executed, generated or written.
    """
    out = file or sys.stdout
    _check_preset(preset)
    nbdir = _notebooks_dir(notebooks_dir)
    names = _resolve_experiments(experiments, nbdir)
    reports = Path(reports) if reports is not None else reports_dir()
    if manifest is not None and not Path(manifest).is_file():
        raise WorkbookError(f"manifest {str(manifest)!r} not found")
    base = provenance_base()
    states = []
    for name in names:
        try:
            st = experiment_status(name, nbdir=nbdir, reports=reports, preset=preset, manifest=manifest,
                                   cache_dir=cache_dir, parameters=parameters, base=base, kernel_name=kernel_name)
        except StudyError as err:
            st = ExperimentStatus(name, "stale", (str(err),))
        states.append(st)
        print(st.line(), file=out)
    n_ok = sum(s.state == "up to date" for s in states)
    print(f"{n_ok}/{len(states)} report(s) up to date in {reports}", file=out)
    return 0 if n_ok == len(states) else 1
