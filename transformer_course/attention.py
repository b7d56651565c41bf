"""Scaled dot-product attention and the multi-head attention module (Chapters 5-8).

One entry point, `attention(q, k, v, ...)`, does every variant the course needs:

    softmax(q k^T * scale + bias + mask) v,        scale = 1/sqrt(d_k) unless given

- q `(B, h, Tq, d_k)`, k `(B, h_kv, Tk, d_k)`, v `(B, h_kv, Tk, d_v)` with h % h_kv == 0 (d_v = d_k in
  every model of the course, but nothing needs it): query head j reads key/value head
  j // (h / h_kv) (multi-head when h_kv == h, grouped-query when 1 < h_kv < h, multi-query when h_kv == 1);
- `causal`: query i sees keys up to its own position. When Tq < Tk (decoding with a KV cache) the queries are
  the LAST Tq positions, so query i sits at position Tk - Tq + i;
- `window`: sliding window (requires causal): a query sees itself and the window-1 keys before it;
- `padding_mask` `(B, Tk)` bool, True for real tokens: no query attends to padding;
- `bias`: an additive float tensor broadcastable to `(B, h, Tq, Tk)` (ALiBi, or -inf for any custom mask), of
  any float dtype: it is cast to the dtype of q, k, v (which must share one). A bool mask is refused here.

A query that may attend to no key at all (a padding position under causal + left padding) gets weights of
zero and an output of zero, never NaN. `impl="sdpa"` runs PyTorch's fused `F.scaled_dot_product_attention`
with the same semantics, and `impl="flash"` Chapter 15's tiles (`flash.py`); the tests check they agree.

`Attention` is the module around it: projections to q, k, v (fused into one matmul, or three), heads,
RoPE/ALiBi hooks, a per-layer KV cache, and the output projection.
Leaves out: cross-attention of encoder-decoder models (pass k, v computed from another sequence to
`attention`), strided/fixed sparse patterns (build them as `bias`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positional import apply_rope
from .utils import (
    check_bool, check_choice, check_device, check_float_dtype, check_input, check_int, check_number, check_tensor,
    describe,
)

IMPLS = ("manual", "sdpa", "flash")  # attention(impl=...): written out, PyTorch's fused kernel, tiles


def check_qkv(q, k, v) -> None:
    """q `(B, h, Tq, d_k)`, k `(B, h_kv, Tk, d_k)`, v `(B, h_kv, Tk, d_v)`: floating point, one dtype and device."""
    check_tensor("q", q, ("B", "h", "Tq", "d_k"), "float")
    for name, t in (("k", k), ("v", v)):
        check_tensor(f"{name} (like q)", t, ("B", "h_kv", "Tk", "d_k"), q.dtype, q.device)
    (B, h, Tq, d_k), (Bk, h_kv, Tk, d_kk) = q.shape, k.shape
    if k.shape[:3] != v.shape[:3] or Bk != B or d_kk != d_k:
        raise ValueError(
            f"q (B, h, Tq, d_k) = {tuple(q.shape)}, k and v (B, h_kv, Tk, d_k) = {tuple(k.shape)}, {tuple(v.shape)} "
            "must agree in B, k and v in (B, h_kv, Tk), q and k in d_k"
        )
    if min(h, h_kv, d_k) == 0:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need at least one head and d_k >= 1")
    if h % h_kv:
        raise ValueError(f"the number of query heads h={h} must be a multiple of the key/value heads h_kv={h_kv}")


def _check_inputs(q, k, v, bias, window, padding_mask, causal, scale=None):
    check_qkv(q, k, v)
    (B, h, Tq, _), Tk = q.shape, k.shape[2]
    check_bool("causal", causal)
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk (the queries are the last Tq of the Tk positions), "
                         f"got Tq={Tq}, Tk={Tk}")
    if scale is not None:
        check_number("scale", scale, "[0, inf)")
    if padding_mask is not None:
        check_tensor("padding_mask (on q's device)", padding_mask, (B, Tk), torch.bool, q.device)
    if bias is not None:
        if isinstance(bias, torch.Tensor) and bias.dtype == torch.bool:
            raise ValueError("bias is added to the scores, so a bool mask would add 1 or 0 and mask nothing: pass "
                             "a float bias with -inf where keys are hidden (sparse_attention.mask_to_bias), or "
                             "padding_mask for padding")
        check_tensor("bias (on q's device)", bias, dtype="float", device=q.device)
        try:
            torch.broadcast_shapes(bias.shape, (B, h, Tq, Tk))
        except RuntimeError:
            raise ValueError(
                f"bias {tuple(bias.shape)} does not broadcast to the scores (B, h, Tq, Tk) = {(B, h, Tq, Tk)}"
            ) from None


def allowed_mask(
    Tq: int, Tk: int, *, causal=False, window=None, padding_mask=None, device=None
) -> torch.Tensor | None:
    """Which keys each query may see: bool, broadcastable to `(B, h, Tq, Tk)`, True = allowed; None = all.

    Queries are the last Tq of Tk positions (end-aligned), so query i sits at position Tk - Tq + i.
    """
    check_int("Tq", Tq, 0)
    check_int("Tk", Tk, 0)
    if window is not None:
        if not causal:
            raise ValueError("window (a sliding window over previous keys) requires causal=True")
        check_int("window (keys per query, itself included)", window)
    if padding_mask is not None:
        check_tensor("padding_mask", padding_mask, ("B", Tk), torch.bool)
    device = None if device is None else check_device("device", device)
    allowed = None
    if causal:
        q_pos = torch.arange(Tk - Tq, Tk, device=device)[:, None]  # (Tq, 1)
        k_pos = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        allowed = k_pos <= q_pos  # (Tq, Tk)
        if window is not None:
            allowed = allowed & (q_pos - k_pos < window)  # itself and the window-1 keys before it
    if padding_mask is not None:
        keys = padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = keys if allowed is None else allowed & keys  # (B, 1, Tq, Tk)
    return allowed


def attention_weights(q, k, *, causal=False, bias=None, window=None, padding_mask=None, scale=None):
    """The attention matrix softmax(q k^T * scale + bias, masked) `(B, h, Tq, Tk)`; rows sum to 1 (or are 0)."""
    _check_inputs(q, k, k, bias, window, padding_mask, causal, scale)
    return _weights(q, k, causal, bias, window, padding_mask, scale)


def _weights(q, k, causal, bias, window, padding_mask, scale):
    (B, h, Tq, d_k), h_kv, Tk = q.shape, k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    # The h/h_kv query heads that share a key head are stacked as extra query rows, so one matmul per key
    # head serves its whole group and k is never copied (broadcasting k over a group dimension would be).
    q_grouped = q.reshape(B, h_kv, (h // h_kv) * Tq, d_k)
    scores = (q_grouped @ k.transpose(-2, -1)) * scale  # (B, h_kv, h/h_kv * Tq, Tk)
    scores = scores.reshape(B, h, Tq, Tk)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    allowed = allowed_mask(Tq, Tk, causal=causal, window=window, padding_mask=padding_mask, device=q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    # A query with no key to attend to would softmax over all -inf: 0/0 = NaN. Give such rows zero weights.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, h, Tq, 1)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def attention(
    q, k, v, *, causal=False, bias=None, window=None, padding_mask=None, scale=None, dropout_p=0.0, impl="manual"
) -> torch.Tensor:
    """Scaled dot-product attention: q `(B, h, Tq, d_k)`, k `(B, h_kv, Tk, d_k)`, v `(B, h_kv, Tk, d_v)` ->
    `(B, h, Tq, d_v)`.

    See the module docstring for the meaning of each keyword. `dropout_p` drops attention weights (training
    only). `impl`: "manual" (readable, the teaching path), "sdpa" (`F.scaled_dot_product_attention`)
    or "flash" (`flash.flash_attention`, Chapter 15: tiles, no T x T scores; no bias, window or dropout).
    """
    _check_inputs(q, k, v, bias, window, padding_mask, causal, scale)
    check_number("dropout_p", dropout_p, "[0, 1)")
    check_choice("impl", impl, IMPLS)
    if impl == "flash":
        from .flash import flash_attention  # imported here: flash.py imports this module
        return flash_attention(q, k, v, causal=causal, bias=bias, window=window,
                               padding_mask=padding_mask, scale=scale, dropout_p=dropout_p)
    if impl == "manual":
        weights = _weights(q, k, causal, bias, window, padding_mask, scale)  # (B, h, Tq, Tk)
        if dropout_p > 0:
            weights = F.dropout(weights, p=dropout_p)
        (B, h, Tq, Tk), h_kv = weights.shape, k.shape[1]
        out = weights.reshape(B, h_kv, (h // h_kv) * Tq, Tk) @ v  # (B, h_kv, h/h_kv * Tq, d_v): v not copied
        return out.reshape(B, h, Tq, v.shape[-1])
    return _sdpa(q, k, v, causal, bias, window, padding_mask, scale, dropout_p)


def _sdpa(q, k, v, causal, bias, window, padding_mask, scale, dropout_p):
    """The same computation through PyTorch's fused kernel (its own masks, GQA via enable_gqa)."""
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if causal and Tq == Tk and bias is None and window is None and padding_mask is None:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p, enable_gqa=gqa
        )
    allowed = allowed_mask(Tq, Tk, causal=causal, window=window, padding_mask=padding_mask, device=q.device)
    mask = allowed
    if bias is not None:
        mask = bias.to(q.dtype)
        if allowed is not None:
            mask = mask.masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, dropout_p=dropout_p, enable_gqa=gqa)
    if mask is not None:
        # Kernels differ on rows with no allowed key (some return NaN): make them zero, as the manual path does.
        empty = torch.isneginf(mask).all(-1, keepdim=True) if mask.dtype != torch.bool else ~mask.any(-1, keepdim=True)
        out = out.masked_fill(empty, 0.0)
    return out


class LayerKVCache:
    """Keys and values of one layer for the tokens seen so far, preallocated to `max_len` positions.

    k, v: `(B, h_kv, max_len, d_k)`; the first `length` positions are filled. `update` writes the new
    tokens' keys and values in place and returns views of everything so far: decoding one token costs one
    write, not a copy of the whole cache.
    """

    def __init__(self, batch_size, n_kv_heads, max_len, d_k, *, device=None, dtype=torch.float32):
        for name, value in dict(batch_size=batch_size, n_kv_heads=n_kv_heads, max_len=max_len, d_k=d_k).items():
            check_int(name, value)
        check_float_dtype("dtype", dtype)
        device = None if device is None else check_device("device", device)
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, d_k, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v `(B, h_kv, T, d_k)`; return all keys and values `(B, h_kv, length, d_k)`."""
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, ("B", "h_kv", "T", "d_k"), self.k.dtype, self.k.device)
        T = k.shape[2]
        if k.shape[:2] != self.k.shape[:2] or k.shape[3] != self.k.shape[3] or k.shape != v.shape:
            raise ValueError(f"k, v {tuple(k.shape)}, {tuple(v.shape)} do not fit the cache {tuple(self.k.shape)}")
        if self.length + T > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions; {self.length} used, {T} more do not fit")
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class Attention(nn.Module):
    """Multi-head attention over x `(B, T, d_model)` with `n_kv_heads` key/value heads (MHA, GQA, MQA).

    x -> q `(B, h, T, d_k)`, k, v `(B, h_kv, T, d_k)` -> optional RoPE on q, k -> optional KV cache ->
    `attention` -> concatenate heads `(B, T, h*d_k)` -> output projection `(B, T, d_model)`.

    fused_qkv=True computes q, k, v with one Linear of width (h + 2 h_kv) d_k, rows in the order [q; k; v]
    (like `nn.MultiheadAttention.in_proj_weight` and GPT-2's `c_attn`); fused_qkv=False uses three Linears
    (like Llama's q_proj, k_proj, v_proj). The two compute the same function.
    """

    def __init__(
        self, d_model, n_heads, n_kv_heads=None, *, bias=True, fused_qkv=True, dropout=0.0, impl="manual"
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        for name, value in dict(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads).items():
            check_int(name, value)
        check_bool("bias", bias)
        check_bool("fused_qkv", fused_qkv)
        check_number("dropout", dropout, "[0, 1)")
        check_choice("impl", impl, IMPLS)
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"need d_model % n_heads == 0 and n_heads % n_kv_heads == 0, "
                f"got d_model={d_model}, n_heads={n_heads}, n_kv_heads={n_kv_heads}"
            )
        self.n_heads, self.n_kv_heads, self.d_k = n_heads, n_kv_heads, d_model // n_heads
        self.dropout, self.impl = dropout, impl
        q_dim, kv_dim = n_heads * self.d_k, n_kv_heads * self.d_k
        if fused_qkv:
            self.qkv = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
            self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def project_qkv(self, x: torch.Tensor):
        """x `(B, T, d_model)` -> q `(B, h, T, d_k)`, k, v `(B, h_kv, T, d_k)`."""
        check_input("x", x, self.qkv.weight if hasattr(self, "qkv") else self.q_proj.weight, ("B", "T"))
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.d_k, self.n_kv_heads * self.d_k
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split([q_dim, kv_dim, kv_dim], dim=-1)  # (B, T, h*d_k), 2 x (B, T, h_kv*d_k)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)
        k = k.view(B, T, self.n_kv_heads, self.d_k).transpose(1, 2)  # (B, h_kv, T, d_k)
        v = v.view(B, T, self.n_kv_heads, self.d_k).transpose(1, 2)  # (B, h_kv, T, d_k)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = True,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        window: int | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x `(B, T, d_model)` -> `(B, T, d_model)`.

        rope: (cos, sin) `(T, d_k)` or `(B, T, d_k)` at the positions of x's tokens. bias: additive scores
        (e.g. ALiBi) broadcastable to `(B, h, T, Tk)`. padding_mask: `(B, Tk)` over all keys, cached ones
        included. cache: this layer's `LayerKVCache`; x holds only the new tokens.
        """
        q, k, v = self.project_qkv(x)  # checks x
        B, T, _ = x.shape
        if rope is not None:
            if not isinstance(rope, (tuple, list)) or len(rope) != 2:
                raise ValueError(f"rope must be a pair (cos, sin) of tensors (T, d_k), got {describe(rope)}")
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if not isinstance(cache, LayerKVCache):
                raise ValueError(f"cache must be a LayerKVCache, got {describe(cache)}")
            k, v = cache.update(k, v)  # (B, h_kv, Tk, d_k): cached keys followed by the new ones
        out = attention(
            q, k, v, causal=causal, bias=bias, window=window, padding_mask=padding_mask,
            dropout_p=self.dropout if self.training else 0.0, impl=self.impl,
        )  # (B, h, T, d_k)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_k)  # (B, T, h*d_k): heads side by side
        return self.resid_dropout(self.out_proj(out))
