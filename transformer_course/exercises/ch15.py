"""Checkers for Chapter 15, "Flash attention". Each takes the reader's answer and never raises.

The expected values come from running `flash.tiled_attention_forward` (its `FlashStats` counters and
its outputs over all the keys), not from the formulas the solutions use.
"""
import math

import torch

from ..flash import tiled_attention_forward
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout


def _stats(T, d, block_q, block_k, causal):
    x = torch.zeros(1, 1, T, d)
    return tiled_attention_forward(x, x, x, causal=causal, block_q=block_q, block_k=block_k)[2]


@checker
def check_skipped_tiles(fn) -> CheckResult:
    """`fn(T, block)` -> the number of causal tiles skipped, as `FlashStats.skipped` counts them."""
    for T, block in ((300, 64), (256, 64), (64, 64), (1, 16), (1000, 128), (129, 128), (50, 100), (17, 4)):
        value, problem = run_with_timeout(fn, T, block)
        if problem is not None:
            return problem
        got, problem = as_int(value, "the number of skipped tiles")
        if problem is not None:
            return problem
        expected = _stats(T, 1, block, block, True).skipped
        if got == expected:
            continue
        n, n_floor = -(-T // block), T // block
        hints = [
            (n * (n + 1) // 2, "that is the number of tiles computed (on and below the diagonal); count the ones "
                               "above it"),
            (n * n // 2, "half of all tiles counts half the diagonal too: the diagonal tiles are computed (their "
                         "upper triangle is masked inside), only the tiles strictly above it are skipped"),
            (n * (n - 1), "that counts the tiles off the diagonal on both sides: only those above it (keys after "
                          "the queries) are skipped"),
            (n_floor * (n_floor - 1) // 2, "a short last block is still a block: round T / block up"),
        ]
        for wrong, hint in hints:
            if got == wrong:
                return CheckResult(False, f"for T={T}, block={block}: {hint}")
        return CheckResult(False, f"for T={T}, block={block} you return {got}; count the (query block, key block) "
                                  "pairs whose keys all come after the block's last query")
    return CheckResult(True, "n(n - 1)/2 tiles of n = ceil(T / block) per side: almost half of all tiles at large T")


def _halves(seed: int):
    """q (3, 2, 5, 4), k, v (3, 2, 24, 4); a padding mask (3, 24) that hides, in batch row 1, all of the first
    half of the keys and, in row 2, every key; the two halves' outputs and LSEs (-inf: no key seen), and the
    output and LSE over all keys, from `tiled_attention_forward`."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 2, 5, 4, generator=g) * 2
    k, v = (torch.randn(3, 2, 24, 4, generator=g) * 2 for _ in range(2))
    keep = torch.ones(3, 24, dtype=torch.bool)
    keep[1, :12] = False
    keep[2] = False

    def run(sl):
        out, lse, _ = tiled_attention_forward(q, k[:, :, sl], v[:, :, sl], padding_mask=keep[:, sl].contiguous(),
                                              block_q=4, block_k=8)
        return out, lse.masked_fill(torch.isinf(lse), float("-inf"))

    return run(slice(0, 12)), run(slice(12, 24)), run(slice(0, 24))


@checker
def check_merge_blocks(fn) -> CheckResult:
    """`fn(o_a, lse_a, o_b, lse_b)` -> `(o, lse)` of attention over both blocks of keys.

    The inputs follow the exercise's convention: a row that saw no key has output 0 and LSE -inf
    (`tiled_attention_forward` itself returns +inf there; `_halves` converts it)."""
    for seed in (0, 1):
        (o_a, lse_a), (o_b, lse_b), (o, lse) = _halves(seed)
        got, problem = run_with_timeout(fn, o_a.clone(), lse_a.clone(), o_b.clone(), lse_b.clone())
        if problem is not None:
            return problem
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return CheckResult(False, f"return a pair (o, lse), got {type(got).__name__}"
                                      + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
        got_o, got_lse = got
        if isinstance(got_o, torch.Tensor) and got_o.shape == o.shape and got_o.is_floating_point():
            if torch.isnan(got_o).any():
                return CheckResult(False, "your output has NaN in rows where neither half saw a key (both LSEs "
                                          "-inf): such a row's output is 0 and its LSE -inf; look for arithmetic "
                                          "between two infinities")
            seen_both = ~torch.isinf(lse_a) & ~torch.isinf(lse_b)
            if torch.allclose(got_o[seen_both], ((o_a + o_b) / 2)[seen_both], atol=1e-5):
                return CheckResult(False, "a plain average weights both halves equally; each half's softmax "
                                          "denominator is e^lse: weight a half by its share of the total")
            unnormalised = torch.exp(lse_a)[..., None] * o_a + torch.exp(lse_b)[..., None] * o_b
            if torch.allclose(got_o[seen_both], unnormalised[seen_both], atol=1e-4):
                return CheckResult(False, "your merged output is not normalised: the two halves' weights must "
                                          "add up to 1")
        if isinstance(got_lse, torch.Tensor) and got_lse.shape == lse.shape and got_lse.is_floating_point():
            finite = ~torch.isinf(lse_a) & ~torch.isinf(lse_b)
            for wrong in (torch.maximum(lse_a, lse_b), lse_a + lse_b):
                if torch.allclose(got_lse[finite], wrong[finite], atol=1e-5):
                    return CheckResult(False, "the merged LSE is the log of the merged softmax denominator, "
                                              "and each half's denominator is e^lse")
        result = check_tensor(got_o, o, name="your merged output", atol=1e-5)
        if not result.passed:
            return result
        result = check_tensor(got_lse, lse, name="your merged LSE", atol=1e-5)
        if not result.passed:
            return result
    return CheckResult(True, "two partial softmaxes merge exactly from their outputs and LSEs, as kernels that "
                             "split the keys over workers do")


@checker
def check_hbm_elements(fn) -> CheckResult:
    """`fn(T, d, block)` -> hbm_reads + hbm_writes of the tiled forward, causal, B = h = 1, Tq = Tk = T,
    d_k = d_v = d, block_q = block_k = block."""
    for T, d, block in ((100, 8, 32), (300, 8, 64), (257, 4, 128), (10, 3, 16), (96, 2, 32), (64, 16, 64)):
        value, problem = run_with_timeout(fn, T, d, block)
        if problem is not None:
            return problem
        got, problem = as_int(value, "the number of elements read and written")
        if problem is not None:
            return problem
        st = _stats(T, d, block, block, True)
        expected = st.hbm_reads + st.hbm_writes
        if got == expected:
            continue
        n = -(-T // block)
        q_and_out = T * d + T * (d + 1)
        hints = [
            (_stats(T, d, block, block, False).hbm_reads + T * (d + 1),
             "that is the count without the mask: under it, a block of queries loads only the keys it can see"),
            (st.hbm_reads, "those are the reads; the pass writes too"),
            (q_and_out + 2 * d * block * n * (n - 1) // 2,
             "the tiles on the diagonal are loaded too (their upper triangle is masked inside)"),
            (q_and_out + n * T * d, "not exactly half of the unmasked traffic: count the keys each block of "
                                    "queries loads"),
        ]
        for wrong, hint in hints:
            if got == wrong:
                return CheckResult(False, f"for T={T}, d={d}, block={block}: {hint}")
        return CheckResult(False, f"for T={T}, d={d}, block={block} you return {got}; count Q, K and V as the "
                                  "loops load them, and the outputs written")
    return CheckResult(True, "T d + 2 d (b n(n - 1)/2 + T) + T (d + 1) with n = ceil(T / b): each block of "
                             "queries loads the keys up to its last query, about half of the unmasked 2 T^2 d / b")
