"""Checkers for Chapter 6, "Multi-head attention". Each takes the reader's answer and never raises.

- `check_merge_heads(fn)`: `fn(x)` -> `(B, T, h*d_k)` from `(B, h, T, d_k)`, the inverse of the head split (warm-up).
- `check_gpt2_saved_mib(answer)`: MiB of the (..., T, T) tensors that GPT-2 small would keep for the backward
  pass on the manual attention path.
- `check_mha_parameters(fn)`: `fn(d_model, n_heads, d_k, d_v)` -> the parameters of a multi-head attention layer
  whose heads have query/key width d_k and value width d_v (with biases, like the course's `Attention`).

The references are PyTorch's own reshapes and `nn.Linear` parameter counts, not this package's formulas.
"""
import math

import torch
import torch.nn as nn

from .base import CheckResult, as_float, check_tensor, checker, run_for_int, run_with_timeout

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


# GPT-2 small, from OpenAI's released code (gpt-2 src/model.py, default_hparams: n_layer 12, n_head 12, n_embd 768),
# trained on a batch of 8 sequences of its full context of 1024 tokens in float32.
_GPT2_L, _GPT2_H, _GPT2_D, _GPT2_B, _GPT2_T, _FLOAT32 = 12, 12, 768, 8, 1024, 4
_MIB = 2**20


def saved_square_bytes(B: int, h: int, T: int, float_copies: int = 2, bool_masks: int = 1,
                       bytes_per: int = _FLOAT32) -> int:
    """Bytes of the (..., T, T) tensors that autograd keeps for one layer of the manual attention path:
    `float_copies` float tensors (B, h, T, T) (the softmax output and the weights with empty rows zeroed) and
    `bool_masks` bool (T, T) causal masks. tests/test_exercises_ch06.py measures this with saved_tensors_hooks."""
    return float_copies * B * h * T * T * bytes_per + bool_masks * T * T


def _gpt2_saved_bytes(L=_GPT2_L, B=_GPT2_B, **kwargs) -> int:
    return L * saved_square_bytes(B, _GPT2_H, _GPT2_T, **kwargs)




@checker
def check_gpt2_saved_mib(answer) -> CheckResult:
    """`answer`: MiB of the (..., T, T) tensors that GPT-2 small (B=8, T=1024, float32) would keep for the
    backward pass if each of its 12 layers ran the course's manual attention path."""
    got, problem = as_float(answer, "a number of MiB")
    if problem is not None:
        return problem
    expected = _gpt2_saved_bytes() / _MIB
    if abs(got - expected) <= 0.5:
        return CheckResult(True, f"{expected:,.0f} MiB ({expected / 1024:.1f} GiB): per layer two float32 "
                                 "(B, h, T, T) tensors, the softmax's output and the weights after the empty-row "
                                 "guard, plus the bool causal mask; doubling h at fixed d_model doubles the float "
                                 "part")
    one_copy = "that is one float32 (B, h, T, T) tensor per layer; autograd keeps more than one: count every " \
               "(..., T, T) tensor that pack() receives"
    wrong = {
        _gpt2_saved_bytes(float_copies=1, bool_masks=0) / _MIB: one_copy,
        _gpt2_saved_bytes(float_copies=1) / _MIB: one_copy,
        _gpt2_saved_bytes(bool_masks=0) / _MIB: "close: the float32 tensors are right, but one more (..., T, T) "
                                                "tensor is saved per layer, with 1 byte per entry",
        _gpt2_saved_bytes(float_copies=6, bool_masks=0) / _MIB: "that counts every float tensor the forward "
                                                                "writes, as the chapter's table did; autograd keeps "
                                                                "only what the backward pass needs",
        _gpt2_saved_bytes(float_copies=6, bool_masks=2) / _MIB + _GPT2_L * _GPT2_B * _GPT2_H * _GPT2_T**2 / _MIB:
            "that counts every tensor the forward writes, as the chapter's table did; autograd keeps only what "
            "the backward pass needs",
        _gpt2_saved_bytes() / 1e6: "you divided by 10^6 (MB); a MiB is 2^20 = 1,048,576 bytes",
        _gpt2_saved_bytes(): "that is a number of bytes; give MiB (2^20 bytes)",
        _gpt2_saved_bytes() / _MIB / 1024: "that looks like GiB; the question asks for MiB (1 GiB = 1024 MiB)",
        _gpt2_saved_bytes(L=1) / _MIB: "that is one layer; GPT-2 small has 12",
        _gpt2_saved_bytes(B=1) / _MIB: "you left out the batch: every one of the B = 8 sequences has its own "
                                       "scores",
    }
    for value, hint in wrong.items():
        if math.isclose(got, value, rel_tol=1e-4):
            return CheckResult(False, f"got {got:,.6g}: {hint}")
    return CheckResult(False, f"got {got:,.6g} MiB: on a small Attention layer, list the (..., T, T) tensors that "
                              "pack() receives (one per storage), note each one's dtype and whether it grows "
                              "with h, then scale to GPT-2's sizes")


def reference_mha_parameters(d_model: int, n_heads: int, d_k: int, d_v: int) -> int:
    """Parameters of W_q, W_k (d_model -> h*d_k), W_v (d_model -> h*d_v), W_o (h*d_v -> d_model), with biases."""
    layers = [nn.Linear(d_model, n_heads * d_k), nn.Linear(d_model, n_heads * d_k),
              nn.Linear(d_model, n_heads * d_v), nn.Linear(n_heads * d_v, d_model)]
    return sum(p.numel() for layer in layers for p in layer.parameters())


# (d_model, h, d_k, d_v): the standard d_k = d_v = d_model/h, values narrower than keys, heads wider than d_model/h.
_PARAM_CASES = [(64, 4, 16, 16), (40, 4, 16, 6), (32, 8, 16, 8)]


def _param_hint(got: int, d: int, h: int, dk: int, dv: int) -> str | None:
    qk, v = h * dk, h * dv
    known = {
        4 * d * d + 4 * d: "that is 4 d_model^2 + 4 d_model, which holds only when h*d_k = h*d_v = d_model",
        2 * d * qk + 2 * d * v: "you left out the biases: each of the four Linear layers has one, as long as its "
                                "output",
        (d + 1) * (2 * qk + v) + d * d + d: "W_o maps the h*d_v concatenated head outputs back to d_model, so it is "
                                            "(h*d_v) x d_model, not d_model x d_model",
        (d + 1) * (2 * qk + v): "you left out the output projection W_o",
        (d + 1) * 3 * qk + qk * d + d: "W_v projects to h*d_v features (and W_o reads h*d_v), not h*d_k",
        (d + 1) * (2 * dk + dv) + dv * d + d: "that counts one head: every head has its own d_k and d_v columns, so "
                                              "multiply the head widths by h",
        (d + 1) * (2 * qk + v) + v * d + v: "W_o's bias has d_model entries, one per output feature",
    }
    expected = reference_mha_parameters(d, h, dk, dv)
    return next((hint for value, hint in known.items() if value == got and value != expected), None)


@checker
def check_mha_parameters(fn) -> CheckResult:
    """`fn(d_model, n_heads, d_k, d_v) -> int`: parameters of a multi-head attention layer with biases."""
    for d, h, dk, dv in _PARAM_CASES:
        expected = reference_mha_parameters(d, h, dk, dv)
        got, problem = run_for_int(fn, d, h, dk, dv, what="a number of parameters")
        if problem is not None:
            return problem
        if got != expected:
            hint = (_param_hint(got, d, h, dk, dv)
                    or "count W_q, W_k, W_v and W_o one by one: inputs x outputs, plus a bias")
            return CheckResult(False, f"for d_model={d}, h={h}, d_k={dk}, d_v={dv}: got {got:,}, the four nn.Linear "
                                      f"layers hold {expected:,}. {hint}")
    t5 = reference_mha_parameters(1024, 128, 128, 128) - (3 * 128 * 128 + 1024)  # T5-11B sizes, no biases
    return CheckResult(True, f"with T5-11B's sizes (d_model 1024, 128 heads of d_k = d_v = 128, no biases) that is "
                             f"{t5:,} per attention layer, 16 times a layer with d_k = d_model/h")
