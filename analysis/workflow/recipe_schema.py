"""The shape of ``recipe.json``, declared with pydantic (types, ranges, known keys), checked before anything runs.

:func:`check` refuses a recipe that is too large (:data:`MAX_BYTES`), nested too deeply (:data:`MAX_DEPTH`), or
whose fields have the wrong type or range, with one line: the field's path and what is wrong, e.g.
``recipe: action.remove_blocks.0: a whole number is expected, got 12.5``. What needs the model (block indices
against its number of blocks, windows against its positions) is checked afterwards by
:mod:`analysis.workflow.preflight`; what needs the registries (metric groups, action kinds) by
:func:`analysis.workflow.recipe.validate`. Sections LayerScope writes back for information (``compression``,
``parameters``, ``healing``, evaluation results) are free-form objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from analysis.errors import InputError

#: a recipe file larger than this is refused before it is parsed (LayerScope's own are a few KiB)
MAX_BYTES = 1 << 20
#: objects and lists nested deeper than this are refused (LayerScope's own nest 5 levels)
MAX_DEPTH = 32
#: no count in a recipe is larger than this (2**31 - 1)
MAX_INT = 2**31 - 1
MAX_BLOCK = 100_000


class RecipeSchemaError(InputError):
    """A recipe whose shape is wrong (one line: the field's path and what is wrong)."""


Count = Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
NonNegative = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
Tokens = Annotated[StrictInt, Field(ge=2, le=MAX_INT)]
Block = Annotated[StrictInt, Field(ge=0, le=MAX_BLOCK)]
Number = Union[StrictInt, StrictFloat]
Fraction = Annotated[Number, Field(gt=0, lt=1)]
NonNegativeNumber = Annotated[Number, Field(ge=0, allow_inf_nan=False)]
Blocks = Annotated[list[Block], Field(max_length=MAX_BLOCK)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    """A section whose known keys are typed and whose other keys are checked elsewhere (or are results)."""

    model_config = ConfigDict(extra="allow", strict=True)


class ModelSection(_Strict):
    source: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device: StrictStr | None = None
    device_map_auto: StrictBool | None = None
    trust_remote_code: StrictBool | None = None
    name: StrictStr | None = None
    fingerprint: StrictStr | None = None
    parameters: Any = None
    blocks: Any = None
    architecture: Any = None


class TextRef(_Open):
    name: Annotated[StrictStr, Field(min_length=1)]
    source: StrictStr | None = None
    sha256: StrictStr | None = None
    path: StrictStr | None = None


class CalibrationSection(_Strict):
    text: StrictStr | TextRef | None = None
    windows: Count | None = None
    window_len: Tokens | None = None
    exclude_first: NonNegative | None = None
    n_max: Count | None = None
    seed: NonNegative | None = None
    storage: Literal["float32", "float16"] | None = None


class ActionCalibration(_Open):
    text: StrictStr | TextRef | None = None
    windows: Count | None = None
    window_len: Tokens | None = None


class ReplaceLinear(_Strict):
    blocks: Blocks
    ridge: NonNegativeNumber = 0.0


class ChosenBy(_Open):
    rule: Annotated[StrictStr, Field(min_length=1)]
    label: StrictStr | None = None
    score: Number | None = None


class ReplaceMe(_Strict):
    start: Annotated[StrictInt, Field(ge=1, le=MAX_BLOCK)]
    n: Annotated[StrictInt, Field(ge=1, le=MAX_BLOCK)]
    method: Literal["lstsq", "cosine"] = "lstsq"
    relative_ridge: NonNegativeNumber = 0.0
    ridge: NonNegativeNumber = 0.0  # the older name of relative_ridge (read as it)
    calibration: ActionCalibration | None = None
    cosine: dict[str, Number] | None = None
    chosen_by: ChosenBy | None = None  # which rule chose the run (recorded)


class LowRank(_Open):
    ratio: Fraction | None = None
    rank: Count | None = None
    ranks: dict[str, Count] | None = None
    blocks: Blocks | None = None
    calibration: ActionCalibration | None = None


class Heal(_Open):
    steps: Count | None = None
    batch_size: Count | None = None
    window_len: Tokens | None = None
    windows: Count | None = None
    rank: Count | None = None
    blocks: Count | None = None
    seed: NonNegative | None = None


class ActionSection(_Open):
    remove_blocks: Blocks | None = None
    replace_linear: Blocks | ReplaceLinear | None = None
    replaceme: ReplaceMe | None = None
    low_rank: LowRank | None = None
    heal: Heal | None = None
    skip_attention: Blocks | None = None
    skip_mlp: Blocks | None = None


class EvalSettingsSection(_Open):  # unknown settings: refused by recipe.validate with the known list
    text: StrictStr | None = None
    n_tokens: Tokens | None = None
    context: Tokens | None = None
    stride: Count | None = None
    prompt: StrictStr | None = None
    max_new_tokens: NonNegative | None = None
    measure_speed: StrictBool | None = None
    batch_size: Count | None = None


class EvaluationSection(_Open):
    settings: EvalSettingsSection | None = None


class ExportSection(_Strict):
    form: Literal["dense", "factorised"] | None = None
    path: StrictStr | None = None
    reload_check: dict[str, Any] | None = None
    size_bytes: NonNegative | None = None
    adapter: dict[str, Any] | None = None
    # a GGUF type to write ("q8_0"), or the section an export wrote: {file, type, size_bytes, reload_check}
    gguf: StrictStr | dict[str, Any] | None = None
    vllm_config_problems: list[StrictStr] | None = None


class Recipe(_Strict):
    layerscope: NonNegative | None = None
    created: StrictStr | None = None
    name: StrictStr | None = None
    model: ModelSection
    calibration: CalibrationSection | None = None
    metrics: dict[str, dict[str, Any] | None] | None = None
    action: ActionSection | None = None
    removed_blocks: Blocks | None = None
    evaluation: EvaluationSection | None = None
    export: ExportSection | None = None
    compression: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    healing: dict[str, Any] | None = None
    report: StrictBool | None = None


_WHAT = {
    "int_type": "a whole number is expected",
    "int_from_float": "a whole number is expected",
    "int_parsing": "a whole number is expected",
    "bool_type": "true or false is expected",
    "string_type": "a string is expected",
    "dict_type": "an object is expected",
    "list_type": "a list is expected",
    "model_type": "an object is expected",
    "float_type": "a number is expected",
    "extra_forbidden": "unknown key",
    "missing": "required",
    "literal_error": "",
    "finite_number": "a finite number is expected",
}


def _is_union_tag(part: Any) -> bool:
    """pydantic names the members of a union in an error's location (``str``, ``list[constrained-int]``, a model's
    class name); they are left out of the field path shown."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool") or "[" in part or "-" in part or part in _MODELS
    )


def _describe(errors: list[dict]) -> str:
    """The deepest error (a union's members each fail: the one that got furthest says most), with its field path;
    when the members of a union fail at the same place, what each expected (``a string or an object``)."""
    located = [(tuple(p for p in e["loc"] if not _is_union_tag(p)), e) for e in errors]
    loc, err = max(located, key=lambda le: len(le[0]))
    same = [e for lc, e in located if lc == loc]
    kind = err["type"]
    path = ".".join(str(p) for p in loc) or "(top level)"
    whats = list(dict.fromkeys(_WHAT.get(e["type"]) or e["msg"][0].lower() + e["msg"][1:] for e in same))
    if "a number is expected" in whats and len(whats) > 1:
        whats = [w for w in whats if w != "a whole number is expected"]
    what = (
        " or ".join(w.removesuffix(" is expected") for w in whats[:-1]) + (" or " if len(whats) > 1 else "") + whats[-1]
    )
    if kind in ("extra_forbidden", "missing"):
        return f"{path}: {what}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else ("an object" if isinstance(got, dict) else "a list")
    return f"{path}: {what}, got {shown[:60]}"


def depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: never a RecursionError)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_size(n_bytes: int, where: str = "the recipe") -> None:
    if n_bytes > MAX_BYTES:
        raise RecipeSchemaError(
            f"{where} is {n_bytes:,} bytes, more than a recipe's limit of {MAX_BYTES:,} "
            "(1 MiB); a recipe describes a run, it holds no data"
        )


def check(recipe: Any) -> Recipe:
    """Refuse a recipe whose nesting or fields are wrong; returns the parsed model."""
    if not isinstance(recipe, dict):
        raise RecipeSchemaError(f"recipe: a recipe is a JSON object, got {type(recipe).__name__}")
    if depth(recipe) > MAX_DEPTH:
        raise RecipeSchemaError(f"recipe: nested more than {MAX_DEPTH} levels deep; a recipe is a few flat sections")
    try:
        return Recipe.model_validate(recipe)
    except ValidationError as exc:
        raise RecipeSchemaError(f"recipe: {_describe(exc.errors(include_url=False))}") from None


_MODELS = {name for name, obj in dict(globals()).items() if isinstance(obj, type) and issubclass(obj, BaseModel)}
