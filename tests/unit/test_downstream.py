"""Downstream task discovery and reporting, without a model: what is listed, what runs, and what never gets a number."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analysis.evaluation import downstream as ds

TASK_DIR = Path(ds.__file__).resolve().parent / "tasks" / "layerscope_cloze"
NUMBERS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n")


@pytest.fixture
def empty_hf_caches(tmp_path, monkeypatch):
    """Point the hub and datasets caches at empty folders, so no real local copy can be found."""
    import datasets.config
    import huggingface_hub.constants

    hub, prepared = tmp_path / "hub", tmp_path / "datasets"
    hub.mkdir()
    prepared.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(prepared))
    monkeypatch.delenv(ds.ENV_TASK_DIRS, raising=False)
    return hub, prepared


def _prepared(root: Path, folder: str, config: str) -> None:
    """The layout ``datasets`` leaves after loading a hub dataset once (what it reloads offline)."""
    d = root / folder / config / "0.0.0" / "0123abcd"
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text(json.dumps({"config_name": config}))


def _local_task(
    folder: Path,
    name: str,
    data: str | None = "items.jsonl",
    output_type: str = "multiple_choice",
    write_data: bool = True,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"task: {name}",
        "dataset_path: json",
        f"output_type: {output_type}",
        "test_split: test",
        'doc_to_text: "{{q}}"',
        "doc_to_target: label",
        "doc_to_choice: choices",
    ]
    if data:
        lines += ["dataset_kwargs:", "  data_files:", f"    test: {data}"]
        if write_data:
            (folder / data).write_text(
                json.dumps({"q": "Two and two make", "choices": ["four", "five"], "label": 0}) + "\n"
            )
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------ the repository task


def test_repository_task_is_listed_and_available(empty_hf_caches):
    tasks = {t.name: t for t in ds.available_tasks()}
    cloze = tasks["layerscope_cloze"]
    assert cloze.source == "repository" and cloze.available, cloze.reason
    assert cloze.output_type == "multiple_choice" and cloze.chance == 0.25
    assert Path(cloze.data_files[0]) == TASK_DIR / "layerscope_cloze.jsonl"


def test_cloze_items_are_well_formed():
    items = [json.loads(line) for line in (TASK_DIR / "layerscope_cloze.jsonl").read_text().splitlines()]
    assert len(items) == 75
    assert len({it["id"] for it in items}) == 75
    assert {it["book"] for it in items} == {"alice", "asyoulik", "plrabn12"}
    assert [it["book"] for it in items[:3]] == ["alice", "asyoulik", "plrabn12"]  # books take turns: limit is fair
    for it in items:
        assert len(it["choices"]) == 4 and len({c.lower() for c in it["choices"]}) == 4
        assert 0 <= it["label"] < 4 and it["context"].strip()
    # the right answer is not always in the same place
    assert len({it["label"] for it in items}) == 4


def test_cloze_file_is_what_the_builder_writes():
    from analysis.evaluation.tasks.layerscope_cloze import build
    from analysis.texts import BUNDLED, texts_dir

    if not all((texts_dir() / f).is_file() for f, _, _ in BUNDLED.values()):
        pytest.skip("bundled texts not installed (make setup installs them)")
    assert build.to_jsonl(build.build()) == (TASK_DIR / "layerscope_cloze.jsonl").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- standard tasks


def test_standard_tasks_are_listed_as_not_available(empty_hf_caches):
    tasks = {t.name: t for t in ds.available_tasks()}
    for name in ("mmlu", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "piqa"):
        assert tasks[name].source == "standard"
        assert tasks[name].available is False
        assert tasks[name].reason.startswith(ds.NOT_LOCAL)
    assert [t.name for t in ds.available_tasks(only_available=True)] == ["layerscope_cloze"]


def test_standard_task_with_a_prepared_local_copy_is_available(empty_hf_caches):
    hub, prepared = empty_hf_caches
    _prepared(prepared, "allenai___ai2_arc", "ARC-Easy")
    tasks = {t.name: t for t in ds.available_tasks()}
    assert tasks["arc_easy"].available, tasks["arc_easy"].reason
    assert not tasks["arc_challenge"].available  # another config of the same dataset is not there


def test_raw_hub_files_alone_are_not_enough(empty_hf_caches):
    hub, _ = empty_hf_caches
    snap = hub / "datasets--Rowan--hellaswag" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("x")
    info = {t.name: t for t in ds.available_tasks()}["hellaswag"]
    assert not info.available and "prepared copy" in info.reason


def test_standard_task_table_matches_lm_eval_configs():
    pytest.importorskip("lm_eval")
    import lm_eval

    from analysis.evaluation.downstream import _load_yaml

    root = Path(lm_eval.__file__).parent / "tasks"
    files = {
        "hellaswag": "hellaswag/hellaswag.yaml",
        "winogrande": "winogrande/default.yaml",
        "arc_easy": "arc/arc_easy.yaml",
        "arc_challenge": "arc/arc_challenge.yaml",
        "piqa": "piqa/piqa.yaml",
        "mmlu": "mmlu/default/_default_template_yaml",
    }
    for name, rel in files.items():
        cfg = _load_yaml(root / rel)
        dataset_id, config, _ = ds.STANDARD_TASKS[name]
        assert cfg["dataset_path"] == dataset_id, name
        if name != "mmlu":  # mmlu's subtasks each name one subject
            assert cfg.get("dataset_name") == config, name


# ---------------------------------------------------------------------------------------- user task folders


def test_task_folder_discovery(tmp_path, empty_hf_caches, monkeypatch):
    good = _local_task(tmp_path / "tasks" / "good", "my_good")
    _local_task(tmp_path / "tasks" / "missing", "my_missing", write_data=False)
    _local_task(tmp_path / "tasks" / "gen", "my_gen", output_type="generate_until")
    hub = tmp_path / "tasks" / "hub"
    hub.mkdir()
    (hub / "my_hub.yaml").write_text("task: my_hub\ndataset_path: someone/some_data\noutput_type: multiple_choice\n")
    (hub / "group.yaml").write_text("group: my_group\ntask:\n  - my_good\n  - my_hub\n")
    monkeypatch.chdir(tmp_path)  # relative data_files are resolved against the YAML, not the working folder

    tasks = {t.name: t for t in ds.available_tasks([tmp_path / "tasks"])}
    assert tasks["my_good"].available and tasks["my_good"].source == "directory"
    assert Path(tasks["my_good"].data_files[0]) == good.parent / "items.jsonl"
    assert not tasks["my_missing"].available and tasks["my_missing"].reason.startswith(ds.NOT_LOCAL)
    assert not tasks["my_gen"].available and "multiple-choice" in tasks["my_gen"].reason
    assert not tasks["my_hub"].available and tasks["my_hub"].reason.startswith(ds.NOT_LOCAL)
    assert "my_group" not in tasks

    monkeypatch.setenv(ds.ENV_TASK_DIRS, str(tmp_path / "tasks"))
    assert "my_good" in {t.name for t in ds.available_tasks()}
    monkeypatch.delenv(ds.ENV_TASK_DIRS)
    assert "my_good" not in {t.name for t in ds.available_tasks()}


def test_task_config_handed_to_lm_eval_has_absolute_paths(tmp_path, empty_hf_caches, monkeypatch):
    _local_task(tmp_path / "t", "my_good")
    monkeypatch.chdir(tmp_path.parent)
    info = {t.name: t for t in ds.available_tasks([tmp_path / "t"])}["my_good"]
    cfg = ds._task_config(info)
    assert cfg["task"] == "my_good"
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "t" / "items.jsonl")
    assert cfg["dataset_kwargs"]["cache_dir"].startswith(str(ds.cache.cache_root()))


def test_unknown_and_duplicate_task_names_are_errors(empty_hf_caches):
    with pytest.raises(ds.DownstreamError, match="unknown task 'nope'"):
        ds.find_tasks("layerscope_cloze,nope")
    with pytest.raises(ds.DownstreamError, match="more than once"):
        ds.find_tasks(["layerscope_cloze", "layerscope_cloze"])
    with pytest.raises(ds.DownstreamError, match="no task"):
        ds.find_tasks("")


# ------------------------------------------------------------------------------ running: never a number unearned


class _NoModel:
    """Stands in for a model that must never be touched."""

    def parameters(self):
        return iter(())


def _fake_results(name: str, acc: float, n: int) -> dict:
    """The shape of what lm_eval.simple_evaluate returns for one multiple-choice task."""
    return {
        "results": {
            name: {
                "alias": name,
                "acc,none": acc,
                "acc_stderr,none": 0.05,
                "acc_norm,none": acc + 0.1,
                "acc_norm_stderr,none": 0.05,
            }
        },
        "n-samples": {name: {"original": 75, "effective": n}},
        "group_subtasks": {name: []},
    }


def test_unavailable_task_never_runs_and_has_no_numbers(empty_hf_caches, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("lm-eval must not be called for a task whose data is missing")

    monkeypatch.setattr(ds, "_simple_evaluate", boom)
    monkeypatch.setattr(ds, "_make_lm", boom)
    result = ds.run_tasks(_NoModel(), None, ["hellaswag", "mmlu"])
    for name in ("hellaswag", "mmlu"):
        row = result["tasks"][name]
        assert row["ran"] is False and row["reason"].startswith(ds.NOT_LOCAL)
        assert not any(k in row for k in NUMBERS)
    frame = ds.to_frame(result)
    assert frame["acc"].isna().all() and not frame["ran"].any()


def test_a_task_that_fails_inside_lm_eval_reports_the_failure(empty_hf_caches, monkeypatch):
    def offline_failure(lm, info, limit, num_fewshot):
        raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(ds, "_make_lm", lambda *a, **k: type("LM", (), {})())
    monkeypatch.setattr(ds, "_simple_evaluate", offline_failure)
    row = ds.run_tasks(_NoModel(), None, "layerscope_cloze")["tasks"]["layerscope_cloze"]
    assert row["ran"] is False and "offline" in row["reason"]
    assert not any(k in row for k in NUMBERS)


def test_results_are_read_and_cached(empty_hf_caches, monkeypatch):
    calls = []

    def fake(lm, info, limit, num_fewshot):
        calls.append(info.name)
        return _fake_results(info.name, 0.6, limit or 75)

    monkeypatch.setattr(ds, "_make_lm", lambda *a, **k: type("LM", (), {})())
    monkeypatch.setattr(ds, "_simple_evaluate", fake)
    first = ds.run_tasks(_NoModel(), None, "layerscope_cloze", limit=10, model_key="fp-1")
    row = first["tasks"]["layerscope_cloze"]
    assert row["ran"] and row["acc"] == 0.6 and row["acc_norm"] == pytest.approx(0.7) and row["n"] == 10
    assert row["chance"] == 0.25 and row["cached"] is False
    again = ds.run_tasks(_NoModel(), None, "layerscope_cloze", limit=10, model_key="fp-1")
    assert again["tasks"]["layerscope_cloze"]["cached"] is True and calls == ["layerscope_cloze"]
    ds.run_tasks(_NoModel(), None, "layerscope_cloze", limit=11, model_key="fp-1")  # another setting: recomputed
    ds.run_tasks(_NoModel(), None, "layerscope_cloze", limit=10)  # no model key: never cached
    assert len(calls) == 3


def test_compare_and_frame(empty_hf_caches, monkeypatch):
    accs = iter([0.6, 0.3])
    monkeypatch.setattr(ds, "_make_lm", lambda *a, **k: type("LM", (), {})())
    monkeypatch.setattr(ds, "_simple_evaluate", lambda lm, info, limit, nf: _fake_results(info.name, next(accs), 75))
    out = ds.evaluate_downstream(
        _NoModel(), None, ["layerscope_cloze", "piqa"], candidate=_NoModel(), candidate_name="pruned"
    )
    rec = out["recovery"]
    assert rec["layerscope_cloze"]["recovery"] == pytest.approx(0.5)
    assert rec["layerscope_cloze"]["recovery_acc_norm"] == pytest.approx(0.4 / 0.7)
    assert rec["piqa"]["ran"] is False and rec["piqa"]["recovery"] is None
    frame = ds.to_frame(out)
    assert list(frame["model"]) == ["original", "original", "pruned", "pruned"]
    cloze = frame[frame.task == "layerscope_cloze"].set_index("model")
    assert cloze.loc["original", "recovery"] == 1.0 and cloze.loc["pruned", "recovery"] == pytest.approx(0.5)
    assert frame[frame.task == "piqa"]["acc"].isna().all()


def test_hub_offline_is_restored(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    before = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    with ds.hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "0"
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


# ----------------------------------------------------------------------------------------------- command line


def test_cli_list_and_user_errors(empty_hf_caches, capsys):
    from analysis.cli.main import main

    assert main(["downstream", "--list"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert listed["layerscope_cloze"]["available"] and not listed["winogrande"]["available"]

    assert main(["downstream", "--tasks", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown task 'nope'") and len(err.splitlines()) == 1

    assert main(["downstream", "--tasks", "layerscope_cloze,winogrande"]) == 2  # refused before loading a model
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: winogrande: data not available locally") and len(err.splitlines()) == 1

    with pytest.raises(SystemExit) as exit_:  # checked at parse time: argparse's one line, status 2
        main(["downstream", "--tasks", "layerscope_cloze", "--limit", "0"])
    assert exit_.value.code == 2
    assert "limit" in capsys.readouterr().err
