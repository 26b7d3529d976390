"""Capture of the residual stream ``h_0 … h_L`` of every token of the calibration windows.

``h_0`` is the embedding output and ``h_s`` the residual stream after block ``s − 1``, exactly as Hugging Face
returns them with ``output_hidden_states=True``; the last one, ``h_L``, already has the final norm applied (the views
say so) — in transformers 5.23 that holds for every family in the README's table (tested), not only Llama-style
ones.

The result is an array ``[n_states, n_windows, window_len, width]`` written straight into a memory-mapped
``.npy`` in ``cache/capture/<key>/`` (atomically), keyed by (model fingerprint, text hash, N, T, storage dtype,
states). A second visit, from the dashboard or the command line, reads the same file without running the model.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from analysis import cache
from analysis.errors import InputError, NotFound, check_free_space, on_disk_full
from analysis.methods import clouds
from analysis.model.loading import LoadedModel
from analysis.texts import Text, calibration_windows

Progress = Callable[[int, int, str], None]
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class Capture:
    """Captured hidden states of one (model, text, windows) with the tokens they belong to."""

    states: np.ndarray  # [n_states_kept, N, T, d], memory-mapped
    tokens: np.ndarray  # [N, T] token ids
    state_ids: list[int]  # which hidden states ``states`` holds (0..L)
    meta: dict
    outcome: cache.CacheOutcome

    @property
    def n_windows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def window_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def width(self) -> int:
        return int(self.states.shape[-1])

    @property
    def n_tokens(self) -> int:
        return self.n_windows * self.window_len

    def _row(self, state: int) -> int:
        try:
            return self.state_ids.index(state)
        except ValueError:
            raise NotFound(f"hidden state {state} was not captured (have {self.state_ids[0]}..{self.state_ids[-1]})")

    def all_token_cloud(self, state: int, n_max: int | None = None, seed: int = 0, exclude_first: int = 0):
        return clouds.all_token_cloud(
            self.states, self._row(state), n_max=n_max, seed=seed, exclude_first=exclude_first
        )

    def last_token_cloud(self, state: int) -> np.ndarray:
        return clouds.last_token_cloud(self.states, self._row(state))

    def state(self, state: int) -> np.ndarray:
        """All vectors of one hidden state, ``[N, T, d]`` (memory-mapped)."""
        return self.states[self._row(state)]

    def reader(self) -> "np.ndarray | StatesReader":
        """``states`` for a pass that reads all of it: each read through a memory map opened for that read only
        (:class:`StatesReader`), so the pages read do not stay resident; the array itself when it is in memory."""
        path = getattr(self.states, "filename", None)
        return StatesReader(path, self.states.shape, self.states.dtype) if path else self.states


@dataclass(frozen=True)
class StatesReader:
    """Reads of a ``.npy`` file, each a copy made through a memory map that is closed again: a long pass over a
    capture then keeps only what it holds, not every page it touched (a lasting map would keep them resident)."""

    path: str
    shape: tuple
    dtype: np.dtype

    def __getitem__(self, key) -> np.ndarray:
        mapped = np.load(self.path, mmap_mode="r")
        try:
            return np.array(mapped[key])
        finally:
            del mapped


def capture_params(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    storage: str = "float32",
    states: Sequence[int] | None = None,
    positions: str = "all",
) -> dict:
    params = {
        "model": lm.fingerprint,
        "text": text.sha256,
        "windows": int(n_windows),
        "window_len": int(window_len),
        "storage": storage,
        "states": sorted(int(s) for s in states) if states is not None else "all",
    }
    if positions != "all":
        params["positions"] = positions
    return params


def is_captured(
    lm: LoadedModel,
    text: Text,
    n_windows: int,
    window_len: int,
    storage: str = "float32",
    states: Sequence[int] | None = None,
    positions: str = "all",
) -> bool:
    return cache.entry("capture", capture_params(lm, text, n_windows, window_len, storage, states, positions)).exists()


def states_bytes(shape: Sequence[int], storage: str = "float32") -> int:
    """Bytes of a captured ``states`` array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(STORAGE_DTYPES[storage]).itemsize


def reserve(path) -> None:
    """Allocate a file's blocks on disk (``posix_fallocate``), so that filling it through a memory map cannot hit
    a full disk: ENOSPC is raised here, as an ``OSError``. A no-op where the system has no ``posix_fallocate``."""
    import os

    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # the file system cannot reserve (the free-space check before the write still applies)
        raise
    finally:
        os.close(fd)


def capture_hidden_states(
    lm: LoadedModel,
    text: Text,
    n_windows: int = 32,
    window_len: int = 128,
    storage: str = "float32",
    states: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    refresh: bool = False,
    positions: str = "all",
) -> Capture:
    """Capture (or read from the cache) the hidden states of the first ``n_windows`` windows of ``text``.

    ``states`` restricts what is stored (``None`` = all ``L + 1``); ``storage`` is ``float32`` or ``float16``;
    ``positions="last"`` keeps only the last position of every window (what last-token clouds need: 500 windows
    of 32 tokens then take 36 MB instead of 1.1 GB), and the result's window length is 1.
    ``batch_size`` windows go through the model at once (default: about 2048 tokens per batch).
    ``progress(done, total, message)`` is called after every batch.
    """
    batch_size = batch_size or max(1, 2048 // max(1, window_len))
    if positions not in ("all", "last"):
        raise InputError("positions must be 'all' or 'last'")
    if storage not in STORAGE_DTYPES:
        raise InputError(f"storage must be one of {', '.join(STORAGE_DTYPES)}")
    n_states = lm.n_blocks + 1
    keep = list(range(n_states)) if states is None else sorted({int(s) for s in states})
    if not keep or keep[0] < 0 or keep[-1] >= n_states:
        raise InputError(f"states must lie in 0..{n_states - 1}")
    params = capture_params(lm, text, n_windows, window_len, storage, states, positions)
    e = cache.entry("capture", params)
    note = ""
    if e.exists() and not refresh:
        try:
            arrays, data = cache.read_entry(e, mmap=True)
            return Capture(
                arrays["states"],
                np.asarray(arrays["tokens"]),
                data["state_ids"],
                data,
                cache.CacheOutcome("hit", e.path),
            )
        except cache.CacheCorrupt as exc:
            note = f"The cached capture was unreadable and has been recomputed ({exc})."
            cache.remove_entry(e)
    windows = calibration_windows(lm.tokenizer, text, n_windows, window_len)
    kept_len = window_len if positions == "all" else 1
    shape = (len(keep), n_windows, kept_len, lm.width)
    # free space against the size before anything is written: a memory-mapped write to a full disk is a bus error
    # (SIGBUS) that would take the process, and the dashboard's server, down
    check_free_space(e.path.parent, states_bytes(shape, storage) + windows.nbytes, "the capture")
    t0 = time.perf_counter()
    with on_disk_full("the capture"), cache.entry_writer(e) as w:
        w.add_array("tokens", windows if positions == "all" else windows[:, -1:])
        out = w.open_array("states", shape, STORAGE_DTYPES[storage])
        reserve(w.dir / "states.npy")  # the disk blocks now: ENOSPC here (an OSError), never SIGBUS later
        if getattr(lm, "sequential", False):
            _capture_sequential(lm, windows, out, keep, batch_size, positions, storage, progress)
        else:
            for start, hidden in iter_hidden_states(lm, windows, batch_size=batch_size, progress=progress):
                stop = start + hidden[0].shape[0]
                for row, s in enumerate(keep):
                    h = hidden[s] if positions == "all" else hidden[s][:, -1:]
                    out[row, start:stop] = _stored(h, storage)
                del hidden
        del out  # unmapped, not msync'ed: like every other cache write, the kernel writes it back (an msync of
        # the whole array made capture 54% slower than a bare forward pass here; without it, 14%)
        w.data = {
            **params,
            "state_ids": keep,
            "n_states_model": n_states,
            "seconds": time.perf_counter() - t0,
            "model_name": lm.name,
            "text_name": text.label,
            "last_state_is_normed": lm.card()["last_state_is_normed"],
        }
    arrays, data = cache.read_entry(e, mmap=True)
    return Capture(
        arrays["states"],
        np.asarray(arrays["tokens"]),
        keep,
        data,
        cache.CacheOutcome("recomputed" if note else "computed", e.path, note),
    )


_TORCH_STORAGE = {"float32": torch.float32, "float16": torch.float16}


def _stored(h: torch.Tensor, storage: str) -> np.ndarray:
    """One batch of one state in the storage dtype, converted on the model's device (never a float32 copy of a
    float16 capture first)."""
    return h.detach().to(_TORCH_STORAGE[storage]).cpu().numpy()


def _capture_sequential(
    lm,
    windows: np.ndarray,
    out: np.ndarray,
    keep: list[int],
    batch_size: int,
    positions: str,
    storage: str,
    progress: Progress | None,
) -> None:
    """Fill ``out`` state by state from a layer-by-layer run (:mod:`analysis.model.sequential`)."""
    from analysis.model.sequential import batches_of

    rows = {s: r for r, s in enumerate(keep)}
    starts = list(range(0, windows.shape[0], batch_size))

    def on_state(state: int, i: int, h: torch.Tensor) -> None:
        row = rows.get(state)
        if row is None:
            return
        start = starts[i]
        out[row, start : start + h.shape[0]] = _stored(h if positions == "all" else h[:, -1:], storage)

    def step(done: int, total: int, message: str) -> None:
        if progress:
            progress(done, total, f"layer by layer: {message}")

    lm.run(batches_of(windows, batch_size), on_state=on_state, progress=step)


@torch.no_grad()
def iter_hidden_states(lm: LoadedModel, windows: np.ndarray, batch_size: int = 16, progress: Progress | None = None):
    """Yield ``(first_window_index, hidden_states tuple)`` batch by batch (the model's own device and dtype)."""
    base = lm.model.base_model
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        ids = torch.as_tensor(windows[start : start + batch_size], device=lm.device)
        out = base(input_ids=ids, output_hidden_states=True, use_cache=False)
        yield start, out.hidden_states
        if progress:
            done = min(n, start + batch_size)
            progress(done, n, f"captured {done}/{n} windows")
