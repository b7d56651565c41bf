"""Checkers for Chapter 9, "Layer normalization". Each takes the reader's answer and never raises."""
import math

import torch
import torch.nn.functional as F

from .base import CheckResult, as_float, as_int, check_tensor, checker, run_with_timeout


def _cases():
    """(x, weight, bias, eps): a batch of tokens, one row with a tiny spread (eps matters), d = 1."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 6, generator=g) * 3 + 1
    x[0, 0] = 1e-3 * torch.arange(6.0)  # variance 3e-6, below eps: eps decides the output
    d = x.shape[-1]
    weight, bias = torch.randn(d, generator=g) + 1, torch.randn(d, generator=g)
    return [(x, weight, bias, 1e-5), (x[1], weight, bias, 1e-2), (torch.randn(4, 1, generator=g),
                                                                   weight[:1], bias[:1], 1e-5)]


def _layer_norm_variants(x, w, b, eps):
    """Typical mistakes, each with its hint."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    yield (x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps) * w + b, (
        "the variance divides by d - 1 (torch.var's default, unbiased=True); layer norm divides by d "
        "(unbiased=False), as nn.LayerNorm does")
    yield (x - mean) / (torch.sqrt(var) + eps) * w + b, (
        "eps sits outside the square root; nn.LayerNorm adds it to the variance: sqrt(var + eps)")
    yield (x - mean) / torch.sqrt(var + eps), "the gain and bias are missing: multiply by weight, then add bias"
    yield (x - mean) / torch.sqrt(var + eps) * w, "the bias is missing: add bias after multiplying by weight"
    yield (x - mean) / torch.sqrt(var + eps) + b, "the gain is missing: multiply by weight before adding bias"
    yield x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w + b, (
        "that divides by the root mean square without subtracting the mean (RMSNorm); layer norm centres first")
    if x.dim() >= 2 and x.shape[0] > 1:
        m0, v0 = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
        yield (x - m0) / torch.sqrt(v0 + eps) * w + b, (
            "the statistics are taken over dim 0 (the batch: batch norm); layer norm takes them over the "
            "last dimension, the features of one token")


@checker
def check_layer_norm(fn) -> CheckResult:
    """`fn(x, weight, bias, eps) -> (..., d)`: layer norm over the last dimension, as `nn.LayerNorm`."""
    for x, w, b, eps in _cases():
        got, problem = run_with_timeout(fn, x.clone(), w.clone(), b.clone(), eps)
        if problem is not None:
            return problem
        expected = F.layer_norm(x, (x.shape[-1],), w, b, eps)
        name = f"layer_norm(x of shape {tuple(x.shape)}, eps={eps:g})"
        result = check_tensor(got, expected, name=name, atol=1e-4, rtol=1e-4)
        if result.passed:
            continue
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point():
            if x.shape[-1] == 1 and torch.isnan(got).all():
                return CheckResult(False, f"{name} is NaN for d = 1: the variance of one number is 0 when you "
                                          f"divide by d (unbiased=False); with d - 1 it is 0/0")
            for wrong, hint in _layer_norm_variants(x, w, b, eps):
                if wrong.shape == got.shape and torch.allclose(got.double(), wrong.double(), atol=1e-4, rtol=1e-4):
                    return CheckResult(False, f"{name}: {hint}")
        return result
    return CheckResult(True, "layer_norm matches nn.LayerNorm: mean and biased variance over the last "
                             "dimension, eps inside the square root, then weight and bias")


def _norm_parameters(n_layers, d_model, norm, position):
    per_norm = 2 * d_model if norm == "layernorm" else d_model  # gain (+ bias for LayerNorm)
    n_norms = 2 * n_layers + (1 if position == "pre" else 0)  # two per block, + the final norm of pre-norm
    return n_norms * per_norm


NORM_CASES = [(12, 768, "layernorm", "pre"), (12, 768, "layernorm", "post"), (32, 4096, "rmsnorm", "pre"),
              (6, 512, "rmsnorm", "post"), (1, 10, "layernorm", "pre"), (3, 7, "rmsnorm", "pre")]


@checker
def check_norm_parameters(fn) -> CheckResult:
    """`fn(n_layers, d_model, norm, position) -> int`: learned parameters of all the norms of a model."""
    for L, d, norm, position in NORM_CASES:
        value, problem = run_with_timeout(fn, L, d, norm, position)
        if problem is not None:
            return problem
        got, problem = as_int(value, "a number of parameters")
        if problem is not None:
            return problem
        expected = _norm_parameters(L, d, norm, position)
        if got == expected:
            continue
        where = f"for L={L}, d_model={d}, {norm}, {position}-norm: got {got:,}"
        per = 2 * d if norm == "layernorm" else d
        if position == "pre" and got == 2 * L * per:
            return CheckResult(False, f"{where}. A pre-norm model has one more norm after its last block")
        if position == "post" and got == (2 * L + 1) * per:
            return CheckResult(False, f"{where}. A post-norm model ends normalised: it has no final norm")
        n_norms = 2 * L + (position == "pre")
        if norm == "rmsnorm" and got == n_norms * 2 * d:
            return CheckResult(False, f"{where}. RMSNorm has a gain but no bias: d_model parameters per norm")
        if norm == "layernorm" and got == n_norms * d:
            return CheckResult(False, f"{where}. LayerNorm has a gain and a bias: 2 d_model parameters per norm")
        if got in {L * per, (L + 1) * per, L * per + per}:
            return CheckResult(False, f"{where}. Each block has two norms, one before (or after) attention and "
                                      f"one for the feed-forward network")
        return CheckResult(False, f"{where}. Count the norms (per block, and at the end) and the parameters of "
                                  f"each")
    return CheckResult(True, "two norms per block, one more at the end of a pre-norm model; 2 d_model "
                             "parameters per LayerNorm, d_model per RMSNorm")


RMS_SMALL = 1e-3 / math.sqrt(1e-6 + 1e-5)  # x = 0.001 everywhere: mean(x^2) = 1e-6, eps = 1e-5


@checker
def check_rms_small(value) -> CheckResult:
    """The value of every entry of RMSNorm(0.001 * ones(8)) with eps = 1e-5 and weight 1."""
    got, problem = as_float(value, "the value of each output entry")
    if problem is not None:
        return problem
    if math.isclose(got, RMS_SMALL, rel_tol=2e-3):
        return CheckResult(True, f"{got:.4g}: mean(x^2) = 1e-6 is smaller than eps = 1e-5, so eps, not x, "
                                 f"sets the scale and the output is far below 1")
    hints = [
        (1.0, "that would be right without eps (or for a large x); here mean(x^2) is ten times smaller than "
              "eps"),
        (0.0, "that is what LayerNorm gives a constant vector (it subtracts the mean); RMSNorm does not centre"),
        (-1.0, "RMSNorm keeps the sign of x"),
        (1e-3 / math.sqrt(1e-5), "eps is added to mean(x^2), it does not replace it"),
        (1e-3 / (1e-3 + 1e-5), "eps goes inside the square root, added to mean(x^2)"),
        (1e-3 / math.sqrt(8e-6 + 1e-5), "RMSNorm uses the mean of x^2 over the 8 entries, not the sum"),
        (1e-3 / math.sqrt(1e-6 + 8e-5), "eps is added once, to mean(x^2), not once per entry"),
        (1e-3 / (1e-6 + 1e-5), "take the square root of mean(x^2) + eps"),
        (1e-3, "the output is x divided by sqrt(mean(x^2) + eps), not x itself"),
    ]
    for wrong, hint in hints:
        if math.isclose(got, wrong, rel_tol=2e-3, abs_tol=1e-9):
            return CheckResult(False, f"{got:.4g}: {hint}")
    return CheckResult(False, f"{got:.4g} is not it: compute mean(x^2) for x = 0.001, add eps, take the "
                              f"square root and divide 0.001 by it")
