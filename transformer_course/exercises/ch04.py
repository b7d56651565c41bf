"""Checkers for Chapter 4, "Positional encoding". Each takes the reader's function and never raises.

- `check_sinusoidal_table(fn)`: `fn(T, d) -> (T, d)`, the table of Vaswani et al. 2017 §3.5;
- `check_rope_interleaved(fn)`: `fn(x) -> x rotated`, RoPE on the paper's interleaved pairs for x `(T, d)`;
- `check_alibi_slopes(fn)`: `fn(h) -> (h,)`, the slopes of Press et al. 2022 §3 for h a power of two.
"""
import torch

from ..positional import (
    alibi_slopes,
    apply_rope,
    interleaved_to_rotate_half,
    rope_cos_sin,
    rotate_half_to_interleaved,
    sinusoidal_encoding,
)
from .base import CheckResult, check_tensor, checker, run_with_timeout


def _as_float_tensor(got):
    """The reader's answer as a float64 tensor if that is possible without guessing, else None."""
    if isinstance(got, torch.Tensor) and got.is_floating_point():
        return got.detach().cpu().double()
    return None


def _close(a, b, atol=1e-4) -> bool:
    return a is not None and a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol, rtol=0))


# ----------------------------------------------------------------------------- sinusoidal table


def _sinusoidal_variants(T: int, d: int) -> list[tuple[torch.Tensor, str]]:
    """Typical wrong tables, each with the hint it deserves."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)

    def interleave(sin, cos):
        out = torch.zeros(T, d, dtype=torch.float64)
        out[:, 0::2], out[:, 1::2] = sin, cos
        return out

    angles = pos / 10000 ** (two_i / d)
    variants = [
        (interleave(angles.cos(), angles.sin()),
         "sine and cosine are swapped: even columns 2i hold sin, odd columns 2i+1 hold cos"),
        (torch.cat([angles.sin(), angles.cos()], dim=-1),
         "you put all sines first and all cosines second (the layout of tensor2tensor and Marian); "
         "§3.5 interleaves them: column 2i is sin, column 2i+1 is cos of the same frequency"),
    ]
    half = pos / 10000 ** (two_i / 2 / d)  # exponent i/d instead of 2i/d
    variants.append((interleave(half.sin(), half.cos()),
                     "the frequencies fall too slowly: the exponent is 2i/d where 2i is the even column index "
                     "(0, 2, 4, ...), not i/d"))
    every = torch.arange(d, dtype=torch.float64)  # a different frequency for every column j: pos / 10000^(j/d)
    each = pos / 10000 ** (every / d)
    wrong_cols = torch.where(torch.arange(d) % 2 == 0, each.sin(), each.cos())
    variants.append((wrong_cols, "columns 2i and 2i+1 must share one frequency, pos / 10000^(2i/d); you gave "
                                 "every column its own"))
    shifted = (pos + 1) / 10000 ** (two_i / d)
    variants.append((interleave(shifted.sin(), shifted.cos()),
                     "positions start at 0: the first row is sin 0 = 0 and cos 0 = 1"))
    return variants


@checker
def check_sinusoidal_table(fn) -> CheckResult:
    """`fn(T, d) -> (T, d)`: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)."""
    for T, d in ((50, 16), (7, 4), (128, 64)):
        got, problem = run_with_timeout(fn, T, d)
        if problem is not None:
            return problem
        expected = sinusoidal_encoding(T, d).double()
        answer = _as_float_tensor(got)
        if not _close(answer, expected, atol=1e-4):
            for variant, hint in _sinusoidal_variants(T, d):
                if _close(answer, variant, atol=1e-4):
                    return CheckResult(False, f"for T={T}, d={d}: {hint}")
            result = check_tensor(got, expected, name=f"the table for T={T}, d={d}", atol=1e-4, rtol=0)
            if not result.passed:
                return result
    return CheckResult(True, "your table is the one of Vaswani et al. §3.5 (row 0 alternates 0 and 1)")


# ----------------------------------------------------------------------------- RoPE on interleaved pairs


def rope_interleaved_reference(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE on the paper's pairs (x0, x1), (x2, x3), ... of x `(T, d)`, row m at position m, via the package:
    permute to the rotate-half layout, rotate, permute back."""
    T, d = x.shape
    cos, sin = rope_cos_sin(T, d, base)
    rotated = apply_rope(interleaved_to_rotate_half(x)[None, None], cos, sin)[0, 0]
    return rotate_half_to_interleaved(rotated)


def _rope_variants(x: torch.Tensor) -> list[tuple[torch.Tensor, str]]:
    T, d = x.shape
    pos = torch.arange(T, dtype=torch.float64)[:, None]

    def rotate_pairs(angles, first_index, second_index):
        out = x.clone()
        a, b = x[:, first_index], x[:, second_index]
        out[:, first_index] = a * angles.cos() - b * angles.sin()
        out[:, second_index] = b * angles.cos() + a * angles.sin()
        return out

    even, odd = torch.arange(0, d, 2), torch.arange(1, d, 2)
    freqs = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    return [
        (rotate_pairs(-pos * freqs, even, odd),
         "you rotate by -m·θ_i (clockwise); RoPE turns each pair counter-clockwise: "
         "(x0 cos − x1 sin, x1 cos + x0 sin)"),
        (rotate_pairs(pos * freqs, torch.arange(d // 2), torch.arange(d // 2, d)),
         "you paired dimension i with i + d/2 (the rotate-half layout of GPT-NeoX/Llama); the exercise asks for "
         "the paper's pairs of neighbours (0, 1), (2, 3), ..."),
        (rotate_pairs(pos * 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) / d), even, odd),
         "the frequencies fall too slowly: θ_i = 10000^(−2i/d) for pair i = 0 .. d/2−1"),
        (rotate_pairs((pos + 1) * freqs, even, odd),
         "positions start at 0: the first row must come back unchanged"),
        (x * torch.repeat_interleave((pos * freqs).cos(), 2, dim=-1),
         "you multiplied by the cosines only; a rotation also mixes in the partner coordinate times the sine"),
    ]


@checker
def check_rope_interleaved(fn) -> CheckResult:
    """`fn(x) -> (T, d)`: RoPE on interleaved pairs of x `(T, d)`, row m at position m, θ_i = 10000^(-2i/d)."""
    g = torch.Generator().manual_seed(4)
    for T, d in ((6, 4), (20, 16)):
        x = torch.randn(T, d, generator=g, dtype=torch.float64)
        got, problem = run_with_timeout(fn, x.clone())
        if problem is not None:
            return problem
        expected = rope_interleaved_reference(x)
        answer = _as_float_tensor(got)
        if not _close(answer, expected, atol=1e-5):
            if answer is not None and answer.shape == x.shape and torch.allclose(answer, x):
                return CheckResult(False, "your function returns x unchanged: rotate pair i of row m by m·θ_i")
            for variant, hint in _rope_variants(x):
                if _close(answer, variant, atol=1e-5):
                    return CheckResult(False, f"for T={T}, d={d}: {hint}")
            result = check_tensor(got, expected, name=f"RoPE of a ({T}, {d}) input", atol=1e-5, rtol=1e-4)
            if not result.passed:
                return result
    # the property that makes RoPE relative: the score of rotated q and k depends on m - n only
    q, k = torch.randn(1, 16, generator=g, dtype=torch.float64), torch.randn(1, 16, generator=g, dtype=torch.float64)
    rq, _ = run_with_timeout(fn, q.repeat(40, 1))
    rk, _ = run_with_timeout(fn, k.repeat(40, 1))
    if not (isinstance(rq, torch.Tensor) and isinstance(rk, torch.Tensor)):
        return CheckResult(False, "your function failed on a (40, 16) input after passing the smaller ones")
    scores = rq.double() @ rk.double().T  # (40, 40): score of q at m and k at n
    if not torch.allclose(scores.diagonal(3)[:-1], scores.diagonal(3)[1:], atol=1e-8):
        return CheckResult(False, "q_m · k_n should depend only on m − n, and it does not on a longer input")
    return CheckResult(True, "you rotate each pair (x_2i, x_2i+1) by m·θ_i, and q_m · k_n depends only on m − n")


# ----------------------------------------------------------------------------- ALiBi slopes


def _slope_hint(got: torch.Tensor, h: int) -> str | None:
    i = torch.arange(1, h + 1, dtype=torch.float64)
    expected = 2.0 ** (-8.0 / h * i)
    guesses = [
        (2.0 ** (-8.0 / h * (i - 1)), "start the exponent at i = 1, not 0: the first slope is 2^(−8/h), not 1"),
        (2.0 ** (-8.0 / i), "the exponent is −8·i/h (the head index times 8/h), not −8/i"),
        (2.0 ** (-i), f"2^(−i) is the 8-head sequence; for h = {h} the ratio is 2^(−8/h)"),
        (expected.flip(0), "the slopes come in decreasing order: head 1 gets the steepest, 2^(−8/h)"),
        (-expected, "slopes are positive; the minus sign belongs to the bias, −m·(i − j)"),
        (torch.exp(-8.0 / h * i), "use base 2, not e: 2^(−8i/h)"),
    ]
    for guess, hint in guesses:
        if torch.allclose(got, guess, atol=1e-6, rtol=1e-5):
            return hint
    return None


@checker
def check_alibi_slopes(fn) -> CheckResult:
    """`fn(h) -> (h,)`: 2^(-8/h * i) for i = 1..h, for h a power of two (Press et al. §3)."""
    for h in (8, 4, 16, 2, 1):
        got, problem = run_with_timeout(fn, h)
        if problem is not None:
            return problem
        if isinstance(got, (list, tuple)) and all(isinstance(v, (int, float)) for v in got):
            got = torch.tensor(got, dtype=torch.float64)
        expected = alibi_slopes(h).double()
        answer = _as_float_tensor(got)
        if answer is not None and answer.shape == expected.shape and not torch.allclose(answer, expected, rtol=1e-5):
            hint = _slope_hint(answer, h)
            if hint:
                return CheckResult(False, f"for h = {h}: {hint}")
        result = check_tensor(got, expected, name=f"the slopes for h = {h}", atol=1e-7, rtol=1e-5)
        if not result.passed:
            return result
    return CheckResult(True, "your slopes are Press et al.'s: a geometric sequence whose start and ratio are "
                             "2^(−8/h), 1/2, 1/4, ..., 1/256 for 8 heads")
