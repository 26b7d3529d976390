"""Nothing of the user's is lost, replaced or run (issue 21, part A): the marker rule of every writer, the one atomic
file and folder writer under faults (kills between renames, PID reuse, umask), explicit trust_remote_code, task
code, recipe texts, the report's marker, the kept leaderboard, and the memory of finished jobs. See docs/safety.md.
No model weights: tiny folders and fakes only."""

from __future__ import annotations

import ast
import gc
import json
import os
import stat
import threading
import weakref
from pathlib import Path

import pytest

from analysis import cache, destinations, jobs
from analysis.destinations import DestinationError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _export(folder: Path, files: dict[str, str], overwrite: bool = False) -> Path:
    with destinations.writing(destinations.check(folder, overwrite=overwrite), "export") as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return folder


# --- the marker rule -----------------------------------------------------------------------------------------------


def test_a_folder_with_a_foreign_recipe_or_model_json_naming_layerscope_is_refused(tmp_path):
    for name, body in (
        ("recipe.json", {"layerscope": 1, "model": {"source": "default"}}),
        ("model.json", {"layerscope_results": 1, "card": {}}),
    ):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_text(json.dumps(body))
        (folder / "thesis.tex").write_text("years of work")
        with pytest.raises(DestinationError, match=rf"not written by LayerScope.*{name}, thesis.tex"):
            destinations.check(folder, overwrite=True)
        assert (folder / "thesis.tex").read_text() == "years of work"
        assert not destinations.is_layerscope_folder(folder)


def test_a_marker_without_its_list_of_files_does_not_make_a_folder_layerscopes(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / destinations.MARKER).write_text(json.dumps({"layerscope": 1}))
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match="not written by LayerScope"):
        destinations.check(folder, overwrite=True)


def test_home_working_directory_and_their_parents_are_refused_with_what_they_hold(tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (home / "letters.txt").write_text("mine")
    (work / "draft.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    _fake_ours(home)  # even a folder that looks like LayerScope's is never replaced when it is home or holds it
    with pytest.raises(DestinationError, match=r"your home folder.*letters.txt"):
        destinations.check(home, overwrite=True)
    with pytest.raises(DestinationError, match=r"is the working directory.*draft.txt"):
        destinations.check(work, overwrite=True)
    with pytest.raises(DestinationError, match="contains your home folder"):
        destinations.check(tmp_path, overwrite=True)
    with pytest.raises(DestinationError, match="is the working directory"):
        destinations.check(".", overwrite=True)
    assert (home / "letters.txt").exists() and (work / "draft.txt").exists()


def _fake_ours(folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir()) + [destinations.MARKER]
    (folder / destinations.MARKER).write_text(json.dumps({"layerscope": 1, "files": names}))


def test_the_heal_pages_adapter_export_refuses_the_working_directory_and_home(tmp_path, monkeypatch):
    from torch import nn

    from analysis.changes import healing as hl

    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "draft.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    model = nn.Linear(2, 2)
    model.__dict__[hl.ADAPTER] = {"config": None, "state": {}}  # the check comes before anything is written
    for target in (".", str(work), "~", str(home)):
        with pytest.raises(DestinationError, match="never written or replaced"):
            hl.export_adapter(model, target, overwrite=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    with pytest.raises(DestinationError, match="not written by LayerScope"):
        hl.export_adapter(model, notes, overwrite=True)
    assert (work / "draft.txt").read_text() == "mine" and (notes / "a.txt").read_text() == "mine"


def test_a_layerscope_export_is_replaced_and_only_its_files_are_removed(tmp_path):
    out = _export(tmp_path / "out", {"config.json": "{}", "recipe.json": "{}", "old-only.bin": "x"})
    listed = json.loads((out / destinations.MARKER).read_text())["files"]
    assert sorted(listed) == sorted(["config.json", "recipe.json", "old-only.bin", destinations.MARKER])
    with pytest.raises(DestinationError, match="--overwrite to replace it"):
        destinations.check(out)
    _export(out, {"config.json": '{"new": 1}'}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", destinations.MARKER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no backup, no temporary left


def test_a_replacement_keeps_what_appeared_after_the_check(tmp_path):
    """What is not on the marker's list is never deleted, even if it appears in the folder during the write."""
    out = _export(tmp_path / "out", {"a.txt": "ours"})
    folder = out
    (folder / "late.txt").write_text("the user's, written meanwhile")
    destinations.remove_owned(folder)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out-kept-")]
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == ["late.txt"]


def test_stale_temporaries_beside_out_are_removed_by_the_check(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / ".tmp-out-999999999.12345-abcdef"  # a killed export: no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".tmp-out-{cache.owner_token()}-abcdef"  # a writer still running: kept
    live.mkdir()
    destinations.check(out)
    assert not dead.exists() and live.exists()


# --- the one atomic writer, under faults ----------------------------------------------------------------------------


class Killed(BaseException):
    """The process dies here (nothing after it runs: no except-OSError clean-up)."""


def _kill_after_first_rename(monkeypatch):
    real = os.rename
    calls = []

    def rename(src, dst, *a, **kw):
        calls.append((str(src), str(dst)))
        real(src, dst, *a, **kw)
        if len(calls) == 2:  # 1: the new folder onto the old one (ENOTEMPTY, refused); 2: the old one aside
            raise Killed()

    monkeypatch.setattr(cache.os, "rename", rename)
    return calls


def test_a_kill_between_the_two_renames_of_a_replacement_loses_neither_old_nor_new(tmp_path, monkeypatch):
    out = _export(tmp_path / "out", {"layers.csv": "old, complete"})
    calls = _kill_after_first_rename(monkeypatch)
    with pytest.raises(Killed):
        _export(out, {"layers.csv": "new, complete"}, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 2 and Path(calls[1][1]).name.startswith(".bak-out-")
    backup = Path(calls[1][1])
    assert (backup / "layers.csv").read_text() == "old, complete"  # the old one is complete, under a known name
    # on the next start (the killed process is gone) the backup is put back
    monkeypatch.setattr(cache, "_owner_alive", lambda token: False)
    destinations.check(out, overwrite=True)
    assert (out / "layers.csv").read_text() == "old, complete" and not backup.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".bak-"))]
    monkeypatch.undo()
    _export(out, {"layers.csv": "new, complete"}, overwrite=True)
    assert (out / "layers.csv").read_text() == "new, complete"


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = _export(tmp_path / "out", {"layers.csv": "old"})
    real, calls = os.rename, []

    def rename(src, dst, *a, **kw):
        calls.append(1)
        if len(calls) > 1 and Path(src).name.startswith(".tmp-"):  # the new folder in: fails (permissions …)
            raise PermissionError("no")
        real(src, dst, *a, **kw)

    monkeypatch.setattr(cache.os, "rename", rename)
    with pytest.raises(OSError):
        with cache.atomic_directory(out, overwrite=True) as tmp:
            (tmp / "layers.csv").write_text("new")
            calls.clear()
    monkeypatch.undo()
    assert (out / "layers.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_replacement_killed_at_the_rename_leaves_the_old_file_complete(tmp_path, monkeypatch):
    f = tmp_path / "recipe.json"
    cache.atomic_write_text(f, "old, complete")

    def replace(src, dst):
        raise Killed()

    monkeypatch.setattr(cache.os, "replace", replace)
    with pytest.raises(Killed):
        cache.atomic_write_text(f, "new")
    monkeypatch.undo()
    assert f.read_text() == "old, complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_a_leftover_is_recognised_by_process_id_and_start_time_not_id_alone(tmp_path):
    mine = tmp_path / f".tmp-x-{cache.owner_token()}-abc"
    mine.mkdir()
    pid = os.getpid()
    reused = tmp_path / f".tmp-x-{pid}.1-abc"  # our process id, but another process's start time: a reused id
    reused.mkdir()
    gone = tmp_path / ".tmp-x-999999999.5-abc"
    gone.mkdir()
    assert not cache.is_stale(mine) and cache.is_stale(reused) and cache.is_stale(gone)
    assert sorted(p.name for p in cache.clean_stale_siblings(tmp_path / "x")) == sorted([reused.name, gone.name])


def test_outputs_are_created_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = _export(tmp_path / "out", {"a.txt": "x"})
        cache.atomic_write_text(tmp_path / "f.json", "{}")
        with cache.atomic_directory(tmp_path / "entry") as tmp:
            (tmp / "meta.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / destinations.MARKER).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o755


def test_one_atomic_writer_for_files_and_one_for_folders():
    """No other module renames temporaries into place, or makes its own temporary files and folders."""
    offenders = []
    for path in sorted((ROOT / "analysis").rglob("*.py")) + sorted((ROOT / "components").rglob("*.py")):
        if path.name == "cache.py" and path.parent.name == "analysis":
            continue
        text = path.read_text()
        for needle in ("os.replace(", "os.rename(", "mkstemp(", "mkdtemp(", "def atomic_"):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    # destinations.remove_owned moves what LayerScope did not write out of a replaced folder, to keep it
    assert offenders == ["analysis/destinations.py: os.rename("]


# --- code that must not run unless the user turns it on ----------------------------------------------------------

_LOADERS = {"from_pretrained", "from_config"}


def test_every_model_config_and_tokenizer_load_passes_trust_remote_code():
    missing = []
    for path in (
        sorted((ROOT / "analysis").rglob("*.py"))
        + sorted((ROOT / "components").rglob("*.py"))
        + sorted((ROOT / "pages").rglob("*.py"))
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LOADERS):
                continue
            owner = ast.unparse(node.func.value)
            if not owner.startswith("Auto"):
                continue  # PeftModel.from_pretrained: an adapter, no code of its own
            if not any(k.arg == "trust_remote_code" or k.arg is None for k in node.keywords):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {owner}.{node.func.attr}")
    assert missing == []


@pytest.fixture
def remote_code_folder(tmp_path):
    """A local model folder whose config asks for code of its own (auto_map); running it leaves a flag file."""
    folder = tmp_path / "evil-model"
    folder.mkdir()
    flag = tmp_path / "code-ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "layerscope_evil",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
            }
        )
    )
    (folder / "evil.py").write_text(
        f"open({str(flag)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'layerscope_evil'\n"
    )
    return folder, flag


@pytest.fixture
def no_prompt(monkeypatch):
    """transformers asks on stdin when trust_remote_code is left unset: answer yes (what a careless user does)."""
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")
    return asked


def test_a_folder_with_auto_map_is_refused_without_the_flag_on_every_loading_path(remote_code_folder, no_prompt):
    from analysis.changes.export import verify_export
    from analysis.model.architecture import ModelLoadError
    from analysis.model.checkpoint import load_checkpoint, load_factorised
    from analysis.model.loading import ModelSpec, load_model, read_config

    folder, flag = remote_code_folder
    for load in (
        lambda: load_checkpoint(folder),
        lambda: load_factorised(folder),
        lambda: verify_export(folder, None, None),
    ):
        with pytest.raises((ValueError, OSError, AttributeError)):
            load()
    for load in (
        lambda: load_model(ModelSpec(source=str(folder), device="cpu")),
        lambda: read_config(ModelSpec(source=str(folder), device="cpu")),
    ):
        with pytest.raises(ModelLoadError, match="custom code|trust remote code"):
            load()
    assert no_prompt == [] and not flag.exists()


def test_heal_with_a_recipe_honours_trust_remote_code(tmp_path, monkeypatch):
    from analysis.cli import heal
    from analysis.cli.main import main
    from analysis.model import loading

    seen = []

    def fake_load_model(spec, progress=None):
        seen.append(spec.trust_remote_code)
        raise loading.ModelLoadError("stop here")

    monkeypatch.setattr(loading, "load_model", fake_load_model)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "layerscope": 1,
                "model": {"source": "default", "trust_remote_code": True},
                "action": {"remove_blocks": [3]},
            }
        )
    )
    for flags, want in (([], False), (["--trust-remote-code"], True)):
        code = main(["heal", "--recipe", str(recipe), "--out", str(tmp_path / "healed"), *flags])
        assert code == 2 and seen[-1] is want
    assert heal.load_recipe_model.__defaults__ == (False,)
    assert not (tmp_path / "healed").exists()


def _task_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder, flag = tmp_path / "tasks", tmp_path / "helper-ran"
    folder.mkdir()
    (folder / "utils.py").write_text(f"open({str(flag)!r}, 'w').write('ran')\ndef process_docs(ds):\n    return ds\n")
    (folder / "data.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}) + "\n")
    (folder / "mytask.yaml").write_text(
        "task: mytask\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data.jsonl\n"
        "output_type: multiple_choice\ntest_split: test\nprocess_docs: !function utils.process_docs\n"
        "doc_to_text: '{{context}}'\ndoc_to_target: label\ndoc_to_choice: choices\n"
    )
    return folder, flag


def test_a_task_folders_python_helpers_run_only_when_allowed(tmp_path):
    from analysis.evaluation import downstream as ds

    folder, flag = _task_folder(tmp_path)
    info = next(t for t in ds.available_tasks([folder], include_standard=False) if t.name == "mytask")
    assert not info.available and ds.CODE_REFUSED in info.reason and "utils.py:process_docs" in info.reason
    result = ds.run_tasks(None, None, "mytask", task_dirs=[folder])
    assert result["tasks"]["mytask"]["ran"] is False and ds.CODE_REFUSED in result["tasks"]["mytask"]["reason"]
    assert not flag.exists()
    allowed = next(
        t for t in ds.available_tasks([folder], include_standard=False, allow_code=True) if t.name == "mytask"
    )
    assert allowed.available and not flag.exists()  # listing never imports the helpers


def test_downstream_cli_refuses_task_code_without_the_flag(tmp_path):
    from analysis.cli.main import main

    folder, flag = _task_folder(tmp_path)
    assert main(["downstream", "--task-dir", str(folder), "--tasks", "mytask"]) == 2
    assert not flag.exists()


# --- files a recipe or a report must not touch ---------------------------------------------------------------------


def test_a_recipe_naming_a_local_file_is_refused_and_the_users_own_text_is_read(tmp_path):
    from analysis.workflow import recipe as rc

    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY " * 200)
    for ref in (
        str(secret),
        {"name": str(secret), "source": "file"},
        {"name": "alice", "source": "bundled", "path": str(secret)},
    ):
        r = {"layerscope": 1, "model": {"source": "default"}, "calibration": {"text": ref}}
        with pytest.raises(rc.RecipeError, match="not a bundled text"):
            rc.text_of(r)
        with pytest.raises(rc.RecipeError, match="not a bundled text"):
            rc.check_texts(r)
    r = {
        "layerscope": 1,
        "model": {"source": "default"},
        "calibration": {"text": "notes.txt"},
        "action": {"remove_blocks": [1]},
        "evaluation": {"settings": {"text": str(secret)}},
    }
    with pytest.raises(rc.RecipeError, match="held-out text"):
        rc.check_texts(r, text_path=str(secret))
    mine = tmp_path / "mine.txt"
    mine.write_text("my own calibration text " * 50)
    assert rc.text_of({"calibration": {"text": "notes.txt"}}, text_path=str(mine)).name == "mine.txt"


def test_run_with_a_recipe_naming_a_local_file_writes_nothing(tmp_path, capsys):
    from analysis.cli.main import main

    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy me " * 500)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps(
            {
                "layerscope": 1,
                "model": {"source": "default"},
                "calibration": {"text": {"name": "x", "source": "file", "path": str(secret)}},
            }
        )
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not a bundled text" in err and err.count("\n") == 1  # one line, before anything is loaded
    assert not (tmp_path / "out").exists()


def test_report_overwrite_replaces_only_a_report_layerscope_wrote(tmp_path):
    from analysis.workflow.report import ReportExists, write_report

    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>My notes about LayerScope, written by LayerScope fans</html>")
    with pytest.raises(ReportExists, match="not written by LayerScope"):
        write_report(foreign, "<html>report</html>", overwrite=True)
    assert "My notes" in foreign.read_text()
    ours = write_report(tmp_path / "report.html", "<!doctype html><html>one</html>")
    assert destinations.is_layerscope_file(ours)
    with pytest.raises(ReportExists, match="already exists"):
        write_report(ours, "<!doctype html><html>two</html>")
    write_report(ours, "<!doctype html><html>two</html>", overwrite=True)
    assert ours.read_text().endswith("two</html>")


# --- the kept leaderboard --------------------------------------------------------------------------------------------


def _result():
    import pandas as pd

    from analysis.search.leaderboard import Result

    return Result(
        settings={"k_max": 2},
        rows=pd.DataFrame([{"rule": "r", "k": 1, "perplexity": 40.0}]),
        greedy=[],
        greedy_half=[],
        damage=pd.DataFrame(),
        correlation=pd.DataFrame(),
        original_perplexity=30.0,
    )


class _WS:
    class lm:  # noqa: N801 - stands in for a loaded model: only its fingerprint is read
        fingerprint = "f" * 16


def test_the_kept_leaderboard_is_checked_and_kept_per_browser_tab(private_cache):
    from analysis.search import leaderboard as lb

    lb._keep_latest(_WS, _result(), owner="tab-a")
    assert lb.latest(_WS, owner="tab-a").original_perplexity == 30.0
    assert lb.latest(_WS, owner="tab-b") is None and lb.latest(_WS) is None  # another tab, the command line
    with lb.kept_for("tab-a"):
        assert lb.latest(_WS) is not None
    path = lb._latest_path(_WS.lm, "tab-a")
    path.write_text(path.read_text().replace("30.0", "3.0"))  # a changed byte
    assert lb.latest(_WS, owner="tab-a") is None


# --- finished jobs are released -------------------------------------------------------------------------------------


class Big:
    """Stands in for a model a job's result or closure holds."""


def test_memory_held_by_finished_jobs_does_not_grow_with_the_number_of_jobs():
    refs = []

    def work_returning(big):
        return lambda job: big

    n = 60
    for i in range(n):  # every job from another owner (a browser tab that went away), none taken by a page
        big = Big()
        refs.append(weakref.ref(big))
        jobs.submit(f"t-mem-{i}", "mem", work_returning(big), owner=f"t-mem-owner-{i}")
        del big
    for i in range(n):
        jobs.wait(f"t-mem-{i}", timeout=10)
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive <= jobs.KEEP_RESULTS_TOTAL
    assert len([j for j in jobs.jobs() if j.key.startswith("t-mem-")]) <= jobs.KEEP_FINISHED_TOTAL


def test_a_taken_result_the_work_closure_and_a_failures_frames_are_released():
    held = Big()
    ref_closure = weakref.ref(held)
    result = Big()
    ref_result = weakref.ref(result)
    gate = threading.Event()

    def work(job, held=held, result=result):
        gate.wait(5)
        return result

    jobs.submit("t-rel", "rel", work, owner="t-rel-owner")
    del held, result, work
    gate.set()
    job = jobs.wait("t-rel", timeout=5)
    gc.collect()
    assert ref_closure() is None and ref_result() is not None and job.finished_ok
    jobs.release("t-rel")
    gc.collect()
    assert ref_result() is None and not job.finished_ok
    again = jobs.submit("t-rel", "rel", lambda job: 1, owner="t-rel-owner")  # released: asked again, it runs again
    assert again is not job and jobs.wait("t-rel", timeout=5).result == 1

    def boom(job):
        local = Big()
        boom.ref = weakref.ref(local)
        raise ValueError("failed")

    failed = jobs.wait(jobs.submit("t-rel-fail", "fail", boom, owner="t-rel-owner").key, timeout=5)
    gc.collect()
    assert failed.error.endswith("failed") and boom.ref() is None and failed.exception.__traceback__ is None
    jobs.forget("t-rel")
    jobs.forget("t-rel-fail")
