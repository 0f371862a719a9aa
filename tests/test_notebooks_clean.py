"""The experiment notebooks are committed clean and keep the runner's contract.

* ``notebooks/*.ipynb`` carry no outputs and no execution counts (jupytext ``.py`` files are
  the reviewed source; an ``.ipynb`` is only ever a paired copy);
* every ``notebooks/*.py`` is a jupytext percent notebook with a ``python3`` kernelspec (without
  one papermill fails with "No language found"), is a registered experiment, and has one
  ``parameters`` cell declaring what ``studylib run`` passes.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import papermill as pm

from studylib import workbook as wb

NOTEBOOKS = wb.REPO_DIR / "notebooks"
RUNNER_PARAMETERS = {"manifest", "study", "preset", "cache_dir", "scheduler"}


def output_problems(path: Path) -> list[str]:
    """Why an .ipynb is not clean (empty list when it is)."""
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{path.name}: cell {i} has {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"{path.name}: cell {i} has execution_count {cell.execution_count}")
    return problems


def contract_problems(path: Path) -> list[str]:
    """Why a jupytext .py notebook breaks the runner's contract (empty list when it does not)."""
    problems = []
    text = path.read_text(encoding="utf-8")
    if "# %%" not in text:
        problems.append(f"{path.name}: not a jupytext percent-format notebook (no '# %%' cells)")
    nb = jupytext.reads(text, fmt="py:percent")
    if (nb.metadata.get("kernelspec") or {}).get("name") != "python3":
        problems.append(f"{path.name}: the jupytext header has no kernelspec named python3")
    if path.stem not in wb.EXPERIMENTS:
        problems.append(f"{path.name}: not a registered experiment ({', '.join(wb.EXPERIMENTS)})")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{path.name}: {len(tagged)} cells tagged 'parameters' (need exactly 1)")
    else:
        tmp = path.with_name(f".{path.stem}.check.ipynb")
        try:
            nbformat.write(wb.run_module._load_notebook(path), tmp)  # as the runner prepares it
            declared = set(pm.inspect_notebook(str(tmp)))
        finally:
            tmp.unlink(missing_ok=True)
        missing = RUNNER_PARAMETERS - declared
        if missing:
            problems.append(f"{path.name}: parameters cell does not declare {sorted(missing)}")
    return problems


def test_committed_ipynb_have_no_outputs():
    assert NOTEBOOKS.is_dir()
    problems = [p for f in sorted(NOTEBOOKS.glob("*.ipynb")) for p in output_problems(f)]
    assert not problems, "notebooks must be committed without outputs:\n" + "\n".join(problems)


def test_text_notebooks_keep_the_runner_contract():
    problems = [p for f in sorted(NOTEBOOKS.glob("*.py")) for p in contract_problems(f)]
    assert not problems, "\n".join(problems)


def test_checkers_flag_dirty_and_broken_notebooks(tmp_path):
    """The two checks above really detect what they look for."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    cell.execution_count = 1
    nb.cells = [cell, nbformat.v4.new_code_cell("x = 2")]
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    assert output_problems(dirty) == ["dirty.ipynb: cell 0 has 1 output(s)", "dirty.ipynb: cell 0 has execution_count 1"]
    clean = tmp_path / "clean.ipynb"
    nb.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(nb, clean)
    assert output_problems(clean) == []

    broken = tmp_path / "lactate_cest.py"
    broken.write_text('# %% tags=["parameters"]\nmanifest = None\nstudy = "lactate_cest"\n\n# %%\nprint(study)\n')
    found = contract_problems(broken)
    assert any("kernelspec" in p for p in found)
    assert any("does not declare ['cache_dir', 'preset', 'scheduler']" in p for p in found)
    good = tmp_path / "collagen_adc.py"
    good.write_text("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
                    "#     name: python3\n# ---\n\n# %% tags=[\"parameters\"]\nmanifest = None\nstudy = 'x'\n"
                    "preset = 'demo'\ncache_dir = None\nscheduler = None\n\n# %%\nprint(study)\n")
    assert contract_problems(good) == []
    assert not list(tmp_path.glob(".*.check.ipynb"))
