"""Where results go: one check, used by every command and every page, before any work starts.

A destination is a folder (``run``/``metrics``/``topology``/``overview``/``downstream`` ``--out``, the exports of
``prune``/``compress``/``heal`` and of the pages) or a file (``report --out``). The rules:

* a destination that does not exist, or an empty folder, is written;
* anything else is never changed unless the user asked (``--overwrite``, or *Replace it* after the page has shown
  what is inside);
* even when asked, only a folder LayerScope wrote is replaced: it holds the marker ``.layerscope.json`` (written
  into every output folder, with the list of what was written) or, for folders written before the marker, a
  ``recipe.json`` / ``model.json`` of LayerScope's. A folder holding files LayerScope did not write there (notes,
  a subfolder) is refused, and so are the filesystem root, the home folder and any folder that contains the
  working directory, the code or the cache;
* folders are written into a temporary sibling and renamed into place at the end (:func:`writing`), so a failed or
  interrupted command leaves neither a half-written folder nor an empty one; stale ``.tmp-*`` leftovers of an
  earlier, killed write are removed by the check.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from analysis import cache
from analysis.errors import DestinationRefused

MARKER = ".layerscope.json"
_CODE_ROOT = Path(__file__).resolve().parent.parent


class DestinationError(DestinationRefused):
    """A destination that must not be written (the message says why and what to do)."""


@dataclass
class Destination:
    """What is at a destination now."""

    path: Path
    kind: str = "folder"  # folder | file
    exists: bool = False
    is_dir: bool = False
    entries: list[str] = field(default_factory=list)  # top-level names inside a folder ("sub/" for folders)
    written_by_layerscope: bool = False
    foreign: list[str] = field(default_factory=list)  # entries of a LayerScope folder that LayerScope did not write
    overwrite: bool = False  # the user asked to replace it (set by check)

    @property
    def empty(self) -> bool:
        return not self.exists or (self.is_dir and not self.entries)

    @property
    def replaceable(self) -> bool:
        """A LayerScope folder (or report) holding nothing else."""
        return self.written_by_layerscope and not self.foreign

    def listing(self, limit: int = 8) -> str:
        shown = ", ".join(self.entries[:limit])
        more = len(self.entries) - limit
        return shown + (f" and {more} more" if more > 0 else "")


def _protected(path: Path) -> str | None:
    home = Path.home().resolve()
    if path == Path(path.anchor) or path == home:
        return "it is the filesystem root or your home folder"
    for name, inner in (("the working directory", Path.cwd().resolve()), ("LayerScope's code", _CODE_ROOT),
                        ("the cache", cache.cache_root())):
        if inner == path or path in inner.parents:
            return f"it contains {name} ({inner})"
    return None


def is_layerscope_folder(path: Path) -> bool:
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    for name, key in (("recipe.json", "layerscope"), ("model.json", "layerscope_results")):
        try:
            info = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and key in info:
            return True
    return False


def _written_files(path: Path) -> set[str] | None:
    try:
        files = json.loads((path / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return set(files) if isinstance(files, list) else None


def inspect(path: str | Path, kind: str = "folder") -> Destination:
    """What is at ``path`` (nothing is changed)."""
    p = Path(os.path.expanduser(str(path))).resolve()
    d = Destination(path=p, kind=kind, exists=p.exists() or p.is_symlink(), is_dir=p.is_dir())
    if d.is_dir:
        names = sorted(p.iterdir(), key=lambda q: q.name)
        d.entries = [q.name + ("/" if q.is_dir() else "") for q in names
                     if not (q.name.startswith((".tmp-", ".old-")) and cache.is_stale(q))]
        d.written_by_layerscope = is_layerscope_folder(p)
        written = _written_files(p)
        if d.written_by_layerscope and written is not None:
            d.foreign = [e for e in d.entries if e.rstrip("/") not in written and e != MARKER]
    elif d.exists and kind == "file":
        try:
            with open(p, "rb") as f:
                d.written_by_layerscope = b"LayerScope" in f.read(65536)
        except OSError:
            pass
    return d


def check(path: str | Path, overwrite: bool = False, what: str = "output folder", option: str = "--overwrite",
          kind: str = "folder") -> Destination:
    """Refuse (:class:`DestinationError`, one line) a destination that must not be written; otherwise return it.

    ``option`` names how the user asks to replace (``--overwrite`` on the command line, the page's button).
    """
    d = inspect(path, kind)
    p = d.path
    why = _protected(p)
    if why and not d.empty:
        raise DestinationError(f"{what} {p} is never written or replaced: {why}; choose another folder")
    if kind == "folder":
        if d.exists and not d.is_dir:
            raise DestinationError(f"{what} {p} is a file, not a folder; choose a folder")
        cache.clean_stale_siblings(p)
        if d.empty:
            return d
        if not overwrite:
            raise DestinationError(
                f"{what} {p} is not empty ({d.listing()}); choose an empty or new folder"
                + (f", or {option} to replace it (it was written by LayerScope)" if d.replaceable else
                   " (it was not written by LayerScope, so it is never replaced)"))
        if not d.written_by_layerscope:
            raise DestinationError(f"{what} {p} was not written by LayerScope (no {MARKER} or recipe.json); it is "
                                   f"never replaced ({d.listing()}): choose an empty or new folder")
        if d.foreign:
            raise DestinationError(f"{what} {p} holds files LayerScope did not write ({', '.join(d.foreign[:8])}); "
                                   "it is not replaced: move them or choose another folder")
    else:
        if d.is_dir:
            raise DestinationError(f"{what} {p} is a folder; give the path of a file to write, e.g. {p}/report.html")
        if d.exists and not overwrite:
            raise DestinationError(f"{what} {p} already exists; choose another file name"
                                   + (f", or {option} to replace it" if d.written_by_layerscope else ""))
        if d.exists and not d.written_by_layerscope:
            raise DestinationError(f"{what} {p} exists and was not written by LayerScope; it is never replaced")
    d.overwrite = overwrite
    return d


def mark(folder: Path, what: str, files: bool = True) -> None:
    """Write the marker into ``folder`` (the temporary copy, just before it is renamed into place), with the list
    of what is in it (``files=False``: a folder still being filled; nothing in it counts as foreign)."""
    folder = Path(folder)
    info = {"layerscope": 1, "what": what,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if files:
        info["files"] = sorted({q.name for q in folder.iterdir()} | {MARKER})
    (folder / MARKER).write_text(json.dumps(info, indent=1))


@contextmanager
def writing(dest: Destination, what: str = "results") -> Iterator[Path]:
    """Yield a temporary folder beside ``dest.path``; on success mark it and rename it into place.

    The destination is checked again at the end (something may have appeared meanwhile). On failure nothing is
    left: no temporary, no empty folder, and an earlier folder at the destination is untouched.
    """
    with cache.atomic_directory(dest.path, overwrite=True, complete=lambda p: False) as tmp:
        yield tmp
        check(dest.path, overwrite=dest.overwrite, what="destination", kind="folder")
        mark(tmp, what)


