"""Grading a generated class of 33 submissions (tests/assignments_class.py): the exact grade of each.

The limits are small so that the class grades in about a minute: 8 s per exercise, 64 processes. The bad
submissions (endless loops, a 4 GB allocation, a fork bomb, 100 MB of output, os.remove outside the scratch
directory, writing the gradebook, patching the checker, os._exit, reading the book's solutions, a symlink, a
FIFO, a zip bomb, forged frames, deep JSON, files in /tmp and /dev/shm) must each lose only their own points.
A second, two-student class runs in the fallback with every namespace refused: a daemon it leaves is killed.
"""
import os
import time

import pytest

from assignments_class import MOUNTS, NOTEBOOK, daemon_class, expected_points, make_class
from transformer_course.assignments.__main__ import main
from transformer_course.assignments.report import read_csv
from transformer_course.assignments.sandbox import live_processes

UID = 65000  # this class's sandbox uids (65000 ..): other tests grading at the same time use 64000 ..

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or os.name != "posix", reason="the sandbox needs POSIX")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    os.chmod(root, 0o755)
    release, submissions, results = root / "release", root / "submissions", root / "results"
    victim = root / "instructor_notes.txt"
    victim.write_text("do not delete\n")
    assert main(["release", "--chapters", "05", "--out", str(release)]) == 0
    results.mkdir()
    (results / "grades.csv").write_text("")  # an old gradebook, which a submission tries to overwrite
    expected = make_class(submissions, victim, results / "grades.csv")
    start = time.monotonic()
    code = main(["grade", str(submissions), "--manifest", str(release / "manifest.json"), "--out", str(results),
                 "--wall", "8", "--nproc", "64", "--uid", str(UID), "--no-progress"])
    seconds = time.monotonic() - start
    print(f"graded {len(expected)} submissions in {seconds:.0f} s")
    assert code == 0
    return results, expected, victim, seconds


def test_every_submission_gets_its_exact_grade(graded):
    results, expected, _, _ = graded
    rows = read_csv(results / "grades.csv")
    got = {(r["student"], r["exercise"]): (r["passed"] == "True", r["status"]) for r in rows}
    want = {(s, ex): v for s, exs in expected.items() for ex, v in exs.items()}
    assert len(rows) == len(want), "one row per student x exercise"
    wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert not wrong, "\n".join(f"{k}: got {g}, expected {v}" for k, (g, v) in wrong.items())
    for student, exs in expected.items():
        points = sum(float(r["points"]) for r in rows if r["student"] == student)
        assert points == expected_points(exs), student


def test_hints_name_the_mistake(graded):
    rows = {(r["student"], r["exercise"]): r for r in read_csv(graded[0] / "grades.csv")}
    hint = lambda s, ex: rows[(s, ex)]["hint"]  # noqa: E731
    assert "1/sqrt(d_k) scale is missing" in hint("s03_no_scale", "ex-05-attention")
    assert "causal mask is not applied" in hint("s04_no_mask", "ex-05-attention")
    assert "wrong dimension" in hint("s05_wrong_dim", "ex-05-attention")
    assert "float('-inf')" in hint("s06_zero_fill", "ex-05-attention")
    assert "attention weights" in hint("s07_weights", "ex-05-attention")
    assert "transposed" in hint("s07_weights", "ex-05-prefix")
    assert "one token too long" in hint("s08_off_by_one", "ex-05-prefix")
    assert "plain causal mask" in hint("s02_partial", "ex-05-prefix")
    assert "does not parse" in hint("s09_syntax", "ex-05-attention")
    assert "NotImplementedError" in hint("s10_not_implemented", "ex-05-attention")
    assert "did not finish within 8 s" in hint("s11_loop_top", "ex-05-attention")
    assert "did not finish within 5 s" in hint("s12_loop_in_fn", "ex-05-prefix")
    assert "allocate" in hint("s13_4gb", "ex-05-attention") or "Memory" in hint("s13_4gb", "ex-05-attention")
    assert "File too large" in hint("s15_prints", "ex-05-scale")
    # the victim lies in the test's tmp folder: under the sandbox's private /tmp it is not even there
    assert ("FileNotFoundError" if MOUNTS else "PermissionError") in hint("s16_os_remove", "ex-05-scale")
    if MOUNTS:
        assert "No such file" in hint("s24_reads_book", "ex-05-attention")
        assert "No such file" in hint("s24_reads_book", "ex-05-prefix")
    assert "symlink" in hint("s25_symlink", "ex-05-attention") or "outside" in hint("s25_symlink", "ex-05-attention")
    assert "not a regular file" in hint("s26_fifo", "ex-05-attention")
    assert "compressed answer" in hint("s27_zip_bomb", "ex-05-attention")
    assert "did not ask" in hint("s28_frame_at_top", "ex-05-attention")
    assert "nested too deeply" in hint("s31_nested", "ex-05-attention")
    assert "did not define unit_variance_scale" in hint("s33_if_false", "ex-05-scale")
    assert "patched" not in hint("s18_monkeypatch", "ex-05-prefix")
    assert "could not be read" in hint("s22_not_json", "ex-05-attention")


def test_no_submission_reaches_outside_its_sandbox(graded):
    results, expected, victim, _ = graded
    assert victim.read_text() == "do not delete\n"
    rows = read_csv(results / "grades.csv")
    assert not any(r["student"] == "mallory" for r in rows)
    assert {p.name for p in (results / "feedback").iterdir()} == {f"{s}.md" for s in expected}
    assert not [p for p in results.rglob("*.tmp")]
    time.sleep(0.2)
    left = [p for uid in range(UID, UID + 256) for p in live_processes(uid)]
    assert not left, f"processes of the sandbox uids still running: {left}"
    stem = f"tc-class-{results.parent.name}"  # what s32_tmp_files wrote in /tmp, /dev/shm and /var/tmp
    planted = [f"{d}/{stem}" for d in ("/tmp", "/dev/shm", "/var/tmp") if os.path.exists(f"{d}/{stem}")]
    for path in planted:
        os.remove(path)
    assert not planted if MOUNTS else True, f"files outside the private tmpfs survived: {planted}"


def test_a_daemon_left_in_the_fallback_is_killed(tmp_path, monkeypatch):
    """Every namespace refused (TC_SANDBOX_FALLBACK=2): the grader is the orphans' subreaper and kills them,
    and writes grades.csv only once no process of a submission is alive."""
    release, submissions, results = tmp_path / "release", tmp_path / "submissions", tmp_path / "results"
    assert main(["release", "--chapters", "05", "--out", str(release)]) == 0
    expected = daemon_class(submissions, results / "grades.csv")
    monkeypatch.setenv("TC_SANDBOX_FALLBACK", "2")
    assert main(["grade", str(submissions), "--manifest", str(release / "manifest.json"), "--out", str(results),
                 "--wall", "8", "--no-progress"]) == 0
    time.sleep(1.5)  # the daemon, were it alive, writes 0.5 s after grades.csv appears
    rows = read_csv(results / "grades.csv")
    assert {(r["student"], r["exercise"]): (r["passed"] == "True", r["status"]) for r in rows} == \
        {(s, ex): v for s, exs in expected.items() for ex, v in exs.items()}


def test_report_is_static_and_complete(graded):
    results, expected, _, _ = graded
    text = (results / "report.html").read_text()
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")
    for student in expected:
        assert student in text
    assert "ex-05-attention" in text and 'class="hist"' in text
    feedback = (results / "feedback" / "s03_no_scale.md").read_text()
    assert "Total: 4 / 5 points" in feedback and "scale is missing" in feedback


def test_rerun_is_idempotent(graded, tmp_path):
    results, expected, _, _ = graded
    before = read_csv(results / "grades.csv")
    # re-grade two students into the same results folder through the library: same rows, files replaced whole
    from transformer_course.assignments import manifest as manifest_module
    from transformer_course.assignments.grade import grade_all
    from transformer_course.assignments.report import write_results
    from transformer_course.assignments.sandbox import Limits

    release = results.parent / "release"
    subset = tmp_path / "subset"
    subset.mkdir()
    for s in ("s01_correct", "s22_not_json"):
        (subset / s).mkdir()
        (subset / s / NOTEBOOK).write_bytes((results.parent / "submissions" / s / NOTEBOOK).read_bytes())
    manifest = manifest_module.load(release / "manifest.json")
    rows = grade_all(subset, manifest, Limits(wall_s=8), jobs=2, progress=False)
    out = tmp_path / "out"
    write_results(rows, out)
    write_results(rows, out)
    again = read_csv(out / "grades.csv")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip([r for r in before if r["student"] in ("s01_correct", "s22_not_json")])
    assert sorted(p.name for p in out.iterdir()) == ["feedback", "grades.csv", "report.html"]
