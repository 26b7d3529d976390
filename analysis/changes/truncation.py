"""Applying low-rank truncation to a model's matrices in memory (METHODS.md §6); saving and loading the result is
:mod:`analysis.model.checkpoint` (METHODS.md §8).

Two forms of a truncated model:

* **dense** — ``W' = B @ A`` becomes the new weight Parameter of the original ``nn.Linear``. The model keeps its architecture,
  so :func:`analysis.model.checkpoint.save_dense` is an ordinary ``save_pretrained`` that plain ``AutoModelForCausalLM.from_pretrained``
  reloads. No saving in size (the point is to evaluate quality).
* **factorised** — the ``nn.Linear`` is replaced by :class:`FactorisedLinear` (``x ↦ B(A(x))``), which has
  ``k·(m+n)`` weights instead of ``m·n``. :func:`analysis.model.checkpoint.save_factorised` writes a checkpoint that is actually smaller
  and records the ranks in ``config.json`` under the key ``"layerscope_factorised"``
  (``{qualified linear name: rank}``); :func:`load_factorised` rebuilds the model from it.

Loading a factorised checkpoint in your own code (:mod:`analysis.model.checkpoint` holds every file operation; this
module is the in-memory side only)::

    from analysis.model.checkpoint import load_factorised
    model = load_factorised("path/to/export")          # an ordinary LlamaForCausalLM with FactorisedLinear inside

Without this module: build ``AutoModelForCausalLM.from_config(config)``, replace every module named in
``config.layerscope_factorised`` by ``Sequential``-like ``A: Linear(n→k, bias=False)`` followed by
``B: Linear(k→m, bias=<original>)`` (state-dict keys ``<name>.A.weight``, ``<name>.B.weight``, ``<name>.B.bias``),
then ``load_state_dict`` from ``model.safetensors`` and ``tie_weights()``. **Do not** load a factorised checkpoint
with plain ``from_pretrained``: transformers would warn about missing weights and initialise those matrices
at random. :func:`is_factorised_checkpoint` tells the two kinds apart.

Writes (in :mod:`analysis.model.checkpoint`) are atomic: everything goes into a temporary sibling directory that is
renamed into place at the end; a non-empty target is never overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from analysis.errors import InputError
from analysis.methods.lowrank import (
    CalibrationStats,
    LowRankFactors,
    Method,
    Whitening,
    activation_loss,
    check_rank,
    decompose,
    rank_for_ratio,
    saves_parameters,
    whitening,
)
from analysis.model.modules import (
    CONFIG_KEY,
    RANK_ATTR,
    FactorisedLinear,
    factorised_ranks,  # noqa: F401
)

__all__ = [
    "CONFIG_KEY",
    "RANK_ATTR",
    "FactorisedLinear",
    "TruncatedMatrix",
    "TruncationReport",
    "plan_for_ratio",
    "apply_truncation",
    "factorised_ranks",
    "densify",
]


# ----------------------------------------------------------------------------------------------------------------
# Truncating a model
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruncatedMatrix:
    """One row of a :class:`TruncationReport`.

    ``params_before`` / ``params_after`` count the weights of the matrix (bias excluded, it is unchanged) as stored
    in the chosen form: a dense truncation stores ``m·n`` either way. ``factorised_params = k·(m+n)``.
    ``predicted_loss = ||W X − W' X||_F`` over the calibration tokens, ``relative_loss`` that over ``||W X||_F``;
    ``damping`` is the λ SVD-LLM/NSVD added to the Gram (``relative_damping`` in units of its mean diagonal).
    """

    name: str
    out_features: int
    in_features: int
    rank: int
    params_before: int
    params_after: int
    factorised_params: int
    saves_parameters: bool
    predicted_loss: float
    relative_loss: float
    damping: float
    relative_damping: float


@dataclass(frozen=True)
class TruncationReport:
    """What :func:`apply_truncation` did: the method, form, options and one :class:`TruncatedMatrix` per matrix."""

    method: str
    form: str
    options: dict[str, float | None]
    matrices: list[TruncatedMatrix]

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.matrices)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.matrices)

    def records(self) -> list[dict[str, object]]:
        """One dict per matrix (e.g. for ``pandas.DataFrame``)."""
        return [asdict(r) for r in self.matrices]


def plan_for_ratio(model: nn.Module, names: Sequence[str], ratio: float) -> dict[str, int]:
    """``{name: rank_for_ratio(m, n, ratio)}`` for every named linear layer (the uniform-ratio plan)."""
    from analysis.model.architecture import is_linear, linear_dims

    modules = dict(model.named_modules())
    plan: dict[str, int] = {}
    for name in names:
        module = modules.get(name)
        if module is None or not is_linear(module):
            raise InputError(f"{name!r} is not a linear layer of this model")
        plan[name] = rank_for_ratio(*linear_dims(module), ratio)
    return plan


@torch.no_grad()
def apply_truncation(
    model: nn.Module,
    plan: Mapping[str, int],
    stats: CalibrationStats | None,
    method: Method,
    form: str = "dense",
    alpha: float = 0.5,
    k1_share: float = 0.95,
    damping: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TruncationReport:
    """Truncate every linear layer named in ``plan`` (``name → rank``) **in place** and report what happened.

    Linear layers are ``nn.Linear`` (and subclasses) and GPT-2's ``Conv1D`` (treated as a linear whose weight is
    stored transposed: the decomposition always sees ``W`` as ``out × in``).

    ``method`` is ``"svd"``, ``"asvd"`` (``alpha``), ``"svd_llm"`` (``damping``) or ``"nsvd"`` (``k1_share``,
    ``damping``); ``stats`` may be ``None`` only for ``"svd"`` (the predicted loss is then NaN).
    ``form="dense"`` gives the linear a new weight Parameter ``W' = B @ A`` (the old tensor is never written
    into, so a structural copy sharing the original's tensors leaves the original intact); ``form="factorised"``
    swaps in a :class:`FactorisedLinear`. All ranks are validated before anything changes. Linears reading the same input
    share one Cholesky factorisation. ``progress(done, total)`` is called after each matrix.
    """
    if form not in ("dense", "factorised"):
        raise InputError(f"form must be 'dense' or 'factorised', got {form!r}")
    if stats is None and method != "svd":
        raise InputError(f"method {method!r} needs calibration statistics")
    from analysis.model.architecture import (
        is_conv1d,
        is_linear,
        linear_dims,
        linear_weight,
        set_linear_weight,
    )

    modules = dict(model.named_modules())
    for name, k in plan.items():
        module = modules.get(name)
        if module is None or not is_linear(module):
            kind = "missing" if module is None else type(module).__name__
            raise InputError(f"{name!r} is not a linear layer of this model ({kind})")
        check_rank(*linear_dims(module), k)
        if stats is not None and name not in stats:
            raise InputError(f"no calibration statistics for {name!r}")
    whitenings: dict[int, Whitening] = {}
    rows: list[TruncatedMatrix] = []
    for i, (name, k) in enumerate(plan.items()):
        linear: nn.Module = modules[name]
        W = linear_weight(linear)
        m, n = W.shape
        site = stats[name] if stats is not None else None
        white = None
        if method in ("svd_llm", "nsvd") and site is not None:
            key = id(site)
            if key not in whitenings:
                whitenings[key] = whitening(site.gram.to(W.device), damping)
            white = whitenings[key]
        factors: LowRankFactors = decompose(
            W,
            site,
            k,
            method,
            alpha=alpha,
            k1_share=k1_share,
            damping=damping,
            white=white,  # type: ignore[arg-type]
        )
        if site is not None:
            loss = activation_loss(W, factors.B.double() @ factors.A.double(), site.gram)
            reference = activation_loss(W, torch.zeros_like(W), site.gram)
            relative = loss / reference if reference > 0 else 0.0
        else:
            loss = relative = float("nan")
        if form == "dense":
            # a new Parameter, never a write into the old one: the model may share its tensors with another
            set_linear_weight(linear, factors.weight().to(W.dtype))
        else:
            replacement = FactorisedLinear.from_factors(factors.B, factors.A, linear.bias, conv1d=is_conv1d(linear))
            replacement.train(linear.training)
            model.set_submodule(name, replacement)
        rows.append(
            TruncatedMatrix(
                name=name,
                out_features=m,
                in_features=n,
                rank=k,
                params_before=m * n,
                params_after=m * n if form == "dense" else k * (m + n),
                factorised_params=k * (m + n),
                saves_parameters=saves_parameters(m, n, k),
                predicted_loss=loss,
                relative_loss=relative,
                damping=factors.damping,
                relative_damping=factors.relative_damping,
            )
        )
        if progress is not None:
            progress(i + 1, len(plan))
    options = {"alpha": alpha} if method == "asvd" else {}
    if method in ("svd_llm", "nsvd"):
        options["damping"] = damping
    if method == "nsvd":
        options["k1_share"] = k1_share
    return TruncationReport(method=method, form=form, options=options, matrices=rows)


@torch.no_grad()
def densify(model: nn.Module) -> list[str]:
    """Replace every :class:`FactorisedLinear` by the dense layer it stands for (``nn.Linear`` holding ``B @ A``;
    a GPT-2 ``Conv1D`` where it replaced one), in place; return their names."""
    names = list(factorised_ranks(model))
    for name in names:
        module: FactorisedLinear = model.get_submodule(name)  # type: ignore[assignment]
        dense = module.to_linear()
        dense.train(module.training)
        model.set_submodule(name, dense)
    return names
