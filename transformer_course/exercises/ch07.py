"""Checkers for Chapter 7, "Multi-query and grouped-query attention". Each takes the reader's function, never raises."""
import torch

from ..gqa import kv_cache_bytes, mean_pool_kv_heads, repeat_kv
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout

# (label, n_layers, n_kv_heads, d_k, seq_len, batch_size, dtype_bytes)
_CACHE_CASES = [  # the first case tells the usual mistakes apart: every missing factor differs
    ("a 3-layer MQA model, 100 tokens, batch 5, float32", 3, 1, 64, 100, 5, 4),
    ("Llama 2 70B (8 KV heads), 4096 tokens, batch 4, 16-bit", 80, 8, 128, 4096, 4, 2),
    ("Llama 2 7B (MHA), 4096 tokens, 16-bit", 32, 32, 128, 4096, 1, 2),
]


@checker
def check_kv_cache_bytes(fn) -> CheckResult:
    """`fn(n_layers, n_kv_heads, d_k, seq_len, batch_size, dtype_bytes) -> int`: bytes of a KV cache."""
    for label, L, h_kv, d_k, T, B, nbytes in _CACHE_CASES:
        got, problem = run_with_timeout(fn, L, h_kv, d_k, T, B, nbytes)
        if problem is not None:
            return problem
        got, problem = as_int(got, "a number of bytes")
        if problem is not None:
            return problem
        expected = kv_cache_bytes(dict(n_layers=L, n_heads=h_kv, d_k=d_k), T, B, nbytes)
        if got != expected:
            return CheckResult(False, f"for {label}: got {got:,}, expected {expected:,}. "
                                      + _cache_hint(got, expected, L, h_kv, d_k, T, B, nbytes))
    return CheckResult(True, "2 × L × h_kv × d_k × T × B × bytes: Llama 2 70B's cache for 4096 tokens is "
                             f"{_CACHE_CASES[1][1] * 2 * 8 * 128 * 4096 * 2 / 2**30:.2f} GiB per sequence")


def _cache_hint(got, expected, L, h_kv, d_k, T, B, nbytes) -> str:
    ratios = {
        0.5: "the cache holds keys AND values: multiply by 2",
        1 / nbytes: "multiply by the bytes per number (dtype_bytes) to get bytes, not numbers",
        1 / B: "every sequence of the batch has its own cache: multiply by batch_size",
        1 / L: "every layer has its own cache: multiply by n_layers",
        1 / T: "the cache grows with the tokens: multiply by seq_len",
        1 / (2 * nbytes): "multiply by 2 (K and V) and by dtype_bytes",
    }
    for ratio, hint in ratios.items():
        if got * 1.0 == expected * ratio:
            return hint
    if got == expected * 2:
        return "count K and V once each: the factor is 2, not 4"
    return "write it as a product of the six arguments and a 2 for keys and values"


@checker
def check_repeat_kv(fn) -> CheckResult:
    """`fn(x, n_rep)`: `(B, h_kv, T, d_k)` -> `(B, h_kv * n_rep, T, d_k)`, key/value head g on heads g*n_rep..."""
    g = torch.Generator().manual_seed(7)
    for shape, n_rep in (((2, 2, 5, 3), 3), ((1, 1, 4, 2), 4), ((2, 4, 3, 2), 1)):
        x = torch.randn(*shape, generator=g)
        got, problem = run_with_timeout(fn, x.clone(), n_rep)
        if problem is not None:
            return problem
        expected = repeat_kv(x, n_rep)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and n_rep > 1 and shape[1] > 1:
            if torch.equal(got, x.repeat(1, n_rep, 1, 1)):
                return CheckResult(False, "your heads are tiled (0, 1, 0, 1, ...), but query head j reads key/value "
                                          "head j // n_rep: each head must be copied to n_rep neighbours "
                                          "(0, 0, 1, 1, ...): repeat_interleave, or expand a new dimension")
        if isinstance(got, torch.Tensor) and got.shape == (shape[0], shape[1], n_rep, *shape[2:]) and n_rep > 1:
            return CheckResult(False, f"got shape {tuple(got.shape)}: merge the new dimension into the heads "
                                      f"with reshape(B, h_kv * n_rep, T, d_k)")
        result = check_tensor(got, expected, name=f"repeat_kv(x {tuple(shape)}, n_rep={n_rep})", atol=0.0, rtol=0.0)
        if not result.passed:
            return result
    return CheckResult(True, "each key/value head is copied to the n_rep query heads that read it")


@checker
def check_mean_pool(fn) -> CheckResult:
    """`fn(w, n_heads, n_kv_heads)`: average consecutive groups of heads of a `(n_heads * d_k, d_in)` projection."""
    g = torch.Generator().manual_seed(3)
    for n_heads, n_kv, d_k, d_in in ((4, 2, 3, 5), (8, 1, 2, 3), (6, 3, 4, 2), (4, 4, 2, 3)):
        w = torch.randn(n_heads * d_k, d_in, generator=g)
        got, problem = run_with_timeout(fn, w.clone(), n_heads, n_kv)
        if problem is not None:
            return problem
        expected = mean_pool_kv_heads(w, n_heads, n_kv)
        name = f"mean_pool(w {tuple(w.shape)}, n_heads={n_heads}, n_kv_heads={n_kv})"
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and n_heads > n_kv:
            r = n_heads // n_kv
            strided = w.reshape(r, n_kv, d_k, d_in).mean(0).reshape(n_kv * d_k, d_in)
            if n_kv > 1 and torch.allclose(got, strided, atol=1e-5):
                return CheckResult(False, f"{name}: you averaged heads g, g + n_kv_heads, ... (strided); query head "
                                          "j reads key/value head j // r, so group g is the CONSECUTIVE heads "
                                          "g*r ... (g+1)*r - 1")
            if torch.allclose(got, expected * r, atol=1e-4):
                return CheckResult(False, f"{name}: these are the sums of each group; divide by the group size "
                                          f"r = n_heads / n_kv_heads = {r} (a mean, not a sum)")
        result = check_tensor(got, expected, name=name)
        if not result.passed:
            return result
    return CheckResult(True, "each new key/value head is the mean of the r consecutive heads it replaces")
