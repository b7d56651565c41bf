"""Local and sparse attention patterns, and a banded attention that skips the work outside the band (Chapter 8).

Masks, bool `(T, T)`, True = query i (row) may attend to key j (column), always causal (j <= i):

- `sliding_window_mask(T, window)`: itself and the window-1 keys before it (local attention; the same band as
  `attention(..., causal=True, window=window)`);
- `strided_mask(T, stride)`: Child et al. (2019) §4 "strided": the previous `stride` positions and every
  stride-th position before them, A1 = {max(0, i - l), ..., i} union A2 = {j : (i - j) mod l = 0};
- `fixed_mask(T, stride, c)`: Child et al. (2019) §4 "fixed": the positions of one's own block of `stride`,
  A1 = {j : floor(j / l) = floor(i / l)}, and the last `c` positions of every block, A2 = {j : j mod l >= l - c}.

Child et al. split the two halves of a pattern over heads or layers (factorized attention); the masks here
return their union, the set one "merged" head attends to. Use any of them as `attention(..., bias=...)` with
`mask_to_bias`.

`banded_attention(q, k, v, window)` computes the same as `attention(q, k, v, causal=True, window=window)`
but in time and memory linear in T: queries in chunks of `window`, each chunk against the keys of its own and
the previous chunk only, so it forms `(T / window) x window x 2 window` scores instead of `T x T`.
`RollingKVCache(batch_size, n_kv_heads, window, d_k)` is the KV cache of one sliding-window layer when decoding
one token at a time: Mistral 7B's rolling buffer (Jiang et al. 2023, §2). It holds `window` positions whatever
the length of the sequence, the token at position p in slot p % window.

Window convention: `window` counts the query itself (keys j with i - window < j <= i), like Hugging Face's
Mistral port; Mistral's paper and the prefill mask of its reference code let position i see i - W .. i, which
is window = W + 1 here.

Leaves out: block-sparse kernels for the strided and fixed patterns (they run as dense masks here),
grouped-query heads, padding masks and KV-cached decoding in `banded_attention` (the model's attention handles
those), prefilling a `RollingKVCache` with a whole prompt (Mistral's chunked pre-fill), and the custom GPU
kernels that make sparse patterns fast in practice.
"""
import math

import torch
import torch.nn.functional as F

from .attention import LayerKVCache, check_qkv
from .utils import check_device, check_float_dtype, check_int, check_number, check_tensor


def _positions(T, device):
    device = None if device is None else check_device("device", device)
    i = torch.arange(T, device=device)[:, None]  # (T, 1): query positions
    j = torch.arange(T, device=device)[None, :]  # (1, T): key positions
    return i, j


def causal_mask(T: int, *, device=None) -> torch.Tensor:
    """Full causal attention: query i sees keys 0..i. Bool `(T, T)`."""
    check_int("T", T)
    i, j = _positions(T, device)
    return j <= i


def sliding_window_mask(T: int, window: int, *, device=None) -> torch.Tensor:
    """Local attention: query i sees keys i-window+1 .. i (itself and the window-1 before it). Bool `(T, T)`."""
    check_int("T", T)
    check_int("window", window)
    i, j = _positions(T, device)
    return (j <= i) & (i - j < window)


def strided_mask(T: int, stride: int, *, device=None) -> torch.Tensor:
    """Child et al. (2019) strided pattern: the previous `stride` positions, plus every stride-th one. `(T, T)`."""
    check_int("T", T)
    check_int("stride", stride)
    i, j = _positions(T, device)
    causal = j <= i
    local = i - j <= stride  # A1: t, ..., i with t = max(0, i - l)
    every_lth = (i - j) % stride == 0  # A2: (i - j) mod l = 0
    return causal & (local | every_lth)


def fixed_mask(T: int, stride: int, c: int = 1, *, device=None) -> torch.Tensor:
    """Child et al. (2019) fixed pattern: one's own block of `stride`, plus the last `c` of every block. `(T, T)`."""
    check_int("T", T)
    check_int("stride", stride)
    check_int("c", c)
    if c > stride:
        raise ValueError(f"c (summary positions per block) must be <= stride, got c={c}, stride={stride}")
    i, j = _positions(T, device)
    causal = j <= i
    same_block = (j // stride) == (i // stride)  # A1: floor(j / l) = floor(i / l)
    summary = (j % stride) >= stride - c  # A2: j mod l in {l - c, ..., l - 1}
    return causal & (same_block | summary)


def mask_to_bias(allowed: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """A bool mask (True = allowed) as an additive bias: 0 where allowed, -inf elsewhere (for `attention`)."""
    check_tensor("allowed", allowed, dtype=torch.bool)
    check_float_dtype("dtype", dtype)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def receptive_field(layers: int, window: int) -> int:
    """How many input positions (itself included) output t can depend on after `layers` local layers.

    Each layer reaches window-1 positions further back, so the field is L (w - 1) + 1 (before the start of
    the sequence cuts it off).
    """
    check_int("layers", layers)
    check_int("window", window)
    return layers * (window - 1) + 1


def banded_attention(q, k, v, window: int, *, scale=None) -> torch.Tensor:
    """Causal sliding-window attention, q, k, v `(B, h, T, d_k)` -> `(B, h, T, d_k)`, in O(T window) work.

    Equal (to float rounding) to `attention(q, k, v, causal=True, window=window)`. The sequence is cut into
    n = ceil(T / w) chunks of w = min(window, T) queries; a query's window-1 predecessors lie in its own chunk
    or the one before, so each chunk is scored against those 2w keys only.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ("B", "h", "T", "d_k"), "float")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape (B, h, T, d_k) (self-attention, no grouped heads), "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    check_qkv(q, k, v)  # one dtype, one device, d_k >= 1
    check_int("window", window)
    B, h, T, d_k = q.shape
    if T == 0:
        raise ValueError(f"q, k, v must hold at least one position, got shape {tuple(q.shape)}")
    scale = 1.0 / math.sqrt(d_k) if scale is None else check_number("scale", scale, "[0, inf)")
    w = min(window, T)  # chunk length; window >= T: one chunk, which is plain causal attention
    n = -(-T // w)  # number of chunks, ceil(T / w)
    pad = n * w - T  # pad the end so T divides into chunks (padded keys lie after every real query)
    qc, kc, vc = (F.pad(t, (0, 0, 0, pad)).view(B, h, n, w, d_k) for t in (q, k, v))  # (B, h, n, w, d_k)

    def with_previous(t):  # (B, h, n, w, d_k) -> (B, h, n, 2w, d_k): chunk c-1 followed by chunk c
        previous = F.pad(t, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # chunk -1 is zeros (masked below)
        return torch.cat([previous, t], dim=3)

    k2, v2 = with_previous(kc), with_previous(vc)  # (B, h, n, 2w, d_k)
    scores = (qc @ k2.transpose(-2, -1)) * scale  # (B, h, n, w, 2w): the only scores ever formed

    # Query a of chunk c sits at position c*w + a, key b of its 2w keys at (c-1)*w + b: distance w + a - b.
    a = torch.arange(w, device=q.device)[:, None]  # (w, 1)
    b = torch.arange(2 * w, device=q.device)[None, :]  # (1, 2w)
    distance = w + a - b  # (w, 2w)
    band = (distance >= 0) & (distance < window)  # (w, 2w)
    allowed = band.repeat(n, 1, 1)  # (n, w, 2w): the same band for every chunk ...
    allowed[0] &= b >= w  # ... except that chunk 0 has no previous chunk
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # every query sees at least itself: no empty rows
    out = weights @ v2  # (B, h, n, w, d_k)
    return out.reshape(B, h, n * w, d_k)[:, :, :T]


class RollingKVCache(LayerKVCache):
    """The KV cache of one sliding-window layer, `window` slots: Mistral 7B's rolling buffer (Jiang et al. 2023, §2).

    Decoding one token at a time, the token at position p goes to slot p % window, over position p - window,
    which no query from p on may see (a query sees itself and the window-1 keys before it). So k, v stay
    `(B, h_kv, window, d_k)` however long the sequence grows, where a full cache grows by one position per
    token. The slots are not in position order; attention does not care (it sums over keys), and every
    cached key lies inside the newest query's window, so decoding needs no mask.
    """

    def __init__(self, batch_size, n_kv_heads, window, d_k, *, device=None, dtype=torch.float32):
        check_int("window", window)  # a LayerKVCache of `window` slots; `length` counts positions seen
        super().__init__(batch_size, n_kv_heads, window, d_k, device=device, dtype=dtype)

    @property
    def window(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the newest token's k, v `(B, h_kv, 1, d_k)`; return all cached k, v `(B, h_kv, n, d_k)`.

        n = min(length, window): the newest token and the window-1 before it (fewer at the start).
        """
        B, h_kv, _, d_k = self.k.shape
        for name, t in (("k", k), ("v", v)):
            check_tensor(f"{name} (one new token)", t, (B, h_kv, 1, d_k), self.k.dtype, self.k.device)
        slot = self.length % self.window  # the oldest position, the one that just left the window
        self.k[:, :, slot] = k[:, :, 0]
        self.v[:, :, slot] = v[:, :, 0]
        self.length += 1
        filled = min(self.length, self.window)
        return self.k[:, :, :filled], self.v[:, :, :filled]
