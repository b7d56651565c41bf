"""`release`: the student notebooks leak no solution, ship no unsolvable exercise, and change nothing else.

Every chapter in the table is released and checked cell by cell: each definition cell is a stub of the named
function or variable, the checker cells are kept (outputs cleared), the solution prose is gone, every other
cell and output is unchanged, and the manifest's hashes match. Each stub, run after its chapter's setup cell,
makes its checker report "not implemented"; the source notebooks, graded as submissions, pass every exercise.
Chapters 03 and 05 are executed top to bottom in a kernel (about 10 s each on 2 cores).
"""
import ast
import json
import pathlib

import pytest

from transformer_course import exercises
from transformer_course.assignments import manifest as manifest_module
from transformer_course.assignments import table
from transformer_course.assignments.cells import defined_names, find_exercises, read_notebook, source
from transformer_course.assignments.grade import grade_all
from transformer_course.assignments.release import release
from transformer_course.assignments.sandbox import Limits

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
EXECUTED = ["03", "05"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    manifest = release(sorted(table.PREAMBLES), out)
    return out, manifest


def _pairs(released):
    out, manifest = released
    for name, info in manifest["notebooks"].items():
        yield name, info, read_notebook(BOOK / name), read_notebook(out / name)


def test_manifest_describes_the_release(released):
    out, manifest = released
    assert manifest_module.load(out / "manifest.json") == manifest
    assert set(manifest["exercises"]) == set(table.EXERCISES)
    for name, info in manifest["notebooks"].items():
        assert info["sha256"] == manifest_module.sha256(out / name)
        assert info["exercises"] == table.chapter_exercises(info["chapter"])


def test_stubs_replace_solutions_and_nothing_else_changes(released):
    for name, info, src, student in _pairs(released):
        found = find_exercises(src)
        dropped = {i for e in found for i in range(e["start"], e["end"] + 1)} - \
            {i for e in found for i in (e["definition"], e["call"])}
        kept = [c for i, c in enumerate(src["cells"]) if i not in dropped]
        assert len(kept) == len(student["cells"]), name
        changed = {e["definition"] for e in found} | {e["call"] for e in found}
        kept_index = [i for i in range(len(src["cells"])) if i not in dropped]
        text = json.dumps(student)
        assert "solution-start" not in text and "solution-end" not in text, name
        for i, new in zip(kept_index, student["cells"]):
            old = src["cells"][i]
            if i not in changed:
                assert new == old, f"{name}: cell {i} changed"
        for e in found:
            entry = table.EXERCISES[e["id"]]
            new = student["cells"][kept_index.index(e["definition"])]
            stub = source(new)
            defs = defined_names(ast.parse(stub))
            assert defs == {entry["name"]: entry["kind"]}, f"{e['id']}: the stub defines {defs}"
            assert new["outputs"] == [] and "solution" not in new.get("metadata", {}).get("tags", [])
            assert (entry["kind"] == "function") == ("raise NotImplementedError" in stub)
            body = source(src["cells"][e["definition"]])
            solution_lines = [l.strip() for l in body.splitlines() if l.strip() and not l.strip().startswith(
                ("#", "def ", "return", "else", "print(", '"""'))]
            leaks = [l for l in solution_lines if len(l) > 12 and l != entry["name"] and l in stub]
            assert not leaks, f"{e['id']}: the stub holds solution lines {leaks}"
            call = student["cells"][kept_index.index(e["call"])]
            assert source(call) == source(src["cells"][e["call"]]) and call["outputs"] == []


def test_every_stub_reports_not_implemented(released):
    """Cell by cell, as a student's kernel would: the setup cell, the stub, the self-check."""
    for name, info, src, student in _pairs(released):
        space = {"__name__": "__main__"}
        exec(table.PREAMBLES[info["chapter"]], space)
        for ex in info["exercises"]:
            entry = table.EXERCISES[ex]
            cell = next(c for c in student["cells"] if f"# {ex}:" in source(c))
            exec(source(cell), space)
            module, check = entry["checker"].split(".")
            result = getattr(getattr(exercises, module), check)(space[entry["name"]])
            assert not result.passed, ex
            assert "NotImplementedError" in result.message or "None" in result.message, (ex, result.message)


def test_source_solutions_pass_when_graded(released, tmp_path):
    out, manifest = released
    student = tmp_path / "submissions" / "reference"
    student.mkdir(parents=True)
    for name in manifest["notebooks"]:
        (student / name).write_bytes((BOOK / name).read_bytes())
    rows = grade_all(tmp_path / "submissions", manifest, Limits(wall_s=60), jobs=2, progress=False)
    assert len(rows) == len(table.EXERCISES)
    failed = [(r.exercise, r.status, r.hint) for r in rows if not r.passed and r.status != "self-check"]
    assert not failed
    assert {r.exercise for r in rows if r.status == "self-check"} == \
        {k for k, v in table.EXERCISES.items() if v.get("self_check_only")}


@pytest.mark.parametrize("chapter", EXECUTED)
def test_released_chapter_runs_top_to_bottom(released, chapter):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    out, manifest = released
    name = table.NOTEBOOKS[chapter]
    nb = nbformat.read(out / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": str(BOOK)}})
    client.execute()
    checks = [c for c in nb.cells if c.cell_type == "code" and source(c).startswith("tc.exercises.")]
    assert len(checks) == len(manifest["notebooks"][name]["exercises"])
    for cell in checks:
        shown = "".join(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", ""))
                        for o in cell.outputs)
        assert "❌ Not yet" in shown and ("NotImplementedError" in shown or "None" in shown), shown
