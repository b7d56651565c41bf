"""Chapter 8's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch

from transformer_course.exercises import ch08


def window_mask(T, window):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & (i - j < window)


def earliest_input(t, windows):
    if None in windows:
        return 0
    return max(0, t - sum(w - 1 for w in windows))


def windowed_cache_bytes(T, windows, n_kv_heads, d_k, dtype_bytes):
    per_position = 2 * n_kv_heads * d_k * dtype_bytes  # keys and values of one layer
    return sum(per_position * (T if w is None else min(T, w)) for w in windows)


# banded_attention pads T = 1000 to 16 chunks of 64 queries, each scored against 128 keys: worked by hand,
# 1000 / 64 = 15.6 -> 16 chunks; 16 * 64 * 128 = 131,072.
BANDED_SCORES = 131_072


def test_reference_answers_pass():
    assert ch08.check_window_mask(window_mask).passed
    assert ch08.check_window_mask(lambda T, w: window_mask(T, w).int()).passed  # 0/1 masks are fine too
    assert ch08.check_earliest_input(earliest_input).passed
    assert ch08.check_earliest_input(lambda t, ws: torch.tensor(earliest_input(t, ws))).passed
    assert ch08.check_earliest_input(lambda t, ws: float(earliest_input(t, ws))).passed
    assert ch08.check_banded_scores(BANDED_SCORES).passed
    assert ch08.check_banded_scores(torch.tensor(BANDED_SCORES)).passed
    assert ch08.check_windowed_cache_bytes(windowed_cache_bytes).passed


def test_banded_scores_is_what_banded_attention_really_forms():
    # measure the scores tensor of the package's banded_attention (independent of the checker's formula)
    from torch.overrides import TorchFunctionMode

    from transformer_course.sparse_attention import banded_attention

    sizes = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul):
                sizes.append(out.numel())
            return out

    q = torch.zeros(1, 1, 1000, 4)
    with Record():
        banded_attention(q, q, q, 64)
    assert max(sizes) == BANDED_SCORES
    assert math.ceil(1000 / 64) * 64 * 128 == BANDED_SCORES


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


def test_earliest_input_hints():
    def check(fn, text):
        result = ch08.check_earliest_input(fn)
        assert not result.passed and text in result.message, result.message
        assert str(result).count("\n") == 0

    def local_only(rule):  # the right answer for global layers, a mistake for local ones
        return lambda t, ws: 0 if None in ws else rule(t, ws)

    check(local_only(lambda t, ws: t - sum(w - 1 for w in ws)), "max(0")
    check(local_only(lambda t, ws: max(0, t - sum(ws))), "w - 1 positions back")
    check(local_only(lambda t, ws: max(0, t - len(ws) * (ws[0] - 1))), "different windows")
    check(local_only(lambda t, ws: max(0, t - len(ws) * (max(ws) - 1))), "different windows")
    check(local_only(lambda t, ws: max(0, t - (ws[-1] - 1))), "one layer's reach")
    check(lambda t, ws: max(0, t - sum(w - 1 for w in ws if w is not None)), "global layer")
    check(lambda t, ws: max(0, t - sum(w - 1 for w in ws)), "None is a global layer")  # TypeError on None
    check(lambda t, ws: earliest_input(t, ws) + 0.5, "return an int")
    check(lambda t, ws: str(earliest_input(t, ws)), "return an int")


def test_banded_scores_hints():
    def check(answer, text):
        result = ch08.check_banded_scores(answer)
        assert not result.passed and text in result.message, result.message
        assert "131,072" not in result.message and "131072" not in result.message  # never the answer

    check(1000 * 1000, "full T x T")
    check(1000 * 1001 // 2, "causal triangle")
    check(2 * 1000 * 64, "divides into chunks")  # 2 T w: forgot the padding of the last chunk
    check(64 * 1000 - 64 * 63 // 2, "pairs the softmax keeps")
    check(1000 * 64, "pairs the softmax keeps")
    check(16 * 64 * 64, "the one before it")
    check(15 * 64 * 128, "not dropped")
    check(4 * BANDED_SCORES, "one batch element and one head")
    check(12345, "ceil(T / window)")
    check(None, "return an int")
    check("131072", "return an int")
    check(float("nan"), "return an int")


def test_windowed_cache_bytes_hints():
    def check(fn, text):
        result = ch08.check_windowed_cache_bytes(fn)
        assert not result.passed and text in result.message, result.message

    def slots(rule):
        def fn(T, windows, n_kv_heads, d_k, dtype_bytes):
            return sum(2 * n_kv_heads * d_k * dtype_bytes * (T if w is None else rule(T, w)) for w in windows)
        return fn

    check(slots(lambda T, w: T), "rolling buffer")
    check(slots(lambda T, w: w), "min(T, window)")
    check(slots(lambda T, w: min(T, w - 1)), "holds `window` positions")
    check(lambda *a: windowed_cache_bytes(*a) // 2, "keys AND values")
    check(lambda T, ws, h, d, b: windowed_cache_bytes(T, ws, h, d, 1), "dtype_bytes")
    check(lambda T, ws, h, d, b: windowed_cache_bytes(T, [w for w in ws if w is not None], h, d, b),
          "global layers (None) have a cache too")
    check(lambda *a: windowed_cache_bytes(*a) + 1, "Add up the layers")
    check(lambda *a: windowed_cache_bytes(*a) / 7, "return an int")


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    functions = (ch08.check_window_mask, ch08.check_earliest_input, ch08.check_windowed_cache_bytes)
    for check in functions:
        for answer in (boom, lambda *a: None, lambda *a: "mask", lambda *a: torch.full((3, 3), float("nan")), 42,
                       None, lambda *a: float("nan"), lambda *a: float("inf")):
            result = check(answer)
            assert not result.passed and isinstance(result.message, str)
        assert "raised RuntimeError" in check(boom).message
    for answer in (None, "x", float("nan"), float("inf"), [1], torch.zeros(2), -5, boom, True):
        result = ch08.check_banded_scores(answer)
        assert not result.passed and isinstance(result.message, str)


def test_a_hanging_function_times_out(monkeypatch):
    from transformer_course.exercises import base

    original = base.run_with_timeout
    quick = lambda fn, *a, **k: original(fn, *a, **{**k, "timeout": 0.2})  # noqa: E731
    monkeypatch.setattr(ch08, "run_with_timeout", quick)
    monkeypatch.setattr(base, "run_with_timeout", quick)  # the one run_for_int calls
    for check, hang in ((ch08.check_window_mask, lambda T, w: time.sleep(5)),
                        (ch08.check_earliest_input, lambda t, ws: time.sleep(5)),
                        (ch08.check_windowed_cache_bytes, lambda *a: time.sleep(5))):
        start = time.perf_counter()
        result = check(hang)
        assert not result.passed and "did not finish" in result.message
        assert time.perf_counter() - start < 3


def test_failures_never_print_the_answer():
    # earliest_input: the exercise asks for t = 1000, windows (8, 16, 32, 64): worked by hand,
    # 1000 - (7 + 15 + 31 + 63) = 884. A wrong answer must not be told 884 or any expected value.
    wrong_answers = (
        lambda t, ws: 0 if None in ws else max(0, t - sum(ws)),
        lambda t, ws: 0 if None in ws else 17,                      # no recognised mistake
        lambda t, ws: earliest_input(t, ws) + (1 if t == 1000 or t == 500 else 0),
    )
    for fn in wrong_answers:
        message = ch08.check_earliest_input(fn).message
        assert "expected" not in message and "884" not in message, message
    assert "further back" in ch08.check_earliest_input(wrong_answers[1]).message  # a hint instead

    # windowed_cache_bytes: 16 local layers x 4096 + 16 global x 32768 positions, x 2 x 8 x 128 x 2 bytes
    # = 2,415,919,104 bytes = 2.25 GiB, the figure the exercise asks for.
    def wrong_on_the_question(T, ws, h, d, b):
        right = windowed_cache_bytes(T, ws, h, d, b)
        return right + 2 if T == 32768 and None in ws else right

    message = ch08.check_windowed_cache_bytes(wrong_on_the_question).message
    assert not ch08.check_windowed_cache_bytes(wrong_on_the_question).passed
    assert "expected" not in message and "2,415,919,104" not in message and "2.25" not in message
    assert "Add up the layers" in message
