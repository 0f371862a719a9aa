"""Atomic file writes: the one place derived and generated files are written.

A file is written to a temporary name in the same folder and renamed into place with
:func:`os.replace`, so a reader sees the old file or the complete new one, never a part;
a writer killed midway leaves only a hidden ``.<name>.*.tmp`` file.  (The cache's entry
folders follow their own protocol in :mod:`studylib.cache`.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (permissions 0644); ``fsync`` flushes it to disk first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str, *, fsync: bool = False) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
