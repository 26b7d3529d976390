"""Healing after the cut: a short fine-tuning of any variant (pruned, truncated, replaced, combined).

Two methods:

* **LoRA** (``peft``): low-rank adapters ``W + (α/r)·B A`` on the attention and MLP projections found by structure
  (:func:`analysis.model.architecture.block_parts` … ``linears``), never by Llama names. Default targets: every projection
  that is **still a plain linear** (``nn.Linear`` / GPT-2 ``Conv1D``). Truncated matrices — the ``B·A`` pairs of a
  :class:`~analysis.model.modules.FactorisedLinear` and dense low-rank ``W'`` (``layerscope_rank``) — and the map of a
  :class:`~analysis.model.modules.LinearBlock` are **frozen by default**; ``adapt_truncated`` /
  ``adapt_linear_blocks`` adapt them too (a factorised pair keeps its rank ``k``: the adapters act on ``A`` and
  ``B`` separately; a dense ``W'`` of rank ``k`` becomes rank ``≤ k + r``, recorded as such).
* **partial fine-tuning**: only the last ``n`` blocks (default 3, in the variant's own numbering) and the LM head
  (:func:`analysis.model.architecture.output_head`) are trained; the rest is frozen. A head **tied** to the input
  embeddings (SmolLM2 ties them) is handled by ``head``: ``"tied"`` (default) trains the shared matrix with the
  gradient of its *head* use only (the embedding output is detached, so the frozen blocks are not
  back-propagated through; the input embeddings change with it, the parameter count does not); ``"untie"`` gives
  the head its own trained copy (the embeddings stay exactly frozen; +vocab×width parameters,
  ``tie_word_embeddings`` set false); ``"freeze"`` trains the blocks only.

Loss: next-token cross-entropy on the healing text (``ce``), distillation ``KL(original ‖ variant)`` per token from
the original's logits (``kd``; the original model is the teacher, run without gradients), or
``(1 − mix)·CE + mix·KL`` (``mix``). The default (``kd``) is justified in the README by measurement.

Training never changes the variant nor the original: the model is copied with every parameter replaced by a
gradient-free alias of the same storage, and only the trained parts get their own tensors (the trained clones,
the LoRA factors, and — when merging — fresh base weights of the adapted matrices). The healed model is a plain
model again (the adapters are merged); the adapter itself is kept on it for :func:`save_adapter`.

Settings (action ``heal``, applied after every other action): ``{"method": "lora" | "partial", "loss": "ce" | "kd"
| "mix", "mix": 0.5, "steps", "lr", "schedule": "constant" | "cosine", "warmup": 0.1 (share of the steps),
"batch_size", "window_len", "windows": null (all), "seed", "rank", "alpha", "targets": "all" | "attn" | "mlp",
"adapt_truncated", "adapt_linear_blocks", "blocks": 3, "head": "tied" | "untie" | "freeze", "max_grad_norm": 1.0,
"text": {"name", "source", "sha256"[, "path"]}, "held_out": {"name", "sha256"}}``. The healing text is cut into
the first non-overlapping windows of ``window_len`` tokens, like calibration windows, and batches are drawn from
them in a seeded random order. It must differ from the held-out (evaluation) text.

Schedule: transformers' own schedulers (:func:`transformers.get_scheduler`: ``cosine`` →
``get_cosine_schedule_with_warmup``, ``constant`` → ``get_constant_schedule_with_warmup``), stepped after every
optimiser step as transformers' ``Trainer`` does, with ``ceil(warmup · steps)`` warm-up steps (as
``TrainingArguments.get_warmup_steps`` counts a ratio). The warm-up therefore starts from a learning rate of zero:
with a warm-up, the first step changes nothing (its learning rate is 0) and step ``i < w`` uses ``lr · i / w``.
The record (``healing.schedule``) names the scheduler and the warm-up steps.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.changes.base import Action
from analysis.changes.base import record_of as base_record_of
from analysis.errors import InputError
from analysis.jobs import this_thread_only
from analysis.model.architecture import (
    LINEAR_TYPES,
    block_parts,
    decoder_layers,
    output_head,
)
from analysis.model.checkpoint import RANK_ATTR
from analysis.model.modules import FactorisedLinear, LinearBlock
from analysis.texts import BUNDLED, Text, bundled_text, text_from_bytes, token_ids

Progress = Callable[[int, int, str], None]

METHODS = ("lora", "partial")
LOSSES = ("ce", "kd", "mix")
SCHEDULES = ("constant", "cosine")
#: the name transformers.get_scheduler knows each schedule by (both with a linear warm-up from zero)
SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine"}
HEADS = ("tied", "untie", "freeze")
TARGETS = ("all", "attn", "mlp")
LABELS = {
    "lora": "LoRA",
    "partial": "partial fine-tuning",
    "ce": "cross-entropy",
    "kd": "distillation (KL)",
    "mix": "CE + KL mix",
}
DEFAULT_LR = {"lora": 1e-3, "partial": 1e-4}
RECORD = "layerscope_healing"
ADAPTER = "layerscope_adapter"
HEAL_KEYS = {
    "method",
    "loss",
    "mix",
    "steps",
    "lr",
    "schedule",
    "warmup",
    "batch_size",
    "window_len",
    "windows",
    "seed",
    "rank",
    "alpha",
    "targets",
    "adapt_truncated",
    "adapt_linear_blocks",
    "blocks",
    "head",
    "max_grad_norm",
    "text",
    "held_out",
}


class HealingError(InputError):
    """A healing request that cannot run (the message says why, in the user's terms)."""


# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealSpec:
    method: str = "lora"
    loss: str = "kd"
    mix: float = 0.5
    steps: int = 40
    lr: float | None = None  # None: DEFAULT_LR[method]
    schedule: str = "cosine"
    warmup: float = 0.1
    batch_size: int = 4
    window_len: int = 64
    windows: int | None = None
    seed: int = 0
    rank: int = 8
    alpha: float = 16.0
    targets: str = "all"
    adapt_truncated: bool = False
    adapt_linear_blocks: bool = False
    blocks: int = 3
    head: str = "tied"
    max_grad_norm: float | None = 1.0
    text: dict = field(default_factory=lambda: {"name": "lcet10", "source": "bundled"})
    held_out: dict | None = None

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])

    @classmethod
    def from_value(cls, value: dict | None) -> "HealSpec":
        value = dict(value or {})
        unknown = sorted(set(value) - HEAL_KEYS)
        if unknown:
            raise HealingError(f"unknown heal key(s) {', '.join(unknown)}; known: {', '.join(sorted(HEAL_KEYS))}")
        d = cls()
        if isinstance(value.get("text"), str):
            value["text"] = {
                "name": value["text"],
                "source": "bundled" if value["text"] in BUNDLED else "file",
                **({} if value["text"] in BUNDLED else {"path": value["text"]}),
            }
        spec = replace(d, **value)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.method not in METHODS:
            raise HealingError(f"unknown healing method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.loss not in LOSSES:
            raise HealingError(f"unknown healing loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise HealingError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.head not in HEADS:
            raise HealingError(f"unknown head option {self.head!r}; use one of {', '.join(HEADS)}")
        if self.targets not in TARGETS:
            raise HealingError(f"unknown LoRA targets {self.targets!r}; use one of {', '.join(TARGETS)}")
        for name in ("steps", "batch_size", "rank", "blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) != v or v < 1:
                what = {
                    "steps": "the number of steps",
                    "batch_size": "the batch size",
                    "rank": "the LoRA rank",
                    "blocks": "the number of trained blocks",
                }[name]
                raise HealingError(f"{what} must be a positive whole number, got {v!r}")
        if isinstance(self.window_len, bool) or int(self.window_len) != self.window_len or self.window_len < 2:
            raise HealingError(f"the window length must be at least 2 tokens, got {self.window_len!r}")
        if self.windows is not None and (int(self.windows) != self.windows or self.windows < 1):
            raise HealingError(f"the number of healing windows must be positive, got {self.windows!r}")
        lr = self.learning_rate
        if not math.isfinite(lr) or lr <= 0:
            raise HealingError(f"the learning rate must be a positive number, got {lr!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise HealingError(f"LoRA α must be positive, got {self.alpha!r}")
        if not 0.0 <= float(self.warmup) < 1.0:
            raise HealingError(f"the warm-up share of the steps must lie in [0, 1), got {self.warmup!r}")
        if not 0.0 <= float(self.mix) <= 1.0:
            raise HealingError(f"the KL weight of the mix must lie in [0, 1], got {self.mix!r}")
        if self.max_grad_norm is not None and not float(self.max_grad_norm) > 0:
            raise HealingError(f"the gradient clipping norm must be positive (or none), got {self.max_grad_norm!r}")
        if not isinstance(self.text, dict) or not self.text.get("name"):
            raise HealingError("name the healing text: a bundled text, or an uploaded / pasted one")

    def to_value(self) -> dict:
        out = asdict(self)
        out["lr"] = self.learning_rate
        return out


def describe_heal(value) -> str:
    try:
        spec = HealSpec.from_value(value)
    except (HealingError, TypeError, ValueError):
        return "heal"
    what = f"LoRA r={spec.rank}" if spec.method == "lora" else f"partial FT of the last {spec.blocks} blocks"
    return f"heal ({what}, {spec.loss}, {spec.steps} steps on {spec.text.get('name')})"


# ----------------------------------------------------------------------------------------------------------------
# Texts and windows
# ----------------------------------------------------------------------------------------------------------------


def text_ref(text: Text, path: str | None = None) -> dict:
    ref = {"name": text.name, "source": text.source, "sha256": text.sha256}
    if path:
        ref["path"] = str(path)
    return ref


def healing_text(spec: HealSpec, given: Text | None = None) -> Text:
    """The healing text a spec names (bundled by name, a file from ``path``, or ``given`` for an upload/paste)."""
    ref = spec.text
    if given is not None:
        text = given
    elif ref.get("source") == "bundled" or (ref.get("name") in BUNDLED and not ref.get("path")):
        text = bundled_text(ref["name"])
    elif ref.get("path") and Path(ref["path"]).is_file():
        text = text_from_bytes(Path(ref["path"]).read_bytes(), name=Path(ref["path"]).name)
    else:
        raise HealingError(
            f"the healing text {ref.get('name')!r} was uploaded or pasted: give its file as "
            "'path' in the heal action (or choose a bundled text)"
        )
    if ref.get("sha256") and ref["sha256"] != text.sha256:
        raise HealingError(
            f"the healing text {ref.get('name')!r} differs from the one recorded (sha256 {ref['sha256'][:12]}…)"
        )
    return text


def check_texts(heal: Text | dict, held_out: Text | dict | None) -> None:
    """Refuse a healing text equal to the evaluation text (same content hash)."""
    if held_out is None:
        return
    a = heal.sha256 if isinstance(heal, Text) else heal.get("sha256")
    b = held_out.sha256 if isinstance(held_out, Text) else held_out.get("sha256")
    name = held_out.label if isinstance(held_out, Text) else held_out.get("name")
    if a and b and a == b:
        raise HealingError(
            f"the healing text is the evaluation text ({name}): heal on another text, or the "
            "held-out perplexity would measure memorisation"
        )


#: float32 bytes kept per token and block for the backward pass, in units of the width: Korthikanti et al.'s
#: 34·d bytes per token and layer in 16-bit (2023, "Reducing Activation Recomputation"), doubled for float32
ACTIVATION_BYTES_PER_WIDTH = 68


def training_memory_bytes(
    n_layers: int,
    width: int,
    vocab: int,
    batch_size: int,
    window_len: int,
    teacher: bool = True,
    intermediate: int | None = None,
) -> dict:
    """A rough upper estimate of one healing step's memory beyond the weights (refused before training when over
    the budget): activations kept for the backward pass (68·d bytes per token and block in float32, plus the
    MLP's wider activations), and the logits: the student's, their gradient and log-softmax, and the teacher's
    with its softmax for the KL loss (4 bytes each per token and vocabulary entry). Attention scores are not
    counted (SDPA does not keep them)."""
    tokens = int(batch_size) * int(window_len)
    mlp = 3 * 4 * int(intermediate or 4 * width)  # gate, up and activation outputs, float32
    per_token = int(n_layers) * (ACTIVATION_BYTES_PER_WIDTH * int(width) + mlp) + int(vocab) * 4 * (5 if teacher else 3)
    fixed = 0
    return {"bytes": fixed + tokens * per_token, "per_token_bytes": per_token, "fixed_bytes": fixed, "tokens": tokens}


def training_windows(tokenizer, text: Text, spec: HealSpec) -> np.ndarray:
    """The first non-overlapping windows of ``window_len`` tokens of the healing text (``[N, T]``, at most
    ``spec.windows``); a text too short for one batch is refused."""
    ids = token_ids(tokenizer, text)
    n = ids.size // spec.window_len
    if spec.windows is not None:
        n = min(n, int(spec.windows))
    if n < spec.batch_size:
        raise HealingError(
            f"the healing text {text.label} has {ids.size:,} tokens: one batch of {spec.batch_size} "
            f"windows of {spec.window_len} tokens needs {spec.batch_size * spec.window_len:,}. Use "
            "a longer text, shorter windows or a smaller batch."
        )
    return ids[: n * spec.window_len].reshape(n, spec.window_len)


# ----------------------------------------------------------------------------------------------------------------
# What is trained
# ----------------------------------------------------------------------------------------------------------------


def _frozen_copy(model: nn.Module, train: set[int] = frozenset()) -> nn.Module:
    """A copy of the module tree: each parameter becomes a gradient-free alias of the same storage, except those in
    ``train`` (ids), which become trainable clones. Buffers are shared. Ties (one Parameter used twice) survive."""
    memo: dict[int, object] = {}
    for p in model.parameters():  # unique parameters: a tied matrix once
        if id(p) in train:
            memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=True)
        else:
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b
    return copy.deepcopy(model, memo)


def lora_candidates(model: nn.Module, targets: str = "all") -> list[dict]:
    """Every attention/MLP linear of every block: ``{"name", "kind", "shape"}`` with kind ``plain`` (an
    ``nn.Linear`` / ``Conv1D`` as loaded), ``truncated`` (a ``B·A`` factor, or a dense low-rank ``W'``) or
    ``linear_block`` (the map of a block replaced by a linear map)."""
    path, layers = decoder_layers(model)
    out = []
    for i, block in enumerate(layers):
        if isinstance(block, LinearBlock):
            for rel, mod in block.named_modules():
                if isinstance(mod, LINEAR_TYPES) and rel:
                    out.append({"name": f"{path}.{i}.{rel}", "kind": "linear_block", "shape": _shape(mod)})
            continue
        parts = block_parts(block)
        group = {"all": "all", "attn": "attn", "mlp": "mlp"}[targets]
        for rel, mod in parts.linears(block, group).items():
            parent = block.get_submodule(rel.rsplit(".", 1)[0]) if "." in rel else block
            kind = "truncated" if isinstance(parent, FactorisedLinear) or mod.__dict__.get(RANK_ATTR) else "plain"
            out.append({"name": f"{path}.{i}.{rel}", "kind": kind, "shape": _shape(mod)})
    return out


def _shape(mod: nn.Module) -> tuple[int, int]:
    w = mod.weight
    if isinstance(mod, nn.Linear):
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])  # Conv1D: weight is in × out


def lora_targets(model: nn.Module, spec: HealSpec) -> tuple[list[str], dict[str, int]]:
    """``(qualified names to adapt, {kind: count frozen})`` under the spec's target options."""
    chosen, frozen = [], {}
    for c in lora_candidates(model, spec.targets):
        ok = (
            c["kind"] == "plain"
            or (c["kind"] == "truncated" and spec.adapt_truncated)
            or (c["kind"] == "linear_block" and spec.adapt_linear_blocks)
        )
        if ok:
            chosen.append(c)
        else:
            frozen[c["kind"]] = frozen.get(c["kind"], 0) + 1
    if not chosen:
        raise HealingError(
            "no matrix to adapt: every chosen projection is truncated or a linear block; allow "
            "adapting them, or choose partial fine-tuning"
        )
    bad = [c for c in chosen if spec.rank > min(c["shape"])]
    if bad:
        c = bad[0]
        raise HealingError(
            f"LoRA rank {spec.rank} is larger than the matrix {c['name']} allows "
            f"({c['shape'][0]}×{c['shape'][1]}: at most {min(c['shape'])})"
        )
    return [c["name"] for c in chosen], frozen


def partial_parameters(model: nn.Module, spec: HealSpec) -> tuple[list[int], list[str], bool]:
    """``(trained block indices, trained parameter names, head tied)`` of partial fine-tuning."""
    path, layers = decoder_layers(model)
    n = len(layers)
    if spec.blocks > n:
        raise HealingError(f"cannot train the last {spec.blocks} blocks: this variant has {n}")
    blocks = list(range(n - spec.blocks, n))
    head = output_head(model)
    emb = model.get_input_embeddings()
    tied = emb is not None and head.weight is emb.weight
    names = []
    ids = {id(p) for b in blocks for p in layers[b].parameters()}
    if spec.head != "freeze":
        ids |= {id(p) for p in head.parameters()}
    for name, p in model.named_parameters():  # named_parameters lists a tied matrix once
        if id(p) in ids:
            names.append(name)
    return blocks, names, tied


class _Trainee:
    """A training copy of a variant: ``model`` to run, ``params`` to optimise, ``finish()`` -> the healed model."""

    def __init__(self, model: nn.Module, spec: HealSpec):
        self.spec = spec
        self.source = model
        self.peft = None
        self.info: dict = {}
        self._hooks = []
        if spec.method == "lora":
            self._lora(model)
        else:
            self._partial(model)
        emb = self.model.get_input_embeddings()
        if emb is not None:  # nothing before the first trained part is back-propagated through
            self._hooks.append(emb.register_forward_hook(this_thread_only(lambda m, i, o: o.detach())))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.info["trainable_parameters"] = int(sum(p.numel() for p in self.params))

    def _lora(self, model: nn.Module) -> None:
        from peft import LoraConfig, get_peft_model

        spec = self.spec
        work = _frozen_copy(model)
        names, frozen = lora_targets(work, spec)
        config = LoraConfig(
            r=int(spec.rank),
            lora_alpha=float(spec.alpha),
            lora_dropout=0.0,
            bias="none",
            target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
        )
        torch.manual_seed(spec.seed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.peft = get_peft_model(work, config)
        self.model = work  # the adapters are injected into work's own tree
        self.targets = names
        self.info.update(targets=names, frozen=frozen)

    def _partial(self, model: nn.Module) -> None:
        spec = self.spec
        blocks, names, tied = partial_parameters(model, spec)
        params = dict(model.named_parameters())
        train = {id(params[n]) for n in names}
        head_param = output_head(model).weight
        untie = tied and spec.head == "untie"
        if untie:
            train.discard(id(head_param))
        work = _frozen_copy(model, train)
        if untie:
            head = output_head(work)
            head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=True)
            for cfg in (work.config, getattr(work.config, "get_text_config", lambda: None)()):
                if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
                    cfg.tie_word_embeddings = False
        _, layers = decoder_layers(work)
        for b in blocks:  # a trained dense W' is no longer of rank k
            for mod in layers[b].modules():
                mod.__dict__.pop(RANK_ATTR, None)
        self.model = work
        head_note = (
            "frozen"
            if spec.head == "freeze"
            else "untied: its own trained copy, the embeddings frozen"
            if untie
            else "tied to the input embeddings: the shared matrix is trained from its head use"
            if tied
            else "trained"
        )
        self.info.update(blocks=blocks, head=head_note, tied=tied, parameters=names if len(names) < 60 else None)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def finish(self) -> nn.Module:
        """The healed model: adapters merged into fresh copies of their base weights (a plain model again)."""
        self.remove_hooks()
        if self.peft is None:
            for p in self.params:
                p.requires_grad_(False)
            return self.model
        from peft.tuners.lora import LoraLayer
        from peft.utils import get_peft_model_state_dict

        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft).items()}
        config = copy.deepcopy(self.peft.peft_config["default"])
        for mod in self.model.modules():
            if isinstance(mod, LoraLayer):
                base = mod.get_base_layer()
                base.weight = nn.Parameter(base.weight.detach().clone(), requires_grad=False)  # never merge into
                # the shared storage of the original
                k = base.__dict__.get(RANK_ATTR)
                if k is not None:
                    m, n = _shape(base)
                    if k + self.spec.rank < min(m, n):
                        base.__dict__[RANK_ATTR] = int(k + self.spec.rank)
                    else:
                        base.__dict__.pop(RANK_ATTR, None)
        merged = self.peft.merge_and_unload()
        for p in merged.parameters():
            p.requires_grad_(False)
        merged.__dict__[ADAPTER] = {"config": config, "state": state}
        return merged


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def warmup_steps(spec: HealSpec) -> int:
    """Warm-up steps for ``spec.warmup`` (a share of the steps), rounded up as ``TrainingArguments`` does."""
    return int(math.ceil(float(spec.warmup) * int(spec.steps)))


def make_scheduler(optimizer: torch.optim.Optimizer, spec: HealSpec):
    """transformers' scheduler for ``spec`` (:data:`SCHEDULERS`) on ``optimizer``: a linear warm-up from zero over
    :func:`warmup_steps` steps, then constant or cosine decay to 0 at ``spec.steps``."""
    from transformers import get_scheduler

    return get_scheduler(
        SCHEDULERS[spec.schedule], optimizer, num_warmup_steps=warmup_steps(spec), num_training_steps=int(spec.steps)
    )


def schedule_record(spec: HealSpec) -> dict:
    """What the recipe records about the schedule."""
    return {
        "scheduler": SCHEDULERS[spec.schedule],
        "source": "transformers.get_scheduler",
        "warmup_steps": warmup_steps(spec),
        "training_steps": int(spec.steps),
    }


def learning_rate_at(step: int, spec: HealSpec) -> float:
    """The learning rate of (0-based) ``step`` under :func:`make_scheduler` (read from transformers' scheduler on a
    throw-away optimiser, not recomputed by hand)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=spec.learning_rate)
    sched = make_scheduler(opt, spec)
    for _ in range(int(step)):
        opt.step()
        sched.step()
    return float(sched.get_last_lr()[0])


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits


def heal_loss(
    logits: torch.Tensor, x: torch.Tensor, teacher_logits: torch.Tensor | None, kind: str, mix: float = 0.5
) -> tuple[torch.Tensor, dict]:
    """``(loss, {"ce", "kl"})``: next-token CE of ``x`` and ``KL(teacher ‖ model)`` per token (nats)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -lp.gather(-1, x[:, 1:, None]).mean()
    parts = {"ce": float(ce.detach())}
    if teacher_logits is None or kind == "ce":
        return ce, parts
    tp = torch.log_softmax(teacher_logits[:, :-1].float(), dim=-1)
    kl = (tp.exp() * (tp - lp)).sum(-1).mean()
    parts["kl"] = float(kl.detach())
    loss = kl if kind == "kd" else (1.0 - mix) * ce + mix * kl
    return loss, parts


class _Batches:
    def __init__(self, windows: np.ndarray, batch_size: int, seed: int, device):
        self.windows, self.b, self.device = windows, batch_size, device
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []

    def next(self) -> torch.Tensor:
        if len(self.order) < self.b:
            self.order = list(self.rng.permutation(len(self.windows)))
        take, self.order = self.order[: self.b], self.order[self.b :]
        return torch.as_tensor(self.windows[sorted(take)], device=self.device)


def adamw(params, lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these parameters (CPU and CUDA, float32/16): on 2 CPU
    cores the default per-tensor loop took 0.30 s a step for the 38 M parameters of partial fine-tuning (blocks and
    tied head), the fused kernel 0.012 s — a third of a training step otherwise. Otherwise the multi-tensor loop."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)


def _train(
    trainee: _Trainee,
    windows: np.ndarray,
    teacher: nn.Module | None,
    steps: int,
    progress: Progress | None = None,
    on_step: Callable[[dict], None] | None = None,
    label: str = "healing",
) -> list[dict]:
    spec = trainee.spec
    device = next(iter(trainee.params)).device if trainee.params else torch.device("cpu")
    if not trainee.params:
        raise HealingError("nothing to train: the chosen parts have no parameters")
    torch.manual_seed(spec.seed)
    opt = adamw(trainee.params, spec.learning_rate)
    scheduler = make_scheduler(opt, spec)
    batches = _Batches(windows, spec.batch_size, spec.seed, device)
    need_teacher = spec.loss != "ce"
    if need_teacher and teacher is None:
        raise HealingError(f"the {spec.loss} loss needs the original model as teacher")
    curve = []
    trainee.model.eval()  # no dropout: the same function as evaluated
    for step in range(steps):
        x = batches.next()
        lr = float(scheduler.get_last_lr()[0])  # the learning rate this step uses (0 on the first of a warm-up)
        t_logits = None
        if need_teacher:
            with torch.no_grad():
                t_logits = _logits(teacher, x)
        loss, parts = heal_loss(_logits(trainee.model, x), x, t_logits, spec.loss, spec.mix)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise HealingError(
                f"the healing loss became {value} at step {step + 1}: the run was stopped and nothing "
                "kept (lower the learning rate)"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainee.params, float(spec.max_grad_norm))
        opt.step()
        scheduler.step()
        point = {"step": step + 1, "loss": value, "lr": lr, **parts}
        curve.append(point)
        if on_step is not None:
            on_step(point)
        if progress is not None:
            progress(step + 1, steps, f"{label}: step {step + 1}/{steps}, loss {value:.4f}")
    return curve


def heal_model(
    model: nn.Module,
    spec: HealSpec,
    windows: np.ndarray,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
    on_step: Callable[[dict], None] | None = None,
    text: Text | None = None,
) -> nn.Module:
    """A healed copy of ``model`` (never changed, nor is ``teacher``), with the record of the run on it."""
    spec.validate()
    t0 = time.perf_counter()
    trainee = _Trainee(model, spec)
    try:
        curve = _train(trainee, windows, teacher, spec.steps, progress, on_step)
    finally:
        trainee.remove_hooks()
    healed = trainee.finish()
    value = spec.to_value()
    if text is not None:
        value["text"] = {**text_ref(text), **({"path": spec.text["path"]} if spec.text.get("path") else {})}
    healed.__dict__[RECORD] = {
        "settings": value,
        "method": spec.method,
        "loss": spec.loss,
        "schedule": schedule_record(spec),
        **trainee.info,
        "text": {
            **value["text"],
            "windows": int(len(windows)),
            "window_len": int(windows.shape[1]),
            "tokens_seen": int(spec.steps * spec.batch_size * windows.shape[1]),
        },
        "curve": curve,
        "first_loss": curve[0]["loss"],
        "final_loss": curve[-1]["loss"],
        "seconds": time.perf_counter() - t0,
    }
    return healed


def estimate(
    model: nn.Module, spec: HealSpec, windows: np.ndarray, teacher: nn.Module | None = None, probe_steps: int = 2
) -> dict:
    """Time ``probe_steps`` steps (after one warm-up step) on a throw-away training copy: seconds per step and
    the predicted wall time of the whole run."""
    t0 = time.perf_counter()
    trainee = _Trainee(model, spec)
    setup = time.perf_counter() - t0
    try:
        _train(trainee, windows, teacher, 1)
        t1 = time.perf_counter()
        _train(trainee, windows, teacher, probe_steps)
        per_step = (time.perf_counter() - t1) / probe_steps
    finally:
        trainee.remove_hooks()
    return {
        "seconds_per_step": per_step,
        "setup_seconds": setup,
        "steps": spec.steps,
        "total_seconds": setup + per_step * spec.steps,
        "trainable_parameters": trainee.info["trainable_parameters"],
        "tokens_per_step": spec.batch_size * spec.window_len,
        "probe_steps": probe_steps,
    }


# ----------------------------------------------------------------------------------------------------------------
# The action, the record, the gap
# ----------------------------------------------------------------------------------------------------------------


def record_of(model: nn.Module) -> dict:
    """What healing did to ``model`` (its own record beside the other changes')."""
    return base_record_of(model, RECORD)


def recipe_section(model: nn.Module) -> dict:
    rec = model.__dict__.get(RECORD)
    return {"healing": rec} if rec else {}


def gap_closed(ppl_original: float, ppl_cut: float, ppl_healed: float) -> float | None:
    """``(ppl_cut − ppl_healed) / (ppl_cut − ppl_original)``: 1 = back to the original, 0 = no better than cut
    (None when the cut did not raise the perplexity)."""
    gap = ppl_cut - ppl_original
    if not (math.isfinite(gap) and gap > 1e-9):
        return None
    return (ppl_cut - ppl_healed) / gap


def record_gap(
    model: nn.Module,
    recipe: dict | None,
    ppl_original: float,
    ppl_cut: float,
    ppl_healed: float,
    settings: dict | None = None,
) -> dict:
    gap = {
        "perplexity_original": ppl_original,
        "perplexity_cut": ppl_cut,
        "perplexity_healed": ppl_healed,
        "gap_closed": gap_closed(ppl_original, ppl_cut, ppl_healed),
    }
    if settings:
        gap["evaluation"] = {k: settings.get(k) for k in ("text", "n_tokens", "context", "stride")}
    rec = model.__dict__.get(RECORD)
    if rec is not None:
        rec["gap"] = gap
    if recipe is not None and "healing" in recipe:
        recipe["healing"]["gap"] = gap
    return gap


def check_workspace(ws) -> None:
    if ws is None:
        raise HealingError("healing needs the original model (teacher, tokenizer): apply it on a workspace")
    if getattr(ws.lm, "source_kind", "") == "results":
        raise HealingError(f"{ws.lm.name} is a results-only folder: it has no weights to heal. Load the model itself.")


def apply_heal(model: nn.Module, value, ws=None, progress: Progress | None = None) -> nn.Module:
    """The registered ``heal`` action: fine-tune a copy of the changed model (applied after every other action)."""
    spec = HealSpec.from_value(value)
    check_workspace(ws)
    if RECORD in model.__dict__:
        raise HealingError("this variant is healed already")
    text = healing_text(spec)
    check_texts(text, spec.held_out)
    windows = training_windows(ws.lm.tokenizer, text, spec)
    teacher = ws.lm.model if spec.loss != "ce" else None
    return heal_model(model, spec, windows, teacher, progress, text=text)


# ----------------------------------------------------------------------------------------------------------------
# The adapter on its own
# ----------------------------------------------------------------------------------------------------------------


def has_adapter(model: nn.Module) -> bool:
    return ADAPTER in model.__dict__


def save_adapter(model: nn.Module, directory: str | Path, base: str | None = None) -> None:
    """Write the LoRA adapter of a healed model as ``peft`` does (``adapter_config.json``,
    ``adapter_model.safetensors``) into an existing ``directory``; ``PeftModel.from_pretrained(cut_model, DIR)``
    loads it on top of the cut model (module names in the cut model's own numbering)."""
    from safetensors.torch import save_file

    info = model.__dict__.get(ADAPTER)
    if info is None:
        raise HealingError("this variant has no LoRA adapter (it was not healed with LoRA)")
    config = copy.deepcopy(info["config"])
    config.base_model_name_or_path = base
    config.save_pretrained(str(directory))
    save_file(
        {k: v.contiguous() for k, v in info["state"].items()},
        str(Path(directory) / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def export_adapter(
    model: nn.Module, out_dir: str | Path, recipe: dict | None = None, overwrite: bool = False, base: str | None = None
) -> Path:
    """The adapter alone in ``out_dir``, written atomically (with ``recipe.json`` when given).

    ``out_dir`` goes through :func:`analysis.destinations.check`: a folder LayerScope did not write (the working
    directory, the home folder, anything without LayerScope's marker) is refused, even with ``overwrite``.
    """
    from analysis import cache, destinations

    if not has_adapter(model):
        raise HealingError("this variant has no LoRA adapter (it was not healed with LoRA)")
    dest = destinations.check(out_dir, overwrite=overwrite, what="adapter folder", option="tick 'Replace the folder'")
    with destinations.writing(dest, what="adapter") as tmp:
        save_adapter(model, tmp, base)
        if recipe is not None:
            cache.atomic_write_text(tmp / "recipe.json", cache.dumps(recipe))
    return dest.path


def load_adapter(base_model: nn.Module, directory: str | Path) -> nn.Module:
    """``PeftModel.from_pretrained(base_model, directory)`` in inference mode."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(directory), is_trainable=False)


ACTIONS = (Action(key="heal", order=200, apply=apply_heal, describe=describe_heal),)
