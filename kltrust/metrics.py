"""Host-side output helpers shared by the experiment entry points."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old file or the new one, never half of one.

    A crash mid-write leaves any existing file untouched: the text goes to a temporary file in the
    same directory, which then replaces ``path`` in one rename.
    """
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def rows_to_csv(rows: Sequence[dict]) -> str:
    """CSV of dict rows: every key of every row as a column (first-seen order), so rows of
    different kinds (PPO and TRPO, control and best-of-n) share one table; None and NaN are
    written as empty cells."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def read_update_rows(path: pathlib.Path, updates: int) -> dict[str, np.ndarray]:
    """The per-update metrics of updates 1..``updates`` from a JSON-lines file of rows with
    ``update`` (and ``step``, ``seed``), runs in order within an update, as [runs, updates] float32
    arrays (the values were written from float32, so they come back exactly; null is NaN)."""
    if updates == 0 or not path.exists():
        return {}
    rows: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["update"] <= updates:
            rows.setdefault(row["update"], []).append(row)
    names = [k for k in rows[1][0] if k not in ("step", "update", "seed")]
    return {name: np.array([[np.nan if r[name] is None else r[name] for r in rows[u]]
                            for u in range(1, updates + 1)], np.float32).T for name in names}


def truncate_update_rows(path: pathlib.Path, updates: int, key: str = "update") -> None:
    """Drops the rows whose ``key`` (``update`` by default) is past ``updates`` (written after the
    last checkpoint), atomically."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if json.loads(line)[key] <= updates]
    write_text_atomic(path, "".join(line + "\n" for line in keep))
