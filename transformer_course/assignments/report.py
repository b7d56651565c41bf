"""What grading writes: `grades.csv`, a static `report.html` and `feedback/STUDENT.md`, each atomically.

Every file is written to a temporary name in the results folder and renamed into place, so a re-run replaces
the previous results whole and an interrupted run leaves the previous files intact. The HTML has no script and
loads nothing: plain HTML and CSS, the histogram drawn with CSS bars.
Leaves out: uploading grades anywhere.
"""
import csv
import html
import io
import os
import pathlib
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import astuple, fields

from .grade import Row

COLUMNS = [f.name for f in fields(Row)]


def write_atomic(path: pathlib.Path, text: str) -> None:
    # mkstemp creates with O_EXCL (no symlink followed); os.replace swaps the name, never writes through it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def csv_text(rows: list) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(astuple(r))
    return out.getvalue()


def read_csv(path) -> list:
    """The rows of a grades.csv (for tests and for re-reading a previous run)."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def totals(rows: list) -> dict:
    """student -> (points, max points)."""
    out = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        out[r.student][0] += r.points
        out[r.student][1] += r.max_points
    return {s: tuple(v) for s, v in sorted(out.items())}


def safe_name(student: str) -> str:
    return re.sub(r"[^\w.-]", "_", student).lstrip(".") or "_"


def feedback_text(student: str, rows: list) -> str:
    got, best = sum(r.points for r in rows), sum(r.max_points for r in rows)
    lines = [f"# Feedback for {student}", "", f"Total: {got:g} / {best:g} points", ""]
    for r in rows:
        mark = "✅" if r.passed else "❌"
        lines.append(f"- {mark} `{r.exercise}` ({r.notebook}): {r.points:g} / {r.max_points:g}, {r.status}. {r.hint}")
    lines += ["", "Each hint is the line the exercise's self-check prints: run the checker cell under the exercise "
              "in your notebook to see it again.", ""]
    return "\n".join(lines)


def _bars(counts: list, labels: list) -> str:
    top = max(counts) if counts and max(counts) else 1
    cells = "".join(
        f'<div class="bar"><span style="height:{100 * c / top:.0f}%" title="{c}"></span>'
        f"<small>{html.escape(label)}<br>{c}</small></div>" for c, label in zip(counts, labels))
    return f'<div class="hist">{cells}</div>'


def html_text(rows: list) -> str:
    e = html.escape
    students = totals(rows)
    by_ex = defaultdict(list)
    for r in rows:
        by_ex[r.exercise].append(r)
    # histogram of total scores as a percentage, in 10 bins
    bins = [0] * 10
    for got, best in students.values():
        bins[min(9, int(10 * got / best)) if best else 0] += 1
    hist = _bars(bins, [f"{10 * i}–{10 * i + 10}%" for i in range(10)])
    ex_rows = []
    for ex, rs in by_ex.items():
        passed = sum(r.passed for r in rs)
        hints = Counter(r.hint for r in rs if not r.passed).most_common(3)
        hint_html = "".join(f"<li>{e(h)} <b>×{n}</b></li>" for h, n in hints) or "<li>—</li>"
        ex_rows.append(f"<tr><td><code>{e(ex)}</code></td><td>{passed} / {len(rs)}</td>"
                       f'<td><div class="rate"><span style="width:{100 * passed / len(rs):.0f}%"></span></div></td>'
                       f"<td><ul>{hint_html}</ul></td></tr>")
    st_rows = []
    per_student = defaultdict(list)
    for r in rows:
        per_student[r.student].append(r)
    for s, (got, best) in students.items():
        rs = per_student[s]
        marks = " ".join(f'<span class="{"ok" if r.passed else "no"}" title="{e(r.exercise)}: {e(r.hint)}">'
                         f'{"✓" if r.passed else "✗"}</span>' for r in rs)
        st_rows.append(f"<tr><td>{e(s)}</td><td>{got:g} / {best:g}</td><td>{sum(r.passed for r in rs)} / {len(rs)}"
                       f"</td><td>{marks}</td></tr>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Grades</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px;
text-align: left; vertical-align: top; }}
.rate {{ width: 120px; height: 10px; background: #eee; }} .rate span {{ display: block; height: 100%;
background: #3a7; }}
.hist {{ display: flex; align-items: flex-end; gap: 4px; height: 160px; margin: 1em 0 3em; }}
.bar {{ width: 56px; height: 100%; display: flex; flex-direction: column; justify-content: flex-end;
text-align: center; }} .bar span {{ display: block; background: #47a; min-height: 1px; }}
.bar small {{ height: 0; overflow: visible; }} .ok {{ color: #3a7; }} .no {{ color: #c33; }}
ul {{ margin: 0; padding-left: 1.2em; }}
</style></head><body>
<h1>Grades</h1>
<p>{len(students)} students, {len(by_ex)} exercises, {sum(r.passed for r in rows)} of {len(rows)} answers
passed.</p>
<h2>Total scores</h2>{hist}
<h2>Per exercise</h2>
<table><tr><th>exercise</th><th>passed</th><th>pass rate</th><th>most common hints</th></tr>
{"".join(ex_rows)}</table>
<h2>Per student</h2>
<table><tr><th>student</th><th>points</th><th>passed</th><th>exercises</th></tr>
{"".join(st_rows)}</table>
</body></html>
"""


def write_results(rows: list, out) -> None:
    """grades.csv, report.html and feedback/STUDENT.md in `out` (created if needed)."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "feedback"):  # a planted symlink would send root's writes elsewhere
        if folder.is_symlink():
            raise ValueError(f"{folder} is a symlink: the results are not written through it")
    (out / "feedback").mkdir(exist_ok=True)
    write_atomic(out / "grades.csv", csv_text(rows))
    write_atomic(out / "report.html", html_text(rows))
    per_student = defaultdict(list)
    for r in rows:
        per_student[r.student].append(r)
    for student, rs in per_student.items():
        write_atomic(out / "feedback" / f"{safe_name(student)}.md", feedback_text(student, rs))
