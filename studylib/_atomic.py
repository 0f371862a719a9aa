"""Atomic file writes: the one place derived and generated files are written.

A file is written to a temporary name in the same folder and renamed into place with
:func:`os.replace`, so a reader sees the old file or the complete new one, never a part;
a writer killed midway leaves only a hidden ``.<name>.p<pid>@<host>-*.tmp`` file, which
:func:`remove_abandoned` deletes once that process is gone.  (The cache's entry
folders follow their own protocol in :mod:`studylib.cache`.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "owner_tag", "owner_gone", "remove_abandoned"]


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (permissions 0644); ``fsync`` flushes it to disk first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}-", suffix=".tmp", dir=path.parent)
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


# ------------------------------------------------------------------ temporary folders whose writer died
# A temporary folder (a cache entry being written, a notebook run's work folder) carries its owner in its
# name, ``p<pid>@<host>``; a later run removes the ones whose owner process is gone (killed with -9, the
# machine rebooted), so nothing is left behind for good, and never one whose owner still runs.

_OWNER = re.compile(r"p(\d+)@([A-Za-z0-9_.-]+?)(?:-|$)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"


def owner_tag() -> str:
    """``p<pid>@<host>`` of this process, for the name of a temporary folder it writes."""
    return f"p{os.getpid()}@{_host()}"


def owner_gone(name: str, *, other_host_age_s: float = 86400.0, mtime: float | None = None) -> bool:
    """Whether the process that named a temporary folder ``name`` (see :func:`owner_tag`) no longer runs.

    On this host: the pid does not exist.  On another host (a shared disk) it cannot be asked: gone when
    the folder is older than ``other_host_age_s``.  A name with no owner tag (written before the tags)
    counts as gone when older than an hour.
    """
    age = time.time() - mtime if mtime is not None else 0.0
    m = _OWNER.search(name)
    if m is None:
        return age > 3600.0
    pid, host = int(m.group(1)), m.group(2)
    if host != _host():
        return age > other_host_age_s
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process nobody has reaped yet (its parent died too, in a container without init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def remove_abandoned(folder, pattern: str) -> list[Path]:
    """Delete the entries of ``folder`` matching ``pattern`` (a glob) whose owner is gone; return them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(pattern):
        try:
            gone = owner_gone(p.name, mtime=p.lstat().st_mtime)
        except OSError:
            continue
        if gone:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed
