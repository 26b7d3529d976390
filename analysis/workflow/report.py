"""A self-contained HTML report: model card, every computed view, the chosen change and its evaluation.

The file embeds plotly.js once and every figure, so it opens offline in any browser. It opens with a one-paragraph
summary (the model, what was removed or truncated, what it costs in quality, what it saves), then the sections of
the registry (:func:`analysis.metrics.registry.report_sections`): each metric family contributes what is already in the
cache (the Rips persistence too), so the report shows exactly the views that were computed — nothing is computed to
write it. Then where the metrics agree, the variants' quality against cost, the generations side by side, and each
change with its evaluation table. The dashboard's button and ``python -m analysis report`` call the same
:func:`build_report`.

Figures are drawn by the same builders as the dashboard (:mod:`analysis.plots`), every series coloured explicitly,
with the report's own template (the dashboard's Streamlit template names placeholder colours that plain plotly.js
draws black) and axis labels that push the margins instead of being clipped (``automargin``).

:func:`write_report` never replaces an existing file unless told to (``overwrite=True``; the page's tick, the
command line's ``--overwrite``), and then only a report LayerScope wrote (its first line is LayerScope's marker).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import pandas as pd

from analysis import cache, destinations
from analysis import formatting as fmt
from analysis.metrics import consensus, registry
from analysis.search import leaderboard

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem} td,th{border:1px solid #ddd;padding:.25rem .55rem;
text-align:right} th{background:#f4f4f6} td:first-child,th:first-child{text-align:left}
.caption{color:#666;font-size:.88rem;margin:.1rem 0 1rem} .gen{display:flex;gap:1rem}
.gen div{flex:1;background:#f3f7fb;border-radius:6px;padding:.6rem .8rem} pre{background:#f6f6f6;padding:.8rem;
overflow:auto;font-size:.8rem} .muted{color:#888}
.summary{background:#f3f7fb;border-left:4px solid #1f77b4;padding:.7rem 1rem;border-radius:4px;font-size:1.02rem}
.gens{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.8rem}
.gens div{background:#f3f7fb;border-radius:6px;padding:.6rem .8rem} .gens div.orig{background:#eef6ee}
.plot{width:100%;overflow-x:auto}
"""

EVAL_COLUMNS = [
    ("perplexity", "Perplexity", fmt.perplexity),
    ("recovery", "Recovery", fmt.ratio),
    ("kl_to_original", "KL to original", fmt.kl),
    ("top1_agreement", "Top-1 agreement", fmt.percent),
    ("parameters", "Parameters", fmt.count),
    ("weight_bytes", "Weights", fmt.mib),
    ("prefill_tokens_per_s", "Prefill tok/s", fmt.tokens_per_s),
    ("decode_ms_per_token", "Decode ms/token", fmt.ms),
    ("peak_memory_bytes", "Peak memory", fmt.mib),
]
_SPREAD = {"prefill_tokens_per_s", "decode_ms_per_token"}


def _fmt(v, formatter):
    if v is None:
        return fmt.MISSING
    try:
        return formatter(v)
    except (TypeError, ValueError):
        return str(v)


def evaluation_frame(evaluation: dict) -> pd.DataFrame:
    """The evaluation dict of a recipe (original + one changed model) as a display table; speeds with their range
    (min–max over the timing rounds) where it was measured."""
    rows = []
    for name, row in evaluation.items():
        if name in ("settings", "text") or not isinstance(row, dict):
            continue
        out = {"model": name}
        for key, label, formatter in EVAL_COLUMNS:
            spread = (row.get("speed") or {}).get(key) if key in _SPREAD else None
            out[label] = fmt.with_range(row.get(key), spread, formatter) if spread else _fmt(row.get(key), formatter)
        rows.append(out)
    return pd.DataFrame(rows)


def speed_lines(o: dict, c: dict) -> list[str]:
    """Decode and prefill of the changed model against the original, worded by :func:`analysis.formatting.speed_change`:
    faster or slower only when the measured ranges do not overlap, "no measurable change" otherwise."""
    out = []
    so, sc = o.get("speed") or {}, c.get("speed") or {}
    if o.get("decode_ms_per_token") and c.get("decode_ms_per_token"):
        out.append(
            fmt.speed_sentence(
                "decoding",
                o["decode_ms_per_token"],
                c["decode_ms_per_token"],
                so.get("decode_ms_per_token"),
                sc.get("decode_ms_per_token"),
            )
        )
    if o.get("prefill_tokens_per_s") and c.get("prefill_tokens_per_s"):
        out.append(
            fmt.speed_sentence(
                "prefill",
                o["prefill_tokens_per_s"],
                c["prefill_tokens_per_s"],
                so.get("prefill_tokens_per_s"),
                sc.get("prefill_tokens_per_s"),
                unit="tokens/s",
                lower_is_better=False,
                fmt=fmt.tokens_per_s,
            )
        )
    return out


def _figure_html(fig, first: bool = False) -> str:
    """One figure as a ``<div>`` (plotly.js is embedded once in the page head): the report's template, labels that
    push the margins instead of being clipped, full width."""
    import plotly.graph_objects as go

    from analysis import plots

    fig = go.Figure(fig)  # a copy: the caller's figure keeps its template
    fig.update_layout(template=plots.report_template(), autosize=True, width=None)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    html_div = fig.to_html(
        full_html=False, include_plotlyjs=False, default_width="100%", config={"displaylogo": False, "responsive": True}
    )
    return f'<div class="plot">{html_div}</div>'


def _other_row(ev: dict) -> tuple[str, dict] | None:
    """The changed model's row of an evaluation dict (the key that is not original/settings/text/…)."""
    for name, row in ev.items():
        if name not in ("original", "settings", "text", "downstream") and isinstance(row, dict) and "perplexity" in row:
            return name, row
    return None


def summary_paragraph(ws, changes: list[dict]) -> str:
    """One paragraph for a reader who has not seen the dashboard: the model, what was changed, what it costs in
    quality and what it saves (parameters, weights, speed measured interleaved with the original)."""
    from analysis.changes.variant import describe_action

    card = ws.lm.card()
    params = card.get("parameters") or ws.lm.n_parameters()
    intro = (
        f"This report covers {ws.lm.name} ({ws.n_blocks} blocks, {params:,} parameters), inspected on the first "
        f"{ws.calibration.n_windows} windows of {ws.calibration.window_len} tokens of {ws.text.label}."
    )
    evaluated = [c for c in changes if c.get("evaluation") and _other_row(c["evaluation"])]
    if not evaluated:
        return intro + (
            " No change was applied and evaluated: the sections below show the views computed for this "
            "model (which blocks look redundant by each measure, and where the measures agree)."
        )
    main = evaluated[-1]
    ev = main["evaluation"]
    o = ev["original"]
    _, c = _other_row(ev)
    text = (ev.get("text") or {}).get("name") or (ev.get("settings") or {}).get("text") or "held-out text"
    try:
        what = describe_action(main.get("action") or {})
    except Exception:  # an unknown action from another version: its name is enough
        what = main.get("name", "the change")
    sentence = [intro, f"The change shown first, “{main.get('name', what)}”, is: {what}."]
    if o.get("perplexity") and c.get("perplexity"):
        cost = (
            f"It costs quality: perplexity on {text} goes from {fmt.perplexity(o['perplexity'])} to "
            f"{fmt.perplexity(c['perplexity'])}"
        )
        if c.get("recovery") is not None:
            cost += f" (recovery {fmt.ratio(c['recovery'])}, 1 = no loss"
            if c.get("top1_agreement") is not None:
                cost += (
                    f"; the next-token choice agrees with the original's {fmt.percent(c['top1_agreement'])} of the time"
                )
            cost += ")"
        sentence.append(cost + ".")
    saves = []
    if o.get("parameters") and c.get("parameters") is not None:
        saves.append(
            f"{fmt.count(o['parameters'] - c['parameters'])} parameters "
            f"({fmt.percent(1 - c['parameters'] / o['parameters'])}; {fmt.count(o['parameters'])} → "
            f"{fmt.count(c['parameters'])})"
        )
    if o.get("weight_bytes") and c.get("weight_bytes") is not None:
        saves.append(f"weights {fmt.mib(o['weight_bytes'])} → {fmt.mib(c['weight_bytes'])}")
    if saves:
        sentence.append("It saves " + "; ".join(saves) + ".")
    speed = speed_lines(o, c)
    if speed:
        how = "timed interleaved with the original" if (c.get("speed") or {}).get("interleaved") else "timed in one run"
        sentence.append(
            f"Speed ({how}; a change is claimed only when the measured ranges do not overlap): "
            + "; ".join(speed)
            + "."
        )
    if len(evaluated) > 1:
        sentence.append(
            f"{len(evaluated) - 1} other variant{'s are' if len(evaluated) > 2 else ' is'} compared "
            "below (quality against cost)."
        )
    return " ".join(sentence)


def variants_frame(changes: list[dict]) -> pd.DataFrame:
    """One row for the original and one per evaluated change (as the Variants page's table)."""
    rows = []
    for ch in changes:
        ev = ch.get("evaluation") or {}
        other = _other_row(ev)
        if other is None:
            continue
        if not rows:
            rows.append(_variant_row("original", ev["original"]))
        rows.append(_variant_row(ch.get("name") or other[0], other[1]))
    return pd.DataFrame(rows)


VARIANT_FORMATS = {
    "perplexity": fmt.perplexity,
    "recovery": fmt.ratio,
    "KL to original": fmt.kl,
    "top-1 agreement": fmt.percent,
    "parameters": fmt.count,
    "weights MiB": lambda v: fmt.mib(v * 2**20),
    "prefill tokens/s": fmt.tokens_per_s,
    "decode ms/token": fmt.ms,
}


def variants_display(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`variants_frame` with every number in the report's one format (:mod:`analysis.formatting`)."""
    out = frame.copy()
    for col, formatter in VARIANT_FORMATS.items():
        if col in out.columns:
            out[col] = [formatter(v) for v in out[col]]
    return out


def _variant_row(name: str, r: dict) -> dict:
    return {
        "variant": name,
        "perplexity": r.get("perplexity"),
        "recovery": r.get("recovery"),
        "KL to original": r.get("kl_to_original"),
        "top-1 agreement": r.get("top1_agreement"),
        "parameters": r.get("parameters"),
        "weights MiB": None if r.get("weight_bytes") is None else r["weight_bytes"] / 2**20,
        "prefill tokens/s": r.get("prefill_tokens_per_s"),
        "decode ms/token": r.get("decode_ms_per_token"),
    }


def _generations_html(changes: list[dict]) -> str:
    """Original and every change's greedy continuation of the same prompt, side by side."""
    cells, prompt = [], None
    for ch in changes:
        ev = ch.get("evaluation") or {}
        other = _other_row(ev)
        if other is None:
            continue
        if not cells:
            prompt = (ev.get("settings") or {}).get("prompt", "")
            cells.append(("original", ev["original"].get("generation", ""), True))
        cells.append((ch.get("name") or other[0], other[1].get("generation", ""), False))
    if len(cells) < 2:
        return ""
    grid = "".join(
        f'<div class="{"orig" if orig else ""}"><b>{html.escape(n)}</b><br>{html.escape(g or "(empty)")}</div>'
        for n, g, orig in cells
    )
    return f'<p>Greedy continuation of: <em>{html.escape(str(prompt))}</em></p><div class="gens">{grid}</div>'


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, float_format=lambda x: f"{x:.4g}")


def _items_html(items) -> str:
    out = []
    for kind, obj, caption in items:
        if kind == "figure":
            out.append(_figure_html(obj, False))
        elif kind == "table":
            out.append(_table_html(obj))
        else:
            out.append(f"<p>{html.escape(str(obj))}</p>")
        if caption:
            out.append(f'<p class="caption">{html.escape(caption)}</p>')
    return "\n".join(out)


def build_report(ws, changes: list[dict] | None = None, title: str | None = None, k: int | None = None) -> str:
    """The report as one HTML string.

    ``changes``: a list of ``{"name", "action", "evaluation", "recipe"}`` dicts (a variant's recipe parts), each
    shown with its evaluation table and side-by-side generation.
    """
    import plotly.offline

    from analysis import plots

    card = ws.lm.card()
    changes = list(changes or [])
    title = title or f"LayerScope report — {ws.lm.name}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="summary">{html.escape(summary_paragraph(ws, changes))}</p>',
        f'<p class="muted">Written {_dt.datetime.now().isoformat(timespec="seconds")}. Blocks are 0-based; block b '
        "maps hidden state h_b to h_(b+1); ranges are [start, end).</p>",
        "<h2>Model</h2>",
        _table_html(pd.DataFrame({"": list(card), "value": [str(v) for v in card.values()]})),
        "<h2>Calibration</h2>",
        _table_html(
            pd.DataFrame(
                [
                    {
                        "text": ws.text.label,
                        "sha256": ws.text.sha256[:16] + "…",
                        "windows": ws.calibration.n_windows,
                        "tokens per window": ws.calibration.window_len,
                        "excluded first positions": ws.calibration.exclude_first,
                    }
                ]
            )
        ),
    ]
    sections = sorted([*registry.report_sections(), leaderboard.REPORT_SECTION], key=lambda s: (s.order, s.key))
    for section in sections:
        items = section.build(ws)
        if items:
            parts += [f"<h2>{html.escape(section.title)}</h2>", _items_html(items)]
    computed = consensus.computed_metrics(ws)
    if computed:
        k = k or max(1, ws.n_blocks // 8)
        scores = consensus.score_table(ws, computed)
        ranks = consensus.rank_table(scores, computed)
        suggested = consensus.suggestions(ws, computed, k, scores)
        agreed = consensus.consensus(suggested, ranks, k)
        fig = plots.heatmap(
            ranks.to_numpy().T,
            list(range(ws.n_blocks)),
            [m.label for m in computed],
            "Rank-normalised redundancy (1 = most redundant)",
            plots.BLOCK_AXIS,
            "metric",
            colorscale="Reds",
            zmin=0,
            zmax=1,
        )
        fig.update_yaxes(autorange=True, automargin=True)
        fig.update_layout(height=max(320, 140 + 34 * len(computed)), margin=dict(l=20))
        table = pd.DataFrame(
            [
                {
                    "metric": m.label,
                    "redundant when": m.redundant_when,
                    "suggested blocks": ", ".join(map(str, suggested[m.key])),
                }
                for m in computed
            ]
            + [{"metric": "consensus", "redundant when": "most votes", "suggested blocks": ", ".join(map(str, agreed))}]
        )
        parts += [
            "<h2>Where the metrics agree</h2>",
            _figure_html(fig, False),
            _table_html(table),
            f'<p class="caption">Each metric\'s own rule for k = {k} blocks; the consensus is the k blocks '
            "suggested by the most metrics.</p>",
        ]
    frame = variants_frame(changes)
    if len(frame) >= 2:
        parts.append("<h2>Variants: quality against cost</h2>")
        parts.append(_figure_html(plots.quality_cost_figure(frame, "parameters", "perplexity")))
        if frame["decode ms/token"].notna().sum() >= 2:
            parts.append(_figure_html(plots.quality_cost_figure(frame, "decode ms/token", "recovery")))
        parts.append(_table_html(variants_display(frame)))
        parts.append(
            '<p class="caption">Perplexity on the held-out text against parameters (lower left is better); '
            "recovery = original perplexity / variant perplexity against decode latency. The original is the "
            "star.</p>"
        )
    gens = _generations_html(changes)
    if gens:
        parts += ["<h2>Generations side by side</h2>", gens]
    for change in changes:
        parts.append(f"<h2>Change: {html.escape(change.get('name', 'candidate'))}</h2>")
        action = change.get("action", {})
        parts.append(f"<pre>{html.escape(json.dumps(action, indent=1))}</pre>")
        ev = change.get("evaluation")
        if ev:
            parts.append(_table_html(evaluation_frame(ev)))
            other = _other_row(ev)
            lines = speed_lines(ev.get("original") or {}, other[1]) if other and ev.get("original") else []
            if lines:
                parts.append(
                    '<p class="caption">Speed (median, with the min–max over the timing rounds in the table): '
                    + html.escape("; ".join(lines))
                    + ". A change is claimed only when the ranges do not "
                    "overlap.</p>"
                )
            s, t = ev.get("settings", {}), ev.get("text", {})
            parts.append(
                f'<p class="caption">Perplexity on {html.escape(str(t.get("name")))}: first '
                f"{s.get('n_tokens')} tokens, context {s.get('context')}, stride {s.get('stride')}. Recovery "
                "= original perplexity / changed perplexity.</p>"
            )
            gens = [
                (name, row.get("generation", ""))
                for name, row in ev.items()
                if isinstance(row, dict) and "generation" in row
            ]
            if gens:
                parts.append(f"<p>Greedy generation from: <em>{html.escape(str(s.get('prompt', '')))}</em></p>")
                parts.append(
                    '<div class="gen">'
                    + "".join(f"<div><b>{html.escape(n)}</b><br>{html.escape(g)}</div>" for n, g in gens)
                    + "</div>"
                )
            downstream = ev.get("downstream")
            if downstream:
                parts.append(_table_html(pd.DataFrame(downstream)))
        if change.get("recipe"):
            parts.append(
                "<details><summary>recipe.json</summary><pre>"
                f"{html.escape(cache.dumps(change['recipe']))}</pre></details>"
            )
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>{body}</body></html>"
    )


ReportExists = destinations.DestinationError  # the report's destination must not be written (one line: why)


def check_destination(path: str | Path, overwrite: bool = False, option: str = "--overwrite") -> Path:
    """The report's path, checked before anything is computed (:func:`analysis.destinations.check`): an existing
    file is refused unless ``overwrite`` *and* it is a report LayerScope wrote (it begins with LayerScope's marker);
    a folder, or a path whose parent is a file, is always refused."""
    return destinations.check(path, overwrite=overwrite, what="report", option=option, kind="file").path


def write_report(path: str | Path, text: str, overwrite: bool = False, option: str = "--overwrite") -> Path:
    """Write the report atomically, beginning with LayerScope's marker (so that only a report LayerScope wrote is
    ever replaced); an existing file is replaced only with ``overwrite=True``."""
    dest = destinations.check(path, overwrite=overwrite, what="report", option=option, kind="file")
    return destinations.write_file(dest, text)
