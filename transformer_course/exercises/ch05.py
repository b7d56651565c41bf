"""Checkers for Chapter 5, "Self-attention". Each takes the reader's answer and never raises.

- `check_attention(fn)`: `fn(q, k, v, causal)` -> softmax(q k^T / sqrt(d_k), masked) v, `(B, Tq, d_v)` (warm-up).
- `check_prefix_lm_mask(fn)`: `fn(T, n_prefix)` -> bool `(T, T)`, True where query i may attend to key j: the
  whole prefix, and causally after it (the "causal with prefix" mask of Raffel et al. 2020, §3.2.1, Figure 3).
- `check_unit_variance_scale(fn)`: `fn(d_k, sigma_q, sigma_k)` -> the scale c that gives c q.k variance 1 when
  the components of q and k are independent, with mean 0 and standard deviations sigma_q and sigma_k.

The references are PyTorch's own `F.scaled_dot_product_attention`, `torch.tril` and sampled variances, not this
package.
"""
import math

import torch
import torch.nn.functional as F

from .base import CheckResult, as_float, check_tensor, checker, run_with_timeout


def _qkv(B=2, Tq=5, Tk=7, d_k=16, d_v=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Tq, d_k, generator=g), torch.randn(B, Tk, d_k, generator=g),
            torch.randn(B, Tk, d_v, generator=g))


def _close(got, expected, atol=1e-5):
    return (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()
            and torch.allclose(got.detach().double(), expected.double(), atol=atol, rtol=1e-4))


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
        if causal:
            zero_filled = torch.softmax(scores.masked_fill(future, 0.0), -1) @ v
            hints.append((zero_filled, "the future scores are set to 0, but the softmax still gives them e^0 = 1: "
                                       "fill them with float('-inf')"))
        else:
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


def reference_prefix_lm_mask(T: int, n_prefix: int) -> torch.Tensor:
    """bool `(T, T)`, True where query i may attend to key j: j <= i (causal) or j < n_prefix (the prefix)."""
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T): key <= query
    return causal | (torch.arange(T) < n_prefix)[None, :]  # every query sees the whole prefix


def _prefix_hint(got: torch.Tensor, T: int, n: int) -> str | None:
    """A hint when `got` (bool, (T, T)) is one of the usual wrong masks for a prefix of n tokens, else None."""
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    expected = reference_prefix_lm_mask(T, n)
    in_prefix = torch.arange(T) < n  # (T,)
    known = [
        (causal, f"this is the plain causal mask: inside the prefix every token must see all {n} prefix tokens, "
                 "the later ones too"),
        (causal | in_prefix[:, None], "the prefix tokens see the tokens after the prefix: the prompt may not look at "
                                      "the continuation that is being generated"),
        (torch.ones(T, T, dtype=torch.bool), "every token sees every token, an encoder's mask: after the prefix the "
                                             "mask must stay causal"),
        (in_prefix[:, None] & in_prefix[None, :], "the tokens after the prefix see nothing: they still see the "
                                                  "prefix and, causally, the tokens up to themselves"),
        (~expected, "True must mean allowed (as in allowed_mask); you returned the blocked pairs"),
        (expected.T, "rows are queries and columns keys: your mask is transposed"),
    ]
    for shift in (1, -1):
        if 0 <= n + shift <= T:
            known.append((reference_prefix_lm_mask(T, n + shift),
                          f"your prefix is one token too {'long' if shift > 0 else 'short'}: with n_prefix = {n} the "
                          f"prefix is keys 0 to {n - 1}"))
    for wrong, hint in known:
        if not torch.equal(wrong, expected) and torch.equal(got, wrong):
            return hint
    return None


_PREFIX_CASES = [(6, 3), (5, 0), (4, 4), (7, 2)]  # (T, n_prefix): a plain prefix, none, all, a short one


@checker
def check_prefix_lm_mask(fn) -> CheckResult:
    """`fn(T, n_prefix) -> mask`: bool `(T, T)`, True where query i may attend to key j in a prefix LM."""
    for T, n in _PREFIX_CASES:
        got, problem = run_with_timeout(fn, T, n)
        if problem is not None:
            return problem
        expected = reference_prefix_lm_mask(T, n)
        label = f"prefix_lm_mask({T}, {n})"
        if isinstance(got, torch.Tensor) and got.is_floating_point() and got.shape == expected.shape:
            if torch.isneginf(got).any():
                return CheckResult(False, f"{label} is an additive float mask (0 and -inf): return the bool matrix, "
                                          "True where a query may attend to a key")
        if isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == expected.shape:
            hint = _prefix_hint(got, T, n)
            if hint is not None:
                return CheckResult(False, f"for {label}: {hint}")
        result = check_tensor(got, expected, name=label)
        if not result.passed:
            return result
    allowed = int(reference_prefix_lm_mask(6, 3).sum())
    return CheckResult(True, f"the whole prefix is visible to every token, the rest is causal: for T = 6 and a "
                             f"prefix of 3, {allowed} of 36 pairs are allowed (causal alone: 21)")




def _sampled_score_variance(scale: float, d_k: int, sigma_q: float, sigma_k: float, n: int = 20_000) -> float:
    """Variance of scale * (q . k) over n sampled pairs whose components are N(0, sigma^2)."""
    g = torch.Generator().manual_seed(11)
    q = sigma_q * torch.randn(n, d_k, generator=g, dtype=torch.float64)
    k = sigma_k * torch.randn(n, d_k, generator=g, dtype=torch.float64)
    return (scale * (q * k).sum(-1)).var().item()


_SCALE_CASES = [(64, 2.0, 3.0), (16, 0.5, 1.5), (128, 1.0, 1.0)]  # (d_k, sigma_q, sigma_k)


def _scale_hint(got: float, d: int, sq: float, sk: float) -> str | None:
    """A hint naming what a wrong scale `got` left out or got wrong, without giving the formula."""
    known = [
        (1 / math.sqrt(d), "that is the unit-variance scale 1/sqrt(d_k): it ignores sigma_q and sigma_k. What is the "
                           "variance of one product q_i k_i when the factors have standard deviations sigma_q and "
                           "sigma_k?"),
        (1 / (d * sq * sk), "you divided by d_k: the variance of a sum of d_k independent terms grows like d_k, so "
                            "its spread grows like the square root of d_k"),
        (1 / (d * sq * sq * sk * sk), "you divided by the variance of q.k: multiplying by c multiplies the variance "
                                      "by c^2, so the scale must divide by a standard deviation"),
        (1 / (math.sqrt(d) * sq * sq * sk * sk), "you divided by sigma_q^2 sigma_k^2, the variances: a scale "
                                                 "multiplies the spread, so it must undo a standard deviation"),
        (1 / math.sqrt(d * sq * sk), "the square root covers too much: sigma_q and sigma_k are standard deviations "
                                     "already"),
        (math.sqrt(d) * sq * sk, "your scale multiplies the scores by their spread instead of dividing by it"),
        (1 / (math.sqrt(d) * (sq + sk)), "the spreads multiply, they do not add: Var(XY) = Var(X) Var(Y) for "
                                         "independent X, Y of mean 0"),
    ]
    for wrong, hint in known:
        if math.isclose(got, wrong, rel_tol=1e-6):
            return hint
    return None


@checker
def check_unit_variance_scale(fn) -> CheckResult:
    """`fn(d_k, sigma_q, sigma_k) -> c`: the scale that gives c (q . k) variance 1 (independent, mean-0 parts)."""
    for d, sq, sk in _SCALE_CASES:
        got, problem = run_with_timeout(fn, d, sq, sk)
        if problem is not None:
            return problem
        got, problem = as_float(got, "the scale")
        if problem is not None:
            return problem
        label = f"unit_variance_scale({d}, {sq:g}, {sk:g})"
        expected = 1 / (math.sqrt(d) * sq * sk)
        if math.isclose(got, expected, rel_tol=1e-6):
            continue
        variance = _sampled_score_variance(got, d, sq, sk)
        hint = _scale_hint(got, d, sq, sk) or "compare with the variance of q.k that your derivation gives"
        return CheckResult(False, f"{label} = {got:.4g} gives scores of variance {variance:.3g} on sampled queries "
                                  f"and keys, not 1. {hint}")
    d, sq, sk = _SCALE_CASES[0]
    variance = _sampled_score_variance(1 / (math.sqrt(d) * sq * sk), d, sq, sk)
    return CheckResult(True, f"scores of variance {variance:.1f} on 20,000 sampled pairs with d_k = {d}, sigma_q = "
                             f"{sq:g}, sigma_k = {sk:g}; the 1/sqrt(d_k) rule is the case sigma_q = sigma_k = 1")
