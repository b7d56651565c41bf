"""Checkers for Chapter 9, "Layer normalization". Each takes the reader's answer and never raises."""
import dataclasses
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


def _norm_parameters(c) -> int:
    """Learned parameters of all the norms of `GPT(c)`, from the config's fields alone."""
    per_norm = c.d_model * (2 if c.norm == "layernorm" and c.bias else 1)  # gain (+ bias)
    per_block = 2 if c.ffn_dim else 1  # norm2 only in front of (or after) an FFN
    return (c.n_layers * per_block + (c.norm_position == "pre")) * per_norm


def _norm_cases():
    """GPTConfigs of the shapes the check tries; none is built into a model."""
    from ..model import GPTConfig  # lazy: exercise modules stay light to import

    gpt2, llama = GPTConfig.gpt2_like, GPTConfig.llama_like
    small = dict(vocab_size=10, context_length=8, n_heads=1)
    return [
        gpt2(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768),
        gpt2(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768, norm_position="post"),
        llama(vocab_size=32000, context_length=2048, n_layers=32, n_heads=32, d_model=4096),
        gpt2(n_layers=6, d_model=512, bias=False, **small),
        gpt2(n_layers=3, d_model=10, bias=False, norm_position="post", **small),
        gpt2(n_layers=4, d_model=16, d_ff=0, **small),
        llama(n_layers=5, d_model=12, d_ff=0, norm_position="post", **small),
        gpt2(n_layers=2, d_model=6, norm="rmsnorm", bias=True, norm_position="post", **small),
        llama(n_layers=1, d_model=8, norm="layernorm", bias=True, **small),
    ]


def _describe(c) -> str:
    return (f"L={c.n_layers}, d_model={c.d_model}, {c.norm}, {c.norm_position}-norm, bias={c.bias}, "
            f"d_ff={c.ffn_dim}")


def _norm_mistakes(c):
    """(value, hint) for the typical wrong counts of config c; each hint is a question, not the answer."""
    d, L, pre = c.d_model, c.n_layers, c.norm_position == "pre"
    per = d * (2 if c.norm == "layernorm" and c.bias else 1)
    blocks = L * (2 if c.ffn_dim else 1)
    yield (2 * L + pre) * per, ("does a block without an FFN (d_ff=0) still have a norm2? Look at "
                                "Block.__init__")
    if c.norm == "layernorm":
        yield (blocks + pre) * 2 * d, "how many vectors does a LayerNorm learn when config.bias is False?"
        yield (blocks + pre) * d, "how many vectors does a LayerNorm with a bias learn?"
    else:
        yield (blocks + pre) * 2 * d, "does an RMSNorm learn a bias, even when config.bias is True?"
    yield blocks * per, "what reads the residual stream after the last block of a pre-norm model?"
    yield (blocks + 1) * per, "does a post-norm model need a norm after its last block?"
    yield (L + pre) * per, "how many norms does a block with an FFN hold?"


@checker
def check_norm_parameters(fn) -> CheckResult:
    """`fn(config) -> int`: learned parameters of all the norms of `GPT(config)`, without building it."""
    for config in _norm_cases():
        value, problem = run_with_timeout(fn, dataclasses.replace(config))
        if problem is not None:
            return problem
        got, problem = as_int(value, "a number of parameters")
        if problem is not None:
            return problem
        expected = _norm_parameters(config)
        if got == expected:
            continue
        where = f"for {_describe(config)}: got {got:,}"
        for wrong, hint in _norm_mistakes(config):
            if got == wrong != expected:
                return CheckResult(False, f"{where}. Check: {hint}")
        return CheckResult(False, f"{where}. How many norms are there (per block, and after the last block), "
                                  f"and how many vectors of d_model does each one learn for this config?")
    return CheckResult(True, "norm_parameters counts every case: the norms per block (one without an FFN), "
                             "the final norm of pre-norm models, and the vectors each norm learns")


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
        (0.0, "RMSNorm divides x by a positive number: can the result be 0 when x is not?"),
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
