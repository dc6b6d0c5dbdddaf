"""Executes the notebooks of notebooks/ headless and saves the executed copies.

    python -m experiments.notebooks [--small] [--out=runs/notebooks] [--only=01,04]

Each notebook runs in a fresh kernel with its working directory in notebooks/. ``--small`` sets
KLTRUST_NOTEBOOK_SMALL=1 (tiny settings, what `make test` runs); without it the notebooks use the
settings their text discusses. Executed copies (with outputs and figures) go to ``--out``; the
notebooks in git stay without outputs. Runs the notebooks write (the RLHF pipeline's stages) go to
``--out``/work. A bad flag prints one line and exits with status 2 (`experiments.cli`).
"""

from __future__ import annotations

import os
import pathlib
import time

import nbformat
from nbclient import NotebookClient

from experiments import cli

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: str | os.PathLike, *, small: bool, workdir: str | os.PathLike,
            timeout: int = 3600) -> nbformat.NotebookNode:
    """Runs every cell of the notebook at ``path`` and returns it with its outputs.

    A failing cell raises `nbclient.exceptions.CellExecutionError` naming the cell and the error.
    The kernel sees KLTRUST_NOTEBOOK_SMALL and KLTRUST_NOTEBOOK_WORKDIR (the notebooks' switch and
    where they write).
    """
    path = pathlib.Path(path)
    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, "KLTRUST_NOTEBOOK_SMALL": "1" if small else "0",
           "KLTRUST_NOTEBOOK_WORKDIR": str(workdir)}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return notebook


def main(argv) -> None:
    del argv
    out = pathlib.Path(_OUT.value)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if _ONLY.value:
        numbers = sorted(p.name.split("_")[0] for p in paths)
        unknown = [n for n in _ONLY.value if n not in numbers]
        if unknown:
            raise cli.ConfigError(f"--only = {','.join(_ONLY.value)!r}: {unknown[0]!r} is not the "
                                  f"number of a notebook in {NOTEBOOKS}; the numbers are "
                                  f"{', '.join(numbers)}.")
        paths = [p for p in paths if p.name.split("_")[0] in _ONLY.value]
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        start = time.perf_counter()
        notebook = execute(path, small=_SMALL.value, workdir=out / "work")
        nbformat.write(notebook, str(out / path.name))
        print(f"{path.name}: {time.perf_counter() - start:.0f} s -> {out / path.name}", flush=True)


if __name__ == "__main__":
    # Flags only when run as a program: tests import `execute` beside other modules' flags.
    from absl import flags

    _SMALL = flags.DEFINE_bool("small", False, "Tiny settings (KLTRUST_NOTEBOOK_SMALL=1).")
    _OUT = flags.DEFINE_string("out", "runs/notebooks", "Directory for the executed copies.")
    _ONLY = flags.DEFINE_list("only", [], "Notebook numbers to run, e.g. 01,04 (default: all).")
    cli.run(main)
