"""Writing `table.py` from the chapters: `python -m transformer_course.assignments table [--chapters 13,15]`.

Run once when a chapter's exercises change; the output is reviewed and committed, so grading never depends on
reading the book at run time. Points default to 1 for a warm-up (its prose says "warm-up") and 2 otherwise;
edit them in `table.py`. An exercise requires another when its definition uses a name that the other's
solution defines.
Leaves out: judging how hard an exercise is.
"""
import ast
import pathlib

from .cells import defined_names, find_exercises, python_source, read_notebook, setup_cell, source, used_names

# Exercises whose answer cannot cross the sandbox as plain data: students self-check them; `grade` lists them
# with status "self-check" and no points.
SELF_CHECK_ONLY: dict = {}  # id -> the reason, shown to students in their feedback

BOOK = pathlib.Path(__file__).resolve().parents[2] / "book"


def chapter_notebook(chapter: str, book=BOOK) -> pathlib.Path:
    found = sorted(pathlib.Path(book).glob(f"{chapter}_*.ipynb"))
    if not found:
        raise ValueError(f"no notebook book/{chapter}_*.ipynb")
    return found[0]


def entries_for(chapter: str, book=BOOK) -> tuple[list, str, str]:
    """(exercise entries, the setup cell's source, notebook file name) of one chapter, read from the book."""
    path = chapter_notebook(chapter, book)
    nb = read_notebook(path)
    exercises = find_exercises(nb)
    defines = {}
    for e in exercises:
        tree = ast.parse(python_source(source(nb["cells"][e["definition"]])))
        defines[e["id"]] = set(defined_names(tree)), used_names(tree)
    entries = []
    for e in exercises:
        prose = source(nb["cells"][e["prose"]]) if e["prose"] is not None else ""
        uses = defines[e["id"]][1]
        requires = [o["id"] for o in exercises if o["id"] != e["id"] and o.get("name") in uses]
        entries.append({
            "id": e["id"], "chapter": chapter, "name": e["name"], "kind": e["kind"],
            "checker": f"{e['module']}.{e['checker']}", "points": 1 if "warm-up" in prose.lower() else 2,
            "requires": requires,
        })
        if e["id"] in SELF_CHECK_ONLY:
            entries[-1].update(points=0, self_check_only=SELF_CHECK_ONLY[e["id"]])
    return entries, setup_cell(nb), path.name


def render(chapters: list, book=BOOK) -> str:
    """The source of `table.py` for `chapters`."""
    exercises, preambles, notebooks = {}, {}, {}
    for chapter in chapters:
        entries, preamble, name = entries_for(chapter, book)
        for entry in entries:
            exercises[entry.pop("id")] = entry
        preambles[chapter], notebooks[chapter] = preamble, name
    return (
        '"""Points and requirements of every exercise, by id, and each chapter\'s preamble (written by tablegen).\n\n'
        "Regenerate with `python -m transformer_course.assignments table > transformer_course/assignments/table.py`\n"
        "after a chapter's exercises change (then restore any points you edited); tests/test_assignments_table.py\n"
        'checks that this table and the notebooks agree.\n"""\n\n'
        "# id: chapter, the name the exercise defines, function or variable, checker (in exercises/), points, ids it\n"
        "# requires (their definitions run first).\n"
        "EXERCISES = {\n" + "".join(f"    {key!r}: {_entry(e)},\n" for key, e in exercises.items()) + "}\n\n"
        "NOTEBOOKS = {\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in notebooks.items()) + "}\n\n"
        "# The setup cell of each chapter: what a student's definitions run after.\n"
        "PREAMBLES = {\n" + "".join(f"    {k!r}: {_text(v)},\n" for k, v in preambles.items()) + "}\n\n\n"
        "def chapter_exercises(chapter: str) -> list:\n"
        '    """The ids of a chapter\'s exercises, in the order of the chapter."""\n'
        "    return [key for key, entry in EXERCISES.items() if entry['chapter'] == chapter]\n"
    )


def _entry(e: dict) -> str:
    return ("dict(" + ", ".join(f"{k}={v!r}" for k, v in e.items()) + ")")


def _text(text: str) -> str:
    if '"""' in text or "\\" in text or text.endswith('"'):
        return repr(text)
    return '"""\\\n' + text + '"""' if text.endswith("\n") else '"""\\\n' + text + '\\\n"""'
