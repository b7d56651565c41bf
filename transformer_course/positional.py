"""Positional information: learned, sinusoidal, RoPE and ALiBi (Chapter 4).

Attention is permutation-equivariant: without positions, "dog bites man" and "man bites dog"
give the same set of vectors. Four ways to put order back:

- learned: a second lookup table, one row per position (GPT-2), added to the token embedding;
- sinusoidal: a fixed table of sines and cosines (Vaswani et al. 2017, §3.5), added the same
  way;
- RoPE: rotate each query and key by an angle proportional to its position (Su et al. 2021), so
  that the score q·k depends on the distance between them only. Written in the rotate-half
  layout of GPT-NeoX/Llama; `interleaved_to_rotate_half` maps the paper's interleaved pairs
  to it;
- ALiBi: add `-slope * distance` to the attention scores (Press et al., ICLR 2022), nothing
  added to the vectors.

Positions are integers `(B, T)` or `(T,)`; with left padding the model counts only real tokens
(see `model.py`). Leaves out: RoPE scaling for long contexts (NTK, YaRN, linear interpolation),
partial rotary dimensions, relative position buckets (T5).
"""
import math

import torch
import torch.nn as nn

from .utils import check_int, check_number, check_tensor


class LearnedPositionalEmbedding(nn.Module):
    """One learned `d_model` vector per position 0 .. context_length-1 (GPT-2's `wpe`)."""

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.context_length = check_int("context_length", context_length)
        self.d_model = check_int("d_model", d_model)
        self.weight = nn.Parameter(torch.randn(context_length, d_model) * 0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions `(T,)` or `(B, T)` long -> `(T, d_model)` or `(B, T, d_model)`."""
        check_tensor("positions", positions, dtype=torch.long, device=self.weight.device)
        if positions.numel() and positions.device.type != "meta":  # meta: no values to check
            low, high = positions.min().item(), positions.max().item()
            if low < 0 or high >= self.context_length:
                raise ValueError(f"positions must lie in [0, {self.context_length}) (the "
                                 f"context length), got min {low}, max {high}")
        return self.weight[positions]

    def extra_repr(self) -> str:
        return f"{self.context_length}, {self.d_model}"


def sinusoidal_encoding(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed table of Vaswani et al. 2017 §3.5, `(T, d)`:

    PE[pos, 2i] = sin(pos / base^(2i/d)),  PE[pos, 2i+1] = cos(pos / base^(2i/d)).
    """
    sizes = all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63
                for n in (T, d))
    if not sizes or d == 0 or d % 2:
        raise ValueError("sinusoidal_encoding needs T >= 0 and an even d > 0, both ints, "
                         f"got T={T!r}, d={d!r}")
    check_number("base", base)
    pos = torch.arange(T, dtype=torch.float32)[:, None]  # (T, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float32)  # (d/2,) the even dimensions 2i
    angles = pos / base ** (two_i / d)  # (T, d/2)
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


# ----------------------------------------------------------------------------- RoPE


def rope_cos_sin(
    T: int, d_k: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables `(T, d_k)` for positions 0 .. T-1 in the rotate-half layout.

    Pair i (i < d_k/2) rotates at frequency theta_i = theta^(-2i/d_k). In the rotate-half
    layout the two coordinates of pair i are dimensions i and i + d_k/2, so each frequency
    appears twice: [f_0..f_{d/2-1}, f_0..f_{d/2-1}].
    """
    check_int("T", T, 0)
    if check_int("d_k", d_k) % 2:
        raise ValueError(f"RoPE needs an even head dimension d_k, got d_k={d_k}")
    check_number("theta", theta)
    inv_freq = 1.0 / theta ** (torch.arange(0, d_k, 2, dtype=torch.float32) / d_k)  # (d_k/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq  # (T, d_k/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d_k)
    return angles.cos(), angles.sin()


def _check_pairs(x) -> None:
    check_tensor("x", x, ("...", "d"))
    if x.shape[-1] % 2:
        raise ValueError("x must have an even last dimension d (pairs of coordinates), "
                         f"got shape {tuple(x.shape)}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension.

    A 90° turn of every pair (i, i + d/2).
    """
    _check_pairs(x)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x `(B, h, T, d_k)` by their positions' angles.

    cos, sin: `(T, d_k)` (same positions for every sequence) or `(B, T, d_k)` (per-sequence
    positions, e.g. left padding); rows taken from `rope_cos_sin`. Each pair (x_i, x_{i+d/2})
    becomes (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin).
    """
    check_tensor("x", x, ("B", "h", "T", "d_k"), "float")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(f"{name} (on x's device)", t, ("...", "T", "d_k"), "float", x.device)
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError("cos and sin must both be (T, d_k) or (B, T, d_k), "
                         f"got {tuple(cos.shape)}, {tuple(sin.shape)}")
    batch_ok = cos.dim() == 2 or cos.shape[0] in (1, x.shape[0])
    if cos.shape[-2:] != x.shape[-2:] or not batch_ok:
        raise ValueError(f"cos/sin {tuple(cos.shape)} do not match x (B, h, T, d_k) = "
                         f"{tuple(x.shape)} in (B, T, d_k)")
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d_k): the same angles in every head
    return x * cos + rotate_half(x) * sin


def interleaved_to_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dimension from the paper's pairs (x0, x1), (x2, x3), ... to the
    rotate-half layout (x0, x2, x4, ..., x1, x3, x5, ...). RoPE in one layout equals RoPE in
    the other under this permutation; applying it to the rows of W_q and W_k per head is how
    interleaved checkpoints are converted."""
    _check_pairs(x)
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def rotate_half_to_interleaved(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `interleaved_to_rotate_half`."""
    _check_pairs(x)
    first, second = x.chunk(2, dim=-1)
    return torch.stack([first, second], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes `(h,)` of Press et al., ICLR 2022 (§3): 2^(-8/h * i), i = 1..h.

    When h is not a power of two (the authors' code, `get_slopes`): take the slopes for the
    closest smaller power of two, 2^k, then every other slope of the sequence for 2^(k+1)
    until there are h.
    """
    check_int("n_heads", n_heads)

    def geometric(n: int) -> list[float]:
        return [2 ** (-8 / n * i) for i in range(1, n + 1)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias_from_positions(
    slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
) -> torch.Tensor:
    """Additive score bias -slope * |q_pos - k_pos|.

    slopes `(h,)`, q_pos `(..., Tq)`, k_pos `(..., Tk)` -> `(..., h, Tq, Tk)`. For causal
    attention only keys at or before the query count, where this is the paper's
    -slope * (i - j).
    """
    check_tensor("slopes", slopes, ("h",), "float")
    for name, t in (("q_pos", q_pos), ("k_pos", k_pos)):
        check_tensor(f"{name} (on the device of slopes)", t, ("...", "T"), "int",
                     slopes.device)
    if q_pos.shape[:-1] != k_pos.shape[:-1]:
        raise ValueError(f"q_pos {tuple(q_pos.shape)} and k_pos {tuple(k_pos.shape)} must "
                         "have the same leading (batch) dimensions")
    distance = (q_pos[..., :, None] - k_pos[..., None, :]).abs()  # (..., Tq, Tk)
    return -slopes[:, None, None] * distance.unsqueeze(-3).to(slopes.dtype)  # (..., h, Tq, Tk)


def alibi_bias(n_heads: int, T: int) -> torch.Tensor:
    """ALiBi bias `(h, T, T)` for positions 0 .. T-1, to add to the attention scores."""
    positions = torch.arange(check_int("T", T, 0))
    return alibi_bias_from_positions(alibi_slopes(n_heads), positions, positions)
