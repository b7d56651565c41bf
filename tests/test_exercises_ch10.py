"""Chapter 10's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch
import torch.nn.functional as F

from transformer_course.exercises import ch10
from checker_robustness import message


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def llama_hidden_dim(d_model, multiple_of, ffn_dim_multiplier=None):
    hidden = int(2 * 4 * d_model / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def ffn_share(d_model, d_ff, n_heads, n_kv_heads, gated):
    d_k = d_model // n_heads
    attention = 2 * d_model**2 + 2 * d_model * n_kv_heads * d_k
    ffn = (3 if gated else 2) * d_model * d_ff
    return ffn / (ffn + attention)


# Published intermediate_size of Llama 2 7B, Llama 2 13B, Llama 3 8B, Llama 2 70B, Llama 3 70B (their configs).
PUBLISHED = {(4096, 256, None): 11008, (5120, 256, None): 13824, (4096, 1024, 1.3): 14336,
             (8192, 4096, 1.3): 28672, (8192, 1024, 1.3): 28672}


def test_reference_answers_pass():
    assert ch10.check_gelu_tanh(gelu_tanh).passed
    assert ch10.check_gelu_tanh(lambda x: F.gelu(x, approximate="tanh")).passed
    assert ch10.check_llama_hidden_dim(llama_hidden_dim).passed
    for args, width in PUBLISHED.items():  # the reference against the published widths, not the checker's copy
        assert llama_hidden_dim(*args) == width
    assert ch10.check_ffn_share(ffn_share).passed
    # Llama 3 8B by hand: 3 * 4096 * 14336 FFN weights against 2 * 4096^2 + 2 * 4096 * 1024 attention weights
    assert abs(ffn_share(4096, 14336, 32, 8, True) - 176_160_768 / 218_103_808) < 1e-12
    assert "80.8%" in ch10.check_ffn_share(ffn_share).message


def test_gelu_hints():
    c = math.sqrt(2 / math.pi)
    assert "exact GELU" in message(ch10.check_gelu_tanh, F.gelu)
    assert "SiLU" in message(ch10.check_gelu_tanh, F.silu)
    assert "1.702" in message(ch10.check_gelu_tanh, lambda x: x * torch.sigmoid(1.702 * x))
    assert "ReLU" in message(ch10.check_gelu_tanh, F.relu)
    assert "cubic" in message(ch10.check_gelu_tanh, lambda x: 0.5 * x * (1 + torch.tanh(c * x)))
    assert "sqrt(2/π)" in message(ch10.check_gelu_tanh, lambda x: 0.5 * x * (1 + torch.tanh(x + 0.044715 * x**3)))
    assert "twice" in message(ch10.check_gelu_tanh, lambda x: 2 * gelu_tanh(x))
    assert "shape" in message(ch10.check_gelu_tanh, lambda x: gelu_tanh(x).sum(0))


def test_llama_hidden_dim_hints():
    check = ch10.check_llama_hidden_dim

    def no_multiplier(d, m, mult=None):
        return llama_hidden_dim(d, m)

    def multiplier_after_rounding(d, m, mult=None):
        return math.ceil(llama_hidden_dim(d, m) * (mult or 1))

    def multiplier_after_rounding_int(d, m, mult=None):  # Meta's int() applied after the rounding
        return int(llama_hidden_dim(d, m) * (mult or 1))

    def floor(d, m, mult=None):
        h = int(2 * 4 * d / 3)
        return m * (int((mult or 1) * h) // m) if mult else m * (h // m)

    def not_rounded(d, m, mult=None):
        h = int(2 * 4 * d / 3)
        return int(mult * h) if mult else h

    assert "ffn_dim_multiplier" in message(check, no_multiplier)
    assert "before rounding" in message(check, multiplier_after_rounding)
    assert "before rounding" in message(check, multiplier_after_rounding_int)
    assert int(llama_hidden_dim(4096, 1024) * 1.3) == 14643  # 11264 * 1.3 = 14643.2: not a multiple of 1024
    assert "rounds UP" in message(check, floor)
    assert "round up" in message(check, not_rounded)
    assert "2/3" in message(check, lambda d, m, mult=None: 4 * d)
    assert "whole number" in message(check, lambda d, m, mult=None: llama_hidden_dim(d, m, mult) + 0.5)
    assert "should be" in message(check, lambda d, m, mult=None: llama_hidden_dim(d, m, mult) + m)


def test_ffn_share_hints():
    check = ch10.check_ffn_share
    assert "percentage" in message(check, lambda *a: 100 * ffn_share(*a))
    assert "attention's share" in message(check, lambda *a: 1 - ffn_share(*a))
    assert "multi-head count" in message(check, lambda d, f, h, h_kv, g: ffn_share(d, f, h, h, g))
    assert "three matrices" in message(check, lambda d, f, h, h_kv, g: ffn_share(d, f, h, h_kv, False))

    def no_out_proj(d, f, h, h_kv, g):
        ffn = (3 if g else 2) * d * f
        return ffn / (ffn + d * d + 2 * d * h_kv * (d // h))

    assert "W_O" in message(check, no_out_proj)
    assert "should be" in message(check, lambda *a: ffn_share(*a) * 0.9)


def test_checkers_never_crash():
    def boom(*a):
        raise RuntimeError("no")

    def hang(*a):
        time.sleep(60)

    checks = (ch10.check_gelu_tanh, ch10.check_llama_hidden_dim, ch10.check_ffn_share)
    for check in checks:
        for bad in (boom, None, 3, "gelu", lambda *a: None, lambda *a: math.nan, lambda *a: "many",
                    lambda *a: torch.full((3, 80), math.nan), lambda *a: True, lambda *a: [1, 2]):
            result = check(bad)
            assert not result.passed and isinstance(result.message, str)
        started = time.perf_counter()
        result = check(hang)
        assert not result.passed and "did not finish" in result.message
        assert time.perf_counter() - started < 20
    nan = ch10.check_gelu_tanh(lambda x: torch.full_like(x, math.nan))
    assert not nan.passed and "NaN" in nan.message
