"""Build ``layerscope_cloze.jsonl``: four-way "which words come next?" items from three bundled public-domain books.

Run ``python -m analysis.evaluation.tasks.layerscope_cloze.build`` (the bundled texts must be installed: ``make setup``) to
rewrite the file; it is deterministic, and ``tests/unit/test_downstream.py`` checks that the committed file is
exactly what this script writes.

How an item is made (see README.md beside this file):

1. The book is cut into *units* that a passage never crosses: paragraphs of *Alice's Adventures in Wonderland*
   (Lewis Carroll), speeches of *As You Like It* (Shakespeare; the speaker is kept), and the twelve books of
   *Paradise Lost* (Milton). Stage directions, chapter headings and front matter are dropped.
2. A cut point is drawn at random (fixed seed) after the first ``SKIP_WORDS`` words of the book — beyond the
   default calibration (alice) and perplexity (asyoulik) windows — where the last word before the cut is a
   plain lower-case word (no punctuation). The context is the text before the cut, starting at a sentence
   start (or, failing that, a clause start) ``MIN_CONTEXT``–``MAX_CONTEXT`` words back, within the unit.
3. The right answer is the next ``ANSWER_WORDS`` words of the book. The three wrong answers are the
   ``ANSWER_WORDS`` words that follow *the same word* at three other places of the same book, at least
   ``MIN_DISTANCE`` words away. So every choice continues the last context word grammatically in the book's own
   style; picking the right one needs the context (or a memory of the book), which is what pruning damages.
4. The four choices are shuffled (fixed seed); ``label`` is the index of the right one. Chance is 25 %.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_FILE = HERE / "layerscope_cloze.jsonl"
BOOKS = ("alice", "asyoulik", "plrabn12")
ITEMS_PER_BOOK = 25
ANSWER_WORDS = 4
MIN_CONTEXT, MAX_CONTEXT = 12, 60
SKIP_WORDS = 3500
MIN_DISTANCE = 300
SEED = 20260601
_SENTENCE_END = re.compile(r"[.!?][`'\")\]]*$")
_CLAUSE_END = re.compile(r"[;:][`'\")\]]*$")


@dataclass
class Book:
    words: list[str]
    unit: list[int]  # unit id of each word
    speaker: dict[int, str]  # unit id -> speaker (plays only)


def _alice_units(text: str) -> list[tuple[str | None, str]]:
    body = text.split("CHAPTER I\n", 1)[1].rsplit("THE END", 1)[0]
    units = []
    for para in re.split(r"\n\s*\n", body):
        lines = [ln.strip() for ln in para.split("\n") if ln.strip()]
        lines = [ln for ln in lines if not re.fullmatch(r"CHAPTER [IVXL]+", ln)]
        para = " ".join(lines)
        if len(para.split()) >= 8:  # chapter titles and the like are shorter
            units.append((None, para))
    return units


def _asyoulik_units(text: str) -> list[tuple[str | None, str]]:
    body = text.split("\nACT I\n", 1)[1]
    units: list[tuple[str | None, str]] = []
    speaker, lines = None, []

    def flush():
        if speaker and lines:
            speech = re.sub(r"\[[^\]]*\]", " ", " ".join(lines))
            if speech.split():
                units.append((speaker, speech))

    for line in body.split("\n"):
        m = re.match(r"^([A-Z][A-Z .'()]*[A-Z)])\t(.*)$", line)
        if m and not line.startswith(("ACT ", "SCENE ")):
            flush()
            speaker, lines = m.group(1).strip(), [m.group(2).strip()]
        elif line.startswith("\t") and speaker is not None and not line.strip().startswith("["):
            lines.append(line.strip())
        else:  # a blank line, a stage direction on its own line, an act or scene heading: the speech is over
            flush()
            speaker, lines = None, []
    flush()
    return units


def _plrabn12_units(text: str) -> list[tuple[str | None, str]]:
    body = text.split("\nBook I \n", 1)[1].rsplit("[The End]", 1)[0]
    units = []
    for part in re.split(r"\n\s*Book [IVXL]+\s*\n", body):
        lines = [ln.strip() for ln in part.split("\n") if ln.strip()]
        if lines:
            units.append((None, " ".join(lines)))
    return units


_UNITS = {"alice": _alice_units, "asyoulik": _asyoulik_units, "plrabn12": _plrabn12_units}


def book_from_text(name: str, text: str) -> Book:
    words, unit, speaker = [], [], {}
    for i, (who, passage) in enumerate(_UNITS[name](text)):
        ws = passage.split()
        words += ws
        unit += [i] * len(ws)
        if who:
            speaker[i] = who
    return Book(words, unit, speaker)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", s.lower()).split())


def _context_start(book: Book, k: int) -> int | None:
    """Where the context of a cut before word ``k`` starts: a sentence start, else a clause start, in range."""
    u = book.unit[k - 1]
    lo = k - MAX_CONTEXT
    candidates = []
    for j in range(k - MIN_CONTEXT, max(lo, 0) - 1, -1):
        if j < 0 or book.unit[j] != u:
            break
        starts_unit = j == 0 or book.unit[j - 1] != u
        if starts_unit or _SENTENCE_END.search(book.words[j - 1]):
            return j
        if _CLAUSE_END.search(book.words[j - 1]):
            candidates.append(j)
    return candidates[-1] if candidates else None


def _span(book: Book, start: int) -> str | None:
    end = start + ANSWER_WORDS
    if end > len(book.words) or book.unit[start] != book.unit[end - 1]:
        return None
    return " ".join(book.words[start:end])


def make_items(name: str, text: str, n: int = ITEMS_PER_BOOK, seed: int = SEED) -> list[dict]:
    book = book_from_text(name, text)
    rng = random.Random(f"{seed}-{name}")
    positions: dict[str, list[int]] = {}
    for i, w in enumerate(book.words):
        positions.setdefault(w, []).append(i)
    order = list(range(max(SKIP_WORDS, MAX_CONTEXT) + 1, len(book.words) - ANSWER_WORDS))
    rng.shuffle(order)
    items, used_units, taken = [], set(), []
    for k in order:
        if len(items) == n:
            break
        last = book.words[k - 1]
        if not (last.isalpha() and last.islower()) or book.unit[k - 1] in used_units:
            continue
        if any(abs(k - t) < MIN_DISTANCE for t in taken):
            continue
        answer = _span(book, k)
        if answer is None or book.unit[k] != book.unit[k - 1]:
            continue
        start = _context_start(book, k)
        if start is None:
            continue
        seen = {_norm(answer)}
        pool = []
        for p in positions[last]:
            if abs(p - k) < MIN_DISTANCE:
                continue
            s = _span(book, p + 1) if book.unit[p] == book.unit[min(p + 1, len(book.words) - 1)] else None
            if s is not None and _norm(s) not in seen:
                seen.add(_norm(s))
                pool.append(s)
        if len(pool) < 3:
            continue
        distractors = rng.sample(pool, 3)
        choices = distractors + [answer]
        rng.shuffle(choices)
        context = " ".join(book.words[start:k])
        who = book.speaker.get(book.unit[k - 1])
        if who:
            context = f"{who}: {context}"
        items.append(
            {"book": name, "word_index": k, "context": context, "choices": choices, "label": choices.index(answer)}
        )
        if name != "plrabn12":  # one item per paragraph or speech (Milton's units are whole books)
            used_units.add(book.unit[k - 1])
        taken.append(k)
    if len(items) < n:
        raise RuntimeError(f"{name}: only {len(items)} items could be made, {n} asked for")
    items.sort(key=lambda it: it["word_index"])
    return items


def build(texts: dict[str, str] | None = None) -> list[dict]:
    """All items with ids ``<book>-<nn>``, the books taking turns (so lm-eval's ``limit`` keeps them balanced)."""
    if texts is None:
        from analysis.texts import bundled_text

        texts = {name: bundled_text(name).content for name in BOOKS}
    per_book = [
        [{"id": f"{name}-{i:02d}", **it} for i, it in enumerate(make_items(name, texts[name]))] for name in BOOKS
    ]
    return [book[i] for i in range(ITEMS_PER_BOOK) for book in per_book]


def to_jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def main() -> None:
    from analysis.cache import atomic_write_text

    items = build()
    atomic_write_text(DATA_FILE, to_jsonl(items))
    print(f"wrote {len(items)} items to {DATA_FILE}")


if __name__ == "__main__":
    main()
