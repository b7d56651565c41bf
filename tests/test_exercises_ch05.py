"""Chapter 5's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch

from transformer_course.exercises import ch05


def scaled_scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def causal_mask(scores):
    T = scores.shape[-1]
    return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))


def attention(q, k, v, causal):
    scores = scaled_scores(q, k)
    if causal:
        scores = causal_mask(scores)
    return torch.softmax(scores, dim=-1) @ v


def test_reference_answers_pass():
    assert ch05.check_scaled_scores(scaled_scores).passed
    assert ch05.check_causal_mask(causal_mask).passed
    assert ch05.check_attention(attention).passed


def test_a_large_finite_fill_is_accepted():
    def finite(scores):
        T = scores.shape[-1]
        return scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -1e9)

    assert ch05.check_causal_mask(finite).passed


def test_scaled_scores_hints():
    unscaled = ch05.check_scaled_scores(lambda q, k: q @ k.transpose(-2, -1))
    assert not unscaled.passed and "1/sqrt(d_k) scale is missing" in unscaled.message
    by_dk = ch05.check_scaled_scores(lambda q, k: q @ k.transpose(-2, -1) / q.shape[-1])
    assert not by_dk.passed and "divided by d_k" in by_dk.message
    times = ch05.check_scaled_scores(lambda q, k: q @ k.transpose(-2, -1) * math.sqrt(q.shape[-1]))
    assert not times.passed and "multiplied" in times.message
    swapped = ch05.check_scaled_scores(lambda q, k: scaled_scores(k, q))
    assert not swapped.passed and "(B, Tq, Tk)" in swapped.message and "one row per query" in swapped.message
    self_scores = ch05.check_scaled_scores(lambda q, k: scaled_scores(q, q))
    assert not self_scores.passed and "not with themselves" in self_scores.message


def test_causal_mask_hints():
    unchanged = ch05.check_causal_mask(lambda s: s)
    assert not unchanged.passed and "not applied" in unchanged.message
    zeros = ch05.check_causal_mask(lambda s: s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), 0.0))
    assert not zeros.passed and "-inf" in zeros.message and "e^0" in zeros.message
    past = ch05.check_causal_mask(lambda s: s.masked_fill(torch.ones(6, 6, dtype=torch.bool).tril(-1), -math.inf))
    assert not past.passed and "past instead of the future" in past.message
    diagonal = ch05.check_causal_mask(lambda s: s.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(), -math.inf))
    assert not diagonal.passed and "diagonal is masked" in diagonal.message
    inverted = ch05.check_causal_mask(lambda s: s.masked_fill(torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf))
    assert not inverted.passed and "invert" in inverted.message


def test_attention_hints():
    no_mask = ch05.check_attention(lambda q, k, v, causal: attention(q, k, v, False))
    assert not no_mask.passed and "mask is not applied" in no_mask.message
    no_scale = ch05.check_attention(
        lambda q, k, v, causal: torch.softmax(q @ k.transpose(-2, -1), -1) @ v)
    assert not no_scale.passed and "1/sqrt(d_k) scale is missing" in no_scale.message
    wrong_dim = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scaled_scores(q, k), -2) @ v)
    assert not wrong_dim.passed and "wrong dimension" in wrong_dim.message and "dim=-1" in wrong_dim.message
    weights = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scaled_scores(q, k), -1))
    assert not weights.passed and "attention weights" in weights.message
    keys = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scaled_scores(q, k), -1) @ k)
    assert not keys.passed and "values v, not the keys" in keys.message
    by_dk = ch05.check_attention(
        lambda q, k, v, causal: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v)
    assert not by_dk.passed and "divided by d_k" in by_dk.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    checks = (ch05.check_scaled_scores, ch05.check_causal_mask, ch05.check_attention)
    for check in checks:
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text",
                       lambda *a: torch.zeros(3, dtype=torch.long)):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch05.check_attention(lambda q, k, v, causal: torch.full((2, 5, 6), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch05.check_scaled_scores(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15


def test_exact_answer_gets_the_exact_message():
    assert "every key after its query is -inf" in ch05.check_causal_mask(causal_mask).message
