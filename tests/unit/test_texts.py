"""Text validation and calibration windows (a simple word tokenizer stands in for the model's)."""

import numpy as np
import pytest

from analysis import texts


class WordTokenizer:
    def __call__(self, s, add_special_tokens=False, verbose=False):
        return {"input_ids": [len(w) for w in s.split()]}


def test_newlines_are_normalised_and_hash_is_stable():
    a = texts.text_from_string("one\r\ntwo\rthree\n")
    b = texts.text_from_string("one\ntwo\nthree\n")
    assert a.content == b.content and a.sha256 == b.sha256


@pytest.mark.parametrize(
    "data,msg",
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (b"PK\x03\x04\x00\x00binary", "binary"),
        (bytes(range(1, 32)) * 20, "binary"),
    ],
)
def test_bad_uploads_are_refused(data, msg):
    with pytest.raises(texts.TextError, match=msg):
        texts.text_from_bytes(data, name="x.txt")


def test_latin1_upload_is_decoded():
    t = texts.text_from_bytes("café au lait".encode("latin-1"))
    assert "caf" in t.content


def test_windows_are_first_non_overlapping():
    t = texts.text_from_string(" ".join(["a", "bb", "ccc", "dddd"] * 10))
    w = texts.calibration_windows(WordTokenizer(), t, 3, 4)
    assert w.shape == (3, 4)
    assert np.array_equal(w[0], [1, 2, 3, 4]) and np.array_equal(w[2], [1, 2, 3, 4])


def test_text_too_short_says_how_many_tokens():
    t = texts.text_from_string("a bb ccc")
    with pytest.raises(texts.TextError, match="has only 3 tokens, fewer than one window of 4 tokens"):
        texts.calibration_windows(WordTokenizer(), t, 2, 4)


def test_unknown_bundled_name():
    with pytest.raises(texts.TextError, match="unknown bundled text"):
        texts.bundled_text("hamlet")


def test_bundled_texts_are_installed_with_lf_endings():
    t = texts.bundled_text("alice")
    assert "\r" not in t.content and "Alice" in t.content
    assert texts.resolve_text("asyoulik").name == "asyoulik"
