"""Run the experiment notebooks into HTML reports, with provenance and cached intermediates.

``studylib run`` (:func:`run`) executes every ``notebooks/<experiment>.py`` (jupytext percent
format) with papermill and writes, per experiment,

* ``reports/<experiment>.ipynb``: the executed notebook; its ``metadata["studylib"]`` holds
  the provenance record,
* ``reports/<experiment>.html``: nbconvert HTML (:mod:`.report`),
* ``reports/<experiment>.json``: the provenance record (git commit + dirty flag, studylib
  and package versions, python, manifest sha256, parameters, run time, status, error,
  headline, conclusions, cache hits/misses),
* ``reports/<experiment>_files/``: every figure as ``fig-<n>.svg/.pdf/.png`` and every table as
  ``table-<n>.csv``, linked from the report, and ``reports/<experiment>.pdf`` where headless Chromium
  is installed (:mod:`.downloads`),

then ``reports/index.html`` listing every experiment.  A notebook that fails still gets a
report showing the failing cell and its error; the index marks it failed, the other
notebooks still run, and :func:`run` returns a non-zero exit code.

A notebook whose last run succeeded and whose inputs (notebook source, parameters, manifest
and the files it lists, studylib code, package versions) are unchanged is not executed again
(``--force`` overrides); inside an executed notebook, :class:`studylib.cache.Cache` skips
every unchanged computation.  The notebook side of the protocol is :mod:`studylib.recorder`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .._atomic import atomic_write_text, owner_tag, remove_abandoned
from ..catalog import EXPERIMENTS
from ..errors import StudyError, WorkbookError
from ..layout import check_preset, default_cache_dir, default_manifest, experiment_manifest, project_root, reports_dir
from ..layout import notebooks_dir as notebooks_dir_default
from ..manifest import read_manifest, sha256_file
from ..recorder import FILES_ENV, RECORD_ENV, jsonable as _jsonable
from .parameters import declared_parameters, load_notebook as _load_notebook, typed_parameters
from .provenance import provenance_base
from .downloads import collect as _collect_files, files_folder, kernel_arguments, PdfPrinter
from .kernels import KernelReaper, kernel_manager_with
from .report import OK_STATUSES, REPORT_FORMAT, _e, _footer_html, _header_html, render_report, write_index
from .methods import record_sections, study_files_signature

__all__ = ["available", "run", "run_fingerprint"]

def _check_preset(preset) -> None:
    try:
        check_preset(preset)
    except StudyError as err:
        raise WorkbookError(str(err)) from None


def _notebooks_dir(notebooks_dir=None) -> Path:
    if notebooks_dir is not None:
        p = Path(notebooks_dir)
        if not p.is_dir():
            raise WorkbookError(f"notebooks_dir {str(p)!r} is not a folder")
        return p
    return notebooks_dir_default()


def _notebook_file(name: str, nbdir: Path) -> Path | None:
    for ext in (".py", ".ipynb"):
        p = nbdir / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def available(notebooks_dir=None) -> list[str]:
    """The registered experiments whose notebook exists (``notebooks/<name>.py`` or ``.ipynb``); in the
    ``notebooks/`` of a lab's own study folder (``studylib new``: ``study.json`` beside it), every notebook."""
    from .animals import STUDY_FILE

    nbdir = _notebooks_dir(notebooks_dir)
    names = [n for n in EXPERIMENTS if _notebook_file(n, nbdir) is not None]
    if (nbdir.parent / STUDY_FILE).is_file() and nbdir.resolve() != notebooks_dir_default().resolve():
        names += sorted({p.stem for p in nbdir.iterdir() if p.suffix in (".py", ".ipynb") and p.is_file()
                         and p.stem not in EXPERIMENTS and re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", p.stem)})
    return names


def _manifest_missing_files(manifest: Path) -> list[str]:
    try:
        rows = read_manifest(manifest, validate=False)
    except StudyError as err:
        raise WorkbookError(str(err)) from None
    if "path" not in rows.columns:
        raise WorkbookError(f"{manifest}: manifest has no 'path' column")
    base = manifest.parent
    return [p for p in rows["path"] if p and not (base / p).is_file()]


def _ensure_data(preset: str, manifest) -> Path:
    """The manifest to use (absolute); generates the preset's synthetic study when it is missing."""
    if manifest is not None:
        m = Path(manifest)
        if not m.is_file():
            raise WorkbookError(f"manifest {str(m)!r} not found")
        missing = _manifest_missing_files(m)
        if missing:
            raise WorkbookError(f"{m}: {len(missing)} file(s) listed in the manifest are missing, e.g. "
                                f"{missing[0]!r}")
        return m.resolve()
    m = default_manifest(preset)
    if not m.is_file() or _manifest_missing_files(m):
        try:
            from ..synth import generate
        except ImportError as err:
            raise WorkbookError(f"{m}: the {preset!r} study is missing and studylib.synth cannot generate it "
                                f"({err})") from None
        print(f"generating the {preset!r} study (studylib.synth.generate) ...", file=sys.stderr, flush=True)
        out = generate(preset)
        m = Path(out) if out is not None else m
        if not m.is_file():
            raise WorkbookError(f"{m}: studylib.synth.generate({preset!r}) did not write the manifest")
    return m.resolve()


def _real_manifest(name: str, given) -> Path | None:
    """The manifest a real-data experiment (catalogue ``data="real"``) runs on; None for a synthetic one.

    ``given`` (``--manifest``) when it lists the study, otherwise the experiment's own committed manifest
    (:attr:`studylib.catalog.Experiment.manifest`, relative to the project folder): a preset's synthetic
    study never holds real scans, so ``studylib run <name>`` needs no other argument.
    """
    exp = EXPERIMENTS.get(name)
    if exp is None or exp.data != "real":
        return None
    if given is not None:
        if not Path(given).is_file():
            raise WorkbookError(f"manifest {str(given)!r} not found")
        with contextlib.suppress(StudyError, KeyError):
            if name in set(read_manifest(Path(given), validate=False)["study"]):
                return Path(given).resolve()
    m = experiment_manifest(name)
    if not m.is_file():
        raise WorkbookError(f"{name}: its real-data manifest {m} is missing (it is committed with the repository)")
    return m.resolve()


def _error_from_notebook(nb) -> dict | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return {"ename": out.get("ename"), "evalue": out.get("evalue"), "cell_index": i,
                        "execution_count": cell.get("execution_count")}
    return None


def _records_from_outputs(nb) -> dict:
    """Fallback: headline/conclusions recorded as output metadata (when the record file is missing)."""
    rec = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            meta = (out.get("metadata") or {}).get("studylib") or {}
            if "headline" in meta:
                rec["headline"] = meta["headline"]
                rec["numbers"] = meta.get("numbers", {})
    return rec


#: seconds between saves of a running notebook's executed copy (papermill's default saves it at every cell start and
#: end: ampb_ferumoxytol + ktrans_hypoxia one after the other took 44.6 / 43.5 s so and 42.4 / 43.1 s throttled,
#: interleaved); always saved at the end
SAVE_EVERY_S = 10.0
#: the papermill engine :func:`_execute` runs notebooks with (:func:`_engine`)
ENGINE_NAME = "studylib"


@functools.lru_cache(maxsize=None)
def _engine() -> str:
    """Register (once per process) and name papermill's nbclient engine with throttled saves of the executed notebook.

    papermill writes the whole executed notebook (every figure in it) before and after each cell, and before the
    next cell is sent.  This engine writes it at most every :data:`SAVE_EVERY_S` seconds while cells run and always
    when execution ends, whatever ended it: papermill's ``Engine.execute_notebook`` completes the notebook in a
    ``finally``, so a kernel that dies (out of memory, killed) still leaves the outputs of every cell before it in
    the failed report.  Cell errors are written by papermill itself before it raises.
    """
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    class _ThrottledSaves(NotebookExecutionManager):
        _final = False

        def save(self, **kwargs):  # papermill sets last_save_time when it makes the manager, and at every save
            if self._final or (self.now() - self.last_save_time).total_seconds() >= SAVE_EVERY_S:
                super().save(**kwargs)

        def notebook_complete(self, **kwargs):
            self._final = True  # its closing save always writes
            super().notebook_complete(**kwargs)

    class _Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, **kwargs):
            # papermill's Engine.execute_notebook with the manager above
            nb_man = _ThrottledSaves(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                                     autosave_cell_every=autosave_cell_every)
            nb_man.notebook_start()
            try:
                cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
            finally:
                nb_man.cleanup_pbar()
                nb_man.notebook_complete()
            return nb_man.nb

    papermill_engines.register(ENGINE_NAME, _Engine)
    return ENGINE_NAME


def _execute(name: str, src: Path, workdir: Path, out_nb: Path, parameters: tuple[dict, dict], *, cwd: Path,
             kernel_name: str, timeout_s, progress: bool, reaper: KernelReaper | None = None) -> tuple[str, dict | None, dict]:
    """Execute one notebook with papermill; returns (status, error, records).  With a ``reaper``, the kernel's
    exit after its shutdown request is waited for by it, in the background (:mod:`.kernels`)."""
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = _load_notebook(src)
    inp = workdir / f"{name}.input.ipynb"
    nbformat.write(nb, inp)
    parameters = _select_parameters(inp, parameters)
    record = workdir / f"{name}.record.json"
    env_overrides = {RECORD_ENV: str(record), "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                     "PYDEVD_DISABLE_FILE_VALIDATION": "1", FILES_ENV: str(workdir / files_folder(name))}
    status, error = "ok", None
    try:
        # the kernel's environment is given to its kernel manager, not set in os.environ: notebooks run in
        # parallel threads (``jobs``) each with its own record file
        pm.execute_notebook(str(inp), str(out_nb), parameters=parameters, kernel_name=kernel_name, engine_name=_engine(),
                            progress_bar=({"desc": name, "leave": False, "position": 1, "file": sys.stderr}
                                          if progress else False),
                            request_save_on_cell_execute=True, cwd=str(cwd), log_output=False,
                            execution_timeout=timeout_s,
                            kernel_manager_class=kernel_manager_with(env_overrides, kernel_arguments(), reaper))
    except PapermillExecutionError as err:
        status = "failed"
        error = {"ename": err.ename, "evalue": err.evalue, "cell_index": err.cell_index,
                 "execution_count": err.exec_count, "type": "cell"}
    except Exception as err:  # kernel died, timeout, kernel not found, bad parameters ...
        status = "failed"
        error = {"ename": type(err).__name__, "evalue": str(err)[:2000], "cell_index": None,
                 "execution_count": None, "type": "runner"}
    if not out_nb.is_file():  # nothing executed (e.g. no kernel): report on the unexecuted notebook
        nbformat.write(nb, out_nb)
    records = {}
    if record.is_file():
        with contextlib.suppress(ValueError, OSError):
            records = json.loads(record.read_text(encoding="utf-8"))
    if "headline" not in records:
        with contextlib.suppress(Exception):
            records.update(_records_from_outputs(nbformat.read(out_nb, as_version=4)))
    if status == "failed" and error:
        # papermill's cell_index counts cells before it inserted its error banners: take the saved notebook's
        with contextlib.suppress(Exception):
            found = _error_from_notebook(nbformat.read(out_nb, as_version=4))
            if found:
                error.update({k: v for k, v in found.items() if v is not None and k != "ename"
                              and k != "evalue"} if error.get("type") == "cell" else
                             {k: v for k, v in found.items() if v is not None})
    records["parameters"] = parameters
    return status, error, records


def _select_parameters(inp: Path, parameters: dict) -> dict:
    """The runner's standard parameters the notebook declares, plus every user-given one.

    A notebook without a ``parameters`` cell gets them all (papermill injects them at the top).
    """
    standard, user = parameters
    try:
        declared = declared_parameters(inp)
    except StudyError:  # an unparsable parameters cell: the notebook fails on it when executed
        declared = {}
    chosen = {k: v for k, v in standard.items() if not declared or k in declared}
    chosen.update(user)
    return chosen


def _resolve_experiments(experiments, nbdir: Path) -> list[str]:
    if experiments is None or (isinstance(experiments, (list, tuple)) and len(experiments) == 0):
        names = available(nbdir)
        if not names:
            raise WorkbookError(f"{nbdir}: no experiment notebooks found (expected e.g. "
                                f"{nbdir / 'ampb_ferumoxytol.py'})")
        return names
    if isinstance(experiments, str):
        experiments = [experiments]
    names = []
    for n in experiments:
        if not isinstance(n, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", n):
            raise WorkbookError(f"experiment name {n!r} is not valid")
        if _notebook_file(n, nbdir) is None:
            if n in EXPERIMENTS:
                raise WorkbookError(f"experiment {n!r}: notebook {nbdir / (n + '.py')} does not exist (yet)")
            raise WorkbookError(f"unknown experiment {n!r}; known: {', '.join(EXPERIMENTS)}")
        if n not in names:
            names.append(n)
    return names


def run(experiments: list[str] | None = None, preset: str = "demo", reports=None, scheduler=None,
        manifest=None, *, notebooks_dir=None, cache_dir=None, parameters: dict | None = None,
        timeout_s: float | None = None, progress: bool = True, kernel_name: str = "python3",
        force: bool = False, jobs: int | None = None, pdf: bool | None = None) -> int:
    """Execute experiment notebooks into reports; return the exit code (0 all ok, 1 any failed).

    Parameters
    ----------
    experiments : names (default: every registered experiment whose notebook exists).
    preset : synthetic study preset (``demo``, ``ci``, ``large``); its data is generated when
        the default manifest or any file it lists is missing.
    reports : output folder for ``<exp>.ipynb/.html/.json`` and ``index.html`` (default
        :func:`studylib.layout.reports_dir`, ``<project>/reports``).
    scheduler : ``None``/``"threads"``, ``"local"`` (one LocalCluster shared by all notebooks) or a
        scheduler address; passed to each notebook as the ``scheduler`` parameter.
    manifest : a data manifest to use instead of the preset's (must exist with all its files).
    notebooks_dir : folder of the notebooks (default :func:`studylib.layout.notebooks_dir`, ``<project>/notebooks``).
    cache_dir : cache root (default :func:`studylib.layout.default_cache_dir` of ``preset`` and ``manifest``).
    parameters : notebook parameters for every notebook (``studylib run -p name=value``), overriding the
        defaults of its ``parameters`` cell; checked and typed by
        :func:`studylib.workbook.parameters.typed_parameters` before anything runs (an unknown name or a
        value of the wrong type is a :class:`WorkbookError`).  Shown in the report header and recorded.
    timeout_s : per-cell execution timeout (None: no limit).
    progress : tqdm progress over experiments and cells (stderr).
    kernel_name : Jupyter kernel (the Makefile installs ``python3`` into the venv).
    force : execute even notebooks whose previous successful report is still current.
    jobs : notebooks executed at the same time, each in its own kernel (default: the number of CPU cores
        available to this process, at most the number of notebooks), started longest expected first
        (:func:`longest_first`, from the durations the previous run recorded, else the catalogue's typical ones);
        while a notebook's report is written (HTML, PDF) the next notebook's kernel already runs.  The reports,
        records and exit code are those of a serial run; only the order of the progress lines differs.
    pdf : print ``reports/<exp>.pdf`` with headless Chromium (None: when one is installed; its absence is
        noted in the record, not an error; False: never), one browser for every report of the run
        (:class:`~.downloads.PdfPrinter`).  See :mod:`.downloads`.

    Notes
    -----
    A notebook whose last run succeeded is not executed again when nothing it depends on has
    changed: its *run fingerprint* (sha256 of the notebook source, the parameters, the manifest's
    sha256, the sha256 of every file the manifest lists for the experiment, the studylib code hash, the python and
    package versions and the kernel) equals the one stored in ``reports/<exp>.json``.  The report is
    then kept and its record gets ``reused_at``; ``force=True`` (``studylib run --force``) executes
    anyway, and then the intermediate-result cache still skips unchanged computations inside it.

    Each notebook gets the parameters ``manifest``, ``study`` (= experiment), ``preset``,
    ``cache_dir``, ``scheduler`` and ``reports_dir`` (absolute paths), and runs with the
    current folder as working directory.
    """
    from tqdm.auto import tqdm

    from .. import compute

    _check_preset(preset)
    nbdir = _notebooks_dir(notebooks_dir)
    names = _resolve_experiments(experiments, nbdir)
    choice = compute.resolve_scheduler(scheduler)
    reports = Path(reports) if reports is not None else reports_dir()
    try:
        reports.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkbookError(f"reports folder {str(reports)!r} cannot be created ({err})") from None
    # -p name=value: checked and typed against each notebook's parameters cell before anything runs
    given = {n: typed_parameters(n, _notebook_file(n, nbdir), dict(parameters or {})) for n in names}
    real = {n: _real_manifest(n, manifest) for n in names}  # real-data experiments run on their own manifest
    man = _ensure_data(preset, manifest) if any(m is None for m in real.values()) else None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir(preset, manifest)
    cache_root = cache_root.resolve()
    where = {}
    for name in names:
        m = real[name] or man
        croot = cache_root if real[name] is None or cache_dir is not None else default_cache_dir(preset, m)
        where[name] = (m, croot.resolve())
    clean_leftovers(reports, [(croot, name) for name, (_, croot) in where.items()])
    n_jobs = _n_jobs(jobs, len(names))
    base = provenance_base()
    cwd = Path.cwd()
    # one headless Chromium prints every report's PDF (started at the first print, stopped at the end); kernels
    # exit in the background while the next notebook runs, all of them before the run ends
    with compute.scheduler_context(choice) if choice == "local" else contextlib.nullcontext() as client, \
            PdfPrinter() if pdf is not False else contextlib.nullcontext() as printer, KernelReaper() as reaper:
        sched_param = client.scheduler.address if client is not None else choice
        sched_desc = {"choice": choice, "address": sched_param if client is not None or "://" in choice else None}
        bar = tqdm(total=len(names), desc="experiments", unit="notebook", position=0, file=sys.stderr,
                   disable=not progress)

        def execute(name: str):
            m, croot = where[name]
            return _execute_one(name, nbdir=nbdir, reports=reports, preset=preset, manifest=m,
                                manifest_sha=sha256_file(m), cache_root=croot, scheduler=sched_param,
                                sched_desc=sched_desc, parameters=given[name], base=base, cwd=cwd, timeout_s=timeout_s,
                                progress=progress and n_jobs == 1, kernel_name=kernel_name, force=force,
                                printer=printer, reaper=reaper)

        def finish(done) -> bool:
            ok = done if isinstance(done, bool) else done()
            bar.update(1)
            return ok

        if n_jobs == 1:
            results = [finish(execute(name)) for name in names]
        else:
            from concurrent.futures import ThreadPoolExecutor

            # longest expected first (LPT), so the kernels finish together; n_jobs kernels at a time, and a
            # notebook's report (HTML, PDF: ~2 s) is written by a writer thread while the next kernel already
            # runs in its place; results come back in `names` order
            order = longest_first(names, reports)
            with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="studylib-write") as writers, \
                    ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="studylib-run") as runners:
                handed = {name: runners.submit(lambda n=name: writers.submit(finish, execute(n))) for name in order}
                done = {name: f.result().result() for name, f in handed.items()}
            results = [done[name] for name in names]
        bar.close()
    failed = sum(not ok for ok in results)
    try:
        index = write_index(reports)
    except OSError as err:
        raise WorkbookError(f"{err.filename or reports}: cannot write the index of the reports "
                            f"({err.strerror or err})") from None
    print(f"{len(names) - failed}/{len(names)} notebook(s) completed; index: {index}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def longest_first(names: list[str], reports: Path) -> list[str]:
    """``names`` ordered by expected run time, longest first: the order ``run(jobs=N)`` starts them in.

    Longest-processing-time-first list scheduling (Graham, SIAM J Appl Math 1969;17:416,
    doi:10.1137/0117039: within 4/3 of the shortest possible finish on N workers) with the durations the
    previous run recorded (``run_s`` in ``reports/<name>.json``).  Without any record (a first run, a new
    reports folder), a catalogued experiment is expected to take its ``typical_run_s``
    (:class:`studylib.catalog.Experiment`).  A notebook still without a duration is expected to take the median
    of the known ones; ties (and nothing known at all) keep the given order.
    """
    def recorded(name: str) -> float | None:
        try:
            v = float(json.loads((Path(reports) / f"{name}.json").read_text(encoding="utf-8")).get("run_s"))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        return v if v >= 0 and v != float("inf") else None  # NaN fails v >= 0

    known = {n: recorded(n) for n in names}
    if all(v is None for v in known.values()):  # nothing recorded here yet: the catalogue's typical durations
        known = {n: (EXPERIMENTS[n].typical_run_s or None) if n in EXPERIMENTS else None for n in names}
    seen = sorted(v for v in known.values() if v is not None)
    typical = seen[len(seen) // 2] if seen else 0.0
    return sorted(names, key=lambda n: -(known[n] if known[n] is not None else typical))


#: prefix of a notebook run's temporary work folder (followed by its owner tag)
RUN_TMP_PREFIX = "studylib-run-"


def _n_jobs(jobs, n_notebooks: int) -> int:
    """How many notebooks run at once: ``jobs`` or the CPU cores this process may use, at most ``n_notebooks``."""
    if jobs is None:
        try:
            jobs = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            jobs = os.cpu_count() or 1
    elif isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise WorkbookError(f"jobs must be a whole number >= 1, got {jobs!r}")
    return max(1, min(int(jobs), n_notebooks))


def _files_signature(manifest: Path, study: str | None = None) -> list:
    """(path, sha256 of the bytes now on disk) of every file the manifest lists for ``study`` (all rows when
    the study has none): a run is reused only when the content is unchanged, whatever the sizes and
    modification times say (a copy with ``cp -p``, bit rot)."""
    base = manifest.parent
    rows = read_manifest(manifest, validate=False)
    if study is not None and "study" in rows.columns and (rows["study"] == study).any():
        rows = rows[rows["study"] == study]
    out = []
    for p in rows["path"]:
        if not p:
            continue
        try:
            out.append([p, sha256_file(base / p)])
        except (OSError, StudyError):
            out.append([p, None])
    out += study_files_signature(manifest)  # animals.csv / study.json beside the manifest (report sections)
    return sorted(out)


def fingerprint_parts(src: Path, parameters: dict, manifest: Path, base: dict, kernel_name: str,
                      study: str | None = None) -> dict:
    """Everything a notebook run depends on (see :func:`run`, Notes), part by part: the notebook, its
    parameters, the manifest and the *content* (sha256) of the files it lists for ``study``, the code, the
    packages, python and the kernel.  Stored in the report record (``inputs``) so ``studylib status`` can
    say which part changed."""
    return {"format": REPORT_FORMAT, "notebook": sha256_file(src), "parameters": _jsonable(parameters),
            "manifest_sha256": sha256_file(manifest), "files": _files_signature(manifest, study),
            "code": base.get("studylib_code_sha256"), "packages": base.get("packages"),
            "python": base.get("python"), "kernel": kernel_name}


def fingerprint_of(parts: dict) -> str:
    """sha256 of :func:`fingerprint_parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_fingerprint(src: Path, parameters: dict, manifest: Path, base: dict, kernel_name: str,
                    study: str | None = None) -> str:
    """sha256 of everything a notebook run depends on (:func:`fingerprint_parts`)."""
    return fingerprint_of(fingerprint_parts(src, parameters, manifest, base, kernel_name, study))


def fingerprint_parameters(name: str, manifest: Path, preset: str, cache_root: Path, reports: Path,
                           parameters: dict | None) -> dict:
    """The parameters a run's fingerprint covers: the runner's own (the scheduler left out: results do not
    depend on it, and a LocalCluster's address changes every run) and the notebook's given ones."""
    return {"manifest": str(manifest), "study": name, "preset": preset, "cache_dir": str(cache_root),
            "reports_dir": str(Path(reports).resolve()), **(parameters or {})}


def _reuse(name: str, reports: Path, fingerprint: str) -> dict | None:
    """The previous record when its run succeeded with the same fingerprint and its files exist."""
    rec_path = reports / f"{name}.json"
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(rec, dict) and rec.get("status") in OK_STATUSES and rec.get("fingerprint") == fingerprint
            and (reports / f"{name}.html").is_file() and (reports / f"{name}.ipynb").is_file()
            and all((reports / f).is_file() for f in _listed_files(rec))):
        return None
    rec["reused_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rec["reuse_count"] = int(rec.get("reuse_count", 0)) + 1
    atomic_write_text(rec_path, json.dumps(rec, indent=1, ensure_ascii=False, allow_nan=False))
    return rec


def _listed_files(rec: dict) -> list[str]:
    """The files beside a report its record lists (figures, tables, the PDF), relative to the reports folder."""
    files = rec.get("files") or {}
    out = [v for e in (files.get("figures") or []) + (files.get("tables") or []) for k, v in e.items()
           if k in ("png", "svg", "pdf", "csv")]
    return out + ([rec["outputs"]["pdf"]] if (rec.get("outputs") or {}).get("pdf") else [])


def _write_report(reports: Path, files: dict[str, str | bytes], folders: dict[str, Path | None] | None = None,
                  remove: tuple[str, ...] = ()) -> None:
    """Write a report's files all or none: each to a temporary file first, then all renamed into place.

    ``folders`` maps a folder beside the report (``<exp>_files``) to the folder whose files it gets (None or an
    empty folder: the old one is removed); it is staged as a whole and swapped in before the files, so the
    report never links to a missing file.  ``remove``: files of a previous report to delete (its PDF when this
    run printed none).

    Raises
    ------
    WorkbookError
        a file cannot be written (disk full, permission denied, ...): one line naming the path; no
        temporary file is left and the previous report, if any, stays as it was.
    """
    staged, dirs, target = [], [], reports
    try:
        for fname, src in (folders or {}).items():
            target = reports / fname
            srcs = sorted(p for p in Path(src).iterdir() if p.is_file()) if src is not None and Path(src).is_dir() else []
            if not srcs:
                dirs.append((None, target))
                continue
            tmpd = Path(tempfile.mkdtemp(prefix=f".{fname}.{owner_tag()}-", suffix=".tmp", dir=reports))
            dirs.append((tmpd, target))
            for f in srcs:
                target = reports / fname / f.name
                shutil.copyfile(f, tmpd / f.name)
                os.chmod(tmpd / f.name, 0o644)
            os.chmod(tmpd, 0o755)
        for fname, data in files.items():
            target = reports / fname
            fd, tmp = tempfile.mkstemp(prefix=f".{fname}.{owner_tag()}-", suffix=".tmp", dir=reports)
            staged.append((Path(tmp), target))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.chmod(tmp, 0o644)
    except OSError as err:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for tmpd, _ in dirs:
            if tmpd is not None:
                shutil.rmtree(tmpd, ignore_errors=True)
        raise WorkbookError(f"{target}: cannot write the report ({err.strerror or err}); nothing was "
                            "changed in the reports folder") from None
    for tmpd, target in dirs:
        old = None
        if target.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner_tag()}-old-", suffix=".tmp", dir=reports))
            os.replace(target, old / target.name)
        if tmpd is not None:
            os.replace(tmpd, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    for tmp, target in staged:
        os.replace(tmp, target)
    for fname in remove:
        with contextlib.suppress(FileNotFoundError):
            (reports / fname).unlink()


def clean_leftovers(reports: Path | None = None, cache_dirs=()) -> int:
    """Delete what runs killed midway left behind: their temporary work folders (in the system's
    temporary folder), half-written report files in ``reports`` and cache ``.tmp-`` folders in each
    of ``cache_dirs`` (experiment cache folders), when the process that wrote them is gone.  Returns
    how many were removed."""
    from ..cache import Cache

    n = len(remove_abandoned(tempfile.gettempdir(), f"{RUN_TMP_PREFIX}*"))
    if reports is not None:
        n += len(remove_abandoned(reports, ".*.tmp"))
    for root, name in cache_dirs:
        with contextlib.suppress(OSError, StudyError):
            n += Cache(name, root, verbose=False).remove_abandoned()
    return n


def _is_default_manifest(manifest, preset: str) -> bool:
    """Whether ``manifest`` is the preset's own (``studylib.layout.default_manifest``)."""
    try:
        return Path(manifest).resolve() == Path(default_manifest(preset)).resolve()
    except Exception:  # noqa: BLE001 -- an unknown preset names no data
        return False


def _execute_one(name, *, nbdir, reports, preset, manifest, manifest_sha, cache_root, scheduler, sched_desc,
                 parameters, base, cwd, timeout_s, progress, kernel_name, force=False, printer=None, reaper=None):
    """Run notebook ``name`` in its kernel; returns True for a reused report, else the step that writes the report.

    The returned callable renders the HTML, prints the PDF and writes ``reports/<name>.*`` from the executed
    notebook in a temporary folder, which it removes; it returns whether the notebook succeeded.  Split so
    that :func:`run` with ``jobs`` starts the next notebook's kernel while this one's report is written.
    """
    from tqdm.auto import tqdm

    src = _notebook_file(name, nbdir)
    exp = EXPERIMENTS.get(name)
    standard = {"manifest": str(manifest), "study": name, "preset": preset, "cache_dir": str(cache_root),
                "scheduler": scheduler, "reports_dir": str(reports.resolve())}
    parts = fingerprint_parts(src, fingerprint_parameters(name, manifest, preset, cache_root, reports, parameters),
                              manifest, base, kernel_name, study=name)
    fingerprint = fingerprint_of(parts)
    if not force:
        prev = _reuse(name, reports, fingerprint)
        if prev is not None:
            tqdm.write(f"{name}: unchanged since {prev.get('started')}: report reused (--force to rerun)",
                       file=sys.stderr)
            return True
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix=f"{RUN_TMP_PREFIX}{owner_tag()}-{name}-")
    try:
        work = Path(tmp.name)
        out_nb = work / f"{name}.ipynb"
        status, error, records = _execute(name, src, work, out_nb, (standard, dict(parameters or {})), cwd=cwd, kernel_name=kernel_name,
                                          timeout_s=timeout_s, progress=progress, reaper=reaper)
        run_s = time.perf_counter() - t0
        finished = _dt.datetime.now(_dt.timezone.utc)
    except BaseException:
        tmp.cleanup()
        raise

    def finish() -> bool:
        with tmp:
            return _finish_one(name, exp=exp, src=src, work=work, out_nb=out_nb, status=status, error=error,
                               records=records, started=started, finished=finished, run_s=run_s, preset=preset,
                               manifest=manifest, manifest_sha=manifest_sha, parameters=parameters,
                               sched_desc=sched_desc, fingerprint=fingerprint, parts=parts, base=base,
                               reports=reports, printer=printer)

    return finish


def _finish_one(name, *, exp, src, work, out_nb, status, error, records, started, finished, run_s, preset, manifest,
                manifest_sha, parameters, sched_desc, fingerprint, parts, base, reports, printer=None) -> bool:
    """Write the report of an executed notebook (see :func:`_execute_one`); True when it succeeded."""
    import nbformat
    from tqdm.auto import tqdm

    if status == "ok" and records.get("warnings"):
        status = "ok with warnings"
    try:
        src_rel = src.resolve().relative_to(project_root()).as_posix()
    except ValueError:
        src_rel = str(src)
    prov = {
        "studylib_report": REPORT_FORMAT,
        "experiment": name,
        "title": exp.title if exp else name,
        "after": exp.after if exp else "",
        "biomarker": exp.biomarker if exp else "",
        "data": exp.data if exp else "synthetic",
        "status": status,
        "error": error,
        "warnings": records.get("warnings", []),
        "warnings_not_listed": int(records.get("warnings_not_listed", 0)),
        "headline": records.get("headline"),
        "numbers": records.get("numbers", {}),
        "conclusions": records.get("conclusions"),
        "cache": records.get("cache", {"hits": 0, "misses": 0, "events": []}),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "run_s": round(run_s, 3),
        # the preset names the data only when its own manifest was used (`--manifest` of a lab's study: None)
        "preset": preset if _is_default_manifest(manifest, preset) else None,
        "parameters": _jsonable(records.get("parameters", {})),
        "parameters_given": _jsonable(dict(parameters or {})),
        "manifest": {"path": str(manifest), "sha256": manifest_sha},
        "scheduler": sched_desc,
        "notebook": {"source": src_rel, "sha256": sha256_file(src)},
        "outputs": {"ipynb": f"{name}.ipynb", "html": f"{name}.html", "json": f"{name}.json"},
        "fingerprint": fingerprint,
        "inputs": parts,
        **base,
    }
    record_sections(prov, manifest, name, src)  # methods, ARRIVE, animal flow (never fails the run)
    nb = nbformat.read(out_nb, as_version=4)
    # figures (SVG, PDF, PNG) and tables (CSV) the kernel saved, linked from the report (.downloads)
    prov["files"] = {**_collect_files(nb, work / files_folder(name), name),
                     "failures": records.get("export_failures", [])}
    # the run's printer (None: pdf=False) knows which Chromium prints, or why none does
    chromium, why_not = (printer.exe, printer.why_not) if printer is not None else (None, "not asked for (pdf=False)")
    prov["outputs"]["pdf"] = f"{name}.pdf" if chromium else None
    prov["pdf"] = {"printed": bool(chromium), "note": why_not}
    page = _render(nb, prov, name)
    printed = None
    if chromium and "render_error" not in prov:
        (work / f"{name}.html").write_text(page, encoding="utf-8")
        note = printer.print(work / f"{name}.html", work / f"{name}.pdf")
        if note:  # no PDF: not an error, the record says why
            prov["outputs"]["pdf"], prov["pdf"] = None, {"printed": False, "note": note}
            page = _render(nb, prov, name)
        else:
            printed = (work / f"{name}.pdf").read_bytes()
    out = {f"{name}.ipynb": nbformat.writes(nb), f"{name}.html": page,
           f"{name}.json": json.dumps(prov, indent=1, ensure_ascii=False, allow_nan=False)}
    if printed is not None:
        out[f"{name}.pdf"] = printed
    _write_report(reports, out, {files_folder(name): work / files_folder(name)},
                  remove=() if printed is not None else (f"{name}.pdf",))
    msg = f"{name}: {status} in {run_s:.1f} s"
    if error:
        msg += f" ({error.get('ename')}: {str(error.get('evalue'))[:200]})"
    if records.get("headline"):
        msg += f" | {records['headline']}"
    for w in records.get("warnings", [])[:5]:
        msg += f"\n  warning: {w['message'][:200]}" + (f" (x{w['count']})" if w.get("count", 1) > 1 else "")
    if len(records.get("warnings", [])) > 5:
        msg += f"\n  ... {len(records['warnings']) - 5} more warning(s) in the report"
    tqdm.write(msg, file=sys.stderr)
    return status in OK_STATUSES


def _render(nb, prov: dict, name: str) -> str:
    """The report's HTML (``prov`` stored in the notebook's metadata first); a minimal page when nbconvert fails."""
    nb.metadata["studylib"] = prov
    try:
        return render_report(nb, prov)
    except Exception as err:  # never lose the run because the HTML could not be rendered
        prov["render_error"] = f"{type(err).__name__}: {err}"
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(name)}</title></head><body>"
                f"{_header_html(prov)}<p>HTML rendering failed: {_e(prov['render_error'])}</p>"
                f"{_footer_html(prov)}</body></html>")

