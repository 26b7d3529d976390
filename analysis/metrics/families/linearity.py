"""Linearity between consecutive hidden states, with and without the residual (arXiv 2405.12250)."""

from __future__ import annotations

import numpy as np
import torch

from analysis import cache
from analysis.methods import linearity
from analysis.metrics.base import (
    BlockMetric,
    ReportSection,
    register,
    register_group_estimate,
    register_group_writer,
    register_report_section,
)


def too_few_tokens_remedy(ws) -> str:
    """What brings the clouds to ``2 × width`` tokens: the subsampling cap when it is what limits them, else the
    windows (with the command-line option and the sidebar field of each)."""
    c, need = ws.calibration, 2 * ws.lm.width
    captured = c.n_windows * (c.window_len - c.exclude_first)
    if c.n_max is not None and c.n_max < need <= captured:
        return (
            f"the clouds are subsampled to n_max = {c.n_max:,} tokens: raise --n-max ('Subsample all-token "
            f"clouds to' in the sidebar) to at least {need:,}, or leave it out"
        )
    more = f"at least {-(-need // max(1, c.window_len - c.exclude_first)):,} windows of {c.window_len}"
    if c.exclude_first:
        more += f" (minus the {c.exclude_first} excluded first positions)"
    return f"capture more tokens: --sequences {more} ('Windows N' in the sidebar), or longer windows with --seq-len" + (
        ", and raise --n-max or leave it out" if c.n_max is not None and c.n_max < need else ""
    )


def linearity_results(ws, progress=None) -> dict:
    """The full ``(L+1) × (L+1)`` linearity matrix and the consecutive curves, cached per workspace.

    Raises :class:`linearity.NotEnoughTokens` when the clouds have fewer than ``2 × width`` tokens. Memory, by
    what fits the budget (:func:`analysis.capture.estimate.memory_budget`):

    * every state's cloud and basis in memory (the fastest);
    * otherwise, and always for a layer-by-layer model (run so to save memory): the clouds read from the capture
      one state at a time and the bases written to a temporary folder, each pair reading its two back — the same
      numbers in the memory of one cloud and two bases;
    * when even one cloud does not fit, the consecutive curves exactly from streamed moments (O(width²) memory)
      and the all-pairs matrix left out (``matrix_skipped`` says why); subsampling the clouds (``n_max``) brings
      it back.
    """
    from analysis.capture.estimate import linearity_memory_bytes, memory_budget

    linearity.check_enough_tokens(ws.n_cloud_tokens(), ws.lm.width, remedy=too_few_tokens_remedy(ws))
    need = linearity_memory_bytes(ws.n_states, ws.n_cloud_tokens(), ws.lm.width)
    need_one = linearity_memory_bytes(2, ws.n_cloud_tokens(), ws.lm.width)  # one cloud, two bases, work space
    on_disk = need > memory_budget() or getattr(ws.lm, "sequential", False)

    def compute():
        if need_one > memory_budget():
            cap = ws.capture()
            with_res, without_res = linearity.consecutive_linearity_streamed(
                cap.states, exclude_first=ws.calibration.exclude_first, progress=progress
            )
            reason = (
                f"one state's cloud and two bases need about {need_one / 2**30:.1f} GiB, over the memory "
                f"budget of {memory_budget() / 2**30:.1f} GiB; the consecutive curves were streamed instead. "
                "Subsample the clouds (n_max) to see the full matrix."
            )
            return (
                {
                    "matrix": np.full((ws.n_states, ws.n_states), np.nan),
                    "consecutive": with_res,
                    "without_residual": without_res,
                },
                {"tokens": ws.n_cloud_tokens(), "width": ws.lm.width, "matrix_skipped": reason},
            )
        clouds = ws.cloud_reader() if on_disk else ws.all_token_clouds()
        n_states = len(clouds)
        total = n_states + n_states * (n_states - 1) // 2 + (n_states - 1)

        def matrix_progress(done, _total, msg):
            if progress:
                progress(done, total, f"linearity matrix: {msg}")

        if on_disk:
            with cache.scratch_folder("linearity-bases") as folder:
                M = linearity.linearity_matrix(clouds, progress=matrix_progress, spill_to=folder)
        else:
            M = linearity.linearity_matrix(clouds, progress=matrix_progress)
        offset = n_states + n_states * (n_states - 1) // 2

        def curve_progress(done, _total, msg):
            if progress:
                progress(offset + done, total, f"consecutive linearity: {msg}")

        with_res, without_res = linearity.consecutive_linearity(clouds, progress=curve_progress)
        return (
            {"matrix": M, "consecutive": with_res, "without_residual": without_res},
            {"tokens": ws.n_cloud_tokens(), "width": ws.lm.width, "bases": "on disk" if on_disk else "in memory"},
        )

    arrays, data, outcome = ws.result("linearity", {"v": 1}, compute)
    return {**arrays, **data, "outcome": outcome}


def _cached(ws, params) -> bool:
    return ws.has_result("linearity", {"v": 1})


register(
    BlockMetric(
        key="linearity",
        label="Linearity",
        redundant_when="high",
        group="linearity",
        page="linearity",
        order=10,
        description="Linearity score of h_b → h_{b+1} (Procrustes-style, any linear map; 1 = exactly linear). "
        "Near-linear blocks are candidates for removal or linear replacement.",
        compute=lambda ws, p, progress: linearity_results(ws, progress)["consecutive"],
        is_cached=_cached,
    )
)

register(
    BlockMetric(
        key="linearity_no_residual",
        label="Linearity without residual",
        redundant_when="high",
        group="linearity",
        page="linearity",
        order=11,
        description="Linearity of h_b → h_{b+1} − h_b: how linear the block's own contribution is. High = the block "
        "could be replaced by a linear map.",
        compute=lambda ws, p, progress: linearity_results(ws, progress)["without_residual"],
        is_cached=_cached,
    )
)


def estimate_seconds(ws, probe: dict | None = None) -> float:
    """Seconds of the linearity group (the all-pairs matrix and the consecutive curves; block influence and angular
    distance are a small part) when not cached, timed now: one cloud's whitening, one pair's product and one
    block's consecutive curves on random clouds of the workspace's size, times how many of each run (with the bases
    on disk, reading them back is left out: a few hundred MB per pair from the page cache)."""
    from analysis.capture.estimate import linearity_memory_bytes, median_seconds, memory_budget

    if _cached(ws, None):
        return 0.0
    n, d, k = ws.n_cloud_tokens(), ws.lm.width, ws.n_states
    rng = np.random.default_rng(0)
    X, Y = (rng.standard_normal((n, d), dtype=np.float32) for _ in range(2))

    t_curve = median_seconds(lambda: linearity.consecutive_linearity([X, Y]))
    if linearity_memory_bytes(2, n, d) > memory_budget():  # not even one cloud: the consecutive curves only
        return (k - 1) * t_curve
    t_one = median_seconds(lambda: linearity.linearity_matrix([X]))
    # a pair's product timed on its own (the difference of a two-cloud matrix and two one-cloud ones was mostly
    # noise, and it is multiplied by k(k-1)/2)
    bases = [torch.from_numpy(M) for M in (X, Y)]
    lam = torch.ones(d)
    t_pair = median_seconds(lambda: linearity.pair_linearity(*bases, lam, lam), 5, 0.5)
    return k * t_one + k * (k - 1) / 2 * t_pair + (k - 1) * t_curve


register_group_estimate("linearity", estimate_seconds)


def _write_linearity_files(ws, out_dir, progress):
    """``linearity.csv``: the (L+1) × (L+1) matrix over hidden states (row = from, column = to)."""
    import pandas as pd

    from analysis.cache import write_csv

    res = linearity_results(ws, progress)
    n = res["matrix"].shape[0]
    names = [f"h{s}" for s in range(n)]
    write_csv(
        out_dir / "linearity.csv",
        pd.DataFrame(res["matrix"], index=pd.Index(names, name="state"), columns=names),
        index=True,
    )
    return {}, {
        "linearity": {
            "tokens": res["tokens"],
            "width": res["width"],
            "definition": "1 - min_A ||X~A - Y~||_F^2, columns centred, Frobenius-normalised",
        }
    }


register_group_writer("linearity", _write_linearity_files)


def _report(ws) -> list:
    from analysis import plots

    if not ws.has_result("linearity", {"v": 1}):
        return []
    res = linearity_results(ws)
    labels = plots.state_labels(res["matrix"].shape[0])
    blocks = list(range(len(res["consecutive"])))
    matrix = (
        []
        if res.get("matrix_skipped")
        else [
            (
                "figure",
                plots.heatmap(
                    res["matrix"],
                    labels,
                    labels,
                    "Linearity from h_i (row) to h_j (column)",
                    "to state",
                    "from state",
                    zmin=float(res["matrix"].min()),
                    zmax=1.0,
                ),
                f"1 − min_A ‖X̃A − Ỹ‖²_F over any linear map, on {res['tokens']:,} tokens (arXiv 2405.12250).",
            )
        ]
    )
    return matrix + [
        (
            "figure",
            plots.curves(
                blocks,
                {"with residual": res["consecutive"], "without residual": res["without_residual"]},
                "Linearity of each block",
                plots.BLOCK_AXIS,
                "linearity",
            ),
            "With residual: h_b → h_(b+1); without: h_b → h_(b+1) − h_b.",
        ),
    ]


register_report_section(ReportSection("linearity", "Linearity between layers", _report, order=10))
