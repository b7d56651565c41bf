"""The table of exercises (transformer_course/assignments/table.py) agrees with the chapters.

Every `{exercise}` label of a chapter has an entry; each solution's definition cell defines the entry's name
(a function or a variable, as the entry says); the checker-call cell calls the entry's checker on that name;
the checker exists; each chapter's preamble is its setup cell. After changing a chapter's exercises, run
`python -m transformer_course.assignments table > transformer_course/assignments/table.py` (add
`--chapters 01,...,NN` for a new chapter) and review the points.
"""
import ast
import pathlib

import pytest

from transformer_course import exercises
from transformer_course.assignments import table
from transformer_course.assignments.cells import (defined_names, find_exercises, python_source, read_notebook,
                                                  setup_cell, source)

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(p.name[:2] for p in BOOK.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_table_matches_the_chapter(chapter):
    path = table.NOTEBOOKS.get(chapter)
    nb = read_notebook(BOOK / path) if path else read_notebook(next(BOOK.glob(f"{chapter}_*.ipynb")))
    found = find_exercises(nb)
    if not found:
        pytest.skip(f"chapter {chapter} has no exercises")
    missing = [e["id"] for e in found if e["id"] not in table.EXERCISES]
    assert not missing, (f"chapter {chapter}: no table entry for {missing}; run `python -m "
                         f"transformer_course.assignments table` and review the diff")
    assert table.PREAMBLES.get(chapter) == setup_cell(nb), f"chapter {chapter}: the preamble is not the setup cell"
    for e in found:
        entry = table.EXERCISES[e["id"]]
        assert entry["chapter"] == chapter
        defs = defined_names(ast.parse(python_source(source(nb["cells"][e["definition"]]))))
        assert defs.get(entry["name"]) == entry["kind"], f"{e['id']}: the solution cell does not define " \
                                                         f"{entry['name']} as a {entry['kind']}"
        assert f"{e.get('module')}.{e.get('checker')}" == entry["checker"], f"{e['id']}: the checker cell calls " \
                                                                             f"{e.get('checker')}"
        assert e["name"] == entry["name"], f"{e['id']}: the checker cell checks {e['name']}"
        module, check = entry["checker"].split(".")
        assert callable(getattr(getattr(exercises, module), check))
        assert entry["points"] >= 0 and all(r in table.EXERCISES for r in entry["requires"])
    stale = [k for k, v in table.EXERCISES.items() if v["chapter"] == chapter and k not in {e["id"] for e in found}]
    assert not stale, f"table entries for exercises chapter {chapter} no longer has: {stale}"


def test_every_table_chapter_exists():
    assert set(table.PREAMBLES) <= set(CHAPTERS)
    assert {v["chapter"] for v in table.EXERCISES.values()} == set(table.PREAMBLES)
    for chapter, name in table.NOTEBOOKS.items():
        assert (BOOK / name).exists(), name
