"""Checkers for Chapter 5, "Self-attention". Each takes the reader's function and never raises.

- `check_scaled_scores(fn)`: `fn(q, k)` -> q k^T / sqrt(d_k), `(B, Tq, Tk)`.
- `check_causal_mask(fn)`: `fn(scores)` -> the scores with every future key (j > i) set to -inf.
- `check_attention(fn)`: `fn(q, k, v, causal)` -> softmax(q k^T / sqrt(d_k), masked) v, `(B, Tq, d_v)`.

The references are PyTorch's own `F.scaled_dot_product_attention` and `torch.triu`, not this package.
"""
import math

import torch
import torch.nn.functional as F

from .base import CheckResult, check_tensor, checker, run_with_timeout


def _qkv(B=2, Tq=5, Tk=7, d_k=16, d_v=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Tq, d_k, generator=g), torch.randn(B, Tk, d_k, generator=g),
            torch.randn(B, Tk, d_v, generator=g))


def _close(got, expected, atol=1e-5):
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()
            and torch.allclose(got.detach().double(), expected.double(), atol=atol, rtol=1e-4))


@checker
def check_scaled_scores(fn) -> CheckResult:
    """`fn(q, k) -> scores`: q `(B, Tq, d_k)`, k `(B, Tk, d_k)` -> q k^T / sqrt(d_k) `(B, Tq, Tk)`."""
    q, k, _ = _qkv()
    d_k = q.shape[-1]
    got, problem = run_with_timeout(fn, q.clone(), k.clone())
    if problem is not None:
        return problem
    raw = q @ k.transpose(-2, -1)  # (B, Tq, Tk)
    expected = raw / math.sqrt(d_k)
    hints = [
        (raw, "the 1/sqrt(d_k) scale is missing: divide q k^T by sqrt(d_k) = 4 here"),
        (raw / d_k, "you divided by d_k; the scale is 1/sqrt(d_k)"),
        (raw * math.sqrt(d_k), "you multiplied by sqrt(d_k); divide by it"),
    ]
    for wrong, hint in hints:
        if _close(got, wrong):
            return CheckResult(False, hint)
    if isinstance(got, torch.Tensor) and got.shape == (q.shape[0], k.shape[1], q.shape[1]):
        return CheckResult(False, f"scores have shape {tuple(got.shape)}, expected (B, Tq, Tk) = "
                                  f"{tuple(expected.shape)}: one row per query, so q @ k.transpose(-2, -1)")
    if isinstance(got, torch.Tensor) and got.shape == (q.shape[0], q.shape[1], q.shape[1]):
        return CheckResult(False, f"scores have shape {tuple(got.shape)}, expected (B, Tq, Tk) = "
                                  f"{tuple(expected.shape)}: compare the queries with the keys, not with themselves")
    result = check_tensor(got, expected, name="the scaled scores")
    if result.passed:
        return CheckResult(True, f"q k^T / sqrt(d_k), shape (B, Tq, Tk) = {tuple(expected.shape)}")
    return result


@checker
def check_causal_mask(fn) -> CheckResult:
    """`fn(scores) -> masked`: scores `(B, T, T)` with the future keys (column j > row i) set to -inf."""
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(2, 6, 6, generator=g)  # (B, T, T)
    got, problem = run_with_timeout(fn, scores.clone())
    if problem is not None:
        return problem
    T = scores.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal
    expected = scores.masked_fill(future, float("-inf"))
    if isinstance(got, torch.Tensor) and got.shape == scores.shape and got.is_floating_point():
        got = got.detach()
        if torch.equal(got, expected):
            return CheckResult(True, "every key after its query is -inf; the diagonal and the past are untouched")
        if torch.equal(got, scores):
            return CheckResult(False, "the mask is not applied: the scores came back unchanged")
        if torch.equal(got, scores.masked_fill(future, 0.0)):
            return CheckResult(False, "you set the future scores to 0, but a softmax still gives e^0 = 1 to them; "
                                      "use float('-inf')")
        if torch.equal(got, scores.masked_fill(future.T, float("-inf"))):
            return CheckResult(False, "you masked the past instead of the future: the keys after the query "
                                      "(column j > row i, the upper triangle) must be -inf")
        if torch.equal(got, scores.masked_fill(~future.T, float("-inf"))):
            return CheckResult(False, "the diagonal is masked too: a token may attend to itself "
                                      "(mask j > i, i.e. triu(..., diagonal=1))")
        if torch.equal(got, scores.masked_fill(~future, float("-inf"))):
            return CheckResult(False, "you kept the future and masked the rest: invert the mask")
        # A very negative finite fill (-1e9) works just like -inf after the softmax: accept it.
        huge_negative = (got <= -1e4) | torch.isneginf(got)  # (B, T, T)
        if bool((huge_negative == future).all()) and torch.equal(got[..., ~future], scores[..., ~future]):
            return CheckResult(True, "the future keys carry a huge negative score; float('-inf') is the exact "
                                     "version, but the softmax gives the same weights")
    result = check_tensor(got, expected, name="the masked scores")
    if result.passed:
        return CheckResult(True, "every key after its query is -inf; the diagonal and the past are untouched")
    return result


def _attention(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


@checker
def check_attention(fn) -> CheckResult:
    """`fn(q, k, v, causal) -> out`: single-head scaled dot-product attention, q `(B, Tq, d_k)`,
    k `(B, Tk, d_k)`, v `(B, Tk, d_v)` -> `(B, Tq, d_v)`; with causal=True, Tq == Tk and query i sees keys <= i.
    """
    cases = [("cross-shaped, causal=False", _qkv(Tq=5, Tk=7), False),
             ("causal=True", _qkv(Tq=6, Tk=6, seed=7), True)]
    for label, (q, k, v), causal in cases:
        got, problem = run_with_timeout(fn, q.clone(), k.clone(), v.clone(), causal)
        if problem is not None:
            return problem
        expected = _attention(q, k, v, causal)
        scale = 1 / math.sqrt(q.shape[-1])
        scores = q @ k.transpose(-2, -1) * scale  # (B, Tq, Tk)
        if causal:
            future = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1)
            masked = scores.masked_fill(future, float("-inf"))
        else:
            masked = scores
        hints = [
            (_attention(q, k, v, False), "the causal mask is not applied: with causal=True, query i must not "
                                         "see the keys after it"),
            (torch.softmax(masked / scale, -1) @ v, "the 1/sqrt(d_k) scale is missing"),
            (torch.softmax(masked, -2).nan_to_num() @ v, "the softmax runs over the wrong dimension: normalise "
                                                         "each query's row over the keys, dim=-1"),
            (torch.softmax(masked / math.sqrt(q.shape[-1]), -1) @ v, "you divided by d_k; the scale is "
                                                                      "1/sqrt(d_k)"),
        ]
        if not causal:
            hints = hints[1:]
        for wrong, hint in hints:
            if _close(got, wrong):
                return CheckResult(False, f"for {label}: {hint}")
        weights = torch.softmax(masked, -1)
        if _close(got, weights):
            return CheckResult(False, f"for {label}: you returned the attention weights; multiply them by v")
        if isinstance(got, torch.Tensor) and got.shape == (q.shape[0], q.shape[1], k.shape[2]):
            return CheckResult(False, f"for {label}: the output has width d_k = {k.shape[2]}, expected d_v = "
                                      f"{v.shape[2]}: the weights multiply the values v, not the keys")
        result = check_tensor(got, expected, name=f"the output for {label}")
        if not result.passed:
            return result
    return CheckResult(True, "softmax(q k^T / sqrt(d_k), masked) v, equal to F.scaled_dot_product_attention")
