"""Chapter 8's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import torch

from transformer_course.exercises import ch08


def window_mask(T, window):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & (i - j < window)


def strided(T, stride):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & ((i - j <= stride) | ((i - j) % stride == 0))


def earliest_input(t, pattern, window):
    if "global" in pattern:
        return 0
    return max(0, t - len(pattern) * (window - 1))


def test_reference_answers_pass():
    assert ch08.check_window_mask(window_mask).passed
    assert ch08.check_window_mask(lambda T, w: window_mask(T, w).int()).passed  # 0/1 masks are fine too
    assert ch08.check_strided_mask(strided).passed
    assert ch08.check_earliest_input(earliest_input).passed
    assert ch08.check_earliest_input(lambda t, p, w: torch.tensor(earliest_input(t, p, w))).passed


def test_window_mask_hints():
    def check(fn, text):
        result = ch08.check_window_mask(fn)
        assert not result.passed and text in result.message, result.message

    check(lambda T, w: window_mask(T, w + 1), "counts the query itself")
    check(lambda T, w: window_mask(T, w - 1) if w > 1 else window_mask(T, w + 1), "keys")
    check(lambda T, w: window_mask(T, w).T, "transposed")
    i = lambda T: torch.arange(T)[:, None]  # noqa: E731
    j = lambda T: torch.arange(T)[None, :]  # noqa: E731
    check(lambda T, w: (i(T) - j(T)).abs() < w, "later key")
    check(lambda T, w: torch.ones(T, T, dtype=torch.bool).tril(), "full causal mask")
    check(lambda T, w: window_mask(T, w) & ~torch.eye(T, dtype=torch.bool), "diagonal")
    check(lambda T, w: torch.zeros(T, T).masked_fill(~window_mask(T, w), float("-inf")), "additive bias")
    check(lambda T, w: window_mask(T + 1, w), "shape")


def test_strided_mask_hints():
    def check(fn, text):
        result = ch08.check_strided_mask(fn)
        assert not result.passed and text in result.message, result.message

    def parts(T, l):
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        return i, j, j <= i

    def local_only(T, l):
        i, j, causal = parts(T, l)
        return causal & (i - j <= l)

    def strided_only(T, l):
        i, j, causal = parts(T, l)
        return causal & ((i - j) % l == 0)

    def columns(T, l):
        i, j, causal = parts(T, l)
        return causal & ((i - j <= l) | (j % l == 0))

    check(local_only, "only the local part")
    check(strided_only, "only the strided part")
    check(columns, "(i - j) % stride")
    check(lambda T, l: local_only(T, l) & strided_only(T, l), "union")
    check(lambda T, l: strided(T, l) | torch.ones(T, T, dtype=torch.bool).triu(1), "later key")


def test_earliest_input_hints():
    def check(fn, text):
        result = ch08.check_earliest_input(fn)
        assert not result.passed and text in result.message, result.message

    check(lambda t, p, w: t - len(p) * (w - 1) if "global" not in p else 0, "max(0")
    check(lambda t, p, w: max(0, t - len(p) * w) if "global" not in p else 0, "window-1 positions back")
    check(lambda t, p, w: max(0, t - len(p) * (w - 1)), "global")
    check(lambda t, p, w: max(0, t - (w - 1)) if "global" not in p else 0, "each of the")
    check(lambda t, p, w: earliest_input(t, p, w) + 0.5, "return an int")
    assert ch08.check_earliest_input(lambda t, p, w: float(earliest_input(t, p, w))).passed


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    for check in (ch08.check_window_mask, ch08.check_strided_mask, ch08.check_earliest_input):
        for answer in (boom, lambda *a: None, lambda *a: "mask", lambda *a: torch.full((3, 3), float("nan")), 42):
            result = check(answer)
            assert not result.passed and isinstance(result.message, str)
        assert "raised RuntimeError" in check(boom).message


def test_a_hanging_function_times_out(monkeypatch):
    from transformer_course.exercises import base

    original = base.run_with_timeout
    monkeypatch.setattr(ch08, "run_with_timeout", lambda fn, *a, **k: original(fn, *a, timeout=0.2, **k))
    start = time.perf_counter()
    result = ch08.check_window_mask(lambda T, w: time.sleep(5))
    assert not result.passed and "did not finish" in result.message
    assert time.perf_counter() - start < 3
