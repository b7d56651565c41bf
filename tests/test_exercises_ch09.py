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


def counted(config):
    """Counted on a real model, not from the checker's formula."""
    model = GPT(config)
    return sum(p.numel() for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm)) for p in m.parameters())


def norm_parameters(config):
    """The reference answer, derived by hand from Block.__init__, make_norm and GPT's norm_f."""
    per_norm = config.d_model * (2 if config.norm == "layernorm" and config.bias else 1)
    return (config.n_layers * (2 if config.ffn_dim else 1) + (config.norm_position == "pre")) * per_norm


SMALL = dict(vocab_size=10, context_length=4, n_heads=1)


# Worked by hand: mean(x^2) = 0.001^2 = 1e-6; + eps = 1.1e-5; sqrt = 0.0033166; 0.001 / 0.0033166 = 0.30151.
RMS_SMALL = 0.30151


def test_reference_answers_pass():
    assert ch09.check_layer_norm(layer_norm).passed
    assert ch09.check_layer_norm(lambda x, w, b, eps: torch.nn.functional.layer_norm(x, w.shape, w, b, eps)).passed
    assert ch09.check_norm_parameters(norm_parameters).passed
    assert ch09.check_rms_small(RMS_SMALL).passed
    assert ch09.check_rms_small(torch.tensor(RMS_SMALL)).passed
    measured = RMSNorm(8)(torch.full((8,), 0.001))[0].item()
    assert ch09.check_rms_small(measured).passed


def test_norm_parameters_reference_agrees_with_a_counted_model():
    """The hand-derived count equals parameters counted on a GPT, over every layout the checker tries."""
    for make in (GPTConfig.gpt2_like, GPTConfig.llama_like):
        for norm in ("layernorm", "rmsnorm"):
            for position in ("pre", "post"):
                for bias in (True, False):
                    for d_ff in (None, 0):
                        config = make(n_layers=3, d_model=8, norm=norm, norm_position=position, bias=bias,
                                      d_ff=d_ff, **SMALL)
                        assert norm_parameters(config) == counted(config), config
    # Published sizes, by hand: GPT-2 small has 25 LayerNorms of 768 + 768; LLaMA-7B 65 RMSNorms of 4096.
    gpt2 = GPTConfig.gpt2_like(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768)
    llama = GPTConfig.llama_like(vocab_size=32000, context_length=2048, n_layers=32, n_heads=32, d_model=4096)
    assert norm_parameters(gpt2) == 25 * 1536 and norm_parameters(llama) == 65 * 4096 == 266_240
    assert ch09._norm_parameters(gpt2) == 38_400


def test_the_checker_tries_the_cases_the_chapter_does_not_show():
    cases = ch09._norm_cases()
    assert any(c.ffn_dim == 0 for c in cases)
    assert any(c.norm == "layernorm" and not c.bias for c in cases)
    assert any(c.norm == "rmsnorm" and c.bias for c in cases)
    assert {c.norm_position for c in cases} == {"pre", "post"}


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
    def per(c, bias_aware=True):
        return c.d_model * (2 if c.norm == "layernorm" and (c.bias or not bias_aware) else 1)

    def blocks(c):
        return c.n_layers * (2 if c.ffn_dim else 1)

    pre = lambda c: c.norm_position == "pre"  # noqa: E731
    cases = [
        (lambda c: (2 * c.n_layers + pre(c)) * per(c), "d_ff=0"),                     # norm2 always
        (lambda c: (blocks(c) + pre(c)) * per(c, bias_aware=False), "bias is False"),  # LayerNorm always 2 d
        (lambda c: (blocks(c) + pre(c)) * c.d_model * (1 if c.norm == "layernorm" else 2), "vectors"),
        (lambda c: blocks(c) * per(c), "after the last block"),                         # no final norm ever
        (lambda c: (blocks(c) + 1) * per(c), "after its last block"),                   # always a final norm
        (lambda c: (c.n_layers + pre(c)) * per(c), "block with an FFN"),                # one norm per block
        (lambda c: (blocks(c) + (not pre(c))) * per(c), "after the last block"),       # final norm swapped
    ]
    for fn, words in cases:
        result = ch09.check_norm_parameters(fn)
        assert not result.passed and words in result.message, (words, result.message)
        assert "?" in result.message  # a question, not the answer


def test_rms_small_hints():
    for value, words in [(1.0, "without eps"), (0.0, "positive number"), (0.001 / math.sqrt(1e-5), "does not replace"),
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

    old_signature = lambda n_layers, d_model, norm, position: 0  # noqa: E731  (the previous exercise's)
    assert "raised" in ch09.check_norm_parameters(old_signature).message
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
