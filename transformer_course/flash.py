"""FlashAttention: exact attention in tiles, never forming the T x T scores (Chapter 15).

- `online_softmax(x)`: softmax from one pass of running statistics over blocks (Milakov &
  Gimelshein 2018): the running max m and the running sum l of exp(x - m), rescaled by
  exp(m_old - m_new) when m grows.
- `tiled_attention_forward`: blocks of queries against blocks of keys/values with the same
  rescaling applied to the output (Dao et al. 2022, Algorithm 1, in FlashAttention-2's loop order:
  queries outside, keys inside; Dao 2023, Algorithm 1). Causal tiles entirely above the diagonal
  are skipped. It returns the output, the per-row log-sum-exp (LSE) and a `FlashStats` of what it
  did: matmul FLOPs, elements moved to and from "HBM" (the full tensors, as opposed to the tiles
  on chip), tiles done and skipped.
- `tiled_attention_backward`: gradients by recomputation from q, k, v, O, dO and the stored LSE
  (FlashAttention-2, Algorithm 2): each tile's probabilities P = exp(S - LSE) are rebuilt, never
  stored.
- `flash_attention(q, k, v, ...)`: the two as a `torch.autograd.Function`, with `attention`'s
  calling convention, so a model can train with it; extra memory O(T) instead of O(T^2).
- `triton_attention(q, k, v, ...)`: the forward pass as a Triton kernel, with the same tiles and
  variable names. It runs on a GPU, or on the CPU under `TRITON_INTERPRET=1` (a slow simulation).

Shapes are `attention`'s: q `(B, h, Tq, d_k)`, k `(B, h_kv, Tk, d_k)`, v `(B, h_kv, Tk, d_v)`,
h % h_kv == 0 (query head j reads key/value head j // (h / h_kv)); causal queries are the last Tq
of the Tk positions; `padding_mask` `(B, Tk)` is True for real tokens. A query that sees no key
gets output 0, never NaN, and an LSE of +inf (as in FlashAttention's kernels), so the backward
rebuilds its P = exp(S - inf) = 0.
Leaves out: dropout, additive biases (ALiBi) and sliding windows (refused), a Triton backward
pass, FP8, the warp-level scheduling of FlashAttention-2/3, and KV-cache decoding kernels
(flash-decoding).
"""
import functools
import math
import os
from dataclasses import dataclass

import torch

from .attention import check_qkv
from .utils import check_bool, check_int, check_number, check_tensor, describe


LOG2_E = math.log2(math.e)
"""The tiled passes compute in base 2, as FlashAttention's kernels do: e^x = 2^(x log2 e), so the
scale is multiplied by log2 e once and every exp becomes an exp2, which CPUs and GPUs evaluate
faster (on a CPU, PyTorch's exp also slows down ~5x on the -inf of masked scores; exp2 does not).
The LSE is returned in base e."""


@dataclass
class FlashStats:
    """What one tiled pass did, counted (totals over batch and heads).

    flops: multiply-adds of the matmuls, x 2. hbm_reads / hbm_writes: elements read from and
    written to the full tensors in memory ("HBM"); a tile counts each time it is loaded.
    tiles / skipped: (query block, key block) pairs computed, and skipped as entirely above the
    causal diagonal.
    """

    flops: int = 0
    hbm_reads: int = 0
    hbm_writes: int = 0
    tiles: int = 0
    skipped: int = 0


def _safe(m: torch.Tensor) -> torch.Tensor:
    """The running max, -inf (nothing seen yet) replaced by 0: exp(x - m) = 0, not exp(nan)."""
    return m.masked_fill(torch.isneginf(m), 0.0)


def online_softmax(x: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """softmax(x) over the last dimension, x `(..., n)` -> `(..., n)`.

    One pass over blocks of `block_size` columns keeps the running max m
    and the running sum l = sum exp(x - m) (the old sum rescaled by
    exp(m_old - m_new) when the max grows); a second pass gives
    softmax = exp(x - m) / l. No exp of a large number is ever taken. A
    row of all -inf (fully masked) gives zeros, as `attention` does for a
    query that sees no key.
    """
    check_tensor("x", x, ("...", "n"), "float")
    check_int("block_size", block_size)
    m = x.new_full((*x.shape[:-1], 1), float("-inf"))  # running max
    l = x.new_zeros((*x.shape[:-1], 1))  # running sum of exp(x - m)
    for j0 in range(0, x.shape[-1], block_size):
        block = x[..., j0 : j0 + block_size]  # (..., <= block_size)
        m_new = torch.maximum(m, block.amax(-1, keepdim=True))
        l = (l * torch.exp(m - _safe(m_new))
             + torch.exp(block - _safe(m_new)).sum(-1, keepdim=True))
        m = m_new
    # all -inf rows: exp(-inf) / 1 = 0
    return torch.exp(x - _safe(m)) / torch.where(l == 0, 1.0, l)


def _check(q, k, v, causal, padding_mask, scale, block_q, block_k):
    check_qkv(q, k, v)
    check_bool("causal", causal)
    Tq, Tk = q.shape[2], k.shape[2]
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk (the queries are the last Tq of the Tk "
                         f"positions), got Tq={Tq}, Tk={Tk}")
    if padding_mask is not None:
        check_tensor("padding_mask (on q's device)", padding_mask, (q.shape[0], Tk), torch.bool,
                     q.device)
    if scale is not None:
        check_number("scale", scale, "[0, inf)")
    check_int("block_q", block_q)
    check_int("block_k", block_k)


@functools.lru_cache(maxsize=64)
def _above_diagonal(shift: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Bool `(rows, cols)`: True where key j0 + c comes after the query at position j0 + shift + r.
    Cached: the diagonal tiles of one call, and of the next, share a few shapes."""
    r, c = torch.arange(rows, device=device)[:, None], torch.arange(cols, device=device)[None, :]
    return c - r > shift


def _hidden(causal, padding_mask, i0, i1, j0, j1, offset, device):
    """Bool tile of the scores to hide, broadcastable to `(B, h_kv, g, i1-i0, j1-j0)`, or None."""
    hide = None
    if causal and j1 - 1 > offset + i0:  # the tile reaches above the diagonal
        hide = _above_diagonal(offset + i0 - j0, i1 - i0, j1 - j0, device)  # (bq, bk)
    if padding_mask is not None:
        pad = ~padding_mask[:, None, None, None, j0:j1]  # (B, 1, 1, 1, bk)
        hide = pad if hide is None else hide | pad
    return hide


def _tile(buffer: torch.Tensor, *shape: int) -> torch.Tensor:
    """The first elements of a flat `buffer`, viewed as a contiguous tensor of `shape`."""
    return buffer[: math.prod(shape)].view(shape)


def tiled_attention_forward(q, k, v, *, causal=False, padding_mask=None,
                            scale=None, block_q=256, block_k=256):
    """Attention in tiles: -> out `(B, h, Tq, d_v)`, lse `(B, h, Tq)`, stats

    For each block of `block_q` queries (loaded once), loop over the blocks
    of `block_k` keys and values: scores S = Q_i K_j^T * scale, running max
    m and sum l as in `online_softmax`, and the output accumulated as
    acc = acc * exp(m_old - m_new) + exp(S - m_new) V_j; at the end
    out = acc / l and lse = m + log l (in base 2, see `LOG2_E`). Peak extra
    memory: the output, the LSE and a few `block_q x block_k` tiles per
    head. Computed in float32 (float64 for float64 inputs); out has q's
    dtype, lse the compute dtype. stats: a `FlashStats`.
    """
    _check(q, k, v, causal, padding_mask, scale, block_q, block_k)
    (B, h, Tq, d_k), (h_kv, Tk, d_v) = q.shape, (*k.shape[1:3], v.shape[3])
    g, n = h // h_kv, B * h_kv  # heads per k/v head; matrices per bmm
    scale = (1.0 / math.sqrt(d_k) if scale is None else scale) * LOG2_E
    work = torch.promote_types(q.dtype, torch.float32)
    qg = q.view(B, h_kv, g, Tq, d_k)  # the g heads sharing a k/v head
    k3, v3 = k.reshape(n, Tk, d_k), v.reshape(n, Tk, d_v)
    out = q.new_empty(B, h_kv, g, Tq, d_v)
    lse = torch.empty(B, h_kv, g, Tq, dtype=work, device=q.device)
    offset = Tk - Tq  # query i sits at key position offset + i
    stats, n_key_blocks = FlashStats(), -(-Tk // block_k)
    # One score tile and one P V_j product, reused by every step (a fresh
    # tile per step costs the CPU page faults: ~20 % of the time at
    # T = 1024); _tile views their start at a tile's shape.
    bq, bk = min(block_q, Tq), min(block_k, Tk)
    s_buf = q.new_empty(n * g * bq * bk, dtype=work)
    pv_buf = q.new_empty(n * g * bq * d_v, dtype=work)
    for i0 in range(0, Tq, block_q):
        i1 = min(i0 + block_q, Tq)
        # The block's queries of a group's g heads stacked as rows, as in
        # attention.py: one matmul per k/v head serves the whole group,
        # and K_j, V_j are never copied.
        rows = g * (i1 - i0)
        Qi = (qg[..., i0:i1, :].to(work) * scale).reshape(n, rows, d_k)
        m = Qi.new_full((n, rows, 1), float("-inf"))  # running max
        l = Qi.new_zeros((n, rows, 1))  # running sum of 2^(S - m)
        acc = Qi.new_zeros((n, rows, d_v))  # running sum of 2^(S - m) V
        # causal: keys after the block's last query are skipped
        end = min(Tk, offset + i1) if causal else Tk
        for j0 in range(0, end, block_k):
            j1 = min(j0 + block_k, Tk)
            Kj, Vj = k3[:, j0:j1].to(work), v3[:, j0:j1].to(work)
            S = torch.bmm(Qi, Kj.transpose(1, 2),  # scores x log2 e
                          out=_tile(s_buf, n, rows, j1 - j0))
            hide = _hidden(causal, padding_mask, i0, i1, j0, j1, offset,
                           q.device)
            if hide is not None:
                S.view(B, h_kv, g, i1 - i0, j1 - j0).masked_fill_(
                    hide, float("-inf"))
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            m_safe = _safe(m_new)
            P = S.sub_(m_safe).exp2_()  # (n, rows, bk), in place of S
            alpha = torch.exp2(m - m_safe)  # rescales the old sums
            l.mul_(alpha).add_(P.sum(-1, keepdim=True))
            PV = torch.bmm(P, Vj, out=_tile(pv_buf, *acc.shape))
            acc.mul_(alpha).add_(PV)  # acc * alpha + P V_j
            m = m_new
            stats.flops += 2 * B * h * (i1 - i0) * (j1 - j0) * (d_k + d_v)
            # K_j and V_j, once per query block
            stats.hbm_reads += n * (j1 - j0) * (d_k + d_v)
            stats.tiles += 1
        # rows that saw no key have acc = 0: their output is 0, LSE +inf
        l_safe = torch.where(l == 0, 1.0, l)
        out[..., i0:i1, :] = (acc / l_safe).view(B, h_kv, g, i1 - i0, d_v)
        lse_i = torch.where(l == 0, float("inf"),
                            (m + torch.log2(l_safe)) / LOG2_E)  # base e
        lse[..., i0:i1] = lse_i.view(B, h_kv, g, i1 - i0)
        stats.skipped += n_key_blocks - -(-end // block_k)
        stats.hbm_reads += B * h * (i1 - i0) * d_k  # Q_i
        stats.hbm_writes += B * h * (i1 - i0) * (d_v + 1)  # O_i, LSE_i
    return out.view(B, h, Tq, d_v), lse.view(B, h, Tq), stats


def tiled_attention_backward(q, k, v, out, lse, d_out, *, causal=False,
                             padding_mask=None, scale=None, block_q=256,
                             block_k=256):
    """Gradients of `tiled_attention_forward` by recomputation.

    -> dq, dk, dv, `FlashStats`. FlashAttention-2, Algorithm 2, where
    D = rowsum(dO * O) (the paper's name; not the token count D of
    Chapter 13). For each block of keys/values (outer loop) and each block
    of queries that sees it: S = Q_i K_j^T * scale, P = exp(S - LSE_i)
    (the softmax, rebuilt from the stored LSE), dV_j += P^T dO_i,
    dP = dO_i V_j^T, dS = P * (dP - D_i), dQ_i += dS K_j * scale,
    dK_j += dS^T Q_i * scale. A group's query heads are stacked as rows
    (as in the forward), so the matmuls for dK_j and dV_j sum over the
    heads that share them. out `(B, h, Tq, d_v)` and lse `(B, h, Tq)` as
    the forward returned them; d_out like out.
    """
    _check(q, k, v, causal, padding_mask, scale, block_q, block_k)
    (B, h, Tq, d_k), (h_kv, Tk, d_v) = q.shape, (*k.shape[1:3], v.shape[3])
    check_tensor("out", out, (B, h, Tq, d_v), q.dtype, q.device)
    check_tensor("d_out (like out)", d_out, (B, h, Tq, d_v), "float",
                 q.device)
    check_tensor("lse", lse, (B, h, Tq), "float", q.device)
    g, n = h // h_kv, B * h_kv
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    work = torch.promote_types(q.dtype, torch.float32)
    qg = q.view(B, h_kv, g, Tq, d_k)
    dog = d_out.reshape(B, h_kv, g, Tq, d_v)
    k3, v3 = k.reshape(n, Tk, d_k), v.reshape(n, Tk, d_v)
    # the LSE in base 2, like S below
    lse2 = lse.reshape(B, h_kv, g, Tq).to(work) * LOG2_E
    # D = rowsum(dO * O): (B, h_kv, g, Tq)
    D = (dog.to(work) * out.reshape(B, h_kv, g, Tq, d_v)).sum(-1)
    dq = q.new_zeros(B, h_kv, g, Tq, d_k, dtype=work)
    dk = q.new_empty(n, Tk, d_k, dtype=work)
    dv = q.new_empty(n, Tk, d_v, dtype=work)
    offset = Tk - Tq
    stats = FlashStats(hbm_reads=B * h * Tq * 2 * d_v,  # O, dO -> D
                       hbm_writes=B * h * Tq)
    for j0 in range(0, Tk, block_k):
        j1 = min(j0 + block_k, Tk)
        Kj, Vj = k3[:, j0:j1].to(work), v3[:, j0:j1].to(work)  # (n, bk, d)
        dKj, dVj = torch.zeros_like(Kj), torch.zeros_like(Vj)
        # causal: the query blocks before the key block are skipped
        first = max(0, j0 - offset) // block_q * block_q if causal else 0
        for i0 in range(first, Tq, block_q):
            i1 = min(i0 + block_q, Tq)
            rows = g * (i1 - i0)
            Qi = (qg[..., i0:i1, :].to(work) * scale).reshape(n, rows, d_k)
            dOi = dog[..., i0:i1, :].to(work).reshape(n, rows, d_v)
            # (n, rows, bk): the scores times log2 e
            S = (Qi @ Kj.transpose(1, 2)).mul_(LOG2_E)
            hide = _hidden(causal, padding_mask, i0, i1, j0, j1, offset,
                           q.device)
            if hide is not None:
                S.view(B, h_kv, g, i1 - i0, j1 - j0).masked_fill_(
                    hide, float("-inf"))
            # the tile's softmax, rebuilt from the LSE
            P = S.sub_(lse2[..., i0:i1].reshape(n, rows, 1)).exp2_()
            dVj += P.transpose(1, 2) @ dOi
            dP = dOi @ Vj.transpose(1, 2)  # (n, rows, bk)
            # dS = P * (dP - D_i), in place of P
            dS = P.mul_(dP.sub_(D[..., i0:i1].reshape(n, rows, 1)))
            dq[..., i0:i1, :] += (dS @ Kj).view(B, h_kv, g, i1 - i0,
                                                d_k) * scale
            dKj += dS.transpose(1, 2) @ Qi  # dS^T Q_i: Qi holds the scale
            stats.flops += (2 * B * h * (i1 - i0) * (j1 - j0)
                            * (3 * d_k + 2 * d_v))
            # Q_i, dO_i, dQ_i, LSE_i and D_i read; dQ_i written
            stats.hbm_reads += B * h * (i1 - i0) * (2 * d_k + d_v + 2)
            stats.hbm_writes += B * h * (i1 - i0) * d_k
            stats.tiles += 1
        stats.skipped += first // block_q
        dk[:, j0:j1], dv[:, j0:j1] = dKj, dVj
        stats.hbm_reads += n * (j1 - j0) * (d_k + d_v)  # K_j, V_j, once
        stats.hbm_writes += n * (j1 - j0) * (d_k + d_v)  # dK_j, dV_j
    dk = dk.view(B, h_kv, Tk, d_k).to(k.dtype)
    dv = dv.view(B, h_kv, Tk, d_v).to(v.dtype)
    return dq.view(B, h, Tq, d_k).to(q.dtype), dk, dv, stats


class FlashAttention(torch.autograd.Function):
    """`tiled_attention_forward` with `tiled_attention_backward` as its gradient; saves q, k, v, the
    output and the LSE (all O(T)), never the `(Tq, Tk)` probabilities. Call `flash_attention`."""

    @staticmethod
    def forward(ctx, q, k, v, causal, padding_mask, scale, block_q, block_k):
        out, lse, _ = tiled_attention_forward(q, k, v, causal=causal, padding_mask=padding_mask,
                                              scale=scale, block_q=block_q, block_k=block_k)
        ctx.save_for_backward(q, k, v, out, lse, padding_mask)
        ctx.options = dict(causal=causal, scale=scale, block_q=block_q, block_k=block_k)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse, padding_mask = ctx.saved_tensors
        dq, dk, dv, _ = tiled_attention_backward(q, k, v, out, lse, d_out,
                                                 padding_mask=padding_mask, **ctx.options)
        return dq, dk, dv, None, None, None, None, None


def flash_attention(q, k, v, *, causal=False, bias=None, window=None, padding_mask=None, scale=None,
                    dropout_p=0.0, block_q=256, block_k=256) -> torch.Tensor:
    """Exact attention, q `(B, h, Tq, d_k)`, k `(B, h_kv, Tk, d_k)`, v `(B, h_kv, Tk, d_v)` ->
    `(B, h, Tq, d_v)`, in tiles forward and backward (`FlashAttention`); extra memory O(T).

    Takes `attention`'s keywords; causal and padding_mask are supported, while an additive bias, a
    window and dropout are refused (each would need its own code inside the tile loop).
    """
    if bias is not None:
        raise ValueError(f"flash_attention takes no additive bias (got bias={describe(bias)}): use "
                         "attention(..., impl='manual') for ALiBi or custom masks")
    if window is not None:
        raise ValueError(f"flash_attention has no sliding window (got window={describe(window)}): "
                         "use attention(..., impl='manual') or sparse_attention.banded_attention")
    check_number("dropout_p", dropout_p, "[0, 1)")
    if dropout_p > 0:
        raise ValueError(f"flash_attention has no attention dropout (got dropout_p={dropout_p}): "
                         "set the model's dropout to 0 or use attention(..., impl='manual')")
    _check(q, k, v, causal, padding_mask, scale, block_q, block_k)
    return FlashAttention.apply(q, k, v, causal, padding_mask, scale, block_q, block_k)


# ----------------------------------------------------------------------------- the Triton kernel


@functools.cache
def _triton_kernel(interpret: bool):
    """Build the kernel on first use: `triton.jit` checks TRITON_INTERPRET
    when it decorates, so it runs here, once per setting, after the caller
    checked the environment (not at import)."""
    import triton
    import triton.language as tl

    @triton.jit
    def flash_forward(
        # q, out (B, h, Tq, d); k, v (B, h_kv, Tk, d); lse (B, h, Tq);
        # keep (B, Tk): the padding mask as int8
        Q, K, V, O, LSE, KEEP,
        # strides of batch, head and position (the last dim's is 1)
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
        h, g, Tq, Tk, scale, d: tl.constexpr,
        CAUSAL: tl.constexpr, HAS_KEEP: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # One program per (block of queries, batch row and head): the
        # PyTorch tiles' outer loop.
        i0 = tl.program_id(0) * BLOCK_Q  # the block's first query
        bh = tl.program_id(1)  # batch row b and head, as b * h + head
        b = bh // h
        head = bh % h
        kv_head = head // g  # the key/value head this query head reads
        rows = i0 + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,) query positions
        # (BLOCK_D,) feature index, d rounded up to a power of 2
        cols = tl.arange(0, BLOCK_D)
        q_ptrs = (Q + b * sqb + head * sqh + rows[:, None] * sqt
                  + cols[None, :])
        q_mask = (rows[:, None] < Tq) & (cols[None, :] < d)
        Qi = tl.load(q_ptrs, mask=q_mask, other=0.0)
        m = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # running max
        l = tl.zeros([BLOCK_Q], tl.float32)  # running sum of 2^(S - m)
        acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)  # ... of 2^(S-m) V
        offset = Tk - Tq  # query i sits at key position offset + i
        end = Tk
        if CAUSAL:  # keys after the block's last query: skipped
            end = tl.minimum(Tk, offset + i0 + BLOCK_Q)
        for j0 in range(0, end, BLOCK_K):
            keys = j0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,) key positions
            kv_mask = (keys[:, None] < Tk) & (cols[None, :] < d)
            Kj = tl.load(K + b * skb + kv_head * skh + keys[:, None] * skt
                         + cols[None, :], mask=kv_mask, other=0.0)
            Vj = tl.load(V + b * svb + kv_head * svh + keys[:, None] * svt
                         + cols[None, :], mask=kv_mask, other=0.0)
            # (BLOCK_Q, BLOCK_K) float32 scores, times log2 e
            S = tl.dot(Qi, tl.trans(Kj)) * scale
            seen = (keys[None, :] < Tk) & (rows[:, None] < Tq)
            if CAUSAL:
                seen = seen & (keys[None, :] <= offset + rows[:, None])
            if HAS_KEEP:
                keep = tl.load(KEEP + b * Tk + keys, mask=keys < Tk,
                               other=0)
                seen = seen & (keep[None, :] != 0)
            S = tl.where(seen, S, float("-inf"))
            m_new = tl.maximum(m, tl.max(S, 1))
            # no key seen yet: 2^-inf = 0, not 2^nan
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            P = tl.exp2(S - m_safe[:, None])
            alpha = tl.exp2(m - m_safe)  # rescales the old sums
            l = l * alpha + tl.sum(P, 1)
            acc = acc * alpha[:, None] + tl.dot(P.to(Vj.dtype), Vj)
            m = m_new
        # rows that saw no key have acc = 0: their output is 0, LSE +inf
        l_safe = tl.where(l == 0.0, 1.0, l)
        out = acc / l_safe[:, None]
        lse = tl.where(l == 0.0, float("inf"),
                       (m + tl.log2(l_safe)) / 1.4426950408889634)  # base e
        o_ptrs = (O + b * sob + head * soh + rows[:, None] * sot
                  + cols[None, :])
        o_mask = (rows[:, None] < Tq) & (cols[None, :] < d)
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
        tl.store(LSE + bh * Tq + rows, lse, mask=rows < Tq)

    return flash_forward


def triton_attention(q, k, v, *, causal=False, padding_mask=None, scale=None, block_q=64,
                     block_k=64, num_warps=4, num_stages=2):
    """The forward pass as one Triton kernel: -> out `(B, h, Tq, d)`, lse `(B, h, Tq)` float32.

    The same tiles as `tiled_attention_forward`, one program per block of `block_q` queries and
    head. q, k, v: float16, bfloat16 or float32 (on a GPU, tl.dot multiplies float32 in TF32),
    d_v = d_k <= 256, on a GPU; or on the CPU with the environment variable TRITON_INTERPRET=1
    (Triton's interpreter: a slow simulation, for small T), set before triton is first imported:
    triton.jit checks it when it decorates, and triton.language decorates its own helpers
    (tl.zeros, tl.max, ...) at import. block_q, block_k: powers of 2 >= 16.
    num_warps, num_stages: GPU launch options.
    """
    try:
        import triton
    except ImportError:
        raise RuntimeError("triton_attention needs the triton package (Linux wheels only: "
                           "pip install triton); it is not installed here") from None
    _check(q, k, v, causal, padding_mask, scale, block_q, block_k)
    (B, h, Tq, d), (h_kv, Tk) = q.shape, k.shape[1:3]
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must be float16, bfloat16 or float32 for Triton, got {q.dtype}")
    if v.shape[3] != d or d > 256:
        raise ValueError(f"the Triton kernel needs d_v == d_k <= 256, got q {tuple(q.shape)}, "
                         f"v {tuple(v.shape)}")
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name} must be a power of 2 >= 16 (tl.dot's smallest tile), "
                             f"got {describe(block)}")
    check_int("num_warps", num_warps)
    check_int("num_stages", num_stages)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type != "cuda" and not interpret:
        raise RuntimeError(f"triton_attention runs on a GPU, and q is on {q.device}: on the CPU "
                           "set TRITON_INTERPRET=1 (the interpreter) before triton is imported")
    import triton.language as tl

    if interpret and type(tl.zeros).__name__ != "InterpretedFunction":
        raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported (torch imports it "
                           "too, e.g. torch.utils.flop_counter), so triton's own helpers (tl.zeros, "
                           "tl.max) were decorated for a GPU: set it first, in the shell or in "
                           "os.environ before importing torch")
    kernel = _triton_kernel(interpret)
    out = torch.empty(B, h, Tq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, h, Tq, dtype=torch.float32, device=q.device)
    keep = q if padding_mask is None else padding_mask.to(torch.int8).contiguous()  # q: unused
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    grid = (triton.cdiv(Tq, block_q), B * h)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2_E  # base 2: see LOG2_E
    kernel[grid](
        q, k, v, out, lse, keep, *strides, h, h // h_kv, Tq, Tk, scale, d, CAUSAL=causal,
        HAS_KEEP=padding_mask is not None, BLOCK_Q=block_q, BLOCK_K=block_k,
        BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse
