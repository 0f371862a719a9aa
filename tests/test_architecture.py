"""The layout of docs/architecture.md, checked by reading the source (no import needed).

* every import inside ``studylib`` goes to the same or a lower layer (function-level imports too);
* no import cycle between modules;
* no module is longer than 800 lines;
* notebooks import only ``studylib``, ``studylib.plots`` and their own ``studylib.experiments.<name>``;
* each shared fact has one definition (manifest reader, ROI labels, experiment list, default paths).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "studylib"

#: layer of each module (longest matching dotted prefix wins); lower numbers are lower layers
LAYERS = {
    "studylib.errors": 0, "studylib.conventions": 0, "studylib._atomic": 0, "studylib._checks": 0,
    "studylib._codehash": 0,
    "studylib.catalog": 1, "studylib.layout": 1, "studylib.recorder": 1,
    "studylib.models": 2, "studylib.io.nifti": 2, "studylib.io.sidecar": 2, "studylib.io.dicom": 2,
    "studylib.io.bruker": 2, "studylib.manifest": 2,  # file formats; verify reads their headers
    "studylib.io": 3, "studylib.compute": 3, "studylib.cache": 3,
    "studylib.fit": 4, "studylib.roi": 4, "studylib.stats": 4,
    "studylib.synth": 5, "studylib.analysis": 5, "studylib.plots": 5, "studylib.testing": 5,
    "studylib.experiments": 6,
    "studylib.workbook": 7, "studylib.workbook.export": 7,  # export: maps out to BIDS, drawn ROIs back in
    "studylib.workbook.methods": 7, "studylib.workbook.animals": 7,  # methods / ARRIVE / animal flow sections
    "studylib.cli": 8, "studylib": 9,  # the lazy facade imports nothing eagerly but errors
}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module}: not placed in a layer; add it to LAYERS and docs/architecture.md")
    return LAYERS[best]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def studylib_imports(path: Path) -> set[str]:
    """Every ``studylib`` module ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "studylib"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "studylib":
                continue
            for a in node.names:  # `from . import stats` imports the module studylib.stats
                cand = f"{mod}.{a.name}"
                out.add(cand if (PKG.parent / (cand.replace(".", "/") + ".py")).exists()
                        or (PKG.parent / cand.replace(".", "/")).is_dir() else mod)
    out.discard(me)
    return out


SOURCES = sorted(PKG.rglob("*.py"))
GRAPH = {module_name(p): studylib_imports(p) for p in SOURCES}


def test_every_module_has_a_layer():
    for m in GRAPH:
        layer(m)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    bad = []
    for m, deps in GRAPH.items():
        if m == "studylib":
            continue
        for d in deps:
            if layer(d) > layer(m):
                bad.append(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})")
    assert not bad, "\n".join(sorted(bad))


def _resolve(dep: str) -> str:
    """A dependency as the module that defines it (a package's __init__ is the package)."""
    return dep if dep in GRAPH else dep.rpartition(".")[0]


def test_no_import_cycle():
    graph = {m: {_resolve(d) for d in deps if _resolve(d) in GRAPH and _resolve(d) != m}
             for m, deps in GRAPH.items() if m != "studylib"}
    # a package's __init__ re-exporting its own submodules is not a cycle of concern
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") or m.startswith(d + ".") and d in graph
                                                and _is_parent_facade(d))}
    cycles = []
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_parent_facade(pkg: str) -> bool:
    return (PKG.parent / pkg.replace(".", "/") / "__init__.py").exists()


def test_no_module_longer_than_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 800}
    assert not long, long


def test_experiments_extra_is_gone():
    assert not (PKG / "experiments_extra.py").exists()
    assert not list(PKG.glob("_stats_*.py")) and not (PKG / "stats.py").exists()


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_tags_one_key_figure_cell(nb):
    """The report index shows the first figure of the cell tagged ``key-figure`` as the experiment's
    thumbnail (studylib.workbook.downloads): each notebook says which figure that is, exactly once."""
    tagged = re.findall(r"^# %%.*tags=\[[^\]]*\bkey-figure\b", nb.read_text(encoding="utf-8"), flags=re.M)
    assert len(tagged) == 1, f"{nb.name}: {len(tagged)} cells tagged key-figure"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_only_the_facade_plots_and_their_own_module(nb):
    tree = ast.parse(nb.read_text(encoding="utf-8"))
    allowed = {"studylib", "studylib.plots", f"studylib.experiments.{nb.stem}"}
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            seen |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            seen |= {f"{node.module}.{a.name}" if node.module in ("studylib", "studylib.experiments")
                     else node.module for a in node.names}
    assert seen <= allowed, f"{nb.name} imports {sorted(seen - allowed)}"
    assert not re.search(r"\bsl\.(models|fit\.[a-z_]+|_[a-z])", nb.read_text()), \
        f"{nb.name} reaches into a private or models.* module through the facade"


def _definitions(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return [str(p.relative_to(ROOT)) for p in SOURCES if rx.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("what, pattern, home", [
    ("ROI label table", r"""^\s*\w+\s*(:[^=]+)?=\s*\{\s*1:\s*"tumour",\s*2:\s*"muscle",\s*3:""", "studylib/conventions.py"),
    ("experiment catalogue", r"""^\s*Experiment\("ampb_ferumoxytol\"""", "studylib/catalog.py"),
    ("default manifest", r"""^def default_manifest\(""", "studylib/layout.py"),
    ("default cache folder", r"""^def default_cache_dir\(""", "studylib/layout.py"),
    ("control-group words", r"""\(\s*"vehicle",\s*"control",""", "studylib/conventions.py"),
    ("manifest CSV parser", r"""csv\.(reader|DictReader)\(|read_csv\([^)]*manifest""", "studylib/manifest.py"),
])
def test_each_fact_has_one_home(what, pattern, home):
    assert _definitions(pattern) == [home], f"{what}: defined in {_definitions(pattern)}, should be only in {home}"


def test_every_exception_and_warning_class_is_defined_in_errors():
    rx = re.compile(r"^class \w+\((\w*Error|\w*Warning|ValueError|UserWarning)\):", re.M)
    elsewhere = [str(p.relative_to(ROOT)) for p in SOURCES if p.name != "errors.py" and rx.search(p.read_text())]
    assert not elsewhere, f"exception classes defined outside studylib/errors.py: {elsewhere}"
