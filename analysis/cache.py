"""The on-disk result store shared by the dashboard and the command line.

Every result lives under ``cache/<kind>/<key>/`` where ``key`` is a hash of everything the result depends on
(model fingerprint, text hash, window settings, metric parameters). A result written by ``python -m analysis`` is
the same file the dashboard reads, and the other way round.

Writes are atomic, through the one folder writer (:func:`atomic_directory`) and the one file writer
(:func:`atomic_write_bytes` / :func:`atomic_write_text`) of the code base: a result is written into a temporary
sibling (``.tmp-<key>-<pid>.<start time>-<random>``) and renamed into place, so a reader never sees half a result;
a folder that is replaced is first renamed aside to a backup (``.bak-…``) so that at every instant the old or the
new one is complete in place. An interrupted run leaves a ``.tmp-*`` (removed) or ``.bak-*`` (put back if the
folder is missing) that is handled once it is *stale* — no process with its writer's id *and* start time exists
(process ids are reused), or it is over a week old — on the next write of the same name and by :func:`clean_stale`
(every command-line run calls it). Two processes finishing the same key at the same moment both succeed: the first
rename wins and the other finds the winner's result in place. Files and folders are created with the default
modes (the user's umask applies).

Every entry carries checksums, verified on read (:func:`read_entry`): ``meta.json`` records, for every array file,
its size and the xxh3-64 hash of each 16 MiB block, and the hash of its own content (parameters, data, file
list). A file that cannot be read or does not match (truncated, bytes changed, from an older format) is reported
through :class:`CacheCorrupt`, removed, and recomputed by :func:`cached`. Cost: xxh3 runs at several GB/s, so a
full check of the bundled model's default capture (31 × 32 × 128 × 576 float32, 290 MB) takes a fraction of a
second from the page cache; a file is verified once per process while its size and mtime stay the same, and
files above ``LAYERSCOPE_VERIFY_FULL_MB`` (default 1024 MiB) are checked on their size and 64 evenly spaced
blocks (first and last included) instead of every block, which keeps a read of a multi-GB capture affordable.

The location is ``cache/`` next to the code, or ``$LAYERSCOPE_CACHE`` when set. Deleting it is always safe.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import psutil
import xxhash

from analysis import cache
from analysis.errors import LayerScopeError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """The cache directory: ``$LAYERSCOPE_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("LAYERSCOPE_CACHE") or (_ROOT / "cache")).resolve()


def scratch_root() -> Path:
    """Where temporary working files go (``cache/tmp``: on the cache's disk, which is sized for captures)."""
    root = cache_root() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder under :func:`scratch_root`, removed on exit."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-", dir=scratch_root()) as d:
        yield Path(d)


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hex hash of a JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class CacheCorrupt(LayerScopeError, RuntimeError):
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


STALE_SECONDS = 7 * 24 * 3600  # a temporary whose writer cannot be told dead is stale after a week
LEGACY_STALE_SECONDS = 24 * 3600  # a temporary named by a process id alone (before start times were recorded)
TEMPORARY, BACKUP, LEGACY_OLD = ".tmp-", ".bak-", ".old-"


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (centiseconds since the epoch), or None when there is no such process."""
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # exists, but cannot be inspected (another user's): assume it is the writer
        return -1


_OWNER: tuple[int, str] | None = None


def owner_token() -> str:
    """``<pid>.<start time>`` of this process: a leftover named by it is stale once no process with that id *and*
    that start time exists (process ids are reused; the pair is not)."""
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER[0] != pid:  # recomputed after a fork
        _OWNER = (pid, f"{pid}.{max(0, _start_time(pid) or 0)}")
    return _OWNER[1]


def _owner_alive(token: str) -> bool:
    pid, _, start = token.partition(".")
    if not pid.isdigit():
        return False
    now = _start_time(int(pid))
    if now is None:
        return False
    return not start or now == -1 or str(now) == start


def _leftover_prefix(kind: str, name: str) -> str:
    return f"{kind}{name}-{owner_token()}-"


def is_stale(path: Path, now: float | None = None) -> bool:
    """A ``.tmp-*`` / ``.bak-*`` / ``.old-*`` leftover that no live writer owns.

    The name carries its writer's process id and start time (``.tmp-<name>-<pid>.<start>-<random>``): it is stale
    when no process with that id and that start time exists, or after a week whatever the process. A leftover named
    by a process id alone (an older LayerScope) is stale when that process is gone or after a day; one without any
    process id after an hour.
    """
    name = path.name
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1].replace(".", "").isdigit() and parts[1]:
        owner = parts[1]
        if "." in owner:
            return age > STALE_SECONDS or not _owner_alive(owner)
        if name.startswith(LEGACY_OLD):
            return True  # an older LayerScope moved it aside only to delete it
        return age > LEGACY_STALE_SECONDS or not _owner_alive(owner)
    return name.startswith(LEGACY_OLD) or age > 3600


def leftover_of(p: Path) -> tuple[str, str] | None:
    """``(kind, final name)`` of a leftover's name (``.tmp-`` / ``.bak-`` / ``.old-``), or None."""
    for kind in (TEMPORARY, BACKUP, LEGACY_OLD):
        if p.name.startswith(kind):
            rest = p.name[len(kind) :]
            parts = rest.rsplit("-", 2)
            if len(parts) == 3 and parts[1] and parts[1].replace(".", "").isdigit():
                return kind, parts[0]
            return kind, rest.rsplit("-", 1)[0]
    return None


def _recover(p: Path, kind: str, final: Path, discard: Callable[[Path], None]) -> None:
    """A stale leftover beside ``final``: a temporary is removed; a backup (the old ``final`` moved aside by a
    writer that was killed before it finished) is put back when ``final`` is missing, else discarded."""
    if kind in (BACKUP, LEGACY_OLD) and not final.exists() and not final.is_symlink():
        try:
            os.rename(p, final)
            log.warning("restored %s from the backup %s left by an interrupted replacement", final, p.name)
            return
        except OSError:
            pass
    if kind == TEMPORARY:
        _remove(p)
    else:
        discard(p)


def clean_stale_siblings(final: Path, discard: Callable[[Path], None] | None = None) -> list[Path]:
    """Recover from stale leftovers beside ``final`` (``.tmp-<name>-*`` removed; ``.bak-<name>-*`` put back when
    ``final`` is missing, else discarded with ``discard``, default: removed); returns what was handled."""
    final = Path(final)
    handled = []
    try:
        candidates = [
            (p, kind)
            for p in final.parent.iterdir()
            for kind in (TEMPORARY, BACKUP, LEGACY_OLD)
            if p.name.startswith(f"{kind}{final.name}-")
        ]
    except (FileNotFoundError, NotADirectoryError):
        return handled
    now = time.time()
    for p, kind in candidates:
        if is_stale(p, now):
            _recover(p, kind, final, discard or _remove)
            handled.append(p)
    return handled


def clean_stale(root: Path | None = None) -> list[Path]:
    """Recover from stale leftovers anywhere in the cache (``cache/<kind>/.tmp-*``, ``cache/models/.bak-*`` …)."""
    root = Path(root or cache_root())
    handled = []
    if not root.is_dir():
        return handled
    now = time.time()
    dirs = [root] + [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    for d in dirs:
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for p in entries:
            found = leftover_of(p)
            if found and is_stale(p, now):
                _recover(p, found[0], d / found[1], _remove)
                handled.append(p)
    return handled


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_directory(path: Path) -> None:
    """Delete a folder of the cache: one rename to a temporary name (so a reader never sees it half-deleted, and a
    killed deletion leaves a stale temporary the next clean-up removes), then the removal."""
    path = Path(path)
    aside = path.parent / f"{_leftover_prefix(TEMPORARY, path.name)}{uuid.uuid4().hex[:10]}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _complete(final: Path) -> bool:
    return (final / "meta.json").is_file()


def _new_directory(parent: Path, prefix: str) -> Path:
    """A new directory ``parent/<prefix><random>``, created with the default mode (the user's umask applies)."""
    for _ in range(100):
        path = parent / f"{prefix}{uuid.uuid4().hex[:10]}"
        try:
            os.mkdir(path)  # mode 0o777 & ~umask, unlike tempfile.mkdtemp's 0o700
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder in {parent}")


@contextmanager
def atomic_directory(
    final: Path,
    overwrite: bool = True,
    keep_existing: bool = False,
    complete: Callable[[Path], bool] = _complete,
    discard: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """The one atomic folder writer: yield a temporary directory beside ``final``; on success put it at ``final``.

    On any exception the temporary directory is removed and ``final`` is left as it was. With
    ``overwrite=False`` an existing non-empty ``final`` raises :class:`FileExistsError` before anything is
    written. With ``keep_existing=True`` (cache entries: one key, one content) a ``final`` that is already
    complete when we finish — another process won the race — is kept and our copy discarded. Otherwise an old
    ``final`` is replaced so that at every instant ``final`` is either the old folder or the new one, complete:
    the old one is renamed aside to a backup (``.bak-<name>-<pid>.<start>-<random>``), the new one renamed in, and
    the backup discarded with ``discard`` (default: removed; :mod:`analysis.destinations` removes only what its
    marker lists). A writer killed between the two renames leaves the backup, which the next write of ``final``
    (or :func:`clean_stale`) puts back. Folders are created with the default mode (the umask applies).
    """
    final = Path(final)
    if not overwrite and _non_empty(final):
        raise FileExistsError(f"{final} exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(final, discard)
    tmp = _new_directory(final.parent, _leftover_prefix(TEMPORARY, final.name))
    try:
        yield tmp
        _commit(tmp, final, keep_existing, complete, discard or _remove)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _non_empty(path: Path) -> bool:
    """``path`` is a directory with something in it (False if another writer moves it away meanwhile)."""
    try:
        return any(path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


def _commit(
    tmp: Path, final: Path, keep_existing: bool, complete: Callable[[Path], bool], discard: Callable[[Path], None]
) -> None:
    for _ in range(20):
        try:
            os.rename(tmp, final)  # onto a missing or empty directory: one atomic step
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
        try:
            theirs = keep_existing and complete(final)
        except FileNotFoundError:  # moved aside by another writer between the rename and this look
            theirs = False
        if theirs:
            shutil.rmtree(tmp, ignore_errors=True)  # another writer finished the same key first: theirs stands
            return
        backup = final.parent / f"{_leftover_prefix(BACKUP, final.name)}{uuid.uuid4().hex[:8]}"
        try:
            os.rename(final, backup)  # the old one aside (complete, under a name the next writer recognises) …
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, final)  # … the new one in …
        except OSError:
            try:
                os.rename(backup, final)  # … or the old one back
            except OSError:
                pass
            continue
        discard(backup)  # … and only then the old one goes
        return
    raise OSError(f"could not move {tmp.name} into place at {final}: it keeps being replaced")


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist) with ``data``, the default mode (the umask applies), synced to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` written to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        _write_new_file(tmp, data)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """The one atomic file writer: yield a temporary path beside ``path`` (a recognisable leftover if the process
    dies) for the caller to write (:func:`atomic_write_bytes`, or a writer that streams to a path of its own: the
    GGUF writer); on success sync it and rename it onto ``path`` in one step (an old file is replaced in that single
    step: a reader sees the old content or the new, never a part), on any exception remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    clean_stale_siblings(path)
    tmp = path.parent / f"{_leftover_prefix(TEMPORARY, path.name)}{uuid.uuid4().hex[:10]}"
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


# --- checksums ------------------------------------------------------------------------------------------------

BLOCK_BYTES = 16 << 20
SAMPLED_BLOCKS = 64
_VERIFIED: dict[tuple, bool] = {}  # (path, size, mtime_ns, inode) of files verified in this process


def _full_check_limit() -> int:
    return int(float(os.environ.get("LAYERSCOPE_VERIFY_FULL_MB", 1024)) * (1 << 20))


def file_checksum(path: Path) -> dict:
    """``{"size": bytes, "xxh3_blocks": [hex per 16 MiB block]}`` of a file."""
    blocks = []
    with open(path, "rb") as f:
        while True:
            chunk = f.read(BLOCK_BYTES)
            if not chunk:
                break
            blocks.append(xxhash.xxh3_64_hexdigest(chunk))
    return {"size": Path(path).stat().st_size, "xxh3_blocks": blocks}


def verify_file(path: Path, expected: dict) -> None:
    """Raise :class:`CacheCorrupt` if ``path`` does not match its recorded :func:`file_checksum`."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CacheCorrupt(f"{path.name} is missing") from None
    if st.st_size != expected.get("size"):
        raise CacheCorrupt(f"{path.name} has {st.st_size} bytes, {expected.get('size')} were written")
    blocks = list(expected.get("xxh3_blocks") or [])
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, tuple(blocks))
    if _VERIFIED.get(memo):
        return
    n = len(blocks)
    if st.st_size <= _full_check_limit() or n <= SAMPLED_BLOCKS:
        which = range(n)
    else:  # evenly spaced blocks, the first and the last included
        which = sorted({round(i * (n - 1) / (SAMPLED_BLOCKS - 1)) for i in range(SAMPLED_BLOCKS)})
    with open(path, "rb") as f:
        for i in which:
            f.seek(i * BLOCK_BYTES)
            if xxhash.xxh3_64_hexdigest(f.read(BLOCK_BYTES)) != blocks[i]:
                raise CacheCorrupt(f"{path.name} does not match its checksum (block {i} of {n} changed)")
    _VERIFIED[memo] = True


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True, default=_json_default).encode())


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
def entry_writer(e: Entry, replace: bool = False) -> Iterator[EntryWriter]:
    """Write a result atomically: add arrays to the writer, set ``writer.data``; ``meta.json`` (with the
    checksums of every file) is written last. If another process completes the same entry first, its result is
    kept (``replace=True``: ours replaces it)."""
    with atomic_directory(e.path, keep_existing=not replace) as tmp:
        w = EntryWriter(tmp)
        yield w
        files = {f"{name}.npy": file_checksum(tmp / f"{name}.npy") for name in sorted(set(w.arrays))}
        meta = {
            "format": FORMAT_VERSION,
            "kind": e.kind,
            "params": e.params,
            "data": w.data,
            "arrays": sorted(w.arrays),
            "files": files,
        }
        meta = json.loads(json.dumps(meta, default=_json_default))  # the digest is of what is read back
        meta["digest"] = _meta_digest(meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def write_entry(
    e: Entry, arrays: dict[str, np.ndarray] | None = None, data: dict | None = None, replace: bool = False
) -> Path:
    """Write a result atomically: arrays as ``.npy`` files, ``data`` and the parameters in ``meta.json``."""
    with entry_writer(e, replace=replace) as w:
        for name, arr in (arrays or {}).items():
            w.add_array(name, arr)
        w.data = data or {}
    return e.path


def read_entry(e: Entry, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read a result written by :func:`write_entry`, verifying its checksums; raise :class:`CacheCorrupt` if any
    part is unreadable or does not match what was written."""
    try:
        meta = json.loads((e.path / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CacheCorrupt(f"{e.path} has format {meta.get('format')}, expected {FORMAT_VERSION}")
        if "digest" not in meta or "files" not in meta:
            raise CacheCorrupt(f"{e.path} was written without checksums (an older LayerScope)")
        if meta["digest"] != _meta_digest(meta):
            raise CacheCorrupt(f"{e.path}/meta.json does not match its checksum")
        for name in meta["arrays"]:
            verify_file(e.path / f"{name}.npy", meta["files"].get(f"{name}.npy") or {})
        arrays = {
            name: np.load(e.path / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            for name in meta["arrays"]
        }
        return arrays, meta["data"]
    except CacheCorrupt as exc:
        if str(e.path) in str(exc):
            raise
        raise CacheCorrupt(f"cannot use {e.path}: {exc}") from None
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
    write_entry(e, arrays, data, replace=refresh)
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


def write_csv(path: Path, frame: pd.DataFrame, index: bool = False) -> None:
    """A pandas frame as CSV, written atomically."""
    cache.atomic_write_text(Path(path), frame.to_csv(index=index))


def write_json(path: Path, obj) -> None:
    cache.atomic_write_text(Path(path), cache.dumps(obj))
