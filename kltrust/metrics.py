"""Host-side output helpers shared by the experiment entry points."""

from __future__ import annotations

import os
import pathlib
import tempfile


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
