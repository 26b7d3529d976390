"""A damaged converted copy of the bundled model in cache/models is converted again (issue 12, class 3)."""

import shutil

import pytest

pytestmark = pytest.mark.slow


def test_a_damaged_converted_copy_is_converted_again(tmp_path, monkeypatch):
    from analysis import cache
    from analysis.model import loading as models

    gguf = models.default_gguf_path()
    shared = models.converted_gguf_folder(gguf)  # the session's (linked) converted copy: never touched below
    monkeypatch.setenv("LAYERSCOPE_CACHE", str(tmp_path / "c"))
    private = cache.cache_root() / "models" / shared.name
    shutil.copytree(shared, private)
    weights = private / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)  # an interrupted copy
    said = []
    again = models.converted_gguf_folder(gguf, said.append)
    assert again == private and any("damaged" in m and "converting" in m for m in said), said
    assert models.converted_damage(again) is None and "files" in (again / models.SOURCE_FILE).read_text()
    assert weights.stat().st_size == (shared / "model.safetensors").stat().st_size
    lm = models.load_model(models.ModelSpec(device="cpu"))
    assert lm.n_blocks == 30
    assert not [p for p in (cache.cache_root() / "models").iterdir() if p.name.startswith((".tmp-", ".old-"))]
