"""Checkers for Chapter 10, "The feed-forward network". Each takes the reader's answer and never raises."""
import math

import torch
import torch.nn.functional as F

from .base import CheckResult, as_float, as_int, check_tensor, checker, run_with_timeout


@checker
def check_gelu_tanh(fn) -> CheckResult:
    """`fn(x)` -> GPT-2's tanh approximation of GELU, elementwise, same shape as x."""
    x = torch.linspace(-6, 6, 240).reshape(3, 80)
    got, problem = run_with_timeout(fn, x.clone())
    if problem is not None:
        return problem
    expected = F.gelu(x, approximate="tanh")
    if isinstance(got, torch.Tensor) and got.shape == x.shape and got.is_floating_point():
        got = got.detach().float()
        if torch.isfinite(got).all() and not torch.allclose(got, expected, atol=1e-6, rtol=0):
            c = math.sqrt(2 / math.pi)
            near = {
                "the exact GELU x·Φ(x) (with erf); GPT-2 uses the tanh approximation": F.gelu(x),
                "SiLU, x·sigmoid(x) (Llama's activation), not GELU": F.silu(x),
                "x·sigmoid(1.702 x), the other approximation of the GELU paper; GPT-2 uses the tanh one":
                    x * torch.sigmoid(1.702 * x),
                "ReLU; GELU is smooth and slightly negative for x < 0": F.relu(x),
                "missing the cubic term 0.044715·x³ inside the tanh": 0.5 * x * (1 + torch.tanh(c * x)),
                "missing the factor sqrt(2/π) in front of (x + 0.044715·x³)":
                    0.5 * x * (1 + torch.tanh(x + 0.044715 * x**3)),
                "twice too large: the formula starts with 0.5·x": 2 * expected,
            }
            for hint, value in near.items():
                if torch.allclose(got, value, atol=1e-5, rtol=0):
                    return CheckResult(False, f"this is {hint}")
    result = check_tensor(got, expected, name="gelu_tanh(x)", atol=1e-6, rtol=0)
    if not result.passed:
        return result
    return CheckResult(True, "0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))) equals F.gelu(x, approximate='tanh')")


def _llama_hidden_dim(d_model, multiple_of, ffn_dim_multiplier=None):
    """Meta's FeedForward: int(2/3 · 4·d_model), times the multiplier (int), rounded up to multiple_of."""
    hidden = int(2 * 4 * d_model / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# (d_model, multiple_of, ffn_dim_multiplier) -> the intermediate_size published for: Llama 2 7B, Llama 2 13B,
# Llama 3 8B, Llama 2 70B, Llama 3 70B; then cases where the order of the steps or the rounding shows.
_LLAMA_CASES = [(4096, 256, None), (5120, 256, None), (4096, 1024, 1.3), (8192, 4096, 1.3), (8192, 1024, 1.3),
                (100, 64, None), (300, 7, 1.5), (1000, 96, 0.9)]


@checker
def check_llama_hidden_dim(fn) -> CheckResult:
    """`fn(d_model, multiple_of, ffn_dim_multiplier=None)` -> Llama's SwiGLU width."""
    for d, m, mult in _LLAMA_CASES:
        expected = _llama_hidden_dim(d, m, mult)
        got, problem = run_with_timeout(fn, d, m, mult)
        if problem is not None:
            return problem
        if isinstance(got, float) and math.isfinite(got) and not got.is_integer():
            return CheckResult(False, f"got {got:g} for d_model={d}: a width is a whole number; round (up) to an int")
        got, problem = as_int(got, "the hidden width")  # an int, an integral float or a one-element tensor
        if problem is not None:
            return problem
        if got == expected:
            continue
        call = f"llama_hidden_dim({d}, {m}, {mult})"
        base = int(2 * 4 * d / 3)
        scaled = base if mult is None else int(mult * base)
        if mult is not None and got == _llama_hidden_dim(d, m, None):
            return CheckResult(False, f"{call} gave {got}, the width without the multiplier: multiply the 2/3 width "
                                      f"by ffn_dim_multiplier before rounding")
        rounded_first = _llama_hidden_dim(d, m, None) * mult if mult is not None else None
        if mult is not None and got in (int(rounded_first), math.ceil(rounded_first)):
            return CheckResult(False, f"{call} gave {got}: apply ffn_dim_multiplier before rounding up to "
                                      f"multiple_of, not after (the result must be a multiple of {m})")
        if got == m * (scaled // m):
            return CheckResult(False, f"{call} gave {got}, rounded down; Llama rounds UP to the next multiple of "
                                      f"{m}, so the width never shrinks below the 2/3 rule")
        if got == m * round(scaled / m):
            return CheckResult(False, f"{call} gave {got}, rounded to the nearest multiple; Llama rounds up")
        if got == scaled:
            return CheckResult(False, f"{call} gave {got}: round up to a multiple of multiple_of={m}")
        if got in (4 * d, m * math.ceil(4 * d / m)):
            return CheckResult(False, f"{call} gave {got}: start from 2/3 of 4·d_model, not 4·d_model")
        return CheckResult(False, f"{call} should be {expected:,}, got {got:,}")
    return CheckResult(True, "2/3 of 4·d_model, times ffn_dim_multiplier, rounded up: Llama 3 8B's 14336 included")


def _ffn_share(d_model, d_ff, n_heads, n_kv_heads, gated):
    d_k = d_model // n_heads
    attention = 2 * d_model * d_model + 2 * d_model * n_kv_heads * d_k  # W_Q, W_O; W_K, W_V
    ffn = (3 if gated else 2) * d_model * d_ff
    return ffn / (ffn + attention)


# GPT-2 small, Llama 2 7B, Llama 3 8B (GQA), Llama 2 70B (GQA), and an MQA case.
_SHARE_CASES = [(768, 3072, 12, 12, False), (4096, 11008, 32, 32, True), (4096, 14336, 32, 8, True),
                (8192, 28672, 64, 8, True), (512, 2048, 8, 1, False)]


@checker
def check_ffn_share(fn) -> CheckResult:
    """`fn(d_model, d_ff, n_heads, n_kv_heads, gated)` -> the FFN's fraction of a block's weight matrices."""
    for case in _SHARE_CASES:
        d, d_ff, h, h_kv, gated = case
        value, problem = run_with_timeout(fn, *case)
        if problem is not None:
            return problem
        got, problem = as_float(value, "the FFN's fraction of the block's weights")
        if problem is not None:
            return problem
        expected = _ffn_share(*case)
        if abs(got - expected) < 1e-6:
            continue
        call = f"ffn_share({d}, {d_ff}, {h}, {h_kv}, {gated})"
        if abs(got - 100 * expected) < 1e-4:
            return CheckResult(False, f"{call} gave {got:.4g}, a percentage; return a fraction between 0 and 1")
        if abs(got - (1 - expected)) < 1e-6:
            return CheckResult(False, f"{call} gave {got:.4f}, the attention's share; return the FFN's")
        if h_kv != h and abs(got - _ffn_share(d, d_ff, h, h, gated)) < 1e-6:
            return CheckResult(False, f"{call} gave {got:.4f}, the multi-head count: with {h_kv} key/value heads, "
                                      f"W_K and W_V have only {h_kv}·d_k = {h_kv * d // h} columns")
        if gated and abs(got - _ffn_share(d, d_ff, h, h_kv, False)) < 1e-6:
            return CheckResult(False, f"{call} gave {got:.4f}: a gated FFN (SwiGLU) has three matrices "
                                      f"(gate, up, down), not two")
        ffn = (3 if gated else 2) * d * d_ff
        if abs(got - ffn / (ffn + 2 * d * d + 2 * d * h_kv * (d // h) - d * d)) < 1e-6:
            return CheckResult(False, f"{call} gave {got:.4f}: the attention has four matrices; "
                                      f"is the output projection W_O missing?")
        return CheckResult(False, f"{call} should be {expected:.4f}, got {got:.4f}")
    return CheckResult(True, f"Llama 3 8B: {_ffn_share(*_SHARE_CASES[2]):.1%} of a block's weights sit in its FFN")
