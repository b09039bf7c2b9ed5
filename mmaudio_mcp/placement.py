"""Put finished audio where the user wants it: a folder inside their workspace (or the output folder), never outside.

Every destination is resolved (symlinks included) and must stay inside an allowed root; an existing file is only
replaced when asked; copies are written to a temporary file beside the target and then put in place: renamed over
the target when replacing is allowed, else hard-linked to the name, which the kernel does only if the name is free,
so of two processes saving different audio under one name at once exactly one wins and the other is told the name
is taken (never check-then-replace). Local write failures become `LocalStorageError`s naming cause and remedy.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from mmaudio_mcp.audio import part_file_for, sha256_of
from mmaudio_mcp.errors import InvalidArgumentError, LocalStorageError

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """A resolved folder to write into, and the root (workspace or output folder) that contains it."""

    folder: Path
    root: Path

    def relative(self, path: Path) -> str:
        """The path as the user's code would reference it: relative to the root, with forward slashes."""
        return path.relative_to(self.root).as_posix()


def resolve_destination(folder: str | None, roots: Sequence[Path], default: Path) -> Destination:
    """Turn a `folder` argument into a destination inside one of the roots.

    A relative folder is taken inside the first root (the output folder when the client exposes no roots); an
    absolute one must lie inside some root. Symlinks are resolved before the check, so a link cannot lead out.
    """
    allowed = [root.resolve() for root in roots] or [default.resolve()]
    if not folder:
        return Destination(default.resolve(), default.resolve()) if not roots else Destination(allowed[0], allowed[0])
    if "\x00" in folder or len(folder) > 1024:
        raise InvalidArgumentError("The folder is not a usable path.")
    requested = Path(folder).expanduser()
    resolved = (requested if requested.is_absolute() else allowed[0] / requested).resolve()
    for root in allowed:
        if resolved.is_relative_to(root):
            return Destination(resolved, root)
    where = "the client's workspace roots" if roots else "the output folder"
    raise InvalidArgumentError(
        f"The folder {folder[:200]!r} is outside {where} ({', '.join(str(root) for root in allowed)}); "
        "use a folder inside one of them (a relative folder is taken inside the first)."
    )


async def place_copy(source: Path, sha256: str, destination: Destination, name: str, *, overwrite: bool) -> Path:
    """Copy a verified file to `destination/name`; refuse to replace a different file unless `overwrite`."""
    return await anyio.to_thread.run_sync(_place_copy, source, sha256, destination, name, overwrite)


def _place_copy(source: Path, sha256: str, destination: Destination, name: str, overwrite: bool) -> Path:
    destination.folder.mkdir(parents=True, exist_ok=True)
    target = destination.folder / name
    # Checked again now that the folder exists: a symlink may have appeared on the way.
    if not target.parent.resolve().is_relative_to(destination.root) or target.is_symlink():
        raise InvalidArgumentError(f"Refusing to write {name!r}: the destination leads outside the allowed folder.")
    if target.exists():  # a fast answer only: the exclusive link below is what decides
        if sha256_of(target) == sha256:
            return target
        if not overwrite:
            raise _taken(destination, target)
    if not _atomic_copy(source, target, exclusive=not overwrite) and sha256_of(target) != sha256:
        raise _taken(destination, target)
    return target


def _taken(destination: Destination, target: Path) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{destination.relative(target)!r} already exists and holds other audio; "
        "choose another filename or pass overwrite=true to replace it."
    )


def _atomic_copy(source: Path, target: Path, *, exclusive: bool = False) -> bool:
    """Write a copy beside target and put it in place; with `exclusive`, only if the name is still free (False if
    it is taken)."""
    fd, temporary = part_file_for(target)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as data:
            shutil.copyfileobj(data, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        if not exclusive:
            os.replace(temporary, target)
            return True
        return _link_exclusively(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _link_exclusively(temporary: Path, target: Path) -> bool:
    """Give the finished temporary file the target's name unless the name exists (atomic: link(2) fails with EEXIST)."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # No hard links on this filesystem (FAT, exFAT, some network shares): create the name with O_EXCL instead.
        try:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(out, "wb") as writer, temporary.open("rb") as data:
            shutil.copyfileobj(data, writer, 1024 * 1024)
            writer.flush()
            os.fsync(writer.fileno())
    return True


def local_storage_error(exc: OSError, folder: Path, request_id: str | None = None) -> LocalStorageError:
    """Name a failed local write by its cause, with what to do (and how to get the audio afterwards)."""
    again = f' Then call download_audio(request_id="{request_id}") again.' if request_id else " Then try again."
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalStorageError(
            f"The disk holding {folder} is full (no space left on device). Free some space, or set "
            f"MMAUDIO_OUTPUT_DIR (or pass a folder) on another disk.{again}"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return LocalStorageError(
            f"{folder} is not writable ({exc.strerror or 'permission denied'}: read-only or not yours). Make it "
            f"writable, or set MMAUDIO_OUTPUT_DIR (or pass a folder) somewhere writable.{again}"
        )
    return LocalStorageError(f"Could not write to {folder}: {exc.strerror or exc}.{again}")


async def remove_leftovers(folder: Path) -> int:
    """Delete interrupted temporary files (`.name.*.part`) in folder that no live process has open; return how many.

    On Linux, /proc tells which files are open, so a download in progress in another process is never touched;
    elsewhere only files untouched for an hour are removed.
    """
    return await anyio.to_thread.run_sync(_remove_leftovers, folder)


def _remove_leftovers(folder: Path) -> int:
    parts: set[str] = {str(path) for path in folder.glob(".*.part")} if folder.is_dir() else set()
    if not parts:
        return 0
    in_use = _open_files(parts)
    removed = 0
    for part in parts - (in_use if in_use is not None else set()):
        with contextlib.suppress(OSError):
            if in_use is None and time.time() - os.stat(part).st_mtime < 3600:
                continue
            os.unlink(part)
            removed += 1
    if removed:
        logger.info("removed %d interrupted temporary file(s) from %s", removed, folder)
    return removed


def _open_files(paths: set[str]) -> set[str] | None:
    """Which of these files some process has open (None if this system cannot tell)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    found: set[str] = set()
    for fds in proc.glob("[0-9]*/fd"):
        with contextlib.suppress(OSError), os.scandir(fds) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if (target := os.readlink(entry.path)) in paths:
                        found.add(target)
    return found


__all__ = ["Destination", "local_storage_error", "place_copy", "remove_leftovers", "resolve_destination"]
