"""Every notebook in notebooks/ executes headless on its small settings, draws its figures, and is
committed without outputs."""

from __future__ import annotations

import pathlib

import nbformat
import pytest

from experiments.notebooks import NOTEBOOKS, execute

EXPECTED = ("01_quickstart", "02_kl_estimators", "03_trust_region_vs_penalty", "04_rlhf_frontier",
            "05_exact_optimum", "06_domain_budgets", "07_kl_matrix", "08_real_model_frontier",
            "09_brax_clip_vs_kl")


def _notebooks() -> list[pathlib.Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_exist():
    assert tuple(p.stem for p in _notebooks()) == EXPECTED


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} has outputs; clear them before committing")


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_executes_on_small_settings(path, tmp_path):
    """Runs every cell in a fresh kernel with KLTRUST_NOTEBOOK_SMALL=1 (any cell error fails the
    test) and checks that figures were drawn inline."""
    notebook = execute(path, small=True, workdir=tmp_path, timeout=600)
    figures = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} drew no figure"
