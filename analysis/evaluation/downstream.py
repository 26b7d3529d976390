"""Downstream multiple-choice evaluation through ``lm-eval`` on the in-memory model (METHODS.md §7).

Which tasks can run is decided by what is on disk, never by what could be downloaded:

* **repository** tasks: every ``analysis/evaluation/tasks/<name>/<name>.yaml`` (lm-eval's task format) with its data beside
  it — ``layerscope_cloze`` ships with the code, so downstream evaluation always has one task that runs;
* **directory** tasks: lm-eval task YAMLs in the folders named by ``task_dirs=`` or ``$LAYERSCOPE_TASKS``
  (``os.pathsep``-separated). A task is available when the files its ``data_files`` name exist (relative to
  the YAML, or absolute), when its ``dataset_path`` is a local folder, or when its hub dataset is in the local
  Hugging Face cache;
* **standard** tasks the pruning papers report (MMLU, HellaSwag, WinoGrande, ARC-Easy/Challenge, PIQA): lm-eval's
  own configs, available only when their dataset is already in the local Hugging Face cache. Otherwise they are
  listed as "data not available locally" and never run.

A task YAML may name Python helpers of its folder (lm-eval's ``!function`` tag: ``process_docs: !function
utils.process_docs``). Those run only when the user turns it on (``allow_code=True``: ``downstream
--allow-task-code``, the tick on the Variants page); otherwise such a directory task is listed as not runnable,
with the helpers it names, and nothing of its folder is imported. The repository's own tasks and lm-eval's
standard tasks run no code from a user's folder.

Everything runs with the Hugging Face hub switched to offline mode (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``,
set for the duration of the call and restored afterwards): nothing is downloaded, and a dataset that is not
local fails to load instead. A task that did not run is reported with ``ran: False`` and the reason, and never
with a number.

:func:`run_tasks` wraps the model *object* in lm-eval's ``HFLM`` (so pruned or truncated variants are evaluated
without being saved) and calls ``lm_eval.simple_evaluate`` once per task; :func:`evaluate_downstream` does the
original and a changed model and adds ``recovery = changed acc / original acc``. Results of local-data tasks are
cached on disk keyed by (model key, task config and data hash, limit, few-shot, lm-eval version) when the caller
gives a model key (the fingerprint).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from analysis import cache
from analysis.errors import InputError

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
REPO_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
ENV_TASK_DIRS = "LAYERSCOPE_TASKS"
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}  # datasets' packaged builders that read data_files

# The standard tasks the papers report, with the hub dataset each lm-eval 0.4.13 config reads
# (tests/unit/test_downstream.py checks these against lm-eval's own YAML files).
STANDARD_TASKS: dict[str, tuple[str, str | None, str]] = {
    "mmlu": ("cais/mmlu", None, "MMLU: 57 subjects, 4 choices (a group of 57 tasks)"),
    "hellaswag": ("Rowan/hellaswag", None, "HellaSwag: sentence endings, 4 choices"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "WinoGrande: pronoun resolution, 2 choices"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "ARC-Easy: grade-school science, 4 choices"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge: grade-school science, 4 choices"),
    "piqa": ("baber/piqa", None, "PIQA: physical common sense, 2 choices"),
}
NOT_LOCAL = "data not available locally"


@dataclass
class TaskInfo:
    """A task LayerScope knows about, and whether its data is on this machine."""

    name: str
    source: str  # repository | directory | standard
    available: bool
    reason: str  # why it is, or is not, available
    description: str = ""
    yaml_path: str | None = None
    dataset: str = ""  # the files it reads, or the hub dataset id
    data_files: list[str] = field(default_factory=list)  # local files (absolute), for hashing
    output_type: str = "multiple_choice"
    chance: float | None = None  # accuracy of guessing, where the task config states it
    code: list[str] = field(default_factory=list)  # Python helpers the YAML names (``!function``), file:function

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("data_files")
        return d


class DownstreamError(InputError):
    """A downstream evaluation cannot run as asked (unknown task, data missing, lm-eval not installed)."""


# --------------------------------------------------------------------------------------------------- discovery


def task_dirs_from_env() -> list[Path]:
    raw = os.environ.get(ENV_TASK_DIRS, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _hf_hub_cache() -> Path:
    try:
        import huggingface_hub.constants as hub_constants

        return Path(hub_constants.HF_HUB_CACHE).expanduser()
    except ImportError:
        home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
        return Path(os.environ.get("HF_HUB_CACHE") or Path(home) / "hub").expanduser()


def _hf_datasets_cache() -> Path:
    """Where ``datasets`` keeps prepared datasets (its own setting, so that what is found here is what loads)."""
    try:
        import datasets.config as ds_config

        return Path(ds_config.HF_DATASETS_CACHE).expanduser()
    except ImportError:
        home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
        return Path(os.environ.get("HF_DATASETS_CACHE") or Path(home) / "datasets").expanduser()


def _snake(name: str) -> str:
    """``datasets``' camelcase_to_snakecase, which names the prepared-cache folder of a hub dataset."""
    import re

    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def hub_dataset_status(dataset_id: str, config: str | None = None) -> tuple[bool, str]:
    """Whether ``datasets`` can load the hub dataset ``dataset_id`` (config ``config``) offline, and why.

    Offline, ``datasets`` loads a hub dataset only from its *prepared* copy (``<org>___<name>/<config>/<version>/
    <hash>/dataset_info.json`` in the datasets cache, written the first time it was loaded with the hub
    reachable). Raw files in the hub cache alone are not enough; that case is reported as such.
    """
    if "/" in dataset_id:
        org, name = dataset_id.split("/", 1)
        prepared_root = _hf_datasets_cache() / f"{org}___{_snake(name)}"
    else:
        prepared_root = _hf_datasets_cache() / _snake(dataset_id)
    infos = list(prepared_root.glob(f"{glob.escape(config) if config else '*'}/*/*/dataset_info.json"))
    if infos:
        return True, f"prepared copy in the local datasets cache ({infos[0].parent.parent.parent})"
    raw = _hf_hub_cache() / f"datasets--{dataset_id.replace('/', '--')}"
    if raw.is_dir():
        return False, (
            f"{NOT_LOCAL}: raw files of {dataset_id} are in the hub cache ({raw}) but no prepared copy"
            f"{f' of config {config!r}' if config else ''} is in the datasets cache, and datasets "
            "loads hub datasets offline only from a prepared copy (load it once where the hub is "
            "reachable)"
        )
    return False, (
        f"{NOT_LOCAL}: {dataset_id}{f' ({config})' if config else ''} is not in the local datasets "
        "cache (the hub is not reachable from here, and nothing is downloaded)"
    )


def _load_yaml(path: Path, resolve_func: bool = False) -> dict:
    """An lm-eval task YAML with its includes merged (``!function`` tags kept as paths unless resolved)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # lm-eval missing: a plain reader is enough to list tasks
        import yaml

        class _Loader(yaml.SafeLoader):
            pass

        _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
        if isinstance(cfg, dict) and "include" in cfg:
            includes = cfg.pop("include")
            merged: dict = {}
            for inc in includes if isinstance(includes, list) else [includes]:
                merged.update(_load_yaml(path.parent / inc))
            merged.update(cfg)
            cfg = merged
        if not isinstance(cfg, dict):
            raise InputError(f"{path} is not a YAML mapping")
        return cfg
    return load_yaml(path, resolve_func=resolve_func, recursive=True)


def task_code(path: Path, _seen: set | None = None) -> list[str]:
    """The Python helpers a task YAML (with its includes) names with ``!function``, as ``file.py:function``;
    read without importing anything."""
    import yaml

    seen = _seen if _seen is not None else set()
    path = Path(path).resolve()
    if path in seen:
        return []
    seen.add(path)
    found: list[str] = []

    class _Loader(yaml.SafeLoader):
        pass

    def _function(loader, node):
        spec = str(loader.construct_scalar(node))
        module, _, func = spec.rpartition(".")
        found.append(f"{path.parent / (module.replace('.', '/') + '.py')}:{func}")
        return spec

    _Loader.add_constructor("!function", _function)
    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # any other tag: not code we would run
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
    except (OSError, yaml.YAMLError):
        return found
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        if isinstance(inc, str):
            inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
            found += task_code(inc_path, seen)
    return found


CODE_REFUSED = "runs Python helpers from its folder"


def _data_file_list(data_files) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, (list, tuple)):
        return [str(f) for f in data_files]
    if isinstance(data_files, dict):
        out = []
        for v in data_files.values():
            out += _data_file_list(v)
        return out
    return []


def _resolve_data_files(data_files, base: Path):
    """``data_files`` with each relative path made absolute against ``base`` when the file is there."""

    def one(f: str) -> str:
        p = Path(f).expanduser()
        if p.is_absolute():
            return str(p)
        return str((base / p).resolve()) if (base / p).exists() or not p.exists() else str(p.resolve())

    if isinstance(data_files, str):
        return one(data_files)
    if isinstance(data_files, (list, tuple)):
        return [one(str(f)) for f in data_files]
    if isinstance(data_files, dict):
        return {k: _resolve_data_files(v, base) for k, v in data_files.items()}
    return data_files


def _info_from_yaml(path: Path, source: str, allow_code: bool = False) -> TaskInfo | None:
    """A :class:`TaskInfo` for one task YAML (``None`` for group or tag files and for non-task YAML).

    A directory task whose YAML names Python helpers (``!function``) is not runnable unless ``allow_code``."""
    info = _info_from_yaml_data(path, source)
    if info is not None and source == "directory":
        info.code = task_code(path)
        if info.code and not allow_code and info.available:
            info.available = False
            info.reason = (
                f"{CODE_REFUSED} ({', '.join(info.code[:3])}{' …' if len(info.code) > 3 else ''}); "
                "it runs only when you allow task code (downstream --allow-task-code, or the tick on "
                "the Variants page)"
            )
    return info


def _info_from_yaml_data(path: Path, source: str) -> TaskInfo | None:
    try:
        cfg = _load_yaml(path)
    except Exception as exc:  # a broken YAML is listed, not fatal
        return TaskInfo(
            name=path.stem,
            source=source,
            available=False,
            yaml_path=str(path),
            reason=f"cannot read {path.name}: {str(exc).splitlines()[0] if str(exc) else exc}",
        )
    name = cfg.get("task")
    if not isinstance(name, str):  # a group (task: [list]) or not a task config
        return None
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    output_type = cfg.get("output_type", "generate_until")
    info = TaskInfo(
        name=name,
        source=source,
        available=False,
        reason="",
        yaml_path=str(path),
        description=str(meta.get("description", "")),
        output_type=output_type,
        chance=meta.get("chance") if isinstance(meta.get("chance"), (int, float)) else None,
    )
    if output_type != "multiple_choice":
        info.reason = f"output_type {output_type!r}: LayerScope runs multiple-choice tasks only"
        return info
    if cfg.get("custom_dataset"):
        info.reason = "the config builds its dataset with custom code (custom_dataset); not run"
        return info
    dpath = cfg.get("dataset_path")
    kwargs = cfg.get("dataset_kwargs") or {}
    if not isinstance(dpath, str) or not dpath:
        info.reason = "the config names no dataset_path"
        return info
    if dpath in LOCAL_BUILDERS or kwargs.get("data_files"):
        files = _data_file_list(_resolve_data_files(kwargs.get("data_files"), path.parent))
        if not files:
            info.reason = f"dataset_path {dpath!r} needs data_files, and the config names none"
            return info
        missing = [f for f in files if not glob.glob(f)]  # data_files may be glob patterns
        info.dataset = ", ".join(Path(f).name for f in files)
        info.data_files = files
        if missing:
            info.reason = f"{NOT_LOCAL}: missing {', '.join(missing)}"
        else:
            info.available, info.reason = True, "data files present"
        return info
    local_dir = Path(dpath).expanduser()
    if not local_dir.is_absolute():
        local_dir = path.parent / local_dir
    if local_dir.is_dir():
        info.dataset = str(local_dir)
        info.data_files = sorted(str(p) for p in local_dir.rglob("*") if p.is_file())
        info.available, info.reason = True, f"local dataset folder {local_dir}"
        return info
    config = cfg.get("dataset_name") if isinstance(cfg.get("dataset_name"), str) else None
    info.dataset = dpath + (f" ({config})" if config else "")
    info.available, info.reason = hub_dataset_status(dpath, config)
    return info


def _scan(folder: Path, source: str, allow_code: bool = False) -> list[TaskInfo]:
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        if any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts):
            continue
        info = _info_from_yaml(path, source, allow_code)
        if info is not None:
            out.append(info)
    return out


def standard_task_info(name: str) -> TaskInfo:
    dataset_id, config, description = STANDARD_TASKS[name]
    available, reason = hub_dataset_status(dataset_id, config)
    return TaskInfo(
        name=name,
        source="standard",
        available=available,
        reason=reason,
        description=description,
        dataset=dataset_id + (f" ({config})" if config else ""),
    )


def available_tasks(
    task_dirs: Sequence[str | Path] | None = None,
    include_standard: bool = True,
    only_available: bool = False,
    allow_code: bool = False,
) -> list[TaskInfo]:
    """Every task LayerScope knows, each with ``available`` and the reason.

    ``task_dirs`` adds folders of lm-eval task YAMLs (default: ``$LAYERSCOPE_TASKS``). The repository's own
    tasks come first, then the directories' (a later task of the same name is skipped), then the standard tasks.
    ``only_available=True`` keeps only tasks whose data is present; a directory task whose YAML names Python
    helpers is runnable only with ``allow_code=True``.
    """
    dirs = [Path(d).expanduser() for d in task_dirs] if task_dirs is not None else task_dirs_from_env()
    found: dict[str, TaskInfo] = {}
    for info in _scan(REPO_TASKS_DIR, "repository"):
        found.setdefault(info.name, info)
    for d in dirs:
        if not d.is_dir():
            log.warning("task folder %s does not exist", d)
            continue
        for info in _scan(d.resolve(), "directory", allow_code):
            found.setdefault(info.name, info)
    if include_standard:
        for name in STANDARD_TASKS:
            found.setdefault(name, standard_task_info(name))
    out = list(found.values())
    return [t for t in out if t.available] if only_available else out


def find_tasks(
    names: str | Iterable[str], task_dirs: Sequence[str | Path] | None = None, allow_code: bool = False
) -> list[TaskInfo]:
    """The tasks ``names`` names (a list or a comma-separated string); an unknown name is a :class:`DownstreamError`."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in names if n]
    if not names:
        raise DownstreamError("no task named; list them with `python -m analysis downstream --list`")
    known = {t.name: t for t in available_tasks(task_dirs, allow_code=allow_code)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DownstreamError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known tasks: {', '.join(sorted(known))}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DownstreamError(f"task {', '.join(dup)} named more than once")
    return [known[n] for n in names]


# ------------------------------------------------------------------------------------------------------ running


@contextlib.contextmanager
def hub_offline():
    """The Hugging Face hub and ``datasets`` in offline mode for the duration (restored afterwards)."""
    env_keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    patched: list[tuple[object, str, object]] = []
    for k in env_keys:
        os.environ[k] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        patched.append((hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE))
        hub_constants.HF_HUB_OFFLINE = True
        try:
            import datasets.config as ds_config

            for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
                if hasattr(ds_config, attr):
                    patched.append((ds_config, attr, getattr(ds_config, attr)))
                    setattr(ds_config, attr, True)
        except ImportError:
            pass
        yield
    finally:
        for obj, attr, value in reversed(patched):
            setattr(obj, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs a great deal at INFO and warns about in-memory models; keep that out unless asked for."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets")]
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    saved = [(lg, lg.level) for lg in loggers]
    bars_were_on = None
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:  # datasets' "Generating test split" bars
            import datasets

            bars_were_on = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()
        except (ImportError, AttributeError):
            pass
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
        if bars_were_on:
            import datasets

            datasets.enable_progress_bars()


@contextlib.contextmanager
def _keep_rng_state():
    """lm-eval seeds Python's, NumPy's and torch's global generators; put them back as they were."""
    import numpy as np
    import torch

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def lm_eval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:
        return None


def _make_lm(model, tokenizer, batch_size: int, max_length: int | None):
    """lm-eval's ``HFLM`` around the model object; it reports scoring progress to its ``progress`` attribute."""
    from lm_eval.models.huggingface import HFLM

    class _ProgressHFLM(HFLM):
        progress: Progress | None = None

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self._total, self._done = len(requests), 0
            if self.progress:
                self.progress(0, self._total, f"0/{self._total} choices scored")
            out = super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.progress is not None)
            if self.progress and self._done < self._total:  # requests sharing a forward pass were counted once
                self._done = self._total
                self.progress(self._total, self._total, f"{self._total}/{self._total} choices scored")
            return out

        def _model_call(self, inps, *args, **kwargs):
            out = super()._model_call(inps, *args, **kwargs)
            if self.progress and getattr(self, "_total", 0):
                self._done = min(self._total, self._done + int(inps.shape[0]))
                self.progress(self._done, self._total, f"{self._done}/{self._total} choices scored")
            return out

    # lm-eval may set a pad token on the tokenizer it is given: give it a copy so the caller's stays as it was
    return _ProgressHFLM(
        pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size, max_length=max_length
    )


def _task_config(info: TaskInfo) -> dict | str:
    """What to hand to lm-eval: the config dict with data paths made absolute (local tasks) or the name."""
    if info.source == "standard":
        return info.name
    path = Path(info.yaml_path)
    cfg = _load_yaml(path, resolve_func=True)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if kwargs.get("data_files") is not None:
        kwargs["data_files"] = _resolve_data_files(kwargs["data_files"], path.parent)
        # local files: keep the prepared Arrow copy in LayerScope's own (deletable) cache
        kwargs.setdefault("cache_dir", str(cache.cache_root() / "hf_datasets"))
    local_dir = Path(str(cfg.get("dataset_path", ""))).expanduser()
    if cfg.get("dataset_path") and not local_dir.is_absolute() and (path.parent / local_dir).is_dir():
        cfg["dataset_path"] = str((path.parent / local_dir).resolve())
    cfg["dataset_kwargs"] = kwargs
    return cfg


def _data_hash(info: TaskInfo) -> str | None:
    """A hash of the task's folder (its YAMLs and Python helpers) and data files; ``None`` unless the data is local."""
    if info.source == "standard" or not info.data_files:
        return None
    h = hashlib.sha256(Path(info.yaml_path).read_bytes())
    folder = Path(info.yaml_path).parent
    for f in sorted([*folder.glob("*.yaml"), *folder.glob("*_yaml"), *folder.glob("*.py")]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for pattern in sorted(info.data_files):
        files = sorted(glob.glob(pattern)) if not Path(pattern).is_file() else [pattern]
        if not files:
            return None
        for f in files:
            h.update(f.encode())
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def _metrics(results: dict, name: str) -> dict:
    """acc/acc_norm and their standard errors of task (or group) ``name`` from lm-eval's results."""
    row = (results.get("results") or {}).get(name) or (results.get("groups") or {}).get(name)
    if not row:
        raise DownstreamError(f"lm-eval returned no result for {name}")
    out: dict = {}
    for key, value in row.items():
        if "," not in key:
            continue
        metric, _filter = key.split(",", 1)
        if metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            out[metric] = float(value) if isinstance(value, (int, float)) else None
    n_samples = results.get("n-samples") or {}
    if name in n_samples:
        n = int(n_samples[name].get("effective", 0))
    else:  # a group: the sum over its leaf tasks
        leaves = _leaves(results.get("group_subtasks") or {}, name)
        n = sum(int(n_samples[t].get("effective", 0)) for t in leaves if t in n_samples)
    out["n"] = n
    if "acc" not in out:
        raise DownstreamError(f"lm-eval's result for {name} has no accuracy (metrics: {', '.join(row)})")
    return out


def _leaves(group_subtasks: dict, name: str) -> list[str]:
    children = group_subtasks.get(name)
    if not children:
        return [name]
    out = []
    for c in children:
        out += _leaves(group_subtasks, c)
    return out


def _not_run(info: TaskInfo | None, name: str, reason: str) -> dict:
    return {"task": name, "ran": False, "reason": reason, "source": info.source if info else None}


def run_tasks(
    model,
    tokenizer,
    tasks: str | Iterable[str],
    limit: int | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
    task_dirs: Sequence[str | Path] | None = None,
    num_fewshot: int | None = None,
    model_key: str = "",
    label: str = "model",
    max_length: int | None = None,
    refresh: bool = False,
    allow_code: bool = False,
) -> dict:
    """Run the multiple-choice ``tasks`` through lm-eval on the in-memory ``model``.

    Returns ``{"tasks": {name: row}, "settings": {...}, "seconds": s}``. A row that ran has ``ran: True``,
    ``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr`` (where the task defines them), ``n`` (examples
    scored), ``chance`` (where stated), ``seconds`` and ``cached``; a row that did not run has ``ran: False`` and
    ``reason``, and no numbers. An unknown task name raises :class:`DownstreamError`. ``model_key`` (the model's
    fingerprint) turns on the on-disk cache for tasks whose data is local; ``progress(done, total, message)``
    is called as choices are scored.
    """
    infos = find_tasks(tasks, task_dirs, allow_code=allow_code)
    if limit is not None and limit < 1:
        raise DownstreamError(f"limit must be a positive number of examples (got {limit})")
    version = lm_eval_version()
    settings = {
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "lm_eval": version,
        "device": str(_model_device(model)),
        "chat_template": False,
    }
    t_all = time.perf_counter()
    rows: dict[str, dict] = {}
    if version is None:
        for info in infos:
            rows[info.name] = _not_run(info, info.name, "lm-eval is not installed (run `make setup`)")
        return {"tasks": rows, "settings": settings, "seconds": 0.0}
    lm = None
    for i, info in enumerate(infos):
        if not info.available:
            rows[info.name] = _not_run(info, info.name, info.reason)
            continue
        data_hash = _data_hash(info)
        entry = None
        if model_key and data_hash:
            entry = cache.entry(
                "downstream",
                {
                    "model": model_key,
                    "task": info.name,
                    "data": data_hash,
                    "limit": limit,
                    "num_fewshot": num_fewshot,
                    "lm_eval": version,
                },
            )
            if entry.exists() and not refresh:
                try:
                    _, data = cache.read_entry(entry)
                    rows[info.name] = {**data["row"], "cached": True}
                    continue
                except cache.CacheCorrupt as exc:
                    log.warning("corrupt downstream cache entry, recomputing: %s", exc)
                    cache.remove_entry(entry)
        t0 = time.perf_counter()
        try:
            if lm is None:
                with _quiet_lm_eval():
                    lm = _make_lm(model, tokenizer, batch_size, max_length)
            prefix = f"{label} · {info.name} ({i + 1}/{len(infos)})"
            lm.progress = (lambda d, t, m, _p=prefix: progress(d, t, f"{_p}: {m}")) if progress else None
            if info.source == "directory" and not allow_code and task_code(Path(info.yaml_path)):
                raise DownstreamError(f"{info.name} {CODE_REFUSED}; allow task code to run it")  # changed since
            results = _simple_evaluate(lm, info, limit, num_fewshot)
            metrics = _metrics(results, info.name)
        except DownstreamError as exc:
            rows[info.name] = _not_run(info, info.name, str(exc))
            continue
        except Exception as exc:  # the dataset failed to load offline, a config error ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("task %s did not run: %s", info.name, exc)
            offline = isinstance(exc, ConnectionError) or "OfflineModeIsEnabled" in str(exc)
            reason = (
                f"{NOT_LOCAL}: loading it offline failed ({first})"
                if offline
                else f"lm-eval failed: {type(exc).__name__}: {first}"
            )
            rows[info.name] = _not_run(info, info.name, reason)
            continue
        row = {
            "task": info.name,
            "ran": True,
            "reason": "",
            "source": info.source,
            **metrics,
            "chance": info.chance,
            "seconds": round(time.perf_counter() - t0, 2),
            "cached": False,
        }
        rows[info.name] = row
        if entry is not None:
            cache.write_entry(entry, {}, {"row": row})
    return {"tasks": rows, "settings": settings, "seconds": round(time.perf_counter() - t_all, 2)}


def _model_device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"


def _simple_evaluate(lm, info: TaskInfo, limit, num_fewshot) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    with hub_offline(), _quiet_lm_eval(), _keep_rng_state():
        # the default index (14,000 configs, ~10 s) only when one of lm-eval's own tasks is asked for
        manager = TaskManager(include_defaults=info.source == "standard", metadata={})
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[_task_config(info)],
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            confirm_run_unsafe_code=False,  # acc's stderr has a closed form: no bootstrap
        )
    if not results:
        raise DownstreamError(f"lm-eval returned nothing for {info.name}")
    return results


# ---------------------------------------------------------------------------------------------------- comparing

METRICS = ("acc", "acc_norm")


def compare(original: dict, changed: dict) -> dict:
    """Per task: both accuracies and ``recovery`` = changed / original (``None`` where either did not run)."""
    out = {}
    for name, o in original["tasks"].items():
        c = changed["tasks"].get(name, {"ran": False, "reason": "not run for the changed model"})
        row: dict = {"ran": bool(o.get("ran") and c.get("ran"))}
        if not row["ran"]:
            row["reason"] = o.get("reason") or c.get("reason") or "did not run"
        for m in METRICS:
            ov, cv = o.get(m) if o.get("ran") else None, c.get(m) if c.get("ran") else None
            row[f"original_{m}"], row[f"changed_{m}"] = ov, cv
            row[f"recovery_{m}" if m != "acc" else "recovery"] = (cv / ov) if (ov and cv is not None) else None
        out[name] = row
    return out


def evaluate_downstream(
    original,
    tokenizer,
    tasks: str | Iterable[str],
    candidate=None,
    candidate_name: str = "changed",
    limit: int | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
    task_dirs: Sequence[str | Path] | None = None,
    num_fewshot: int | None = None,
    original_key: str = "",
    candidate_key: str = "",
    allow_code: bool = False,
) -> dict:
    """Run ``tasks`` on the original and (optionally) a changed model: one call in, one small dict out.

    Returns ``{"original": run_tasks(...), candidate_name: run_tasks(...), "recovery": compare(...),
    "candidate_name": ...}`` (without the candidate keys when ``candidate`` is None). Give the models'
    fingerprints as ``original_key``/``candidate_key`` to reuse results cached on disk.
    """
    kw = dict(
        limit=limit,
        batch_size=batch_size,
        progress=progress,
        task_dirs=task_dirs,
        num_fewshot=num_fewshot,
        allow_code=allow_code,
    )
    out: dict = {"original": run_tasks(original, tokenizer, tasks, model_key=original_key, label="original", **kw)}
    if candidate is not None:
        out[candidate_name] = run_tasks(
            candidate, tokenizer, tasks, model_key=candidate_key, label=candidate_name, **kw
        )
        out["recovery"] = compare(out["original"], out[candidate_name])
        out["candidate_name"] = candidate_name
    return out


def to_frame(result: dict):
    """A pandas table, one row per (task, model): ran, acc, acc_norm, their stderrs, n, chance, recovery, reason.

    Takes what :func:`run_tasks` or :func:`evaluate_downstream` returns.
    """
    import pandas as pd

    runs = (
        {"model": result}
        if "tasks" in result
        else {k: v for k, v in result.items() if isinstance(v, dict) and "tasks" in v}
    )
    recovery = result.get("recovery", {}) if "tasks" not in result else {}
    rows = []
    for model_name, run in runs.items():
        for name, r in run["tasks"].items():
            row = {"task": name, "model": model_name, "ran": r.get("ran", False)}
            for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "chance"):
                row[k] = r.get(k) if r.get("ran") else None
            rec = recovery.get(name, {})
            row["recovery"] = (
                (1.0 if model_name == "original" and r.get("ran") else rec.get("recovery")) if recovery else None
            )
            row["reason"] = r.get("reason", "")
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            "task",
            "model",
            "ran",
            "acc",
            "acc_stderr",
            "acc_norm",
            "acc_norm_stderr",
            "n",
            "chance",
            "recovery",
            "reason",
        ],
    )
