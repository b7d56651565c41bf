"""The checker contract: results display one stable line, hints are specific, nothing raises or hangs."""
import math
import os
import pathlib
import threading
import time

import pytest
import torch

from transformer_course.exercises import CheckResult, base, ch02, check_tensor, checker, run_with_timeout

EXPECTED = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7


def failed_with(result, *words):
    assert isinstance(result, CheckResult)
    assert not result.passed, result
    for word in words:
        assert word in result.message, (word, result.message)
    return result


def test_display_is_one_stable_line():
    ok, bad = CheckResult(True, "softmax rows sum to 1"), CheckResult(False, "shape is\n(3, 4)")
    assert repr(ok) == str(ok) == "✅ Correct: softmax rows sum to 1"
    assert str(bad) == "❌ Not yet: shape is (3, 4)"
    assert ok.passed and not bad.passed
    with pytest.raises(TypeError, match="passed"):  # `if result:` would be ambiguous
        bool(bad)
    assert not hasattr(ok, "_repr_html_")


def test_check_tensor_passes_reference_and_tolerates_dtype():
    assert check_tensor(EXPECTED.clone(), EXPECTED, name="out").passed
    assert check_tensor(EXPECTED.double() + 1e-7, EXPECTED, name="out").passed
    assert check_tensor(EXPECTED.clone().requires_grad_(), EXPECTED).passed
    assert check_tensor(3.0, torch.tensor(3.0)).passed
    assert check_tensor(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3])).passed


@pytest.mark.parametrize("answer, words", [
    (None, ["None", "return"]),
    ([[0.0] * 4] * 3, ["torch.Tensor", "list", "torch.tensor("]),
    ("abc", ["torch.Tensor", "str"]),
    (torch.zeros(3, 4, dtype=torch.long), ["dtype int64", "floating-point"]),
    (torch.full((3, 4), math.nan), ["NaN", "12 of 12"]),
    (torch.zeros(3, 5), ["shape (3, 5)", "expected (3, 4)"]),
    (EXPECTED.T.contiguous(), ["shape (4, 3)", "swapped"]),
    (EXPECTED.reshape(2, 6), ["(2, 6)", "reshape"]),
    (EXPECTED * 0.5, ["constant multiple", "k = 0.5"]),
    (EXPECTED / math.sqrt(8), ["constant multiple", "k = 0.3536"]),
    (-EXPECTED, ["k = -1"]),
    (EXPECTED + 1e-3, ["close but not within tolerance", "0.001"]),
    (EXPECTED.flip(0), ["different values", "max |Δ|"]),
])
def test_check_tensor_hints(answer, words):
    failed_with(check_tensor(answer, EXPECTED, name="out"), *words)


def test_inf_hints_and_masked_positions():
    expected = torch.tensor([[0.5, -math.inf], [0.1, 0.2]])
    assert check_tensor(expected.clone(), expected).passed  # matching -inf is fine
    failed_with(check_tensor(torch.tensor([[0.5, 3.0], [0.1, 0.2]]), expected), "±inf", "mask")
    failed_with(check_tensor(torch.tensor([[0.5, -math.inf], [math.inf, 0.2]]), expected), "inf", "(1, 0)")


def test_transposed_values_of_a_square_matrix():
    square = torch.arange(9.0).reshape(3, 3)
    failed_with(check_tensor(square.T, square, name="W"), "transpose")
    batched = torch.arange(18.0).reshape(2, 3, 3)
    failed_with(check_tensor(batched.transpose(-1, -2), batched), "transpose")


def test_integer_tensors_must_be_equal():
    failed_with(check_tensor(torch.tensor([1, 5, 3]), torch.tensor([1, 2, 3]), name="ids"),
                "1 of 3", "index (1,)", "got 5", "expected 2")


def test_run_with_timeout_returns_value_or_failure():
    assert run_with_timeout(lambda x, y=1: x + y, 2, y=3) == (5, None)
    value, problem = run_with_timeout(lambda: 1 / 0)
    assert value is None
    failed_with(problem, "ZeroDivisionError", "division by zero")
    failed_with(run_with_timeout(42)[1], "expected a function", "int")
    failed_with(run_with_timeout(lambda: exit(3))[1], "SystemExit")


def test_run_with_timeout_does_not_hang():
    def hang():
        while True:
            time.sleep(0.01)

    start = time.perf_counter()
    value, problem = run_with_timeout(hang, timeout=0.5)
    assert time.perf_counter() - start < 2.0
    failed_with(problem, "did not finish within 0.5 s")


def child_processes() -> set[int]:
    """Pids of this process's children, zombies included (Linux /proc)."""
    me, children = os.getpid(), set()
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == me:
            children.add(int(stat.parent.name))
    return children


def gil_holding_loop():
    return sum(range(10**10))  # C code: never releases the GIL, ignores threads and signals


def sleeper():
    time.sleep(60)


def huge_answer(*args):
    return torch.zeros(2**26, dtype=torch.int32)  # 256 MB of "ids"


@pytest.fixture
def two_threads():
    """The parent has used 2 intra-op threads: a forked child's torch ops hang unless it resets its pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork") or not pathlib.Path("/proc/self/stat").exists(),
                    reason="needs fork and /proc")
@pytest.mark.parametrize("run", [
    pytest.param(lambda: run_with_timeout(gil_holding_loop, timeout=0.5)[1], id="run_with_timeout-gil-loop"),
    pytest.param(lambda: run_with_timeout(sleeper, timeout=0.5)[1], id="run_with_timeout-sleep"),
    pytest.param(lambda: check_double(lambda x: gil_holding_loop()), id="checker-gil-loop"),
    pytest.param(lambda: check_double(lambda x: sleeper()), id="checker-sleep"),
    pytest.param(lambda: ch02.check_encode(huge_answer), id="check_encode-huge-answer"),
])
def test_any_answer_is_stopped_within_its_limit_and_leaves_nothing_behind(run, two_threads):
    threads, children = set(threading.enumerate()), child_processes()
    start = time.perf_counter()
    result = run()
    assert time.perf_counter() - start < 0.5 + 1.0 or "huge" in repr(run)
    assert time.perf_counter() - start < 5.0 + 1.0  # check_encode gives the reader's function 5 s
    failed_with(result)
    assert set(threading.enumerate()) <= threads
    assert child_processes() <= children


def test_huge_answer_gets_a_count_hint_without_converting():
    start = time.perf_counter()
    failed_with(ch02.check_encode(huge_answer), "67,108,864 ids")
    assert time.perf_counter() - start < 2.0  # converting 2**26 ids with .tolist() alone takes longer


def test_torch_works_in_the_child_after_the_parent_used_two_threads(two_threads):
    x = torch.randn(256, 256)
    value, problem = run_with_timeout(lambda: (x @ x).sum(), timeout=10)
    assert problem is None
    assert torch.allclose(value, (x @ x).sum())
    assert check_double(lambda t: t @ torch.eye(2) * 2).passed


def test_the_readers_prints_come_back_and_exceptions_are_described(capsys):
    def noisy(x):
        print("debugging", x.shape)
        return 2 * x

    assert check_double(noisy).passed
    assert "debugging torch.Size([2, 2])" in capsys.readouterr().out

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}-{b}")

    def raises(x):
        raise Unpicklable(1, 2)

    failed_with(check_double(raises), "Unpicklable", "1-2")
    failed_with(run_with_timeout(lambda: (lambda: 0))[1], "cannot be sent back")


def test_thread_fallback_where_fork_is_unavailable(monkeypatch):
    monkeypatch.setattr(base, "_can_fork", lambda: False)
    assert check_double(lambda x: 2 * x).passed
    start = time.perf_counter()
    failed_with(check_double(lambda x: time.sleep(5)), "did not finish within 0.5 s")
    assert time.perf_counter() - start < 1.5


def test_run_with_timeout_keeps_grad_mode():
    with torch.no_grad():
        assert run_with_timeout(torch.is_grad_enabled) == (False, None)
    assert run_with_timeout(torch.is_grad_enabled) == (True, None)


@checker
def check_double(fn):
    """A chapter-style checker: the reader writes a function that doubles a tensor."""
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    out, problem = run_with_timeout(fn, x, timeout=0.5)
    if problem is not None:
        return problem
    return check_tensor(out, 2 * x, name="double(x)")


@pytest.mark.parametrize("answer, words", [
    (lambda x: 2 * x, []),
    (lambda x: x, ["constant multiple", "k = 0.5"]),
    (lambda x: None, ["None"]),
    (lambda x: x / 0 * 0, ["NaN"]),
    (lambda x: (2 * x).T, ["transpose"]),
    (lambda x: [1, 2], ["torch.Tensor", "list"]),
    (lambda x: x.foo(), ["AttributeError", "foo"]),
    (None, ["expected a function"]),
    (lambda x: time.sleep(60), ["did not finish"]),
])
def test_checker_never_raises(answer, words):
    start = time.perf_counter()
    result = check_double(answer)
    assert time.perf_counter() - start < 3.0
    assert isinstance(result, CheckResult)
    if words:
        failed_with(result, *words)
    else:
        assert result.passed, result
        assert str(result).startswith("✅ Correct:")


def test_checker_turns_checker_bugs_into_results():
    @checker
    def broken(answer):
        raise KeyError("oops")

    @checker
    def returns_wrong_type(answer):
        return True

    failed_with(broken(1), "KeyError", "oops")
    failed_with(returns_wrong_type(1), "bool", "CheckResult")
    assert broken.__name__ == "broken"


def test_as_int_accepts_counts_and_names_what_it_wanted():
    from transformer_course.exercises.base import as_int

    assert as_int(7, "a count") == (7, None)
    assert as_int(torch.tensor(7), "a count") == (7, None)
    assert as_int(7.0, "a count") == (7, None)
    for bad in (7.5, True, "7", None, torch.tensor([1, 2])):
        value, problem = as_int(bad, "a count of FLOPs")
        assert value is None and not problem.passed
        assert problem.message.startswith("return an int (a count of FLOPs), got ")


def test_as_float_accepts_numbers_and_names_what_it_wanted():
    from transformer_course.exercises.base import as_float

    assert as_float(2, "a scale") == (2.0, None) and as_float(torch.tensor(0.5), "a scale") == (0.5, None)
    for bad, words in ((True, "return a number (a scale), got bool"), ("1", "got str"),
                       (None, "got NoneType"), (math.nan, "must be a finite number"), (math.inf, "finite")):
        value, problem = as_float(bad, "a scale")
        assert value is None and not problem.passed and words in problem.message, problem
