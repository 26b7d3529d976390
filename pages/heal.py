"""Heal after the cut: a short fine-tuning of any variant (LoRA or the last blocks), run in the background."""

import pandas as pd
import streamlit as st

from analysis.changes import healing as hl
from analysis.changes.variant import describe_action
from analysis.texts import (
    BUNDLED,
    TextError,
    bundled_text,
    text_from_bytes,
    text_from_string,
)
from components import jobs, state
from components.change import export_section
from components.evaluation import evaluation_view
from components.healing import (
    adapter_export,
    current_job,
    curve_figure,
    live_curve,
    start_heal,
)
from components.widgets import format_bytes, workspace_caption

st.title("Heal after the cut")
st.caption(
    "A short fine-tuning of a variant, so that the numbers shown are not the worst case. **LoRA** adds "
    "low-rank adapters (α/r)·B·A to every attention and MLP projection that is still a plain linear layer "
    "(truncated B·A pairs and linear-replaced blocks stay frozen unless you allow them); **partial "
    "fine-tuning** trains only the last n blocks and the LM head. The loss is next-token cross-entropy on "
    "the healing text, distillation KL(original ‖ variant) from the original's logits (the original is "
    "kept in memory as the teacher), or a mix. The variant itself is never changed: a copy is trained and "
    "becomes a new variant, evaluated with the same table as every other one."
)
ws = state.workspace()
if ws is None:
    st.stop()
workspace_caption(ws)
if ws.lm.source_kind == "results":
    st.error(f"{ws.lm.name} is a results-only folder: it has no weights to heal. Load the model itself.")
    st.stop()

kept = state.variants()
healable = [v for v in kept if not v.action.get("heal") and v.evaluation is not None]
job = current_job(ws)
if not healable and job is None:
    st.info(
        "No variant to heal yet: apply a change on the Prune, Compress or Replace page first (it is kept under "
        "Variants), then come back."
    )
    st.stop()

st.header("1 · Variant")
if healable:
    names = [v.name for v in healable]
    chosen = st.selectbox("Variant to heal", names, index=len(names) - 1, key="heal-variant")
    variant = next(v for v in healable if v.name == chosen)
    ev = variant.evaluation
    eval_text = ev.settings["text"]
    st.caption(
        f"**{variant.name}**: {describe_action(variant.action)}. Perplexity on **{eval_text}**: original "
        f"{ev.original.perplexity:.3f}, this variant {ev.candidate.perplexity:.3f}. The healed variant is "
        "evaluated with the same settings."
    )

    st.header("2 · Method and loss")
    c = st.columns([1, 1, 1])
    method = c[0].radio("Method", hl.METHODS, format_func=lambda m: hl.LABELS[m], key="heal-method")
    loss = c[1].radio(
        "Loss",
        ["kd", "ce", "mix"],
        format_func=lambda m: hl.LABELS[m],
        key="heal-loss",
        help="KD (default): KL(original ‖ variant) per token, from the original's logits on the "
        "healing text; CE: next-token cross-entropy of the healing text; mix: (1−w)·CE + w·KL",
    )
    mix = c[2].number_input("KL weight w of the mix", 0.0, 1.0, 0.5, step=0.1, key="heal-mix", disabled=loss != "mix")
    options = {}
    if method == "lora":
        c = st.columns([1, 1, 1])
        options["rank"] = int(c[0].number_input("Rank r", 1, 4096, 8, key="heal-rank"))
        options["alpha"] = float(
            c[1].number_input("α (the update is scaled by α/r)", 0.1, 4096.0, 16.0, key="heal-alpha")
        )
        options["targets"] = c[2].selectbox(
            "Projections",
            hl.TARGETS,
            key="heal-targets",
            format_func=lambda t: {"all": "attention and MLP", "attn": "attention", "mlp": "MLP"}[t],
        )
        c = st.columns(2)
        options["adapt_truncated"] = c[0].checkbox(
            "Also adapt truncated matrices (B·A pairs, low-rank W')",
            key="heal-adapt-truncated",
            help="off (default): they stay frozen. On: a B·A pair gets an adapter on A and on B (it stays rank k)",
        )
        options["adapt_linear_blocks"] = c[1].checkbox(
            "Also adapt blocks replaced by linear maps", key="heal-adapt-linear"
        )
        kinds = pd.Series([x["kind"] for x in hl.lora_candidates(variant.model, options["targets"])]).value_counts()
        st.caption(
            "Projections of this variant: "
            + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in kinds.items())
            + ". Plain ones are adapted; the others as chosen above."
        )
    else:
        n_blocks = len(hl.decoder_layers(variant.model)[1])
        c = st.columns([1, 2])
        options["blocks"] = int(
            c[0].number_input("Train the last n blocks", 1, n_blocks, min(3, n_blocks), key="heal-blocks")
        )
        options["head"] = c[1].radio(
            "LM head",
            hl.HEADS,
            key="heal-head",
            horizontal=True,
            format_func=lambda h: {
                "tied": "train (shared matrix if tied)",
                "untie": "untie: own trained copy",
                "freeze": "freeze",
            }[h],
            help="SmolLM2 ties its head to the input embeddings. 'train' (default) "
            "trains the shared matrix from its head use (the parameter count stays; "
            "the embeddings change with it); 'untie' gives the head its own copy "
            "(+vocab×width parameters, embeddings exactly frozen)",
        )

    st.header("3 · Healing text")
    source = st.radio("Source", ["bundled", "upload", "paste"], horizontal=True, key="heal-text-source")
    text = None
    try:
        if source == "bundled":
            others = [n for n in BUNDLED if n != eval_text]
            name = st.selectbox(
                "Bundled text",
                list(BUNDLED),
                index=list(BUNDLED).index("lcet10"),
                key="heal-text-name",
                help=f"must differ from the evaluation text ({eval_text})",
            )
            text = bundled_text(name)
        elif source == "upload":
            up = st.file_uploader("A plain-text file", type=["txt", "md"], key="heal-upload")
            if up is not None:
                text = text_from_bytes(up.getvalue(), name=up.name)
        else:
            pasted = st.text_area("Paste the healing text", key="heal-paste", height=150)
            if pasted.strip():
                text = text_from_string(pasted)
    except TextError as exc:
        st.error(str(exc))
    if text is not None:
        try:
            hl.check_texts(text, bundled_text(eval_text))
        except hl.HealingError as exc:
            st.error(str(exc))
            text = None

    st.header("4 · Settings")
    d = hl.HealSpec()
    c = st.columns(4)
    steps = int(c[0].number_input("Steps", 1, 100_000, d.steps, key="heal-steps"))
    lr = float(
        c[1].number_input(
            "Learning rate", 0.0, 1.0, hl.DEFAULT_LR[method], format="%.1e", step=1e-4, key=f"heal-lr-{method}"
        )
    )
    schedule = c[2].selectbox(
        "Schedule",
        hl.SCHEDULES,
        index=1,
        key="heal-schedule",
        help="transformers' schedulers (get_scheduler): cosine = linear warm-up from 0, then "
        "cosine decay to 0; constant = linear warm-up from 0, then constant",
    )
    warmup = float(
        c[3].number_input(
            "Warm-up (share of the steps)",
            0.0,
            0.9,
            d.warmup,
            step=0.05,
            key="heal-warmup",
            help="ceil(share × steps) steps rising linearly from a learning rate of 0, as transformers counts them",
        )
    )
    c = st.columns(4)
    batch = int(c[0].number_input("Batch size (windows)", 1, 256, d.batch_size, key="heal-batch"))
    window = int(c[1].number_input("Window length (tokens)", 2, 8192, d.window_len, step=16, key="heal-window"))
    seed = int(c[2].number_input("Seed", 0, 2**31 - 1, d.seed, key="heal-seed"))
    vname = c[3].text_input("Name of the healed variant", f"{variant.name} · healed", key="heal-name")

    spec = None
    if text is not None:
        try:
            spec = hl.HealSpec(
                method=method,
                loss=loss,
                mix=float(mix),
                steps=steps,
                lr=lr,
                schedule=schedule,
                warmup=warmup,
                batch_size=batch,
                window_len=window,
                seed=seed,
                text=hl.text_ref(text),
                held_out={"name": eval_text, "sha256": bundled_text(eval_text).sha256},
                **options,
            )
            spec.validate()
            windows = hl.training_windows(ws.lm.tokenizer, text, spec)
            if method == "lora":
                hl.lora_targets(variant.model, spec)
            st.caption(
                f"{len(windows):,} windows of {window} tokens of **{text.label}** (sha256 "
                f"{text.sha256[:12]}…); {steps} steps × {batch} windows = {steps * batch * window:,} tokens."
            )
        except hl.HealingError as exc:
            st.error(str(exc))
            spec = None

    c = st.columns([1, 1, 3])
    busy = job is not None and job.is_active
    if c[0].button("Estimate the cost", disabled=spec is None, key="heal-estimate"):
        with st.spinner("Timing a few training steps on a throw-away copy …"):
            try:
                est = hl.estimate(variant.model, spec, windows, ws.lm.model if spec.loss != "ce" else None)
                st.session_state["heal-estimate-result"] = {"spec": spec.to_value(), **est}
            except hl.HealingError as exc:
                st.error(str(exc))
    est = st.session_state.get("heal-estimate-result")
    if est and spec is not None and est["spec"] == spec.to_value():
        st.info(
            f"Estimated **{jobs.format_seconds(est['total_seconds'])}** for {est['steps']} steps "
            f"({est['seconds_per_step']:.2f} s per step of {est['tokens_per_step']:,} tokens, timed over "
            f"{est['probe_steps']} steps after a warm-up; {est['trainable_parameters']:,} trained parameters), "
            "plus the evaluation."
        )
    if c[1].button("Start healing", type="primary", disabled=spec is None or busy, key="heal-start"):
        if any(v.name == vname for v in kept):
            st.warning(f"A variant named {vname!r} exists already: it will be replaced by the new one.")
        job = start_heal(ws, variant, spec, text, vname)
    if busy:
        c[2].caption("A healing job is running: wait for it (or cancel it) before starting another.")

st.header("5 · Run")
if job is None:
    st.caption(
        "Nothing started yet: choose the settings above and press **Start healing**. It runs in the "
        "background: you may leave this page and come back."
    )
    st.stop()
jobs.show(job.key)
if job.is_active:
    live_curve(job, int((job.meta or {}).get("steps") or job.total or 1))
    st.stop()
if not job.finished_ok:
    st.stop()
healed = job.result
rec = hl.record_of(healed.model)
st.plotly_chart(curve_figure(rec.get("curve", []), title=f"Training loss of {healed.name}"), key="heal-curve")
gap = rec.get("gap") or {}
cut = next((v for v in state.variants() if v.name == job.meta.get("variant")), None)
c = st.columns(4)
c[0].metric("Perplexity original", f"{gap.get('perplexity_original', float('nan')):.3f}")
c[1].metric("Perplexity cut", f"{gap.get('perplexity_cut', float('nan')):.3f}")
c[2].metric("Perplexity healed", f"{gap.get('perplexity_healed', float('nan')):.3f}")
g = gap.get("gap_closed")
c[3].metric(
    "Gap closed",
    "—" if g is None else f"{g:.1%}",
    help="(ppl_cut − ppl_healed) / (ppl_cut − ppl_original): 100% = back to the original",
)
st.caption(
    f"{rec.get('trainable_parameters', 0):,} trained parameters; {len(rec.get('curve', []))} steps in "
    f"{jobs.format_seconds(rec.get('seconds', 0))}; healed on **{rec['text']['name']}** (sha256 "
    f"{rec['text']['sha256'][:12]}…). Frozen: {rec.get('frozen') or rec.get('head') or '—'}."
)
st.subheader(f"Original against {healed.name}")
evaluation_view(healed.evaluation, key="heal-eval")
st.caption("The Variants page shows original, cut and healed side by side, with the gap closed.")

st.header("6 · Export")
st.caption(
    "Merged dense weights (the adapters multiplied in: plain `AutoModelForCausalLM` reloads them, checked by "
    "reloading and comparing logits) with recipe.json — every healing setting, the text's sha256 and the "
    "loss curve, so that `python -m analysis run recipe.json` reproduces the healed model."
)
export_section(ws, healed, key="heal", forms=("dense", "factorised"))
if hl.has_adapter(healed.model):
    st.subheader("The LoRA adapter on its own")
    adapter_export(ws, healed, cut)
else:
    st.caption(
        f"Size of the healed weights: {format_bytes(sum(p.numel() * p.element_size() for p in healed.model.parameters()))}."
    )
