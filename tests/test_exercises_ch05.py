"""Chapter 5's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import re
import time

import torch

from transformer_course.exercises import ch05


def attention(q, k, v, causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def prefix_lm_mask(T, n_prefix):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) | (j < n_prefix)


def unit_variance_scale(d_k, sigma_q, sigma_k):
    return 1 / (math.sqrt(d_k) * sigma_q * sigma_k)


def test_reference_answers_pass():
    assert ch05.check_attention(attention).passed
    assert ch05.check_prefix_lm_mask(prefix_lm_mask).passed
    assert ch05.check_prefix_lm_mask(ch05.reference_prefix_lm_mask).passed
    assert ch05.check_unit_variance_scale(unit_variance_scale).passed


def test_prefix_mask_by_its_definition():
    """Query i sees key j when j is in the prefix or j <= i: an explicit double loop, not the reference's ops."""
    for T, n in [(6, 3), (5, 0), (4, 4), (7, 1)]:
        loop = torch.tensor([[j < n or j <= i for j in range(T)] for i in range(T)])
        assert torch.equal(ch05.reference_prefix_lm_mask(T, n), loop)
    # T = 6, prefix 3: the 21 causal pairs plus the 3 pairs (0, 1), (0, 2), (1, 2) inside the prefix.
    assert int(ch05.reference_prefix_lm_mask(6, 3).sum()) == 21 + 3
    assert "24 of 36" in ch05.check_prefix_lm_mask(prefix_lm_mask).message


def test_other_correct_forms_of_the_prefix_mask_pass():
    def blockwise(T, n):
        mask = torch.ones(T, T).tril().bool()
        mask[:n, :n] = True
        return mask

    def as_ints(T, n):
        return prefix_lm_mask(T, n).to(torch.uint8)

    assert ch05.check_prefix_lm_mask(blockwise).passed
    assert ch05.check_prefix_lm_mask(as_ints).passed


def test_prefix_mask_hints():
    def causal(T, n):
        return torch.ones(T, T, dtype=torch.bool).tril()

    plain = ch05.check_prefix_lm_mask(causal)
    assert not plain.passed and "plain causal mask" in plain.message and "prefix" in plain.message
    leaky = ch05.check_prefix_lm_mask(lambda T, n: causal(T, n) | (torch.arange(T) < n)[:, None])
    assert not leaky.passed and "see the tokens after the prefix" in leaky.message
    encoder = ch05.check_prefix_lm_mask(lambda T, n: torch.ones(T, T, dtype=torch.bool))
    assert not encoder.passed and "encoder" in encoder.message
    blocked = ch05.check_prefix_lm_mask(lambda T, n: ~prefix_lm_mask(T, n))
    assert not blocked.passed and "True must mean allowed" in blocked.message
    transposed = ch05.check_prefix_lm_mask(lambda T, n: prefix_lm_mask(T, n).T)
    assert not transposed.passed and "transposed" in transposed.message
    too_long = ch05.check_prefix_lm_mask(lambda T, n: prefix_lm_mask(T, n + 1))
    assert not too_long.passed and "one token too long" in too_long.message
    too_short = ch05.check_prefix_lm_mask(lambda T, n: prefix_lm_mask(T, max(n - 1, 0)))
    assert not too_short.passed and "one token too short" in too_short.message
    additive = ch05.check_prefix_lm_mask(
        lambda T, n: torch.zeros(T, T).masked_fill(~prefix_lm_mask(T, n), float("-inf")))
    assert not additive.passed and "additive float mask" in additive.message
    wrong_shape = ch05.check_prefix_lm_mask(lambda T, n: prefix_lm_mask(T, n)[None])
    assert not wrong_shape.passed and "shape" in wrong_shape.message
    for result in (plain, leaky, encoder, too_long, too_short):  # a hint never gives the answer away
        assert "j < n_prefix" not in result.message and "|" not in result.message


def test_scale_is_right_by_simulation():
    """Independent of the checker: the variance of c q.k over many samples is 1 for the derived scale."""
    g = torch.Generator().manual_seed(123)
    for d, sq, sk in [(64, 2.0, 3.0), (16, 0.5, 1.5)]:
        q = sq * torch.randn(50_000, d, generator=g, dtype=torch.float64)
        k = sk * torch.randn(50_000, d, generator=g, dtype=torch.float64)
        variance = (unit_variance_scale(d, sq, sk) * (q * k).sum(-1)).var().item()
        assert abs(variance - 1) < 0.03


def test_scale_hints():
    def check(fn):
        return ch05.check_unit_variance_scale(fn)

    plain = check(lambda d, sq, sk: 1 / math.sqrt(d))
    assert not plain.passed and "ignores sigma_q and sigma_k" in plain.message
    measured = float(re.search(r"variance ([0-9.]+)", plain.message).group(1))
    assert 33 < measured < 39  # (sigma_q sigma_k)^2 = 36 times too large
    by_d = check(lambda d, sq, sk: 1 / (d * sq * sk))
    assert not by_d.passed and "divided by d_k" in by_d.message
    by_var = check(lambda d, sq, sk: 1 / (d * sq**2 * sk**2))
    assert not by_var.passed and "variance of q.k" in by_var.message
    variances = check(lambda d, sq, sk: 1 / (math.sqrt(d) * sq**2 * sk**2))
    assert not variances.passed and "the variances" in variances.message
    root = check(lambda d, sq, sk: 1 / math.sqrt(d * sq * sk))
    assert not root.passed and "square root covers too much" in root.message
    inverse = check(lambda d, sq, sk: math.sqrt(d) * sq * sk)
    assert not inverse.passed and "instead of dividing" in inverse.message
    added = check(lambda d, sq, sk: 1 / (math.sqrt(d) * (sq + sk)))
    assert not added.passed and "multiply, they do not add" in added.message
    other = check(lambda d, sq, sk: 0.5)
    assert not other.passed and "variance" in other.message
    for result in (plain, by_d, by_var, variances, root, inverse, added, other):
        assert "sigma_q * sigma_k" not in result.message and "sqrt(d_k) *" not in result.message
    assert check(lambda d, sq, sk: torch.tensor(unit_variance_scale(d, sq, sk))).passed
    text = check(lambda d, sq, sk: "0.02")
    assert not text.passed and "return a number" in text.message
    nan = check(lambda d, sq, sk: float("nan"))
    assert not nan.passed and "finite" in nan.message


def test_attention_hints():
    no_mask = ch05.check_attention(lambda q, k, v, causal: attention(q, k, v, False))
    assert not no_mask.passed and "mask is not applied" in no_mask.message
    no_scale = ch05.check_attention(
        lambda q, k, v, causal: torch.softmax(q @ k.transpose(-2, -1), -1) @ v)
    assert not no_scale.passed and "1/sqrt(d_k) scale is missing" in no_scale.message
    scores = lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # noqa: E731
    wrong_dim = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scores(q, k), -2) @ v)
    assert not wrong_dim.passed and "wrong dimension" in wrong_dim.message and "dim=-1" in wrong_dim.message
    weights = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scores(q, k), -1))
    assert not weights.passed and "attention weights" in weights.message
    keys = ch05.check_attention(lambda q, k, v, causal: torch.softmax(scores(q, k), -1) @ k)
    assert not keys.passed and "values v, not the keys" in keys.message
    by_dk = ch05.check_attention(
        lambda q, k, v, causal: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v)
    assert not by_dk.passed and "divided by d_k" in by_dk.message

    def zero_fill(q, k, v, causal):
        s = scores(q, k)
        if causal:
            s = s.masked_fill(torch.ones(s.shape[-1], s.shape[-1], dtype=torch.bool).triu(1), 0.0)
        return torch.softmax(s, -1) @ v

    zeros = ch05.check_attention(zero_fill)
    assert not zeros.passed and "e^0 = 1" in zeros.message and "-inf" in zeros.message


def test_a_large_finite_fill_is_accepted():
    def finite(q, k, v, causal):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            s = s.masked_fill(torch.ones(s.shape[-1], s.shape[-1], dtype=torch.bool).triu(1), -1e9)
        return torch.softmax(s, -1) @ v

    assert ch05.check_attention(finite).passed


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    checks = (ch05.check_attention, ch05.check_prefix_lm_mask, ch05.check_unit_variance_scale)
    for check in checks:
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text",
                       lambda *a: torch.zeros(3, dtype=torch.long), lambda *a: [1, 2]):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch05.check_attention(lambda q, k, v, causal: torch.full((2, 5, 6), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    for check in checks:
        started = time.monotonic()
        hung = check(hang)
        assert not hung.passed and "did not finish" in hung.message
        assert time.monotonic() - started < 15
