"""The ``studylib`` command: ``verify``, ``synth``, ``new``, ``run``, ``import``, ``show``, ``export``, ``add-roi``, ``status``.

Each subcommand is a thin shell over a library function, so everything the CLI does
is importable and tested.  Input errors (:class:`studylib.errors.StudyError`) print one
clear line and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import StudyError


def _cmd_verify(args) -> int:
    from .layout import resolve_manifest
    from .manifest import verify_manifest

    manifest = args.manifest if args.manifest is not None else resolve_manifest(None, args.preset, must_exist=False)
    problems = verify_manifest(manifest, check_hashes=not args.no_hash)
    for p in problems:
        print(p)
    if problems:
        print(f"{manifest}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{manifest}: OK")
    return 0


def _cmd_synth(args) -> int:
    from .synth import generate

    manifest = generate(args.preset, out=args.out, seed=args.seed, manifest=args.manifest, force=args.force)
    print(f"wrote {manifest}")
    return 0


def _study_folders(args) -> tuple:
    """``(notebooks, reports)``: as given, else a study folder's own (``studylib new``) when ``--manifest`` is in one."""
    from .workbook.scaffold import study_folder_defaults

    own = study_folder_defaults(args.manifest) or (None, None)
    return (args.notebooks if args.notebooks is not None else own[0],
            args.reports if args.reports is not None else own[1])


def _cmd_new(args) -> int:
    from .workbook.animals import STUDY_FIELDS
    from .workbook.scaffold import new_study, study_facts

    res = new_study(args.folder, biomarker=args.biomarker, design=args.design, study=args.study)
    facts = study_facts(args.biomarker, args.design)
    for f in res.files:
        print(f"wrote {f}")
    m = res.folder / "data_manifest.csv"
    print(f"{res.study}: {args.design} {args.biomarker} study in {res.folder}. The manifest lists no files yet "
          f"(`studylib verify` refuses it until then): add scans with `studylib import SRC --out {res.folder} "
          f"--study {res.study} ...`, then `studylib run {res.study} --manifest {m}` (reports in "
          f"{res.folder / 'reports'}). Add the animals to animals.csv and the study's facts to study.json "
          f"(fields: {', '.join(k for k in STUDY_FIELDS if k not in facts)}): the report's ARRIVE section reads them.")
    return 0


def _cmd_run(args) -> int:
    from .workbook import run
    from .workbook.parameters import parse_assignments

    notebooks, reports = _study_folders(args)
    return run(args.experiments or None, preset=args.preset, reports=reports,
               scheduler=args.scheduler, manifest=args.manifest, force=args.force, cache_dir=args.cache,
               jobs=args.jobs, parameters=parse_assignments(args.param), notebooks_dir=notebooks,
               pdf=False if args.no_pdf else None)


def _cmd_status(args) -> int:
    from .workbook.parameters import parse_assignments
    from .workbook.status import status

    notebooks, reports = _study_folders(args)
    return status(args.experiments or None, preset=args.preset, manifest=args.manifest, reports=reports,
                  cache_dir=args.cache, parameters=parse_assignments(args.param), notebooks_dir=notebooks)


def _cmd_show(args) -> int:
    from .workbook import show

    return show(args.experiment, preset=args.preset, manifest=args.manifest, cache_dir=args.cache)


def _cmd_import(args) -> int:
    from .io.importer import format_plan, import_scans

    res = import_scans(args.src, out=args.out, manifest=args.manifest, study=args.study, animal=args.animal,
                       group=args.group, day=args.day, scans=args.scans, kind=args.kind, dry_run=args.dry_run)
    for line in format_plan(res.plan):
        print(line)
    if args.dry_run:
        print(f"{args.src}: {len(res.imported)} scan(s) would be imported, {len(res.refused)} not (dry run: "
              "nothing written)")
        return 0
    for f in res.files:
        print(f"wrote {f}")
    print(f"{res.manifest}: {res.new_rows} new row(s) for {len(res.imported)} scan(s); "
          f"{len(res.refused)} scan(s) not imported")
    return 0


def _cmd_export(args) -> int:
    from .workbook.export import export_bids

    res = export_bids(args.experiment, args.bids, preset=args.preset, manifest=args.manifest, reports=args.reports,
                      cache_dir=args.cache)
    for name, step in res.steps.items():
        print(f"{name}: parameters from {step['params_from']}")
    for note in res.notes:
        print(f"note: {note}")
    print(f"wrote {len(res.files)} file(s) for {len(res.sessions)} session(s) to {res.out}")
    return 0


def _cmd_add_roi(args) -> int:
    from .workbook.export import register_roi

    res = register_roi(args.roi, study=args.study, animal=args.animal, day=args.day, manifest=args.manifest,
                       preset=args.preset, labels=args.labels, replace=args.replace)
    for old in res.replaced:
        print(f"no longer listed (file kept): {old}")
    print(f"{res.manifest}: {res.path} listed as the ROI of {args.study} {args.animal} day {args.day} "
          f"(labels {res.labels}); the next `studylib run` uses it")
    return 0


_CACHE_HELP = ("folder of the derived cache (default: env STUDYLIB_CACHE, else beside the data: "
               "data/<preset>/derived or <manifest folder>/derived); use it when the data are read-only")


def _report_options(p: argparse.ArgumentParser, *, param_help: str) -> None:
    """The options ``run`` and ``status`` share: which experiments, on which data, into which reports."""
    p.add_argument("experiments", nargs="*")
    p.add_argument("--preset", default="demo", choices=["demo", "ci", "large"])
    p.add_argument("--reports", default=None, help="reports folder (default <project>/reports)")
    p.add_argument("--manifest", default=None)
    p.add_argument("--notebooks", default=None,
                   help="folder of the notebooks (default <project>/notebooks; with a --manifest in a study folder "
                        "made by `studylib new`, its notebooks/, and its reports/ for --reports)")
    p.add_argument("--cache", default=None, help=_CACHE_HELP)
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE", help=param_help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studylib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("verify", help="check the data manifest: schema, paths, sha256")
    v.add_argument("--manifest", default=None,
                   help="manifest to check (default: the preset's, <project>/data_manifest.csv for demo)")
    v.add_argument("--preset", default="demo", help="whose default manifest to check (demo, ci, large)")
    v.add_argument("--no-hash", action="store_true", help="skip the sha256 check (schema and paths only)")
    v.set_defaults(func=_cmd_verify)

    s = sub.add_parser("synth", help="write a synthetic study with known truth")
    s.add_argument("--preset", default="demo", choices=["demo", "ci", "large"])
    s.add_argument("--out", default=None, help="folder for raw/ and truth/ (default <project>/data/<preset>)")
    s.add_argument("--manifest", default=None,
                   help="manifest to write (default: OUT/data_manifest.csv with --out; without, the preset's "
                        "default: <project>/data_manifest.csv for demo, <project>/data/<preset>/data_manifest.csv "
                        "otherwise)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty --out or over a --manifest that no earlier synth run wrote")
    s.set_defaults(func=_cmd_synth)

    n = sub.add_parser("new", help="a new study folder: empty manifest, animals.csv, study.json and a generic notebook")
    n.add_argument("folder", help="the study folder (new or empty)")
    n.add_argument("--biomarker", required=True, help="r2star, t2, t1, adc, ktrans, cest or f19")
    n.add_argument("--design", default="longitudinal", help="longitudinal (mixed model over days, default) or "
                   "endpoint (one value per animal)")
    n.add_argument("--study", default=None, help="study name: the manifest's study value and the notebook's name "
                   "(default: the folder's name)")
    n.set_defaults(func=_cmd_new)

    r = sub.add_parser("run", help="execute experiment notebooks into HTML reports")
    _report_options(r, param_help="a notebook parameter (repeatable), typed like its default in the notebook's "
                                  "parameters cell, e.g. -p t2star_method=loglinear -p alpha=0.01; an unknown name "
                                  "is an error")
    r.add_argument("--scheduler", default=None,
                   help="threads (default), local, or a scheduler address tcp://host:port (env STUDYLIB_SCHEDULER)")
    r.add_argument("--force", action="store_true",
                   help="execute notebooks even when their last successful report is still current")
    r.add_argument("--jobs", "-j", type=int, default=None,
                   help="notebooks executed at the same time, each in its own kernel (default: the CPU cores)")
    r.add_argument("--no-pdf", action="store_true",
                   help="do not print reports/<experiment>.pdf with headless Chromium (default: print it when "
                        "Chromium is installed; env STUDYLIB_CHROMIUM=none does the same)")
    r.set_defaults(func=_cmd_run)

    st = sub.add_parser("status", help="which reports are up to date, stale (and why), failed or never run")
    _report_options(st, param_help="the parameters the reports should have been run with (as given to run)")
    st.set_defaults(func=_cmd_status)

    im = sub.add_parser("import", help="convert ParaVision or DICOM scans to NIfTI + sidecars and manifest rows")
    im.add_argument("src", help="ParaVision study or scan folder, or a folder of DICOM files")
    im.add_argument("--out", default=None, help="data folder (files go to OUT/raw/<study>/<animal>/day<NN>/)")
    im.add_argument("--manifest", default=None, help="manifest to append to (default OUT/data_manifest.csv)")
    im.add_argument("--study", default=None)
    im.add_argument("--animal", default=None)
    im.add_argument("--group", default=None)
    im.add_argument("--day", default=None, help="days from first treatment (integer, may be negative)")
    im.add_argument("--scans", default=None, help="scan numbers to import, e.g. 4,5 (4/2: reconstruction 2)")
    im.add_argument("--kind", default=None, help="manifest kind for every scan instead of the recognised one")
    im.add_argument("--dry-run", action="store_true", help="list every scan and what it would become; write nothing")
    im.set_defaults(func=_cmd_import)

    w = sub.add_parser("show", help="list an experiment's cached intermediate results")
    w.add_argument("experiment")
    w.add_argument("--preset", default="demo", choices=["demo", "ci", "large"])
    w.add_argument("--manifest", default=None, help="the manifest the experiment was run on (as given to run)")
    w.add_argument("--cache", default=None, help=_CACHE_HELP)
    w.set_defaults(func=_cmd_show)

    ex = sub.add_parser("export", help="fitted maps and ROI labels as NIfTI + JSON in a BIDS-derivatives folder")
    ex.add_argument("experiment")
    ex.add_argument("--bids", required=True, help="output folder (new, empty, or an earlier export)")
    ex.add_argument("--preset", default="demo", choices=["demo", "ci", "large"])
    ex.add_argument("--manifest", default=None, help="the manifest the experiment was run on (as given to run)")
    ex.add_argument("--reports", default=None, help="reports folder holding the last run's <experiment>.json")
    ex.add_argument("--cache", default=None, help=_CACHE_HELP)
    ex.set_defaults(func=_cmd_export)

    ar = sub.add_parser("add-roi", help="list a label NIfTI drawn on a scan's grid as that session's ROI")
    ar.add_argument("roi", help="label image (.nii.gz/.nii) on the session's scan grid, e.g. an edited export dseg")
    ar.add_argument("--study", required=True)
    ar.add_argument("--animal", required=True)
    ar.add_argument("--day", required=True, help="days from first treatment (integer)")
    ar.add_argument("--preset", default="demo", choices=["demo", "ci", "large"])
    ar.add_argument("--manifest", default=None, help="manifest to add the ROI to (default: the preset's)")
    ar.add_argument("--labels", default=None, help="dseg.tsv (index, name) naming the label values")
    ar.add_argument("--replace", action="store_true", help="unlist the session's current ROI (its file is kept)")
    ar.set_defaults(func=_cmd_add_roi)
    return p


def _skip_iri_format_parsers() -> None:
    """Let jsonschema, when nbformat imports it, do without ``rfc3987_syntax`` in this process.

    jsonschema imports ``rfc3987_syntax`` for its ``iri`` format checks when it is installed (JupyterLab's
    jupyter_events asks for it), and that module compiles ~35 Earley parsers at import: 0.9 s of every
    ``studylib run`` before its first kernel starts (python-jsonschema/jsonschema#1428).  No schema this
    process validates (notebooks, nbformat's schema) uses an ``iri`` format.  Only for the ``studylib``
    command's own process (``main()`` without ``argv``), never for a Python session that imports studylib.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # `import rfc3987_syntax` raises ImportError: jsonschema skips it


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `studylib` command
        _skip_iri_format_parsers()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
