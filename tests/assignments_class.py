"""A generated class for the grading tests: chapter 5's notebook with each student's cells swapped in.

`make_class(folder, victim, gradebook)` writes one folder per student, each holding 05_self_attention.ipynb (or
garbage), and returns {student: {exercise id: (passed, status)}}, the exact grade each must get.
Nothing here is a fixture file: every submission is built from book/05_self_attention.ipynb.
"""
import copy
import json
import pathlib

from transformer_course.assignments import release
from transformer_course.assignments.cells import find_exercises, read_notebook

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
NOTEBOOK = "05_self_attention.ipynb"
ATT, PRE, SCA = "ex-05-attention", "ex-05-prefix", "ex-05-scale"
POINTS = {ATT: 1.0, PRE: 2.0, SCA: 2.0}

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
    return students


def expected_points(expected: dict) -> float:
    return sum(POINTS[ex] for ex, (passed, _) in expected.items() if passed)
