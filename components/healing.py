"""The healing page's pieces: the background job that heals a variant, its live loss curve, the adapter export."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from analysis.cache import stable_hash
from analysis.changes import healing as hl
from analysis.changes.variant import Variant
from analysis.evaluation.perplexity import EvalSettings, evaluate
from analysis.texts import Text, bundled_text
from analysis.workflow.recipe import variant_recipe
from components import jobs

TAG = "heal"


def heal_work(ws, variant: Variant, spec: hl.HealSpec, text: Text, name: str):
    """The job: train a copy of ``variant`` on ``text``, evaluate it with the variant's own evaluation settings,
    return the healed :class:`Variant`. The loss curve grows on ``job.curve`` (read by :func:`loss_curve`)."""

    def work(job):
        job.curve = []
        windows = hl.training_windows(ws.lm.tokenizer, text, spec)
        teacher = ws.lm.model if spec.loss != "ce" else None
        job.set_stage("Preparing the training copy")
        healed = hl.heal_model(
            variant.model,
            spec,
            windows,
            teacher,
            text=text,
            on_step=job.curve.append,
            progress=lambda d, t, m="": job.report(d, t, m),
        )
        settings = EvalSettings(**variant.evaluation.settings)
        job.set_stage("Evaluating the healed variant against the original")
        table = evaluate(
            ws.lm.model,
            ws.lm.tokenizer,
            bundled_text(settings.text),
            settings,
            candidate=healed,
            candidate_name="healed",
            original_key=ws.lm.fingerprint,
            progress=lambda d, t, m="": job.report(d, t, f"Evaluating: {m}"),
        )
        job.check()
        action = {**variant.action, "heal": hl.record_of(healed)["settings"]}
        recipe = variant_recipe(ws, action, evaluation=table.to_dict(), model=healed)
        recipe["name"] = name
        hl.record_gap(
            healed,
            recipe,
            table.original.perplexity,
            variant.evaluation.candidate.perplexity,
            table.candidate.perplexity,
            settings.to_dict(),
        )
        return Variant(
            name=name, model=healed, action=action, base_fingerprint=ws.lm.fingerprint, evaluation=table, recipe=recipe
        )

    return work


def start_heal(ws, variant: Variant, spec: hl.HealSpec, text: Text, name: str):
    key = (
        "heal:"
        + jobs.owner()
        + ":"
        + stable_hash(
            {
                "base": ws.lm.fingerprint,
                "variant": variant.name,
                "action": variant.action,
                "spec": spec.to_value(),
                "text": text.sha256,
                "name": name,
            }
        )
    )
    job = jobs.start(
        key,
        f"Heal {variant.name}",
        heal_work(ws, variant, spec, text, name),
        meta={"tag": TAG, "name": name, "base": ws.lm.fingerprint, "variant": variant.name, "steps": spec.steps},
        restart=True,
    )
    st.session_state["heal-job"] = key
    return job


def current_job(ws):
    key = st.session_state.get("heal-job")
    if jobs.get(key) is None:
        last = jobs.latest(TAG)
        key = last.key if last is not None and last.meta.get("base") == ws.lm.fingerprint else None
    if key is None:
        return None
    st.session_state["heal-job"] = key
    return jobs.get(key)


def curve_figure(curve: list[dict], steps: int | None = None, title: str = "Training loss") -> go.Figure:
    fig = go.Figure()
    x = [p["step"] for p in curve]
    fig.add_trace(go.Scatter(x=x, y=[p["loss"] for p in curve], mode="lines+markers", name="loss (optimised)"))
    if curve and "kl" in curve[0]:
        fig.add_trace(
            go.Scatter(x=x, y=[p["ce"] for p in curve], mode="lines", name="CE on the batch", line=dict(dash="dot"))
        )
    fig.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title="loss (nats/token)",
        height=320,
        margin=dict(l=60, r=20, t=50, b=40),
        xaxis=dict(range=[0.5, (steps or max(x or [1])) + 0.5]),
    )
    return fig


def live_curve(job, steps: int) -> None:
    """The loss curve of a running job, redrawn every second from ``job.curve``."""

    @st.fragment(run_every=1.0)
    def panel() -> None:
        curve = list(getattr(job, "curve", []) or [])
        if not job.is_active:
            st.rerun(scope="app")
        if curve:
            st.plotly_chart(
                curve_figure(curve, steps, f"Training loss, live ({len(curve)}/{steps} steps)"), key="heal-live-curve"
            )
        else:
            st.caption("The loss curve appears after the first step.")

    panel()


def adapter_export(ws, variant: Variant, cut: Variant | None) -> None:
    """The LoRA adapter alone (peft's format), written atomically, reloaded on top of the cut and compared."""
    import re

    slug = re.sub(r"[^A-Za-z0-9]+", "-", variant.name).strip("-").lower()
    with st.form("heal-adapter-export"):
        out_dir = st.text_input(
            "Adapter folder",
            str(Path("exports") / f"{slug}-adapter"),
            help="adapter_config.json + adapter_model.safetensors: load with "
            "PeftModel.from_pretrained(cut model, folder)",
        )
        overwrite = st.checkbox(
            "Replace the folder if it is not empty",
            key="heal-adapter-overwrite",
            help="only a folder LayerScope exported, holding nothing else, is ever replaced",
        )
        go_ = st.form_submit_button("Export the adapter")
    if go_:
        try:
            path = hl.export_adapter(variant.model, out_dir, recipe=variant.recipe, overwrite=overwrite)
            check = None
            if cut is not None:
                from analysis.cli.heal import check_adapter

                check = check_adapter(cut.model, variant.model, path, ws.lm.tokenizer)
            st.session_state["heal-adapter-last"] = {"path": str(path), "check": check}
        except FileExistsError as exc:  # destinations.DestinationError: one line naming the folder and its content
            st.warning(str(exc))
        except OSError as exc:
            st.error(f"Could not write {out_dir}: {exc}")
    last = st.session_state.get("heal-adapter-last")
    if last:
        check = last["check"]
        if check is None or check["ok"]:
            extra = (
                ""
                if check is None
                else (
                    f"; loaded with peft on top of the cut variant: max |Δ logit| = "
                    f"{check['max_abs_logit_diff']:.2e}, same top-1 everywhere"
                )
            )
            st.success(f"Adapter written to `{last['path']}`{extra}.")
        else:
            st.error(f"The adapter on top of the cut variant differs from the merged model: {check}")
        st.code(
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
            "cut = AutoModelForCausalLM.from_pretrained('EXPORT OF THE CUT VARIANT')\n"
            f"healed = PeftModel.from_pretrained(cut, {last['path']!r})",
            language="python",
        )
