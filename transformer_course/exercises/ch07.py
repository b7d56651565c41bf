"""Checkers for Chapter 7, "Multi-query and grouped-query attention". Each takes the reader's answer, never raises."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..attention import Attention
from ..gqa import kv_cache_bytes, repeat_kv
from .base import CheckResult, as_int, check_tensor, checker, run_for_int, run_with_timeout

# Llama 2 70B (Touvron et al. 2023, §2.2 and the released configuration): 80 layers, d_model 8192,
# 64 query heads of d_k = 128, 8 key/value heads.
_L, _D, _H, _H_KV, _D_K = 80, 8192, 64, 8, 128


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


def _sequence_bytes(n_kv_heads: int, dtype_bytes: int = 2) -> int:
    """KV-cache bytes of one 4096-token sequence of Llama 2 70B with `n_kv_heads` key/value heads."""
    return kv_cache_bytes(dict(n_layers=_L, n_heads=_H, n_kv_heads=n_kv_heads, d_k=_D_K), 4096, 1, dtype_bytes)


def _two_ints(answer, what: str):
    """`answer` as a pair of ints `((a, b), None)`, or `(None, failed CheckResult)`."""
    if isinstance(answer, dict) or not isinstance(answer, (tuple, list)) or len(answer) != 2:
        return None, CheckResult(False, f"give a pair (with GQA, with MHA) of {what}, e.g. (10, 2); got "
                                        f"{type(answer).__name__}" + (f" of length {len(answer)}"
                                                                       if isinstance(answer, (tuple, list)) else ""))
    pair = []
    for value in answer:
        if isinstance(value, float) and value == value and not value.is_integer():
            return None, CheckResult(False, f"got {value:g}: only whole sequences fit in the cache, so give an int "
                                            "(rounded down)")
        n, problem = as_int(value, what)
        if problem is not None:
            return None, problem
        pair.append(n)
    return tuple(pair), None


@checker
def check_fits_in_40gb(answer) -> CheckResult:
    """`answer`: (sequences with GQA, sequences with MHA) of 4096 tokens in a 40 GB KV-cache budget, 16-bit."""
    pair, problem = _two_ints(answer, "numbers of sequences")
    if problem is not None:
        return problem
    budget = 40 * 10**9

    def fits(per_sequence, budget=budget):
        return budget // per_sequence

    expected = (fits(_sequence_bytes(_H_KV)), fits(_sequence_bytes(_H)))
    if pair == expected:
        return CheckResult(True, f"{expected[0]} sequences with 8 key/value heads, {expected[1]} with 64: "
                                 "with GQA each sequence needs an eighth of the cache, but only whole "
                                 f"sequences fit, so the counts differ by {expected[0] / expected[1]:.1f}x, "
                                 "not 8x")
    mistakes = [
        ((expected[1], expected[0]), "the pair is the wrong way round: first with GQA (8 key/value heads), "
                                     "then with MHA (64)"),
        ((fits(_sequence_bytes(_H_KV), 40 * 2**30), fits(_sequence_bytes(_H), 40 * 2**30)),
         "40 GB is 40 × 10^9 bytes; you used 40 GiB (40 × 2^30)"),
        ((-(-budget // _sequence_bytes(_H_KV)), -(-budget // _sequence_bytes(_H))),
         "a sequence that does not fit whole cannot be served: round down, not up"),
        ((fits(_sequence_bytes(_H_KV) // 2), fits(_sequence_bytes(_H) // 2)),
         "the cache holds keys AND values: 2 vectors per head per token per layer"),
        ((fits(_sequence_bytes(_H_KV, 4)), fits(_sequence_bytes(_H, 4))),
         "16-bit numbers are 2 bytes each, not 4"),
        ((fits(_sequence_bytes(_H_KV) // _L), fits(_sequence_bytes(_H) // _L)),
         "every one of the 80 layers keeps its own keys and values"),
    ]
    for wrong, hint in mistakes:
        if pair == wrong:
            return CheckResult(False, hint)
    if pair[0] == pair[1]:
        return CheckResult(False, "the two answers should differ: with GQA, 8 query heads share each key/value "
                                  "head; with MHA each of the 64 query heads has its own")
    if pair[0] == expected[0]:
        return CheckResult(False, "the GQA number is right; for MHA, n_kv_heads = n_heads = 64")
    if pair[1] == expected[1]:
        return CheckResult(False, "the MHA number is right; with GQA only 8 key/value heads are cached")
    return CheckResult(False, "work out the bytes of one sequence's cache (Chapter 7's formula, T = 4096, "
                              "2 bytes per number), then how many whole ones fit into 40 × 10^9 bytes")


def measured_gqa_flops(B: int, T: int, d_model: int, n_heads: int, n_kv_heads: int) -> int:
    """FLOPs of one forward pass of `Attention(d_model, n_heads, n_kv_heads)` on `(B, T, d_model)`, PyTorch's count."""
    torch.manual_seed(0)
    module = Attention(d_model, n_heads, n_kv_heads=n_kv_heads, impl="manual")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(B, T, d_model))
    return counter.get_total_flops()


# (B, T, d_model, h, h_kv); in the first case every typical mistake gives a different count
_FLOP_CASES = [(2, 10, 48, 6, 2), (1, 16, 64, 8, 1), (3, 7, 32, 4, 4)]


@checker
def check_gqa_flops(fn) -> CheckResult:
    """`fn(B, T, d_model, n_heads, n_kv_heads) -> int`: matmul FLOPs of one grouped-query attention forward."""
    for B, T, d, h, h_kv in _FLOP_CASES:
        expected = measured_gqa_flops(B, T, d, h, h_kv)
        got, problem = run_for_int(fn, B, T, d, h, h_kv, what="a count of FLOPs")
        if problem is not None:
            return problem
        if got != expected:
            hint = _flop_hint(got, expected, B, T, d, h, h_kv)
            return CheckResult(False, f"for B={B}, T={T}, d_model={d}, h={h}, h_kv={h_kv}: got {got:,}, "
                                      f"FlopCounterMode counts {expected:,}. {hint}")
    return CheckResult(True, "your formula matches FlopCounterMode: only the key and value projections "
                             "depend on h_kv; the scores and the weighted sum still run per query head")


def _flop_hint(got: int, expected: int, B: int, T: int, d: int, h: int, h_kv: int) -> str:
    d_k = d // h
    if 2 * got == expected:
        return "a multiply-add counts as 2 FLOPs: an (m×k) @ (k×n) product costs 2·m·n·k"
    known = {
        4 * B * T * d * (h - h_kv) * d_k: "this is the multi-head count: the key and value projections "
                                          "produce only h_kv heads of d_k numbers",
        -4 * B * (h - h_kv) * T * T * d_k: "the scores q k^T and the weighted sum of the values are computed "
                                           "for every QUERY head, not once per key/value head",
        -2 * B * T * d * d: "you left out the query projection or the output projection",
        -4 * B * h * T * T * d_k: "you left out the attention itself: the scores and the weighted sum",
        -2 * B * T * d * h_kv * d_k: "you left out the key or the value projection: both are computed",
    }
    return known.get(got - expected, f"you are off by {got - expected:+,}; count each matmul as 2·m·n·k")


@checker
def check_extra_params(answer) -> CheckResult:
    """`answer`: how many more parameters Llama 2 70B would have with 64 key/value heads instead of 8."""
    got, problem = as_int(answer, "a number of parameters")
    if problem is not None:
        return problem
    per_head = _D * _D_K  # one head's rows of a key (or value) projection, no bias
    expected = _L * 2 * (_H - _H_KV) * per_head
    if got == expected:
        return CheckResult(True, f"{expected:,} parameters, {expected / 70e9:.0%} of the model; Llama 2's ablation "
                                 "widened the FFN of its GQA model to compare at about equal size")
    mistakes = {
        expected // _L: "that is one layer; all 80 layers have their own key and value projections",
        expected // 2: "both the key and the value projection grow",
        _L * 2 * _H * per_head: "that is all of the MHA key/value parameters; GQA already has 8 heads of them",
        _L * 2 * _H_KV * per_head: "that is what the 8 key/value heads already hold; count the 56 missing ones",
        _L * 4 * (_H - _H_KV) * per_head: "only the key and value projections change; the query and output "
                                          "projections keep their 64 heads (and count parameters, not bytes)",
    }
    if got in mistakes:
        return CheckResult(False, mistakes[got])
    return CheckResult(False, "count the rows of the key and value projections (d_k per head, d_model columns) "
                              "that 56 more key/value heads would add, in each of the 80 layers")
