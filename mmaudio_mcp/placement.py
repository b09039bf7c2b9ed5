"""Put finished audio where the user wants it: a folder inside their workspace (or the output folder), never outside.

Every destination is resolved (symlinks included) and must stay inside an allowed root; an existing file is only
replaced when asked; copies are written to a temporary file beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from mmaudio_mcp.audio import part_file_for, sha256_of
from mmaudio_mcp.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Sequence


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
    if target.exists():
        if sha256_of(target) == sha256:
            return target
        if not overwrite:
            raise InvalidArgumentError(
                f"{destination.relative(target)!r} already exists and holds other audio; "
                "choose another filename or pass overwrite=true to replace it."
            )
    _atomic_copy(source, target)
    return target


def _atomic_copy(source: Path, target: Path) -> None:
    fd, temporary = part_file_for(target)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as data:
            shutil.copyfileobj(data, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


__all__ = ["Destination", "place_copy", "resolve_destination"]
