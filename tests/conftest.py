"""Shared fixtures: the real bundled model and texts, loaded once per session, with a private cache.

Every test session gets its own ``LAYERSCOPE_CACHE`` (a temporary folder) so a result found in the cache is
always one this session computed. The converted fp32 copy of the bundled model is the exception: if the
repository's ``cache/models`` already holds it, it is linked in (conversion takes ~20 s and is tested on its own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "0")
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="layerscope-test-cache-"))
os.environ["LAYERSCOPE_CACHE"] = str(_SESSION_CACHE)
if (ROOT / "cache" / "models").is_dir() and not os.environ.get("LAYERSCOPE_TEST_CONVERT"):
    (_SESSION_CACHE / "models").symlink_to(ROOT / "cache" / "models")

ARTIFACTS = ROOT / "artifacts"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped, saying so, where torch sees none."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
        for item in marked:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def lm():
    """The bundled SmolLM2-135M-Instruct, fp32 on CPU."""
    from analysis.model.loading import ModelSpec, load_model

    return load_model(ModelSpec(device="cpu"))


@pytest.fixture(scope="session")
def alice():
    from analysis.texts import bundled_text

    return bundled_text("alice")


@pytest.fixture(scope="session")
def asyoulik():
    from analysis.texts import bundled_text

    return bundled_text("asyoulik")


@pytest.fixture(scope="session")
def ws(lm, alice):
    """The default workspace: alice, the first 32 windows of 128 tokens."""
    from analysis.capture.workspace import Calibration, Workspace

    return Workspace(lm=lm, text=alice, calibration=Calibration())


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
