"""Host-side output helpers shared by the experiment entry points."""

from __future__ import annotations

import csv
import io
import math
import os
import pathlib
import tempfile
from collections.abc import Sequence


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
