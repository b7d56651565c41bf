"""Checkers for Chapter 6, "Multi-head attention". Each takes the reader's function and never raises."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..attention import Attention
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout

# B, T, d_model, h chosen so that no two of T, h, d_k are equal: a wrong arrangement cannot hide.
_B, _T, _D, _H = 2, 5, 12, 3


def _sequence(seed: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(_B, _T, _D, generator=g)  # (B, T, d_model)


def reference_split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d_model) -> (B, h, T, d_k): head j gets features j*d_k ... (j+1)*d_k - 1 of every token."""
    B, T, d_model = x.shape
    return x.view(B, T, n_heads, d_model // n_heads).transpose(1, 2)


def reference_merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, T, d_k) -> (B, T, h*d_k): the heads' outputs side by side, head 0 first."""
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)


def _as_tensor_or_none(value):
    return value if isinstance(value, torch.Tensor) else None


@checker
def check_split_heads(fn) -> CheckResult:
    """`fn(x, n_heads)`: x `(B, T, d_model)` -> `(B, h, T, d_k)`, as `Attention.project_qkv` does."""
    x = _sequence()
    expected = reference_split_heads(x, _H)
    got, problem = run_with_timeout(fn, x.clone(), _H)
    if problem is not None:
        return problem
    got_t = _as_tensor_or_none(got)
    if got_t is not None and got_t.is_floating_point():
        d_k = _D // _H
        if got_t.shape == (_B, _T, _H, d_k):
            return CheckResult(False, f"shape {tuple(got_t.shape)} is (B, T, h, d_k): the heads must come "
                                      "before the positions, so transpose(1, 2) after the view")
        if got_t.shape == expected.shape:
            if torch.equal(got_t, x.reshape(_B, _H, _T, d_k)):
                return CheckResult(False, "you reshaped straight to (B, h, T, d_k): that cuts the sequence of "
                                          "tokens into pieces instead of each token's features. View as "
                                          "(B, T, h, d_k) first, then transpose(1, 2)")
            if torch.equal(got_t, x.view(_B, _T, d_k, _H).permute(0, 3, 1, 2)):
                return CheckResult(False, "your heads take interleaved features (head j gets j, j+h, j+2h, ...); "
                                          "each head owns a contiguous slice of d_k features: view as "
                                          "(B, T, h, d_k)")
    result = check_tensor(got, expected, name="split_heads(x, h)", atol=0.0, rtol=0.0)
    if not result.passed:
        return result
    return CheckResult(True, f"(B, T, d_model) = {tuple(x.shape)} -> (B, h, T, d_k) = {tuple(expected.shape)}, "
                             "head j holding features j*d_k ... (j+1)*d_k - 1")


@checker
def check_merge_heads(fn) -> CheckResult:
    """`fn(x)`: x `(B, h, T, d_k)` -> `(B, T, h*d_k)`, the inverse of split_heads."""
    heads = reference_split_heads(_sequence(7), _H).contiguous()  # (B, h, T, d_k)
    expected = reference_merge_heads(heads)
    got, problem = run_with_timeout(fn, heads.clone())
    if problem is not None:
        return problem
    got_t = _as_tensor_or_none(got)
    if got_t is not None and got_t.is_floating_point():
        d_k = _D // _H
        if got_t.shape == (_B, _T, _H, d_k):
            return CheckResult(False, f"shape {tuple(got_t.shape)} is (B, T, h, d_k): after the transpose, "
                                      "reshape to (B, T, h*d_k) to put the heads side by side")
        if got_t.shape == expected.shape:
            if torch.equal(got_t, heads.reshape(_B, _T, _H * d_k)):
                return CheckResult(False, "you reshaped (B, h, T, d_k) straight to (B, T, h*d_k), which mixes "
                                          "tokens; transpose(1, 2) first so that each token's heads are "
                                          "together, then reshape")
            if torch.equal(got_t, heads.permute(0, 2, 3, 1).reshape(_B, _T, _H * d_k)):
                return CheckResult(False, "your output interleaves the heads' features; concatenate them: "
                                          "head 0's d_k features, then head 1's, ... (transpose(1, 2), "
                                          "then reshape)")
    result = check_tensor(got, expected, name="merge_heads(x)", atol=0.0, rtol=0.0)
    if not result.passed:
        return result
    return CheckResult(True, "(B, h, T, d_k) -> (B, T, h*d_k), heads side by side: the inverse of split_heads")


def measured_attention_flops(B: int, T: int, d_model: int, n_heads: int) -> int:
    """FLOPs of one forward pass of `Attention(d_model, n_heads)` on `(B, T, d_model)`, counted by PyTorch."""
    torch.manual_seed(0)
    module = Attention(d_model, n_heads, impl="manual")
    x = torch.zeros(B, T, d_model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


_FLOP_CASES = [(2, 16, 64, 4), (1, 10, 48, 6), (3, 7, 32, 1)]  # (B, T, d_model, h)


@checker
def check_attention_flops(fn) -> CheckResult:
    """`fn(B, T, d_model, n_heads) -> int`: matmul FLOPs of one multi-head attention forward pass."""
    for B, T, d, h in _FLOP_CASES:
        expected = measured_attention_flops(B, T, d, h)
        got, problem = run_with_timeout(fn, B, T, d, h)
        if problem is not None:
            return problem
        got, problem = as_int(got, "a count of FLOPs")
        if problem is not None:
            return problem
        if got != expected:
            return CheckResult(False, f"for B={B}, T={T}, d_model={d}, h={h}: got {got:,}, FlopCounterMode "
                                      f"counts {expected:,}. " + _flop_hint(got, expected, B, T, d, h))
    return CheckResult(True, "your formula matches torch.utils.flop_counter.FlopCounterMode, and it does not "
                             "depend on h")


def _flop_hint(got: int, expected: int, B: int, T: int, d: int, h: int) -> str:
    d_k = d // h
    if 2 * got == expected:
        return "a multiply-add counts as 2 FLOPs: an (m×k) @ (k×n) product costs 2·m·n·k"
    known = {
        -2 * B * T * d * d: "you left out the output projection, 2·B·T·d_model²",
        -2 * B * T * d * 2 * d: "q, k and v need three projections: 2·B·T·d_model·3·d_model",
        -2 * B * h * T * T * d_k: "attention has two matmuls per head: the scores q k^T and the weighted sum "
                                  "of the values, each 2·B·h·T·T·d_k",
        -4 * B * h * T * T * d_k: "you left out the attention itself: scores and weighted sum, "
                                  "each 2·B·h·T·T·d_k",
        4 * B * h * T * T * (d - d_k): "each head works in d_k = d_model/h dimensions, not d_model",
    }
    return known.get(got - expected, f"you are off by {got - expected:+,}; count each matmul as 2·m·n·k")
