"""The on-disk result store shared by the dashboard and the command line.

Every result lives under ``cache/<kind>/<key>/`` where ``key`` is a hash of everything the result depends on
(model fingerprint, text hash, window settings, metric parameters). A result written by ``python -m analysis`` is
the same file the dashboard reads, and the other way round.

Writes are atomic: a result is written into a temporary sibling directory and renamed into place, so a reader
never sees half a result and an interrupted run leaves nothing behind but a ``.tmp-*`` folder that is ignored
(and removed on the next write of the same key). A file that cannot be read (truncated, corrupt, from an older
format) is reported through :class:`CacheCorrupt`, removed, and recomputed by :func:`cached`.

The location is ``cache/`` next to the code, or ``$LAYERSCOPE_CACHE`` when set. Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """The cache directory: ``$LAYERSCOPE_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("LAYERSCOPE_CACHE") or (_ROOT / "cache")).resolve()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hex hash of a JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class CacheCorrupt(RuntimeError):
    """A cached result exists but cannot be read; the caller recomputes it."""


@dataclass(frozen=True)
class Entry:
    """One cached result: a directory holding ``meta.json`` and any number of array or JSON files."""

    kind: str
    key: str
    params: dict

    @property
    def path(self) -> Path:
        return cache_root() / self.kind / self.key

    def exists(self) -> bool:
        return (self.path / "meta.json").is_file()


def entry(kind: str, params: dict) -> Entry:
    """The cache entry of a result of ``kind`` computed with ``params`` (which must say everything it depends on)."""
    return Entry(kind=kind, key=stable_hash({"v": FORMAT_VERSION, "kind": kind, **params}), params=params)


@contextmanager
def atomic_directory(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success rename it to ``final``.

    On any exception the temporary directory is removed and ``final`` is left as it was. With
    ``overwrite=False`` an existing non-empty ``final`` raises :class:`FileExistsError` before anything is
    written.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final} exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            # Move the old one aside first so that the rename below is a single atomic step.
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EntryWriter:
    """Collects the files of one result inside its temporary directory (see :func:`entry_writer`)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.arrays: list[str] = []
        self.data: dict = {}

    def add_array(self, name: str, arr: np.ndarray) -> None:
        np.save(self.dir / f"{name}.npy", np.asarray(arr), allow_pickle=False)
        self.arrays.append(name)

    def open_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A writable memory-mapped ``.npy`` to fill in place (for results larger than memory)."""
        self.arrays.append(name)
        return np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


@contextmanager
def entry_writer(e: Entry) -> Iterator[EntryWriter]:
    """Write a result atomically: add arrays to the writer, set ``writer.data``; ``meta.json`` is written last."""
    with atomic_directory(e.path) as tmp:
        w = EntryWriter(tmp)
        yield w
        meta = {"format": FORMAT_VERSION, "kind": e.kind, "params": e.params, "data": w.data,
                "arrays": sorted(w.arrays)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=_json_default))


def write_entry(e: Entry, arrays: dict[str, np.ndarray] | None = None, data: dict | None = None) -> Path:
    """Write a result atomically: arrays as ``.npy`` files, ``data`` and the parameters in ``meta.json``."""
    with entry_writer(e) as w:
        for name, arr in (arrays or {}).items():
            w.add_array(name, arr)
        w.data = data or {}
    return e.path


def read_entry(e: Entry, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read a result written by :func:`write_entry`; raise :class:`CacheCorrupt` if any part is unreadable."""
    try:
        meta = json.loads((e.path / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CacheCorrupt(f"{e.path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
        arrays = {
            name: np.load(e.path / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            for name in meta["arrays"]
        }
        return arrays, meta["data"]
    except CacheCorrupt:
        raise
    except Exception as exc:  # truncated npy, bad JSON, missing file ...
        raise CacheCorrupt(f"cannot read {e.path}: {exc}") from exc


def remove_entry(e: Entry) -> None:
    shutil.rmtree(e.path, ignore_errors=True)


@dataclass
class CacheOutcome:
    """How a cached computation went: ``hit`` (read from disk), ``computed``, or ``recomputed`` (was corrupt)."""

    status: str
    path: Path
    message: str = ""


def cached(
    kind: str,
    params: dict,
    compute: Callable[[], tuple[dict[str, np.ndarray], dict]],
    mmap: bool = False,
    refresh: bool = False,
) -> tuple[dict[str, np.ndarray], dict, CacheOutcome]:
    """Return ``(arrays, data, outcome)`` of a result, computing and storing it if it is missing or corrupt.

    ``compute`` returns ``(arrays, data)``: numpy arrays and a JSON-serialisable dict.
    """
    e = entry(kind, params)
    note = ""
    if e.exists() and not refresh:
        try:
            arrays, data = read_entry(e, mmap=mmap)
            return arrays, data, CacheOutcome("hit", e.path)
        except CacheCorrupt as exc:
            log.warning("corrupt cache entry, recomputing: %s", exc)
            note = f"The cached result was unreadable and has been recomputed ({exc})."
            remove_entry(e)
    arrays, data = compute()
    write_entry(e, arrays, data)
    if mmap:  # hand back the memory-mapped copy so that large results are not held twice
        arrays, data = read_entry(e, mmap=True)
    return arrays, data, CacheOutcome("recomputed" if note else "computed", e.path, note)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    """JSON with numpy scalars and arrays converted (used for recipes and results)."""
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
