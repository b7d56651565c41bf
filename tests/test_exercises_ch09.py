"""Chapter 9's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch

from transformer_course.exercises import ch09
from transformer_course.model import GPT, GPTConfig
from transformer_course.norm import LayerNorm, RMSNorm


def layer_norm(x, weight, bias, eps):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def norm_parameters(n_layers, d_model, norm, position):
    """Counted on a real model, not from the checker's formula."""
    config = GPTConfig.gpt2_like(vocab_size=10, context_length=4, n_layers=n_layers, n_heads=1, d_model=d_model,
                                 norm=norm, norm_position=position)
    model = GPT(config)
    return sum(p.numel() for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm)) for p in m.parameters())


def formula(n_layers, d_model, norm, position):
    return (2 * n_layers + (position == "pre")) * (2 * d_model if norm == "layernorm" else d_model)


# Worked by hand: mean(x^2) = 0.001^2 = 1e-6; + eps = 1.1e-5; sqrt = 0.0033166; 0.001 / 0.0033166 = 0.30151.
RMS_SMALL = 0.30151


def test_reference_answers_pass():
    assert ch09.check_layer_norm(layer_norm).passed
    assert ch09.check_layer_norm(lambda x, w, b, eps: torch.nn.functional.layer_norm(x, w.shape, w, b, eps)).passed
    assert ch09.check_norm_parameters(formula).passed
    assert ch09.check_rms_small(RMS_SMALL).passed
    assert ch09.check_rms_small(torch.tensor(RMS_SMALL)).passed
    measured = RMSNorm(8)(torch.full((8,), 0.001))[0].item()
    assert ch09.check_rms_small(measured).passed


def test_norm_parameters_reference_agrees_with_a_counted_model():
    """The formula the checker's reference uses equals parameters counted on a GPT (small cases)."""
    for L, d, norm, position in [(1, 10, "layernorm", "pre"), (3, 8, "rmsnorm", "pre"), (2, 6, "rmsnorm", "post"),
                                 (2, 12, "layernorm", "post")]:
        assert norm_parameters(L, d, norm, position) == formula(L, d, norm, position)
    assert formula(12, 768, "layernorm", "pre") == 25 * 1536  # GPT-2 small: 25 LayerNorms of 768 + 768


def test_layer_norm_hints():
    def unbiased(x, w, b, eps):
        m = x.mean(-1, keepdim=True)
        return (x - m) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b

    def eps_outside(x, w, b, eps):
        m, v = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - m) / (torch.sqrt(v) + eps) * w + b

    def no_affine(x, w, b, eps):
        m, v = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - m) / torch.sqrt(v + eps)

    def no_bias(x, w, b, eps):
        return no_affine(x, w, b, eps) * w

    def rms(x, w, b, eps):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w + b

    def over_batch(x, w, b, eps):
        m, v = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
        return (x - m) / torch.sqrt(v + eps) * w + b

    for fn, words in [(unbiased, "d - 1"), (eps_outside, "outside the square root"), (no_affine, "gain and bias"),
                      (no_bias, "bias is missing"), (rms, "RMSNorm"), (over_batch, "batch norm")]:
        result = ch09.check_layer_norm(fn)
        assert not result.passed and words in result.message, (fn.__name__, result.message)


def test_norm_parameters_hints():
    cases = [
        (lambda L, d, n, p: 2 * L * (2 * d if n == "layernorm" else d), "one more norm after its last block"),
        (lambda L, d, n, p: (2 * L + 1) * (2 * d if n == "layernorm" else d), "no final norm"),
        (lambda L, d, n, p: (2 * L + (p == "pre")) * 2 * d, "gain but no bias"),
        (lambda L, d, n, p: (2 * L + (p == "pre")) * d, "gain and a bias"),
        (lambda L, d, n, p: (L + (p == "pre")) * (2 * d if n == "layernorm" else d), "two norms"),
    ]
    for fn, words in cases:
        result = ch09.check_norm_parameters(fn)
        assert not result.passed and words in result.message, result.message


def test_rms_small_hints():
    for value, words in [(1.0, "without eps"), (0.0, "LayerNorm"), (0.001 / math.sqrt(1e-5), "does not replace"),
                         (0.001 / math.sqrt(8e-6 + 1e-5), "not the sum"), (0.001 / (0.001 + 1e-5), "inside"),
                         (0.001, "not x itself"), (0.5, "is not it")]:
        result = ch09.check_rms_small(value)
        assert not result.passed and words in result.message, (value, result.message)


def test_checkers_never_crash():
    def raises(*args):
        raise RuntimeError("boom")

    def hangs(*args):
        while True:
            pass

    for check in (ch09.check_layer_norm, ch09.check_norm_parameters):
        for answer in (None, 3, "text", raises, lambda *a: None, lambda *a: float("nan"), lambda *a: "x"):
            assert not check(answer).passed
        start = time.perf_counter()
        result = check(hangs)
        assert not result.passed and "did not finish" in result.message
        assert time.perf_counter() - start < 25
    assert not ch09.check_layer_norm(lambda x, w, b, eps: torch.full_like(x, float("nan"))).passed
    assert not ch09.check_layer_norm(lambda x, w, b, eps: x.T).passed
    for answer in (None, "0.3", float("nan"), float("inf"), True, [0.3], torch.ones(2), layer_norm):
        assert not ch09.check_rms_small(answer).passed
