"""A self-contained HTML report: model card, every computed view, the chosen change and its evaluation.

The file embeds plotly.js and every figure, so it opens offline in any browser. Sections come from the registry
(:func:`analysis.registry.report_sections`): each metric family contributes what is already in the cache, so the
report shows exactly the views that were computed — nothing is computed to write it. The dashboard's button and
``python -m analysis report`` call the same :func:`build_report`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path

import pandas as pd

from . import cache, consensus, registry

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem;line-height:1.45}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem} td,th{border:1px solid #ddd;padding:.25rem .55rem;
text-align:right} th{background:#f4f4f6} td:first-child,th:first-child{text-align:left}
.caption{color:#666;font-size:.88rem;margin:.1rem 0 1rem} .gen{display:flex;gap:1rem}
.gen div{flex:1;background:#f3f7fb;border-radius:6px;padding:.6rem .8rem} pre{background:#f6f6f6;padding:.8rem;
overflow:auto;font-size:.8rem} .muted{color:#888}
"""

EVAL_COLUMNS = [("perplexity", "Perplexity", "{:.3f}"), ("recovery", "Recovery", "{:.3f}"),
                ("kl_to_original", "KL to original", "{:.4f}"), ("top1_agreement", "Top-1 agreement", "{:.1%}"),
                ("parameters", "Parameters", "{:,.0f}"), ("weight_bytes", "Weights (MB)", None),
                ("prefill_tokens_per_s", "Prefill tok/s", "{:,.0f}"), ("decode_ms_per_token", "Decode ms/token",
                                                                      "{:.1f}"),
                ("peak_memory_bytes", "Peak memory (MB)", None)]


def _fmt(v, fmt):
    if v is None:
        return "—"
    if fmt is None:
        return f"{v / 2**20:,.1f}"
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def evaluation_frame(evaluation: dict) -> pd.DataFrame:
    """The evaluation dict of a recipe (original + one changed model) as a display table."""
    rows = []
    for name, row in evaluation.items():
        if name in ("settings", "text") or not isinstance(row, dict):
            continue
        rows.append({"model": name, **{label: _fmt(row.get(key), fmt) for key, label, fmt in EVAL_COLUMNS}})
    return pd.DataFrame(rows)


def _figure_html(fig, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


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

    from . import plots

    card = ws.lm.card()
    title = title or f"LayerScope report — {ws.lm.name}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">Written {_dt.datetime.now().isoformat(timespec="seconds")}. Blocks are 0-based; block b '
             "maps hidden state h_b to h_(b+1); ranges are [start, end).</p>",
             "<h2>Model</h2>",
             _table_html(pd.DataFrame({"": list(card), "value": [str(v) for v in card.values()]})),
             "<h2>Calibration</h2>",
             _table_html(pd.DataFrame([{"text": ws.text.label, "sha256": ws.text.sha256[:16] + "…",
                                        "windows": ws.calibration.n_windows, "tokens per window":
                                            ws.calibration.window_len, "excluded first positions":
                                            ws.calibration.exclude_first}]))]
    for section in registry.report_sections():
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
        fig = plots.heatmap(ranks.to_numpy().T, list(range(ws.n_blocks)), [m.label for m in computed],
                            "Rank-normalised redundancy (1 = most redundant)", plots.BLOCK_AXIS, "metric",
                            colorscale="Reds", zmin=0, zmax=1)
        fig.update_yaxes(autorange=True)
        table = pd.DataFrame([{"metric": m.label, "redundant when": m.redundant_when,
                               "suggested blocks": ", ".join(map(str, suggested[m.key]))} for m in computed]
                             + [{"metric": "consensus", "redundant when": "most votes",
                                 "suggested blocks": ", ".join(map(str, agreed))}])
        parts += ["<h2>Where the metrics agree</h2>", _figure_html(fig, False), _table_html(table),
                  f'<p class="caption">Each metric\'s own rule for k = {k} blocks; the consensus is the k blocks '
                  "suggested by the most metrics.</p>"]
    for change in changes or []:
        parts.append(f"<h2>Change: {html.escape(change.get('name', 'candidate'))}</h2>")
        action = change.get("action", {})
        parts.append(f"<pre>{html.escape(json.dumps(action, indent=1))}</pre>")
        ev = change.get("evaluation")
        if ev:
            parts.append(_table_html(evaluation_frame(ev)))
            s, t = ev.get("settings", {}), ev.get("text", {})
            parts.append(f'<p class="caption">Perplexity on {html.escape(str(t.get("name")))}: first '
                         f'{s.get("n_tokens")} tokens, context {s.get("context")}, stride {s.get("stride")}. Recovery '
                         "= original perplexity / changed perplexity.</p>")
            gens = [(name, row.get("generation", "")) for name, row in ev.items()
                    if isinstance(row, dict) and "generation" in row]
            if gens:
                parts.append(f"<p>Greedy generation from: <em>{html.escape(str(s.get('prompt', '')))}</em></p>")
                parts.append('<div class="gen">' + "".join(
                    f"<div><b>{html.escape(n)}</b><br>{html.escape(g)}</div>" for n, g in gens) + "</div>")
            downstream = ev.get("downstream")
            if downstream:
                parts.append(_table_html(pd.DataFrame(downstream)))
        if change.get("recipe"):
            parts.append("<details><summary>recipe.json</summary><pre>"
                         f"{html.escape(cache.dumps(change['recipe']))}</pre></details>")
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>{body}</body></html>")


def write_report(path: str | Path, text: str) -> Path:
    path = Path(path)
    cache.atomic_write_text(path, text)
    return path
