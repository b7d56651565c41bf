"""Chapter 15's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import pytest
import torch

from transformer_course.exercises import ch15
from checker_robustness import message


def skipped_tiles(T, block):
    # a loop over the tiles, independent of the closed form in the chapter's solution
    n = math.ceil(T / block)
    return sum(1 for i in range(n) for j in range(n) if j * block > min(T, (i + 1) * block) - 1)


def merge_blocks(o_a, lse_a, o_b, lse_b):
    # weights from a softmax over the two LSEs, rows where both are -inf set to zero afterwards
    both = torch.stack([lse_a, lse_b], -1)
    dead = torch.isneginf(both).all(-1)
    w = torch.softmax(both.masked_fill(dead[..., None], 0.0), -1)
    o = w[..., :1] * o_a + w[..., 1:] * o_b
    lse = torch.where(dead, float("-inf"), torch.logsumexp(both.masked_fill(dead[..., None], 0.0), -1))
    return o.masked_fill(dead[..., None], 0.0), lse


def hbm_elements(T, d, block):
    # element by element as the causal loops load them: each query block reads its Q rows, then every key
    # block that starts at or before its last query, and writes its O rows and their LSEs
    total = 0
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        keys = sum(min(j0 + block, T) - j0 for j0 in range(0, T, block) if j0 <= i1 - 1)
        total += (i1 - i0) * d + 2 * keys * d + (i1 - i0) * (d + 1)
    return total


def test_references_pass():
    assert ch15.check_skipped_tiles(skipped_tiles).passed
    assert ch15.check_merge_blocks(merge_blocks).passed
    assert ch15.check_hbm_elements(hbm_elements).passed


def test_skipped_tiles_hints():
    computed = lambda T, b: (n := -(-T // b)) * (n + 1) // 2  # noqa: E731
    assert "computed" in message(ch15.check_skipped_tiles, computed)
    half = lambda T, b: (-(-T // b)) ** 2 // 2  # noqa: E731
    assert "diagonal" in message(ch15.check_skipped_tiles, half)
    both = lambda T, b: (n := -(-T // b)) * (n - 1)  # noqa: E731
    assert "both sides" in message(ch15.check_skipped_tiles, both)
    floor = lambda T, b: (n := T // b) * (n - 1) // 2  # noqa: E731
    assert "round T / block up" in message(ch15.check_skipped_tiles, floor)
    assert "return an int" in message(ch15.check_skipped_tiles, lambda T, b: "ten")
    assert "return an int" in message(ch15.check_skipped_tiles, lambda T, b: 2.5)


def test_merge_blocks_hints():
    average = lambda o_a, lse_a, o_b, lse_b: ((o_a + o_b) / 2, torch.logaddexp(lse_a, lse_b))  # noqa: E731
    assert "plain average" in message(ch15.check_merge_blocks, average)

    def unnormalised(o_a, lse_a, o_b, lse_b):
        return torch.exp(lse_a)[..., None] * o_a + torch.exp(lse_b)[..., None] * o_b, torch.logaddexp(lse_a, lse_b)
    assert "not normalised" in message(ch15.check_merge_blocks, unnormalised)

    def nan_rows(o_a, lse_a, o_b, lse_b):
        lse = torch.logaddexp(lse_a, lse_b)
        return torch.exp(lse_a - lse)[..., None] * o_a + torch.exp(lse_b - lse)[..., None] * o_b, lse
    assert "NaN" in message(ch15.check_merge_blocks, nan_rows)

    def max_lse(o_a, lse_a, o_b, lse_b):
        return merge_blocks(o_a, lse_a, o_b, lse_b)[0], torch.maximum(lse_a, lse_b)
    assert "denominator" in message(ch15.check_merge_blocks, max_lse)
    assert "pair" in message(ch15.check_merge_blocks, lambda *a: merge_blocks(*a)[0])
    # the hints state principles, not the solution's code
    for answer in (average, unnormalised, nan_rows, max_lse):
        text = message(ch15.check_merge_blocks, answer)
        assert "logaddexp" not in text and "lse_a - lse" not in text and "by 0" not in text


def test_merge_blocks_inputs_follow_the_exercise():
    # a row where a half saw no key comes with output 0 and LSE -inf, as the exercise states
    (o_a, lse_a), (o_b, lse_b), _ = ch15._halves(0)
    assert torch.isneginf(lse_a).any() and not torch.isposinf(lse_a).any() and not torch.isposinf(lse_b).any()
    assert (o_a[torch.isneginf(lse_a)] == 0).all()


def test_hbm_elements_hints():
    nq = lambda T, b: -(-T // b)  # noqa: E731
    unmasked = lambda T, d, b: T * d + nq(T, b) * 2 * T * d + T * (d + 1)  # noqa: E731
    assert "without the mask" in message(ch15.check_hbm_elements, unmasked)
    reads_only = lambda T, d, b: hbm_elements(T, d, b) - T * (d + 1)  # noqa: E731
    assert "writes too" in message(ch15.check_hbm_elements, reads_only)
    no_diagonal = lambda T, d, b: T * d + d * b * nq(T, b) * (nq(T, b) - 1) + T * (d + 1)  # noqa: E731
    assert "diagonal" in message(ch15.check_hbm_elements, no_diagonal)
    half = lambda T, d, b: T * d + nq(T, b) * T * d + T * (d + 1)  # noqa: E731
    assert "not exactly half" in message(ch15.check_hbm_elements, half)
    assert "Correct" not in message(ch15.check_hbm_elements, lambda T, d, b: hbm_elements(T, d, b) + 1)


@pytest.mark.parametrize("check", [ch15.check_skipped_tiles, ch15.check_merge_blocks, ch15.check_hbm_elements])
def test_never_crashes(check):
    def boom(*args):
        raise RuntimeError("oops")

    def hangs(*args):
        while True:
            time.sleep(0.01)

    for answer in (None, 3, "text", boom, lambda *a: None, lambda *a: float("nan"),
                   lambda *a: (torch.full((3, 2, 5, 4), float("nan")), torch.zeros(3, 2, 5))):
        result = check(answer)
        assert not result.passed and result.message
    t0 = time.perf_counter()
    result = check(hangs)
    assert not result.passed and "did not finish" in result.message
    assert time.perf_counter() - t0 < 30
