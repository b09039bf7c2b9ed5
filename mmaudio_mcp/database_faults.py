"""What is wrong with a SQLite database in the state folder, in words a person can act on.

Shared by every store that keeps a SQLite file there (the job store and the ledger), so a full disk, a read-only
folder or a damaged file reads the same whichever of them meets it first.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from mmaudio_mcp.errors import StoreError

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path


def _folder_state(folder: Path) -> tuple[bool, bool]:
    """Whether the folder is read-only (or not writable by us), and whether its disk is full; (False, False) if it
    cannot be told (for example, the folder does not exist)."""
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False, False
    read_only = bool(disk.f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    return read_only, disk.f_bavail * disk.f_frsize < 64 * 1024


def database_error(path: Path, exc: sqlite3.Error | OSError) -> StoreError:
    """Say what is wrong with the job database and what to do about it."""
    detail = str(exc) or type(exc).__name__
    text = detail.lower()
    recover = "jobs already submitted can be resumed with check_status(request_id=...), which asks Pixazo again"
    read_only, full = _folder_state(path.parent)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "full" in text or full:
        return StoreError(
            f"The job database {path} cannot be written: the disk is full. Free some space (or point "
            "MMAUDIO_STATE_DIR at another disk) and try again."
        )
    if (
        (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM))
        or "readonly" in text
        or read_only
    ):
        return StoreError(
            f"The job database {path} cannot be written ({detail}): its folder is read-only or not yours. Make "
            "it writable, or point MMAUDIO_STATE_DIR at a writable folder."
        )
    if "unable to open" in text or isinstance(exc, OSError):
        return StoreError(
            f"The job database {path} cannot be opened ({detail}). Check that its folder exists and is writable, "
            "or point MMAUDIO_STATE_DIR at another folder."
        )
    if "locked" in text or "busy" in text:
        return StoreError(
            f"The job database {path} stayed locked by another process for over 10 s ({detail}); try again."
        )
    return StoreError(
        f"The job database {path} is unreadable or damaged ({detail}). Move it aside (for example "
        f"`mv {path} {path}.broken`) and start again: a new one is created, and {recover}."
    )


__all__ = ["database_error"]
