"""A generated class for the grading tests: chapter 5's notebook with each student's cells swapped in.

`make_class(folder, victim, gradebook)` writes one folder per student, each holding 05_self_attention.ipynb (or
garbage), and returns {student: {exercise id: (passed, status)}}, the exact grade each must get.
Nothing here is a fixture file: every submission is built from book/05_self_attention.ipynb.
"""
import copy
import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

from transformer_course.assignments import release
from transformer_course.assignments.cells import find_exercises, read_notebook

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
NOTEBOOK = "05_self_attention.ipynb"
ATT, PRE, SCA = "ex-05-attention", "ex-05-prefix", "ex-05-scale"
POINTS = {ATT: 1.0, PRE: 2.0, SCA: 2.0}

# Whether the sandbox gets a mount namespace here (as root: unshare(CLONE_NEWNS); not as root, inside a user
# namespace). Where it does not, the book and the other submissions stay readable: the documented fallback.
MOUNTS = subprocess.run(
    [sys.executable, "-c", "import ctypes, os, sys; sys.exit(ctypes.CDLL(None).unshare(0x20000 if os.geteuid() == 0 "
                           "else 0x10000000 | 0x40000000 | 0x20000) != 0)"]).returncode == 0

OK = (True, "passed")
FAIL = (False, "failed")

# Wrong answers, each a typical mistake that chapter 5's checkers name.
NO_SCALE = """\
def single_head_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1)
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
"""
NO_MASK = """\
def single_head_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v
"""
WRONG_DIM = """\
def single_head_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num() @ v
"""
ZERO_FILL = """\
def single_head_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0.0)
    return torch.softmax(scores, dim=-1) @ v
"""
WEIGHTS = """\
def single_head_attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1)
"""
PLAIN_CAUSAL = """\
def prefix_lm_mask(T, n_prefix):
    return torch.ones(T, T, dtype=torch.bool).tril()
"""
TRANSPOSED = """\
def prefix_lm_mask(T, n_prefix):
    query = torch.arange(T)[:, None]
    key = torch.arange(T)[None, :]
    return ((key <= query) | (key < n_prefix)).T
"""
ONE_TOO_LONG = """\
def prefix_lm_mask(T, n_prefix):
    query = torch.arange(T)[:, None]
    key = torch.arange(T)[None, :]
    return (key <= query) | (key < n_prefix + 1)
"""
PLAIN_SCALE = """\
def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1 / math.sqrt(d_k)
"""
BY_D = """\
def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1 / (d_k * sigma_q * sigma_k)
"""
SYNTAX = """\
def single_head_attention(q, k, v, causal)
    return q
"""
LOOP_TOP = """\
while True:
    pass

def single_head_attention(q, k, v, causal):
    return q
"""
LOOP_IN_FN = """\
def prefix_lm_mask(T, n_prefix):
    while True:
        pass
"""
BIG_ALLOC = """\
def single_head_attention(q, k, v, causal):
    hog = torch.ones(10**9, dtype=torch.float32)     # 4 GB
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
"""
FORK_BOMB = """\
import os
while True:
    try:
        os.fork()
    except OSError:
        pass

def prefix_lm_mask(T, n_prefix):
    return torch.ones(T, T, dtype=torch.bool)
"""
PRINTS = """\
print("x" * 100_000_000)   # 100 MB to stdout

def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""
EXITS = """\
def single_head_attention(q, k, v, causal):
    import os
    os._exit(0)
"""
PATCH = """\
import torch
import transformer_course as tc
import transformer_course.exercises.base as base
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
base.check_tensor = lambda *a, **k: base.CheckResult(True, "patched")
tc.exercises.ch05.check_prefix_lm_mask = lambda fn: base.CheckResult(True, "patched")

def prefix_lm_mask(T, n_prefix):
    return torch.zeros(T, T, dtype=torch.bool)
"""
HELPER_CELL = """\
def causal_allowed(T):
    return torch.ones(T, T, dtype=torch.bool).tril()
"""
USES_HELPER = """\
def prefix_lm_mask(T, n_prefix):
    return causal_allowed(T) | (torch.arange(T) < n_prefix)[None, :]

print(prefix_lm_mask(4, 2), some_variable_of_the_chapter)   # a demo line: dropped, not fatal
"""


def _remove(path):
    return f"""\
import os
os.remove({str(path)!r})

def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""


def _gradebook(path):
    return f"""\
try:
    with open({str(path)!r}, "w") as f:
        f.write("student,exercise,points\\nmallory,ex-05-attention,100\\n")
except OSError:
    pass
import shutil
shutil.rmtree({str(path.parent)!r}, ignore_errors=True)

def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""


def _steal(name, path):
    """Read the solution of `name` from a notebook the sandbox should hide, and run it."""
    return f"""\
def {name}(*args, **kwargs):
    import json
    for cell in json.load(open({str(path)!r}))["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "code" and "def {name}" in text:
            space = dict(globals())
            exec(text, space)
            return space["{name}"](*args, **kwargs)
"""


HELPER_BELOW = """\
def single_head_attention(q, k, v, causal):
    return _attend(q, k, v, causal)

def _attend(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
"""
DISPLAY = """\
def prefix_lm_mask(T, n_prefix):
    query = torch.arange(T)[:, None]
    key = torch.arange(T)[None, :]
    return (key <= query) | (key < n_prefix)

display(prefix_lm_mask(4, 2))
get_ipython().run_line_magic("time", "prefix_lm_mask(4, 2)")
"""
NOT_REALLY = """\
if False:
    def unit_variance_scale(d_k, sigma_q, sigma_k):
        return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""


def _zip_bomb() -> str:
    """A reply forged from inside the answer (the request id read off the child's stack), re-zipped with
    ZIP_DEFLATED: 64 MiB of zeros in 64 KiB. The grader must refuse it before decoding."""
    buffer = io.BytesIO()
    import torch

    torch.save({"id": (0, 0), "ok": True, "value": torch.zeros(1 << 24), "error": None}, buffer)
    plain, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in plain.infolist():
            z.writestr(info.filename, plain.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return f"""\
_BOMB = {out.getvalue()!r}

def single_head_attention(q, k, v, causal):
    import fcntl, os, struct, sys
    ident = sys._getframe(1).f_locals["ident"]   # the request being answered, in the sandbox's own loop
    for fd in range(3, 30):
        try:
            if os.readlink(f"/proc/self/fd/{{fd}}").startswith("pipe:") and fcntl.fcntl(fd, fcntl.F_GETFL) & 3 == 1:
                os.write(fd, b"TCG1" + struct.pack("<Qqq", len(_BOMB), *ident) + _BOMB)
        except OSError:
            pass
    return q
"""


FRAME_AT_TOP = """\
import fcntl, os, struct
for fd in range(3, 30):
    try:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:") and fcntl.fcntl(fd, fcntl.F_GETFL) & 3 == os.O_WRONLY:
            os.write(fd, b"TCG1" + struct.pack("<Qqq", 4, 0, 0) + b"junk")
    except OSError:
        pass

def single_head_attention(q, k, v, causal):
    return q
"""


def _private_files(stem):
    return f"""\
for folder in ("/tmp", "/dev/shm", "/var/tmp"):
    try:
        with open(f"{{folder}}/{stem}", "wb") as f:
            f.write(b"x" * (8 << 20))
    except OSError:
        pass

def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""


DAEMON = """\
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:             # a daemon, in no process group the grader knows
        for _ in range(1200):
            time.sleep(0.05)
            if os.path.exists(GRADES):
                time.sleep(0.5)
                with open(GRADES, "a") as f:
                    f.write("mallory,05_self_attention.ipynb,ex-05-attention,100,1.0,True,passed,,0\\n")
                break
    os._exit(0)

def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1.0 / (math.sqrt(d_k) * sigma_q * sigma_k)
"""


def daemon_class(folder, gradebook) -> dict:
    """Two students for the fallback: one leaves a daemon that waits for grades.csv to rewrite it."""
    folder = pathlib.Path(folder)
    nb, where = _source_notebook()
    students = {"d01_correct": (nb, {ATT: OK, PRE: OK, SCA: OK}),
                "d02_daemon": (_with(nb, where, {SCA: f"GRADES = {str(gradebook)!r}\n" + DAEMON}),
                               {ATT: OK, PRE: OK, SCA: OK})}
    for name, (notebook, _) in students.items():
        (folder / name).mkdir(parents=True)
        (folder / name / NOTEBOOK).write_text(json.dumps(notebook))
    return {name: expected for name, (_, expected) in students.items()}


def _source_notebook():
    nb = read_notebook(BOOK / NOTEBOOK)
    return nb, {e["id"]: e for e in find_exercises(nb)}


def _with(nb, where, replace: dict):
    out = copy.deepcopy(nb)
    for ex, text in replace.items():
        out["cells"][where[ex]["definition"]]["source"] = text.splitlines(keepends=True)
    return out


def make_class(folder, victim, gradebook) -> dict:
    """Write the class into `folder`; return {student: {exercise: (passed, status)}}."""
    folder = pathlib.Path(folder)
    nb, where = _source_notebook()
    students = {}

    def add(name, notebook, expected):
        (folder / name).mkdir(parents=True)
        path = folder / name / NOTEBOOK
        if isinstance(notebook, str):
            path.write_text(notebook)
        else:
            path.write_text(json.dumps(notebook, indent=1))
        students[name] = expected

    add("s01_correct", nb, {ATT: OK, PRE: OK, SCA: OK})
    add("s02_partial", _with(nb, where, {PRE: PLAIN_CAUSAL}), {ATT: OK, PRE: FAIL, SCA: OK})
    add("s03_no_scale", _with(nb, where, {ATT: NO_SCALE}), {ATT: FAIL, PRE: OK, SCA: OK})
    add("s04_no_mask", _with(nb, where, {ATT: NO_MASK}), {ATT: FAIL, PRE: OK, SCA: OK})
    add("s05_wrong_dim", _with(nb, where, {ATT: WRONG_DIM}), {ATT: FAIL, PRE: OK, SCA: OK})
    add("s06_zero_fill", _with(nb, where, {ATT: ZERO_FILL, SCA: BY_D}), {ATT: FAIL, PRE: OK, SCA: FAIL})
    add("s07_weights", _with(nb, where, {ATT: WEIGHTS, PRE: TRANSPOSED}), {ATT: FAIL, PRE: FAIL, SCA: OK})
    add("s08_off_by_one", _with(nb, where, {PRE: ONE_TOO_LONG, SCA: PLAIN_SCALE}), {ATT: OK, PRE: FAIL, SCA: FAIL})
    add("s09_syntax", _with(nb, where, {ATT: SYNTAX}), {ATT: (False, "syntax-error"), PRE: OK, SCA: OK})
    stub_nb, _ = release.release_notebook(nb, "05")
    add("s10_not_implemented", stub_nb, {ATT: (False, "not-implemented"), PRE: (False, "not-implemented"),
                                          SCA: (False, "not-implemented")})
    add("s11_loop_top", _with(nb, where, {ATT: LOOP_TOP}), {ATT: (False, "timeout"), PRE: OK, SCA: OK})
    add("s12_loop_in_fn", _with(nb, where, {PRE: LOOP_IN_FN}), {ATT: OK, PRE: (False, "timeout"), SCA: OK})
    add("s13_4gb", _with(nb, where, {ATT: BIG_ALLOC}), {ATT: FAIL, PRE: OK, SCA: OK})
    add("s14_fork_bomb", _with(nb, where, {PRE: FORK_BOMB}), {ATT: OK, PRE: (False, "timeout"), SCA: OK})
    add("s15_prints", _with(nb, where, {SCA: PRINTS}), {ATT: OK, PRE: OK, SCA: (False, "error")})
    add("s16_os_remove", _with(nb, where, {SCA: _remove(victim)}), {ATT: OK, PRE: OK, SCA: (False, "error")})
    add("s17_gradebook", _with(nb, where, {SCA: _gradebook(gradebook)}), {ATT: OK, PRE: OK, SCA: OK})
    add("s18_monkeypatch", _with(nb, where, {PRE: PATCH, ATT: NO_MASK}), {ATT: FAIL, PRE: FAIL, SCA: OK})
    add("s19_exits", _with(nb, where, {ATT: EXITS}), {ATT: (False, "crashed"), PRE: OK, SCA: OK})
    # reordered: the three definition cells moved to the very top, in reverse order, before the setup cell
    moved = copy.deepcopy(nb)
    defs = [moved["cells"][where[ex]["definition"]] for ex in (SCA, PRE, ATT)]
    rest = [c for i, c in enumerate(moved["cells"]) if i not in {where[ex]["definition"] for ex in where}]
    moved["cells"] = defs + rest
    add("s20_reordered", moved, {ATT: OK, PRE: OK, SCA: OK})
    # deleted: only two definition cells left (the scale exercise's cell is gone), no markdown, no setup
    kept = copy.deepcopy(nb)
    kept["cells"] = [kept["cells"][where[ATT]["definition"]], kept["cells"][where[PRE]["definition"]]]
    add("s21_deleted", kept, {ATT: OK, PRE: OK, SCA: (False, "missing")})
    add("s22_not_json", "this is not { a notebook", {ATT: (False, "unreadable"), PRE: (False, "unreadable"),
                                                     SCA: (False, "unreadable")})
    # a helper in its own cell, placed after the answer, and a demo line using a chapter variable
    helper = _with(nb, where, {PRE: USES_HELPER})
    helper["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                            "source": HELPER_CELL.splitlines(keepends=True)})
    add("s23_helper", helper, {ATT: OK, PRE: OK, SCA: OK})
    # reading the book's solutions and another student's notebook: hidden by the sandbox's mount namespace
    stolen = (False, "failed") if MOUNTS else OK
    other = stolen if MOUNTS or os.geteuid() != 0 else FAIL  # as root, the test's tmp folder is root's only
    add("s24_reads_book", _with(nb, where, {ATT: _steal("single_head_attention", BOOK / NOTEBOOK),
                                            SCA: _steal("unit_variance_scale", BOOK / NOTEBOOK),
                                            PRE: _steal("prefix_lm_mask", folder / "s01_correct" / NOTEBOOK)}),
        {ATT: stolen, PRE: other, SCA: stolen})
    unreadable = {ATT: (False, "unreadable"), PRE: (False, "unreadable"), SCA: (False, "unreadable")}
    (folder / "s25_symlink").mkdir()
    (folder / "s25_symlink" / NOTEBOOK).symlink_to(BOOK / NOTEBOOK)
    students["s25_symlink"] = unreadable
    (folder / "s26_fifo").mkdir()
    os.mkfifo(folder / "s26_fifo" / NOTEBOOK)
    students["s26_fifo"] = unreadable
    add("s27_zip_bomb", _with(nb, where, {ATT: _zip_bomb()}), {ATT: (False, "crashed"), PRE: OK, SCA: OK})
    add("s28_frame_at_top", _with(nb, where, {ATT: FRAME_AT_TOP}), {ATT: (False, "crashed"), PRE: OK, SCA: OK})
    add("s29_helper_below", _with(nb, where, {ATT: HELPER_BELOW}), {ATT: OK, PRE: OK, SCA: OK})
    add("s30_display", _with(nb, where, {PRE: DISPLAY}), {ATT: OK, PRE: OK, SCA: OK})
    add("s31_nested", '{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}", unreadable)
    add("s32_tmp_files", _with(nb, where, {SCA: _private_files(f"tc-class-{folder.parent.name}")}),
        {ATT: OK, PRE: OK, SCA: OK})
    add("s33_if_false", _with(nb, where, {SCA: NOT_REALLY}), {ATT: OK, PRE: OK, SCA: (False, "missing")})
    return students


def expected_points(expected: dict) -> float:
    return sum(POINTS[ex] for ex, (passed, _) in expected.items() if passed)
