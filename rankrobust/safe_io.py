"""Writing safely: never through a planted symbolic link, with the modes a plain ``open`` gives.

The one home of these rules for every writer of rankrobust (run and sweep
folders: `rankrobust.runs`; lock files; a download's partial and final
files: `rankrobust.data.downloads`):

* `refuse_link` / `open_nofollow`: a file or folder that is a symbolic link
  is refused with one line naming the link and where it points
  (`LinkRefused`), never followed for a write (``O_NOFOLLOW`` for files
  that are appended to or locked in place);
* `file_mode`: ``0o666`` less the process's umask (read once, `umask`), for
  files made through a temporary file (``mkstemp`` gives ``0600``) so a
  shared group can read results as it reads any other file.

Standard library only: the data layer imports it.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LinkRefused", "umask", "file_mode", "refuse_link", "open_nofollow"]


class LinkRefused(FileExistsError):
    """A write that would go through a symbolic link (a planted link in a run, sweep or data folder); refused.

    The message names the link, where it points and the fix, in one line.  A
    FileExistsError (a link exists where rankrobust writes), so callers that
    report existing-file problems in one line report this one too.
    """


_UMASK: int | None = None


def umask() -> int:
    """The process's umask, read once (``/proc/self/status``; elsewhere set and restored once, at first use)."""
    global _UMASK
    if _UMASK is None:
        try:
            line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def _link_message(link: Path, what: str) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return (f"{link} is a symbolic link (to {target}); rankrobust never writes {what} through a link: remove the "
            f"link (or pass the real folder) and run again")


def refuse_link(path: str | Path, what: str = "a file") -> None:
    """`LinkRefused` when ``path`` itself is a symbolic link (a write would land where it points)."""
    path = Path(path)
    if path.is_symlink():
        raise LinkRefused(_link_message(path, what))


def open_nofollow(path: str | Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link at ``path`` nor writes into a symlinked parent folder.

    For the files rankrobust appends to or locks in place (lock files, a
    download's partial file), where an atomic replace does not apply.
    ``mode`` is reduced by the umask as usual.  Raises `LinkRefused` naming
    the link.
    """
    path = Path(path)
    refuse_link(path.parent, "into a folder")
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError:
        if path.is_symlink():  # ELOOP (Linux) or EMLINK / EFTYPE elsewhere
            raise LinkRefused(_link_message(path, "a file")) from None
        raise
