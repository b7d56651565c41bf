"""Scaled dot-product attention and the multi-head attention module (Chapters 5-8).

One entry point, `attention(q, k, v, ...)`, does every variant the course needs:

    softmax(q k^T * scale + bias + mask) v,        scale = 1/sqrt(d_k) unless given

- q `(B, h, Tq, d_k)`, k and v `(B, h_kv, Tk, d_k)` with h % h_kv == 0: query head j reads key/value head
  j // (h / h_kv) (multi-head when h_kv == h, grouped-query when 1 < h_kv < h, multi-query when h_kv == 1);
- `causal`: query i sees keys up to its own position. When Tq < Tk (decoding with a KV cache) the queries are
  the LAST Tq positions, so query i sits at position Tk - Tq + i;
- `window`: sliding window (requires causal): a query sees itself and the window-1 keys before it;
- `padding_mask` `(B, Tk)` bool, True for real tokens: no query attends to padding;
- `bias`: an additive float tensor broadcastable to `(B, h, Tq, Tk)` (ALiBi, or -inf for any custom mask).

A query that may attend to no key at all (a padding position under causal + left padding) gets weights of
zero and an output of zero, never NaN. `impl="sdpa"` runs PyTorch's fused `F.scaled_dot_product_attention`
with the same semantics; the tests check the two agree.

`Attention` is the module around it: projections to q, k, v (fused into one matmul, or three), heads,
RoPE/ALiBi hooks, a per-layer KV cache, and the output projection.
Leaves out: cross-attention of encoder-decoder models (pass k, v computed from another sequence to
`attention`), strided/fixed sparse patterns (build them as `bias`), FlashAttention (Chapter 15: `flash.py`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positional import apply_rope


def _check_inputs(q, k, v, bias, window, padding_mask, causal):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, heads, T, d_k), got {getattr(t, 'shape', type(t))}")
    (B, h, Tq, d_k), (Bk, h_kv, Tk, d_kk) = q.shape, k.shape
    if k.shape[:3] != v.shape[:3] or Bk != B or d_kk != d_k:
        raise ValueError(
            f"q (B, h, Tq, d_k) = {tuple(q.shape)}, k and v (B, h_kv, Tk, d_k) = {tuple(k.shape)}, {tuple(v.shape)} "
            "must agree in B, k and v in (B, h_kv, Tk), q and k in d_k"
        )
    if h % h_kv:
        raise ValueError(f"the number of query heads h={h} must be a multiple of the key/value heads h_kv={h_kv}")
    if padding_mask is not None and (padding_mask.dtype != torch.bool or tuple(padding_mask.shape) != (B, Tk)):
        raise ValueError(
            f"padding_mask must be a bool tensor (B, Tk) = ({B}, {Tk}) with True for real tokens, "
            f"got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    if window is not None:
        if not causal:
            raise ValueError("window (a sliding window over previous keys) requires causal=True")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be a positive int (keys per query, itself included), got {window!r}")
    if bias is not None:
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
    _check_inputs(q, k, k, bias, window, padding_mask, causal)
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
        scores = scores + bias
    allowed = allowed_mask(Tq, Tk, causal=causal, window=window, padding_mask=padding_mask, device=q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    # A query with no key to attend to would softmax over all -inf: 0/0 = NaN. Give such rows zero weights.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, h, Tq, 1)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def attention(
    q, k, v, *, causal=False, bias=None, window=None, padding_mask=None, scale=None, dropout_p=0.0, impl="manual"
) -> torch.Tensor:
    """Scaled dot-product attention: q `(B, h, Tq, d_k)`, k, v `(B, h_kv, Tk, d_k)` -> `(B, h, Tq, d_k)`.

    See the module docstring for the meaning of each keyword. `dropout_p` drops attention weights (training
    only). `impl`: "manual" (readable, the teaching path) or "sdpa" (`F.scaled_dot_product_attention`).
    """
    _check_inputs(q, k, v, bias, window, padding_mask, causal)
    if impl == "manual":
        weights = _weights(q, k, causal, bias, window, padding_mask, scale)  # (B, h, Tq, Tk)
        if dropout_p > 0:
            weights = F.dropout(weights, p=dropout_p)
        (B, h, Tq, Tk), h_kv = weights.shape, k.shape[1]
        out = weights.reshape(B, h_kv, (h // h_kv) * Tq, Tk) @ v  # (B, h_kv, h/h_kv * Tq, d_k): v not copied
        return out.reshape(B, h, Tq, v.shape[-1])
    if impl == "sdpa":
        return _sdpa(q, k, v, causal, bias, window, padding_mask, scale, dropout_p)
    raise ValueError(f'impl must be "manual" or "sdpa", got {impl!r}')


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
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, d_k, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v `(B, h_kv, T, d_k)`; return all keys and values `(B, h_kv, length, d_k)`."""
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
        if x.dim() != 3:
            raise ValueError(f"x must be (B, T, d_model), got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, h_kv, Tk, d_k): cached keys followed by the new ones
        out = attention(
            q, k, v, causal=causal, bias=bias, window=window, padding_mask=padding_mask,
            dropout_p=self.dropout if self.training else 0.0, impl=self.impl,
        )  # (B, h, T, d_k)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_k)  # (B, T, h*d_k): heads side by side
        return self.resid_dropout(self.out_proj(out))
