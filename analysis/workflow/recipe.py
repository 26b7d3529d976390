"""``recipe.json``: one file that describes a whole run, and reproduces it.

A recipe is written beside every export, by the dashboard's *Recipe and report* page, and by
``python -m analysis run``; ``python -m analysis run RECIPE.json --out DIR`` reproduces it headless and the
dashboard restores a session from it. Keys (unknown keys are refused, so a typo never goes unnoticed):

* ``layerscope``: format version; ``created``: when; ``name``: a label for the run;
* ``model``: ``source`` (required: ``default``, a hub id, a folder or a .gguf), ``dtype``, ``device``,
  ``device_map_auto``, ``trust_remote_code`` (recorded, never honoured: only the user's own flag or tick runs a
  model's code); written back: ``name``, ``fingerprint``, ``parameters``, ``blocks``,
  ``architecture`` (a different fingerprint on reload is reported, not fatal);
* ``calibration``: ``text`` (a bundled name, or ``{name, source, sha256}``; a recipe names bundled texts only:
  an uploaded or file text is given by the user with ``--text PATH``, never read from a path in the recipe),
  ``windows``, ``window_len``, ``exclude_first``, ``n_max``, ``seed``, ``storage``;
* ``metrics``: metric groups to compute, each with its settings, e.g. ``{"linearity": {}}``;
* ``action``: what to change, by registered action (``remove_blocks``: 0-based block indices, …);
* ``removed_blocks``: the same list at top level, as pruning tools report it;
* ``evaluation``: ``settings`` (held-out text, tokens, context, stride, prompt …) and, once run, ``original`` and
  the changed model's row (``pruned`` for depth pruning, ``compressed`` for rank truncation, ``changed`` when
  both), plus ``downstream`` task results when tasks ran;
* ``compression``: what the ``low_rank`` / ``replace_linear`` actions did (method, options, the rank of every
  matrix by its name in the original model, predicted losses, damping, calibration text hash, fit residuals);
* ``parameters``: ``original`` and the changed model's count (in memory, as evaluated) and, with low-rank matrices,
  ``factorised`` (the same model with every low-rank matrix stored as ``B·A``);
* ``export``: ``form`` (``dense`` or ``factorised``) and, once written, ``path``, ``size_bytes`` and the reload
  check;
* ``healing``: what the ``heal`` action did (method, loss, every setting, the healing text's sha256, the trained
  parts, the loss curve, and — once evaluated — the perplexities and the gap closed);
* ``report``: ``true`` to write ``report.html`` (default true for ``run``).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

from analysis.capture.workspace import Calibration, Workspace
from analysis.changes.variant import candidate_name, validate_action
from analysis.errors import InputError
from analysis.texts import BUNDLED, DEFAULT_EVALUATION_TEXT, bundled_text, text_from_bytes

RECIPE_VERSION = 1

SCHEMA: dict[str, object] = {
    "layerscope": None,
    "created": None,
    "name": None,
    "model": {
        "source",
        "dtype",
        "device",
        "device_map_auto",
        "trust_remote_code",
        "name",
        "fingerprint",
        "parameters",
        "blocks",
        "architecture",
    },
    "calibration": {"text", "windows", "window_len", "exclude_first", "n_max", "seed", "storage"},
    "metrics": None,  # free-form per metric group, checked against the registry
    "action": None,  # checked against the registered actions
    "removed_blocks": None,
    "evaluation": None,  # settings checked against EvalSettings; results are free-form
    "export": {"form", "path", "reload_check", "size_bytes", "adapter", "gguf", "vllm_config_problems"},
    "compression": None,  # written by the low_rank / replace_linear actions (analysis.changes.low_rank)
    "parameters": None,
    "healing": None,  # written by the heal action (analysis.changes.healing): settings, text hash, loss curve, gap closed
    "report": None,
}


class RecipeError(InputError):
    """A recipe cannot be used (unknown keys, a missing model, an uploaded text without its file …)."""


def validate(recipe: dict) -> None:
    """Refuse a recipe nested too deeply or with fields of the wrong type or range (the schema in
    :mod:`analysis.workflow.recipe_schema`, one line naming the field), unknown keys at every level we define, a
    recipe without a model source, unknown metric groups and actions, and action values their kind refuses."""
    from analysis.evaluation.perplexity import EvalSettings
    from analysis.metrics import registry
    from analysis.workflow import recipe_schema

    if not isinstance(recipe, dict):
        raise RecipeError("recipe: a recipe is a JSON object")
    unknown = sorted(set(recipe) - set(SCHEMA))
    if unknown:
        raise RecipeError(f"unknown recipe key(s): {', '.join(unknown)}; known: {', '.join(SCHEMA)}")
    for key, allowed in SCHEMA.items():
        if isinstance(allowed, set) and key in recipe:
            if not isinstance(recipe[key], dict):
                raise RecipeError(f"'{key}' must be an object")
            bad = sorted(set(recipe[key]) - allowed)
            if bad:
                raise RecipeError(f"unknown key(s) in '{key}': {', '.join(bad)}; known: {', '.join(sorted(allowed))}")
    model = recipe.get("model")
    if not isinstance(model, dict) or not model.get("source"):
        raise RecipeError("the recipe names no model: 'model': {'source': 'default' | hub id | folder | .gguf}")
    try:
        recipe_schema.check(recipe)  # types and ranges of every field, one line naming it
    except recipe_schema.RecipeSchemaError as exc:
        raise RecipeError(str(exc)) from None
    groups = registry.groups()
    bad = sorted(set(recipe.get("metrics") or {}) - set(groups))
    if bad:
        raise RecipeError(f"unknown metric group(s) in 'metrics': {', '.join(bad)}; known: {', '.join(groups)}")
    try:
        validate_action(recipe.get("action") or {})
        _validate_action_values(recipe.get("action") or {})
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    settings = (recipe.get("evaluation") or {}).get("settings") or {}
    bad = sorted(set(settings) - set(EvalSettings().to_dict()))
    if bad:
        raise RecipeError(
            f"unknown evaluation setting(s): {', '.join(bad)}; known: {', '.join(EvalSettings().to_dict())}"
        )


def _validate_action_values(action: dict) -> None:
    """Each action's value as its kind reads it (before any model is loaded)."""
    from analysis.changes.healing import HealSpec
    from analysis.changes.linear_replacement import replace_value
    from analysis.changes.low_rank import LowRankSpec
    from analysis.changes.remove_blocks import parse_blocks
    from analysis.changes.replaceme import ReplaceMeSpec

    readers = {
        "low_rank": LowRankSpec.from_value,
        "replaceme": ReplaceMeSpec.from_value,
        "replace_linear": replace_value,
        "remove_blocks": lambda v: parse_blocks(v, "action.remove_blocks"),
    }
    for key, read in readers.items():
        if action.get(key) is not None:
            read(action[key])
    if action.get("heal") is not None:
        value = {k: v for k, v in action["heal"].items() if k not in ("text", "held_out")}
        HealSpec.from_value({**value, "text": {"name": "(checked when run)"}})


def load(path: str | Path) -> dict:
    """Read and validate a recipe file: at most 1 MiB, valid JSON, nested at most 32 levels, the schema."""
    from analysis.workflow import recipe_schema

    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise RecipeError(f"{path} is a folder; give the path of a recipe.json")
        recipe_schema.check_size(p.stat().st_size, where=str(path))
        with open(p, "rb") as f:
            raw = f.read(recipe_schema.MAX_BYTES + 1)
        recipe_schema.check_size(len(raw), where=str(path))
        recipe = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"no such recipe file: {path}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a text file (not UTF-8); a recipe is JSON") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise RecipeError(
            f"{path}: nested more than {recipe_schema.MAX_DEPTH} levels deep; a recipe is a few flat sections"
        ) from None
    except recipe_schema.RecipeSchemaError as exc:
        raise RecipeError(str(exc)) from None
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe {path}: {exc.strerror or exc}") from None
    validate(recipe)
    return recipe


def base_recipe(ws: Workspace) -> dict:
    card = ws.lm.card()
    return {
        "layerscope": RECIPE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "source": ws.lm.spec.source,
            "dtype": ws.lm.spec.dtype,
            "device": ws.lm.spec.device,
            "device_map_auto": ws.lm.spec.device_map_auto,
            "trust_remote_code": ws.lm.spec.trust_remote_code,
            "name": ws.lm.name,
            "fingerprint": ws.lm.fingerprint,
            "parameters": card["parameters"],
            "blocks": card["blocks"],
            "architecture": card["architecture"],
        },
        "calibration": {
            "text": ws.text.describe(),
            "windows": ws.calibration.n_windows,
            "window_len": ws.calibration.window_len,
            "exclude_first": ws.calibration.exclude_first,
            "n_max": ws.calibration.n_max,
            "seed": ws.calibration.seed,
        },
        "metrics": {},
        "action": {},
    }


def pruning_recipe(
    ws: Workspace, removed: list[int], evaluation: dict | None = None, metrics: dict | None = None
) -> dict:
    return variant_recipe(ws, {"remove_blocks": sorted(removed)}, evaluation, metrics)


def variant_recipe(
    ws: Workspace, action: dict, evaluation: dict | None = None, metrics: dict | None = None, model=None
) -> dict:
    """The recipe of a variant; with the changed ``model`` it also records what its actions resolved to (the
    ``compression`` and ``parameters`` sections)."""
    r = base_recipe(ws)
    r["action"] = dict(action)
    if action.get("remove_blocks"):
        r["removed_blocks"] = sorted(action["remove_blocks"])
    r["metrics"] = metrics or {}
    if model is not None:
        from analysis.changes.low_rank import recipe_sections

        r.update(recipe_sections(model, ws.lm.model, candidate_name(action)))
    if evaluation is not None:
        r["evaluation"] = evaluation
    return r


def spec_of(recipe: dict, trust_remote_code: bool = False):
    """The model spec a recipe names. ``trust_remote_code`` is the user's own choice (the ``--trust-remote-code``
    flag, the sidebar's tick), never the recipe's: a recipe is a file that may come from someone else, and its
    ``"trust_remote_code": true`` is recorded for information only (see :func:`asks_for_remote_code`)."""
    from analysis.model.loading import ModelSpec

    m = recipe["model"]
    return ModelSpec(
        source=m["source"],
        device=m.get("device", "auto"),
        dtype=m.get("dtype", "float32"),
        device_map_auto=bool(m.get("device_map_auto", False)),
        trust_remote_code=bool(trust_remote_code),
    )


def asks_for_remote_code(recipe: dict) -> bool:
    """Whether the recipe was written with ``trust_remote_code`` on (it is never honoured from the file)."""
    return bool((recipe.get("model") or {}).get("trust_remote_code"))


def _bundled_name(ref) -> str | None:
    """The bundled text a recipe's text entry names (a name, or ``{name, source: bundled}``), or None."""
    if isinstance(ref, str):
        return ref if ref in BUNDLED else None
    if (
        isinstance(ref, dict)
        and ref.get("source", "bundled") == "bundled"
        and not ref.get("path")
        and ref.get("name") in BUNDLED
    ):
        return ref["name"]
    return None


def _label(ref) -> str:
    return str(ref.get("name") if isinstance(ref, dict) else ref)


def text_of(recipe: dict, text_path: str | None = None):
    """The calibration text: a bundled text the recipe names, or the user's own file ``text_path`` (``--text``).

    A recipe names bundled texts only: a file path in a recipe (which may come from someone else) is never read,
    so ``run`` never copies a file the recipe names into its results."""
    ref = (recipe.get("calibration") or {}).get("text", "alice")
    if text_path:
        path = Path(text_path).expanduser()
        if not path.is_file():
            raise RecipeError(f"--text {text_path}: no such file")
        text = text_from_bytes(path.read_bytes(), name=path.name)
    else:
        name = _bundled_name(ref)
        if name is None:
            raise RecipeError(
                f"the recipe's calibration text {_label(ref)!r} is not a bundled text "
                f"({', '.join(BUNDLED)}); a recipe names bundled texts only: give its file yourself "
                "with --text PATH"
            )
        text = bundled_text(name)
    sha = ref.get("sha256") if isinstance(ref, dict) else None
    if sha and sha != text.sha256:
        print(
            f"warning: the calibration text's sha256 differs from the recipe's ({text.sha256[:12]} vs "
            f"{sha[:12]}); results will differ",
            file=sys.stderr,
        )
    return text


def eval_text_of(recipe: dict):
    """The held-out text of the recipe's evaluation settings: bundled texts only (a path in a recipe is refused)."""
    ref = ((recipe.get("evaluation") or {}).get("settings") or {}).get("text", DEFAULT_EVALUATION_TEXT)
    if _bundled_name(ref) is None:
        raise RecipeError(
            f"the recipe's held-out text {_label(ref)!r} is not a bundled text ({', '.join(BUNDLED)}); "
            "a recipe names bundled texts only"
        )
    return bundled_text(_bundled_name(ref))


def check_texts(recipe: dict, text_path: str | None = None) -> None:
    """Refuse, before anything is loaded, a recipe that names a text other than a bundled one: the calibration
    text (unless the user gives it with ``--text``), the held-out text, and the healing text of a heal action."""
    cal = (recipe.get("calibration") or {}).get("text", "alice")
    if not text_path and _bundled_name(cal) is None:
        text_of(recipe)  # raises, naming the text
    if recipe.get("action"):
        eval_text_of(recipe)
    heal = (recipe.get("action") or {}).get("heal")
    if isinstance(heal, dict) and "text" in heal and _bundled_name(heal["text"]) is None:
        raise RecipeError(
            f"the heal action's text {_label(heal['text'])!r} is not a bundled text "
            f"({', '.join(BUNDLED)}); a recipe names bundled texts only: heal with the heal command "
            "and --text PATH instead"
        )


def calibration_of(recipe: dict):
    c = recipe.get("calibration") or {}
    return Calibration(
        n_windows=int(c.get("windows", 32)),
        window_len=int(c.get("window_len", 128)),
        exclude_first=int(c.get("exclude_first", 0)),
        n_max=c.get("n_max"),
        seed=int(c.get("seed", 0)),
        storage=c.get("storage", "float32"),
    )
