"""A workspace: one loaded model, one calibration text and its windows — what every view computes on.

The dashboard keeps one workspace per browser session; the command line builds one per run. Both cache their
results under the same keys (see :mod:`analysis.cache`), so each finds what the other computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from analysis import cache
from analysis.capture.hidden_states import Capture, capture_hidden_states, is_captured
from analysis.methods import clouds
from analysis.model.loading import LoadedModel
from analysis.texts import Text

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Calibration:
    """Which tokens the views are computed on."""

    n_windows: int = 32
    window_len: int = 128
    exclude_first: int = 0  # positions dropped from the start of every window in every all-token cloud
    n_max: int | None = None  # all-token clouds subsampled to this many rows (None = every token)
    seed: int = 0
    storage: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Workspace:
    lm: LoadedModel
    text: Text
    calibration: Calibration = field(default_factory=Calibration)
    _capture: Capture | None = field(default=None, repr=False)

    @property
    def n_blocks(self) -> int:
        return self.lm.n_blocks

    @property
    def n_states(self) -> int:
        return self.lm.n_blocks + 1

    def key(self) -> dict:
        """Everything a result computed on this workspace depends on."""
        return {"model": self.lm.fingerprint, "text": self.text.sha256, **self.calibration.to_dict()}

    def is_captured(self) -> bool:
        c = self.calibration
        return is_captured(self.lm, self.text, c.n_windows, c.window_len, c.storage)

    def capture(self, progress: Progress | None = None) -> Capture:
        if self._capture is None:
            c = self.calibration
            self._capture = capture_hidden_states(
                self.lm, self.text, c.n_windows, c.window_len, storage=c.storage, progress=progress
            )
        return self._capture

    def all_token_clouds(self, progress: Progress | None = None) -> list[np.ndarray]:
        """Every state's all-token cloud, in memory (:meth:`cloud_reader` reads them one at a time)."""
        return list(self.cloud_reader(progress))

    def cloud_reader(self, progress: Progress | None = None) -> "StateClouds":
        """Each state's all-token cloud (as :meth:`all_token_clouds` gives it), read from the capture when asked."""
        return StateClouds(self.capture(progress), self.calibration, self.n_states)

    def n_cloud_tokens(self) -> int:
        c = self.calibration
        n = c.n_windows * (c.window_len - c.exclude_first)
        return n if c.n_max is None else min(n, c.n_max)

    def result(self, kind: str, params: dict, compute, mmap: bool = False, refresh: bool = False):
        """A cached result of ``kind`` on this workspace: ``(arrays, data, outcome)`` (see :func:`cache.cached`)."""
        return cache.cached(kind, {**self.key(), **params}, compute, mmap=mmap, refresh=refresh)

    def has_result(self, kind: str, params: dict) -> bool:
        return cache.entry(kind, {**self.key(), **params}).exists()

    def describe(self) -> dict:
        return {
            "model": {
                "source": self.lm.spec.source,
                "name": self.lm.name,
                "fingerprint": self.lm.fingerprint,
                "dtype": self.lm.spec.dtype,
            },
            "text": self.text.describe(),
            "calibration": self.calibration.to_dict(),
        }


class StateClouds(Sequence):
    """The all-token clouds of a capture, one state at a time, each read when asked (:meth:`Capture.reader`: the
    pages of one read do not stay resident, as a long-lived map of the whole capture would keep them)."""

    def __init__(self, capture: Capture, calibration: Calibration, n_states: int):
        self.capture, self.calibration, self.n = capture, calibration, n_states
        self.states = capture.reader()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, state: int) -> np.ndarray:
        if not 0 <= state < self.n:
            raise IndexError(state)
        c = self.calibration
        row = self.capture._row(state)
        return clouds.all_token_cloud(
            self.states[row : row + 1], 0, n_max=c.n_max, seed=c.seed, exclude_first=c.exclude_first
        )
