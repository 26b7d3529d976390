"""Texts: the bundled Canterbury corpus, uploaded or pasted text, and calibration windows.

The bundled texts are four public-domain files of the Canterbury corpus, taken from the ``brotli==1.2.1``
source archive on PyPI (``tests/testdata/``) and checked against sha256 sums. ``make`` installs them into the
environment (``<venv>/share/layerscope/canterbury``); ``python -m analysis install-texts`` does the same by hand.
Line endings are normalised to LF before anything is hashed or tokenised, so a text's hash does not depend on
the platform it came from.

Calibration windows (the default everywhere): the first ``N`` non-overlapping windows of ``T`` tokens of the
text, tokenised without special tokens. They are reproducible from (tokenizer, text, N, T).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.errors import InputError

BROTLI_SDIST = "brotli==1.2.1"
BROTLI_SDIST_SHA256 = "02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de"
BUNDLED = {
    # name: (file in brotli-1.2.1/tests/testdata, sha256 of the file as shipped, description)
    "alice": (
        "alice29.txt",
        "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
        "Lewis Carroll, Alice's Adventures in Wonderland",
    ),
    "asyoulik": (
        "asyoulik.txt",
        "eaa3526fe53859f34ecdf255712f9ecf0b2c903451d4755b2edaa2e2599cb0fc",
        "Shakespeare, As You Like It",
    ),
    "lcet10": (
        "lcet10.txt",
        "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f",
        "Workshop on electronic texts, Library of Congress",
    ),
    "plrabn12": (
        "plrabn12.txt",
        "07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c",
        "Milton, Paradise Lost",
    ),
}
DEFAULT_CALIBRATION_TEXT = "alice"
DEFAULT_EVALUATION_TEXT = "asyoulik"


class TextError(InputError):
    """A text cannot be used; the message says why in words a user can act on."""


@dataclass(frozen=True)
class Text:
    """A text ready for tokenisation: LF line endings, with a stable hash of its content."""

    name: str
    content: str
    source: str  # "bundled", "upload" or "pasted"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        return self.name if self.source == "bundled" else f"{self.name} ({self.source})"

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256, "characters": len(self.content)}


def texts_dir() -> Path:
    """Where the bundled texts live: ``$LAYERSCOPE_TEXTS`` or ``<sys.prefix>/share/layerscope/canterbury``."""
    return Path(os.environ.get("LAYERSCOPE_TEXTS") or Path(sys.prefix) / "share" / "layerscope" / "canterbury")


def normalise_newlines(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


def bundled_text(name: str) -> Text:
    """One of the bundled texts by name (``alice``, ``asyoulik``, ``lcet10``, ``plrabn12``)."""
    if name not in BUNDLED:
        raise TextError(f"unknown bundled text {name!r}; choose one of {', '.join(BUNDLED)}")
    path = texts_dir() / BUNDLED[name][0]
    if not path.is_file():
        raise TextError(
            f"the bundled text {name!r} is not installed ({path} is missing); run `make setup` "
            "or `python -m analysis install-texts`"
        )
    return Text(name=name, content=normalise_newlines(path.read_text(encoding="utf-8")), source="bundled")


def text_from_bytes(data: bytes, name: str = "upload") -> Text:
    """Validate an uploaded file: refuse empty and binary content; decode UTF-8 (or Latin-1 as a fallback)."""
    if not data or not data.strip():
        raise TextError(f"{name} is empty")
    head = data[:65536]
    if b"\x00" in head:
        raise TextError(f"{name} looks binary (it contains NUL bytes); upload a plain-text .txt file")
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 13, 12))
    if control / len(head) > 0.05:
        raise TextError(f"{name} looks binary ({control} control bytes in the first {len(head)}); upload plain text")
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        content = data.decode("latin-1")
    return text_from_string(content, name=name, source="upload")


def text_from_string(content: str, name: str = "pasted", source: str = "pasted") -> Text:
    content = normalise_newlines(content)
    if not content.strip():
        raise TextError(f"the {source} text is empty")
    return Text(name=name, content=content, source=source)


def resolve_text(ref: str) -> Text:
    """A text named on the command line: a bundled name or a path to a UTF-8 text file."""
    if ref in BUNDLED:
        return bundled_text(ref)
    path = Path(ref)
    if path.is_file():
        return text_from_bytes(path.read_bytes(), name=path.name)
    raise TextError(f"{ref!r} is neither a bundled text ({', '.join(BUNDLED)}) nor a readable file")


def token_ids(tokenizer, text: Text) -> np.ndarray:
    """All token ids of the text, without special tokens."""
    ids = tokenizer(text.content, add_special_tokens=False, verbose=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def calibration_windows(tokenizer, text: Text, n_windows: int, window_len: int) -> np.ndarray:
    """The first ``n_windows`` non-overlapping windows of ``window_len`` tokens: an int64 array ``[N, T]``."""
    if n_windows < 1 or window_len < 2:
        raise TextError(f"need at least 1 window of at least 2 tokens (asked for {n_windows} × {window_len})")
    ids = token_ids(tokenizer, text)
    need = n_windows * window_len
    if ids.size < window_len:
        raise TextError(
            f"{text.label} has only {ids.size} tokens, fewer than one window of {window_len} tokens: use a longer "
            f"text (at least {need} tokens for {n_windows} windows of {window_len})"
            + (f" or windows of at most {ids.size} tokens." if ids.size >= 2 else ".")
        )
    if ids.size < need:
        raise TextError(
            f"{text.label} has {ids.size} tokens; {n_windows} windows of {window_len} tokens need {need}. "
            f"Use at most {ids.size // window_len} windows of {window_len} tokens, shorter windows, or a longer text."
        )
    return ids[:need].reshape(n_windows, window_len)


def install_corpus(dest: Path | None = None, archive: Path | None = None, quiet: bool = False) -> Path:
    """Download the brotli 1.2.1 source archive from PyPI, check it, and extract the four texts into ``dest``.

    Idempotent: texts already present with the right sha256 are kept. The write is atomic per file.
    """
    dest = Path(dest or texts_dir())
    missing = [n for n, (f, sha, _) in BUNDLED.items() if not _has_file(dest / f, sha)]
    if not missing:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if archive is None:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                BROTLI_SDIST,
                "-d",
                tmp,
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
            found = list(Path(tmp).glob("brotli-1.2.1.tar.gz"))
            if not found:
                raise RuntimeError(f"pip download {BROTLI_SDIST} did not produce brotli-1.2.1.tar.gz")
            archive = found[0]
        blob = Path(archive).read_bytes()
        if hashlib.sha256(blob).hexdigest() != BROTLI_SDIST_SHA256:
            raise RuntimeError(f"{archive} does not have the expected sha256 {BROTLI_SDIST_SHA256}")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for name in missing:
                fname, sha, _ = BUNDLED[name]
                data = tar.extractfile(f"brotli-1.2.1/tests/testdata/{fname}").read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise RuntimeError(f"{fname} in the archive does not match its sha256 {sha}")
                from analysis.cache import atomic_write_bytes

                atomic_write_bytes(dest / fname, data)
    return dest


def _has_file(path: Path, sha: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha
