"""The repository's multiple-choice task through the real lm-eval, on the real bundled model and a pruned copy.

All 75 items (300 scored choices per model, ~10–20 s each on 2 cores; the first 30 alone are too noisy to tell
from chance reliably), with the network switched off: nothing may be fetched, and the result must still come back.
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest

pytestmark = pytest.mark.slow

N_ITEMS = 75


@contextlib.contextmanager
def network_off():
    """Any connection to anything but this machine fails, and is recorded."""
    attempts = []
    real_connect = socket.socket.connect

    def guarded(self, address, *args, **kwargs):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address, *args, **kwargs)
        attempts.append(address)
        raise OSError(f"network access attempted in an offline test: {address}")

    socket.socket.connect = guarded
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect


@pytest.fixture
def no_network():
    with network_off() as attempts:
        yield attempts
    assert attempts == [], f"downstream evaluation tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def original_run(lm):
    from analysis.evaluation import downstream as ds

    steps = []
    with network_off() as attempts:
        result = ds.run_tasks(
            lm.model,
            lm.tokenizer,
            "layerscope_cloze",
            batch_size=16,
            progress=lambda done, total, msg: steps.append((done, total, msg)),
        )
    assert attempts == [], f"downstream evaluation tried to reach the network: {attempts}"
    return result, steps


def test_cloze_on_the_real_model_beats_chance(original_run, no_network):
    result, steps = original_run
    row = result["tasks"]["layerscope_cloze"]
    assert row["ran"] is True, row.get("reason")
    assert row["n"] == N_ITEMS and row["chance"] == 0.25
    # well above chance: more than two standard errors above 25 % on both metrics
    assert row["acc"] - 2 * row["acc_stderr"] > 0.25, row
    assert row["acc_norm"] - 2 * row["acc_norm_stderr"] > 0.25, row
    assert result["settings"]["lm_eval"] and result["settings"]["device"] == "cpu"
    # progress: choices scored, ending at the total (4 per item)
    assert steps and steps[-1][0] == steps[-1][1] == 4 * N_ITEMS
    assert "layerscope_cloze" in steps[-1][2]


def test_pruned_copy_gets_a_result_and_loses_accuracy(lm, original_run, no_network):
    from analysis.changes.remove_blocks import remove_blocks
    from analysis.evaluation import downstream as ds

    fp_before = lm.fingerprint
    pruned = remove_blocks(lm.model, list(range(10, 18)))  # 8 of 30 blocks: heavily pruned
    changed = ds.run_tasks(pruned, lm.tokenizer, "layerscope_cloze", batch_size=16, label="pruned")
    row = changed["tasks"]["layerscope_cloze"]
    assert row["ran"] is True and row["n"] == N_ITEMS
    original = original_run[0]
    rec = ds.compare(original, changed)["layerscope_cloze"]
    assert rec["ran"] and rec["recovery"] == pytest.approx(row["acc"] / original["tasks"]["layerscope_cloze"]["acc"])
    assert row["acc_norm"] < original["tasks"]["layerscope_cloze"]["acc_norm"]
    # the original model is untouched by the evaluation of its pruned copy
    from analysis.model.loading import fingerprint

    assert fingerprint(lm.model) == fp_before


def test_cli_downstream_with_removal_writes_json(lm, tmp_path, capsys, no_network):
    from analysis.cli.main import main

    out = tmp_path / "ds"
    assert (
        main(
            [
                "downstream",
                "--model",
                "default",
                "--device",
                "cpu",
                "--tasks",
                "layerscope_cloze",
                "--limit",
                "3",
                "--remove",
                "12,13",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "downstream.json").read_text())
    assert written["removed_blocks"] == [12, 13] == printed["removed_blocks"]
    for key in ("original", "pruned"):
        assert written[key]["tasks"]["layerscope_cloze"]["ran"] is True
        assert written[key]["tasks"]["layerscope_cloze"]["n"] == 3
    assert written["recovery"]["layerscope_cloze"]["ran"] is True
    assert not list(out.glob(".tmp-*"))


def test_standard_task_runs_from_a_prepared_local_copy(lm, tmp_path, monkeypatch, no_network):
    """lm-eval's own ``arc_easy`` config, on a two-question stand-in placed where ``datasets`` keeps prepared copies.

    This is the path a machine takes when the real ARC-Easy is in its local datasets cache; the numbers are
    meaningless (two made-up questions) and only show that the task runs offline and reports what it ran.
    """
    import datasets
    import datasets.config
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    from analysis.evaluation import downstream as ds

    rows = [
        {
            "id": "q1",
            "question": "Which of these is a liquid at room temperature?",
            "choices": {"text": ["iron", "water", "salt", "wood"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
        {
            "id": "q2",
            "question": "What do plants take from the air to make food?",
            "choices": {"text": ["carbon dioxide", "helium", "smoke", "dust"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A",
        },
    ]
    src = tmp_path / "src"
    src.mkdir()
    for split in ("train", "validation", "test"):
        pq.write_table(pa.Table.from_pylist(rows), src / f"{split}.parquet")
    build = tmp_path / "build"
    Parquet(
        cache_dir=str(build),
        dataset_name="ai2_arc",
        config_name="ARC-Easy",
        hash="0123abcd",
        data_files={s: [str(src / f"{s}.parquet")] for s in ("train", "validation", "test")},
    ).download_and_prepare()
    prepared = next(build.glob("ai2_arc/*/0.0.0/0123abcd"))
    target = tmp_path / "datasets" / "allenai___ai2_arc" / "ARC-Easy" / "0.0.0" / "0123abcd"
    target.parent.mkdir(parents=True)
    prepared.rename(target)
    for lock in target.parent.glob("*.lock"):
        lock.unlink()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))

    info = {t.name: t for t in ds.available_tasks()}
    assert info["arc_easy"].available, info["arc_easy"].reason
    assert not info["arc_challenge"].available
    result = ds.run_tasks(lm.model, lm.tokenizer, ["arc_easy", "arc_challenge"], batch_size=8)
    easy, challenge = result["tasks"]["arc_easy"], result["tasks"]["arc_challenge"]
    assert easy["ran"] is True and easy["n"] == 2 and 0.0 <= easy["acc"] <= 1.0
    assert challenge["ran"] is False and "acc" not in challenge and challenge["reason"]
