"""Checkers for Chapter 4, "Positional encoding". Each takes the reader's answer and never raises.

- `check_rope_interleaved(fn)`: `fn(x) -> x rotated`, RoPE on the paper's interleaved pairs for x `(T, d)`;
- `check_rope_interpolated(fn)`: `fn(T, d_k, train_length) -> (cos, sin)`, position interpolation (Chen et
  al. 2023 §2.3) in the package's rotate-half layout;
- `check_n_partial_pairs(n)`: how many of `pos-rope`'s rotation pairs never make a full turn in training.
"""
import math

import torch

from ..positional import apply_rope, interleaved_to_rotate_half, rope_cos_sin, rotate_half_to_interleaved
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout


def _as_float_tensor(got):
    """The reader's answer as a float64 tensor if that is possible without guessing, else None."""
    if isinstance(got, torch.Tensor) and got.is_floating_point():
        return got.detach().cpu().double()
    return None


def _close(a, b, atol=1e-4) -> bool:
    return a is not None and a.shape == b.shape and bool(torch.allclose(a, b.double(), atol=atol, rtol=0))


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


# ----------------------------------------------------------------------------- position interpolation


def _pi_tables(T: int, d_k: int, positions: torch.Tensor, exponent: float = 2.0, layout: str = "half"):
    """cos, sin `(T, d_k)` float64 for the given (possibly fractional) positions `(T,)`."""
    inv_freq = 10000.0 ** (-exponent * torch.arange(d_k // 2, dtype=torch.float64) / d_k)  # (d_k/2,)
    angles = positions.double()[:, None] * inv_freq  # (T, d_k/2)
    if layout == "half":
        angles = torch.cat([angles, angles], dim=-1)  # rotate-half: [f_0..f_{d/2-1}, f_0..f_{d/2-1}]
    else:
        angles = torch.repeat_interleave(angles, 2, dim=-1)  # interleaved: f_0, f_0, f_1, f_1, ...
    return angles.cos(), angles.sin()


def rope_interpolated_reference(T: int, d_k: int, train_length: int):
    """Position interpolation (Chen et al. 2023 §2.3): position m becomes m * train_length / T when T is
    longer than train_length, so the T positions land in [0, train_length), the span of the training
    positions (the last, (T-1) * train_length / T, lies less than one step past train_length - 1); a
    shorter T is left unchanged."""
    m = torch.arange(T, dtype=torch.float64)
    return _pi_tables(T, d_k, m * min(1.0, train_length / T))


def _pi_variants(T: int, d_k: int, L: int) -> list[tuple[tuple, str]]:
    """Typical wrong (cos, sin) pairs for one case, each with its hint."""
    m = torch.arange(T, dtype=torch.float64)
    longer = T > L
    variants = []
    if longer:
        variants += [
            (_pi_tables(T, d_k, m), "these are the plain tables: positions beyond train_length give angles "
                                    "the model never saw in training; squeeze the positions into its range"),
            (_pi_tables(T, d_k, m * T / L), "you stretched the positions (times T / train_length); "
                                            "interpolation squeezes them (times train_length / T)"),
            (_pi_tables(T, d_k, m * (L - 1) / (T - 1)), "Chen et al. scale by L / L' (m -> m L / L'); you mapped "
                                                        "the last position onto the last trained one, (L-1)/(L'-1)"),
            (_pi_tables(T, d_k, torch.floor(m * L / T)), "keep the scaled positions as fractions: rounding them "
                                                         "gives neighbouring tokens the same angles"),
        ]
    else:
        variants.append((_pi_tables(T, d_k, m * L / T), "when T <= train_length every position was seen in "
                                                        "training: return the plain tables, unscaled"))
    good = m * min(1.0, L / T)
    variants += [
        (_pi_tables(T, d_k, good, layout="interleaved"),
         "the package's tables use the rotate-half layout: the d_k/2 frequencies, then the same d_k/2 again "
         "(torch.cat), not each frequency twice in a row"),
        (_pi_tables(T, d_k, good, exponent=1.0), "the frequencies fall too slowly: θ_i = 10000^(−2i/d_k) for "
                                                 "pair i = 0 .. d_k/2−1"),
    ]
    cos, sin = _pi_tables(T, d_k, good)
    variants.append(((sin, cos), "you returned (sin, cos); return (cos, sin), like rope_cos_sin"))
    return variants


def _pair_close(got, pair, atol=1e-4) -> bool:
    return all(_close(_as_float_tensor(g), e, atol=atol) for g, e in zip(got, pair))


@checker
def check_rope_interpolated(fn) -> CheckResult:
    """`fn(T, d_k, train_length) -> (cos, sin)`, each `(T, d_k)`: RoPE tables with position interpolation."""
    for T, d_k, L in ((128, 16, 64), (10, 8, 4), (48, 16, 64), (64, 16, 64)):
        got, problem = run_with_timeout(fn, T, d_k, L)
        if problem is not None:
            return problem
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            kind = type(got).__name__ + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            return CheckResult(False, f"return the pair (cos, sin), like rope_cos_sin; got a {kind}")
        expected = rope_interpolated_reference(T, d_k, L)
        if _pair_close(got, expected):
            continue
        case = f"for T={T}, d_k={d_k}, train_length={L}"
        for pair, hint in _pi_variants(T, d_k, L):
            if _pair_close(got, pair):
                return CheckResult(False, f"{case}: {hint}")
        for name, g, e in zip(("cos", "sin"), got, expected):
            result = check_tensor(g, e, name=f"{name} {case}", atol=1e-4, rtol=0)
            if not result.passed:
                return result
    return CheckResult(True, "position m becomes m·L/T: all T positions land in [0, L) (Chen et al. 2023 §2.3), "
                             "the last less than one step past L−1; a text no longer than L keeps its tables")


# ----------------------------------------------------------------------------- pairs that never turn fully

ROPE_D_K, ROPE_MAX_DISTANCE = 16, 63  # pos-rope: d_model 64 / 4 heads; 64-token windows, distances 0..63


def _count_partial(d_k: int, max_distance: int, full_turn: float = 2 * math.pi, exponent: float = 2.0) -> int:
    thetas = [10000.0 ** (-exponent * i / d_k) for i in range(d_k // 2)]
    return sum(max_distance * theta < full_turn for theta in thetas)


@checker
def check_n_partial_pairs(answer) -> CheckResult:
    """`answer`: how many of pos-rope's d_k/2 = 8 pairs turn by less than 2π over the distances 0..63."""
    got, problem = as_int(answer, "a number of pairs")
    if problem is not None:
        return problem
    n_pairs = ROPE_D_K // 2
    expected = _count_partial(ROPE_D_K, ROPE_MAX_DISTANCE)
    if got == expected:
        first = n_pairs - expected
        return CheckResult(True, f"pairs {first}..{n_pairs - 1} turn by less than 2π over distances "
                                 f"0..{ROPE_MAX_DISTANCE}: at longer distances they reach angles training never "
                                 f"showed, while the fast pairs have seen every angle (pair {first - 1} only just: "
                                 f"{ROPE_MAX_DISTANCE}·θ_{first - 1} = "
                                 f"{ROPE_MAX_DISTANCE * 10000.0 ** (-2 * (first - 1) / ROPE_D_K):.3f} "
                                 f"against 2π = {2 * math.pi:.3f})")
    hints = [
        # both the count of the other side of 2π and θ_i = 10000^(-i/d_k) give this number: name the two
        # checks, without arithmetic that turns this number into the answer
        (_count_partial(ROPE_D_K, ROPE_MAX_DISTANCE, exponent=1.0),
         "check two things: the exponent of θ_i = 10000^(−2i/d_k) (with the 2), and which side of 2π you "
         "count: the pairs whose largest angle 63·θ_i stays below a full turn"),
        (_count_partial(ROPE_D_K, ROPE_MAX_DISTANCE, full_turn=1.0),
         "a full turn is 2π radians, not 1: compare 63·θ_i with 2π"),
        (_count_partial(32, ROPE_MAX_DISTANCE), "pos-rope's head dimension is d_k = d_model / h = 64 / 4 = 16, "
                                                "not 32"),
    ]
    for value, hint in hints:
        if got == value:
            return CheckResult(False, f"got {got}: {hint}")
    if not 0 <= got <= n_pairs:
        return CheckResult(False, f"got {got}: d_k = 16 gives only {n_pairs} rotation pairs, so the count lies "
                                  f"between 0 and {n_pairs}")
    return CheckResult(False, f"got {got}. Pair i turns at θ_i = 10000^(−2i/16) radians per position, i = 0..7; "
                              "over distances up to 63 it turns by at most 63·θ_i. Count the pairs for which "
                              "that stays below 2π")
