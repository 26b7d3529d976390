"""The errors a user can cause, and only those.

Every error that bad input, a missing file or a refused destination can raise derives from
:class:`LayerScopeError`; each subsystem's own error (``PruneError``, ``ModelLoadError``, ``RecipeError`` …)
derives from it. The command line prints a :class:`LayerScopeError` as one line and exits with status 2; anything
else is a bug and shows its full traceback (exit 1). The dashboard shows the one line, and for a bug the message
with the traceback in an expander.

The subclasses below also derive from the built-in exception they refine (``ValueError``, ``KeyError``,
``FileNotFoundError``, ``FileExistsError``), so code that catches the built-in keeps working.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class LayerScopeError(Exception):
    """An error the user can cause and fix: its message is one line that says what to do."""


class InputError(LayerScopeError, ValueError):
    """A value the user gave (an option, a recipe field, a widget) that cannot work."""


class NotFound(LayerScopeError, KeyError):
    """A name the user gave (a metric, a task, a text) that is not known."""

    def __str__(self) -> str:  # KeyError's str() quotes its argument
        return str(self.args[0]) if self.args else ""


class MissingFile(LayerScopeError, FileNotFoundError):
    """A file or folder the user named that does not exist or cannot be read."""


class DestinationRefused(LayerScopeError, FileExistsError):
    """A destination LayerScope will not write to (it holds files LayerScope did not write, or needs confirming)."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as the one line the command line and the pages show."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n")) if len(text) < 400 else text.splitlines()[0]


class DiskFull(LayerScopeError, OSError):
    """Not enough free space for a write (checked before it starts, or ENOSPC during it; nothing is left behind)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.args[1])


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


#: bytes kept free beyond an estimate (metadata, tokenizer files, the file system's own needs)
DISK_MARGIN = 64 << 20


def check_free_space(path: str | Path, need_bytes: int, what: str) -> None:
    """Refuse (:class:`DiskFull`, one line) a write of about ``need_bytes`` under ``path`` when the disk holding
    ``path`` (or its nearest existing parent) has less free space than that plus :data:`DISK_MARGIN`."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return  # the file system cannot tell: the write itself will report ENOSPC
    if int(need_bytes) + DISK_MARGIN > free:
        raise DiskFull(
            f"not enough disk space for {what}: about {format_bytes(need_bytes)} needed (plus "
            f"{format_bytes(DISK_MARGIN)} to spare), {format_bytes(free)} free on the disk of {p}; free "
            "some space or choose another place"
        )


def is_disk_full(exc: BaseException) -> bool:
    """An ``OSError`` that says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(exc: OSError, what: str = "the write") -> str:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"the disk is full{where}: {what} stopped and nothing half-written was kept; free some space and retry"


class on_disk_full:
    """``with on_disk_full("the capture"):`` turns an ``OSError`` ENOSPC / EDQUOT raised inside (a write to a full
    disk) into :class:`DiskFull` with one line; the writer's own clean-up (temporary removed) has run by then."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(disk_full_message(exc, self.what)) from exc
        return False
