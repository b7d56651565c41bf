"""Chapter 14's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math

import pytest
import torch
from transformers.generation.logits_process import MinPLogitsWarper

from transformer_course.exercises import ch14
from checker_robustness import assert_survives_exceptions_and_hangs, message


def min_p_filter(logits, min_p):
    # written independently of the checker: sort, find the threshold, scatter back
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    drop_sorted = sorted_probs < min_p * sorted_probs[..., :1]
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def expected_tokens(alpha, k):
    # the sum of P(the round emits at least i tokens) = alpha^(i-1), i = 1..k+1, term by term
    return sum(alpha ** i for i in range(k + 1))


def test_reference_answers_pass():
    assert ch14.check_min_p_filter(min_p_filter).passed
    assert ch14.check_expected_tokens(expected_tokens).passed
    # Mistral 7B, Jiang et al. 2023 Table 1: 32 layers, 8 KV heads x 128, window 4096; bfloat16 = 2 bytes
    assert ch14.check_mistral_kv_bytes(2 * 32 * 8 * 128 * 4096 * 2).passed
    assert ch14.check_mistral_kv_bytes(torch.tensor(536870912)).passed


def test_min_p_reference_equals_hugging_face():
    """The checker's reference against `transformers`' MinPLogitsWarper, a min-p nobody here wrote."""
    for logits, min_p in ch14._min_p_cases():
        flat = logits.reshape(-1, logits.shape[-1])
        hf = MinPLogitsWarper(min_p)(None, flat.clone())
        assert torch.equal(ch14.min_p_reference(flat, min_p), hf)
    # and on a hand example: p = (0.5, 0.3, 0.15, 0.05), min_p = 0.2 -> threshold 0.1: the last is dropped
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(ch14.min_p_reference(logits, 0.2)).tolist() == [[True, True, True, False]]


def test_expected_tokens_against_a_simulation():
    """Independent of the formula: simulate rounds where each drafted token is accepted with probability alpha."""
    g = torch.Generator().manual_seed(0)
    alpha, k, rounds = 0.7, 4, 200_000
    accept = torch.rand(rounds, k, generator=g) < alpha
    emitted = accept.long().cumprod(1).sum(1) + 1  # accepted prefix + the correction/bonus token
    mean, se = emitted.float().mean().item(), emitted.float().std().item() / rounds ** 0.5
    assert abs(mean - ch14._expected_tokens(alpha, k)) < 5 * se


def test_min_p_hints():
    m = lambda fn: message(ch14.check_min_p_filter, fn)  # noqa: E731
    absolute = lambda x, p: x.masked_fill(x.softmax(-1) < p, -math.inf)  # noqa: E731
    assert "scales the threshold" in m(absolute)
    on_logits = lambda x, p: x.masked_fill(x < p * x.amax(-1, keepdim=True), -math.inf)  # noqa: E731
    assert "not logits" in m(on_logits)
    assert "probabilities" in m(lambda x, p: ch14.min_p_reference(x, p).softmax(-1))
    reversed_ = lambda x, p: x.masked_fill(x.softmax(-1) >= p * x.softmax(-1).amax(-1, keepdim=True), -math.inf)  # noqa: E731,E501
    assert "reversed" in m(reversed_)
    assert "changed" in m(lambda x, p: ch14.min_p_reference(x, p) / 2)
    global_max = lambda x, p: x.masked_fill(x.softmax(-1) < p * x.softmax(-1).max(), -math.inf)  # noqa: E731
    assert "whole batch" in m(global_max)
    assert "tokens where" in m(lambda x, p: ch14.min_p_reference(x, p / 2))
    assert "NaN" in m(lambda x, p: ch14.min_p_reference(x, p) * 0)  # -inf * 0 = NaN
    assert "shape" in m(lambda x, p: ch14.min_p_reference(x, p)[..., :-1])


def test_expected_tokens_hints():
    m = lambda fn: message(ch14.check_expected_tokens, fn)  # noqa: E731
    assert "at least 1" in m(lambda a, k: sum(a ** i for i in range(1, k + 1)))
    assert "first rejection" in m(lambda a, k: a * k)
    assert "first rejection" in m(lambda a, k: a * k + 1)
    assert "not at most gamma" in m(lambda a, k: sum(a ** i for i in range(k)))
    assert "alpha = 1" in m(lambda a, k: (1 - a ** (k + 1)) / (1 - a))  # ZeroDivisionError at alpha = 1
    assert "alpha = 1" in m(lambda a, k: (1 - a ** (k + 1)) / (1 - a) if a < 1 else 0.0)
    # the fallback names only the boundary cases, never the derivation
    assert "alpha = 0, gamma = 4 should give 1" in m(lambda a, k: 2.0)
    wrong_middle = m(lambda a, k: 1 + k * a ** 2)  # right at alpha = 0 and 1, wrong in between
    assert "boundary checks" in wrong_middle
    for leak in ("sum the probabilities", "terms", "geometric", "at least 1, 2"):
        assert leak not in wrong_middle and leak not in m(lambda a, k: 2.0)


def test_mistral_hints():
    m = lambda x: message(ch14.check_mistral_kv_bytes, x)  # noqa: E731
    per_position = 2 * 32 * 8 * 128 * 2
    both = m(per_position * 8192)  # all positions, or float32 numbers: the same number
    assert "overwritten" in both and "4 bytes" in both
    for leak in ("twice", "half", "double"):
        assert leak not in both.lower()
    assert "keys AND values" in m(per_position * 4096 // 2)
    assert "key/value heads" in m(per_position * 4096 * 4)
    assert "one layer" in m(per_position * 4096 // 32)
    assert "two things" in m(per_position * 8192 * 4)
    assert "bytes, not in MiB" in m(512)
    assert "is not it" in m(12345)


@pytest.mark.parametrize("bad", [None, "536870912", math.nan, [1], True, 5.5])
def test_bad_mistral_answers_fail_without_raising(bad):
    assert not ch14.check_mistral_kv_bytes(bad).passed


@pytest.mark.parametrize("check", [ch14.check_min_p_filter, ch14.check_expected_tokens])
@pytest.mark.parametrize("bad", [None, 3, "x", math.nan, [1, 2]])
def test_non_functions_fail_without_raising(check, bad):
    result = check(bad)
    assert not result.passed and "function" in result.message


@pytest.mark.parametrize("check", [ch14.check_min_p_filter, ch14.check_expected_tokens])
@pytest.mark.parametrize("returns", [None, math.nan, "tensor", [0, 1], torch.tensor(float("nan")), math.inf])
def test_bad_returns_fail_without_raising(check, returns):
    result = check(lambda *args: returns)
    assert not result.passed


@pytest.mark.parametrize("check", [ch14.check_min_p_filter, ch14.check_expected_tokens])
def test_exceptions_and_hangs(check):
    assert_survives_exceptions_and_hangs(check)
