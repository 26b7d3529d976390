"""Where results go: the one check every command and every page uses before any work starts, and the writers.

A destination is a folder (``run``/``metrics``/``topology``/``overview``/``downstream``/``leaderboard`` ``--out``,
the exports of ``prune``/``compress``/``heal``, the adapter export and the exports of the pages) or a file
(``report --out``, the report page). The rules (docs/safety.md):

* a destination that does not exist, or an empty folder, is written;
* anything else is never changed unless the user asked (``--overwrite``, or *Replace it* after the page has shown
  what is inside);
* even when asked, only what LayerScope's marker lists as its own is replaced: a folder is LayerScope's when it
  holds the marker ``.layerscope.json`` with the list of the files LayerScope wrote there, and it is replaced only
  when it holds nothing else; the replacement removes only the listed files. A ``recipe.json`` or ``model.json``
  that merely names layerscope does not make a folder LayerScope's. A file (the HTML report) is LayerScope's when
  it begins with :data:`FILE_MARKER`, not when it merely mentions LayerScope. Anything else is refused with one
  line naming the folder and what is in it; so are the filesystem root, the home folder, and any folder that is
  or contains the home folder, the working directory, the code or the cache;
* folders are written into a temporary sibling and put in place at the end (:func:`writing`, through the one
  folder writer :func:`analysis.cache.atomic_directory`), so a failed or interrupted command leaves neither a
  half-written folder nor an empty one; an old folder is renamed aside before the new one is renamed in (a kill
  between the two renames leaves the old one as a backup, which the next check puts back), and stale ``.tmp-*``
  leftovers of an earlier, killed write are removed by the check.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from analysis import cache
from analysis.errors import DestinationRefused

log = logging.getLogger(__name__)

MARKER = ".layerscope.json"
FILE_MARKER = "<!-- written by LayerScope: replaced only by LayerScope -->"
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
    foreign: list[str] = field(default_factory=list)  # entries of a LayerScope folder that its marker does not list
    overwrite: bool = False  # the user asked to replace it (set by check)

    @property
    def empty(self) -> bool:
        return not self.exists or (self.is_dir and not self.entries)

    @property
    def replaceable(self) -> bool:
        """A LayerScope folder holding only what its marker lists (or a report LayerScope wrote)."""
        return self.written_by_layerscope and not self.foreign

    def listing(self, limit: int = 8) -> str:
        shown = ", ".join(self.entries[:limit])
        more = len(self.entries) - limit
        return shown + (f" and {more} more" if more > 0 else "")


def _protected(path: Path) -> str | None:
    """Why ``path`` is never written or replaced, or None."""
    if path == Path(path.anchor):
        return "it is the filesystem root"
    for name, inner in (
        ("your home folder", Path.home().resolve()),
        ("the working directory", Path.cwd().resolve()),
        ("LayerScope's code", _CODE_ROOT),
        ("the cache", cache.cache_root()),
    ):
        if inner == path:
            return f"it is {name}"
        if path in inner.parents:
            return f"it contains {name} ({inner})"
    return None


def written_files(path: Path) -> set[str] | None:
    """The names LayerScope's marker in ``path`` lists as written by it, or None (no marker, or not one of ours)."""
    try:
        info = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = info.get("files") if isinstance(info, dict) and info.get("layerscope") else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files) | {MARKER}


def is_layerscope_folder(path: Path) -> bool:
    """``path`` holds LayerScope's marker with the list of what it wrote (a recipe.json alone proves nothing)."""
    return written_files(path) is not None


def is_layerscope_file(path: Path) -> bool:
    """A file LayerScope wrote: it begins with :data:`FILE_MARKER` (a mention of LayerScope elsewhere is not it)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(FILE_MARKER) + 1) == (FILE_MARKER + "\n").encode()
    except OSError:
        return False


def with_file_marker(text: str) -> str:
    """``text`` as LayerScope writes a file: :data:`FILE_MARKER` on the first line."""
    return text if text.startswith(FILE_MARKER + "\n") else FILE_MARKER + "\n" + text


def inspect(path: str | Path, kind: str = "folder") -> Destination:
    """What is at ``path`` (nothing is changed)."""
    p = Path(os.path.expanduser(str(path))).resolve()
    d = Destination(path=p, kind=kind, exists=p.exists() or p.is_symlink(), is_dir=p.is_dir())
    if d.is_dir:
        names = sorted(p.iterdir(), key=lambda q: q.name)
        d.entries = [
            q.name + ("/" if q.is_dir() else "")
            for q in names
            if not (q.name.startswith((".tmp-", ".bak-", ".old-")) and cache.is_stale(q))
        ]
        written = written_files(p)
        d.written_by_layerscope = written is not None
        if written is not None:
            d.foreign = [e for e in d.entries if e.rstrip("/") not in written]
    elif d.exists and kind == "file":
        d.written_by_layerscope = is_layerscope_file(p)
    return d


def check(
    path: str | Path,
    overwrite: bool = False,
    what: str = "output folder",
    option: str = "--overwrite",
    kind: str = "folder",
) -> Destination:
    """Refuse (:class:`DestinationError`, one line) a destination that must not be written; otherwise return it.

    ``option`` names how the user asks to replace (``--overwrite`` on the command line, the page's button).
    """
    if kind == "folder":  # first put back an old folder a killed replacement left aside, remove stale temporaries
        cache.clean_stale_siblings(Path(os.path.expanduser(str(path))).resolve(), discard=remove_owned)
    d = inspect(path, kind)
    p = d.path
    why = _protected(p)
    if why and not d.empty:
        raise DestinationError(
            f"{what} {p} is never written or replaced: {why}"
            + (f" (it holds {d.listing()})" if d.entries else "")
            + "; choose another folder"
        )
    if kind == "folder":
        if d.exists and not d.is_dir:
            raise DestinationError(f"{what} {p} is a file, not a folder; choose a folder")
        if d.empty:
            return d
        if not d.written_by_layerscope:
            raise DestinationError(
                f"{what} {p} is not empty and was not written by LayerScope (no {MARKER} listing its files), so it "
                f"is never replaced; it holds {d.listing()}: choose an empty or new folder"
            )
        if d.foreign:
            raise DestinationError(
                f"{what} {p} holds files LayerScope did not write ({', '.join(d.foreign[:8])}"
                f"{' …' if len(d.foreign) > 8 else ''}); it is not replaced: move them or "
                "choose another folder"
            )
        if not overwrite:
            raise DestinationError(
                f"{what} {p} is not empty ({d.listing()}); choose an empty or new folder, or "
                f"{option} to replace it (it was written by LayerScope)"
            )
    else:
        if d.is_dir:
            raise DestinationError(f"{what} {p} is a folder; give the path of a file to write, e.g. {p}/report.html")
        if d.exists and not d.written_by_layerscope:
            raise DestinationError(
                f"{what} {p} exists and was not written by LayerScope (it does not begin with "
                "LayerScope's marker), so it is never replaced; choose another file name"
            )
        if d.exists and not overwrite:
            raise DestinationError(
                f"{what} {p} already exists; choose another file name, or {option} to replace it "
                "(it was written by LayerScope)"
            )
        for parent in p.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise DestinationError(f"{what} {p} cannot be written: {parent} is a file")
                break
    d.overwrite = overwrite
    return d


def mark(folder: Path, what: str) -> None:
    """Write the marker into ``folder`` (the temporary copy, just before it is put in place), listing every name in
    it: what a later replacement may remove."""
    folder = Path(folder)
    info = {
        "layerscope": 1,
        "what": what,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": sorted({q.name for q in folder.iterdir()} | {MARKER}),
    }
    cache.atomic_write_text(folder / MARKER, json.dumps(info, indent=1))


def mark_written(folder: Path, *names: str) -> None:
    """Add ``names`` (files just written into a finished LayerScope folder) to its marker's list."""
    folder = Path(folder)
    info = json.loads((folder / MARKER).read_text())
    info["files"] = sorted(set(info.get("files") or []) | set(names) | {MARKER})
    cache.atomic_write_text(folder / MARKER, json.dumps(info, indent=1))


def remove_owned(folder: Path) -> None:
    """Remove what LayerScope's marker in ``folder`` lists, then the folder if nothing else is left.

    Anything else (something that appeared after the check) is kept, in a visible sibling ``<name>-kept-<time>``,
    and named in a warning: a replacement never deletes what LayerScope did not write.
    """
    folder = Path(folder)
    for name in written_files(folder) or ():
        target = folder / name
        if name in ("", ".", "..") or "/" in name or os.sep in name:
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    try:
        folder.rmdir()
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    found = cache.leftover_of(folder)
    name = found[1] if found else folder.name.lstrip(".")
    kept = folder.parent / f"{name}-kept-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    try:
        os.rename(folder, kept)
    except OSError:
        kept = folder
    log.warning(
        "%s held files LayerScope did not write (%s); they are kept in %s",
        name,
        ", ".join(sorted(q.name for q in kept.iterdir())[:8]),
        kept,
    )


@contextmanager
def writing(dest: Destination, what: str = "results") -> Iterator[Path]:
    """Yield a temporary folder beside ``dest.path``; on success mark it and put it in place.

    The destination is checked again at the end (something may have appeared meanwhile). On failure nothing is
    left: no temporary, no empty folder, and an earlier folder at the destination is untouched. An earlier
    LayerScope folder that is replaced loses only the files its marker lists (:func:`remove_owned`).
    """
    with cache.atomic_directory(dest.path, overwrite=True, complete=lambda p: False, discard=remove_owned) as tmp:
        yield tmp
        check(dest.path, overwrite=dest.overwrite, what="destination", kind="folder")
        mark(tmp, what)


def write_file(dest: Destination, text: str) -> Path:
    """Write a checked file destination (the report) atomically, beginning with :data:`FILE_MARKER`; checked again
    just before the rename."""
    check(dest.path, overwrite=dest.overwrite, what="destination", kind="file")
    cache.atomic_write_text(dest.path, with_file_marker(text))
    return dest.path
