"""Chapter 4's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from transformer_course.exercises import ch04


def rope_interleaved(x, base=10000.0, direction=1):
    T, d = x.shape
    out = x.clone()
    for m in range(T):
        for i in range(d // 2):
            angle = direction * m * base ** (-2 * i / d)
            a, b = x[m, 2 * i], x[m, 2 * i + 1]
            out[m, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            out[m, 2 * i + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


def hf_linear_scaling(T, d_k, train_length):
    """Position interpolation as Hugging Face builds it ("linear" RoPE scaling: inv_freq / factor), in float64."""
    factor = max(1.0, T / train_length)
    config = LlamaConfig(hidden_size=2 * d_k, num_attention_heads=2,
                         rope_parameters={"rope_type": "linear", "factor": factor, "rope_theta": 10000.0})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["linear"](config, "cpu")  # (d_k/2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq.double()
    angles = torch.cat([angles, angles], dim=-1)  # the rotate-half layout, as HF's LlamaRotaryEmbedding
    return angles.cos(), angles.sin()


# pos-rope: d_k = 16, so θ_i = 10000^(-i/8); over distances up to 63 pair i turns by 63·θ_i radians:
# 63, 19.9, 6.30, 1.99, 0.63, 0.199, 0.063, 0.0199. Pairs 0, 1, 2 pass 2π = 6.283; five pairs never do.
PARTIAL_PAIRS = 5


def test_reference_answers_pass():
    assert ch04.check_rope_interleaved(rope_interleaved).passed
    assert ch04.check_rope_interpolated(hf_linear_scaling).passed
    assert ch04.check_rope_interpolated(lambda *a: list(hf_linear_scaling(*a))).passed  # a list is fine
    assert ch04.check_n_partial_pairs(PARTIAL_PAIRS).passed
    assert ch04.check_n_partial_pairs(torch.tensor(PARTIAL_PAIRS)).passed
    assert ch04.check_n_partial_pairs(float(PARTIAL_PAIRS)).passed


def test_reference_rope_is_the_papers_complex_rotation():
    """The checker's reference against RoFormer's complex form, pairs (x0 + i x1) times e^(i m θ_k)."""
    x = torch.randn(9, 8, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    rot = torch.polar(torch.ones(9, 4, dtype=torch.float64), torch.arange(9.0, dtype=torch.float64)[:, None] * freqs)
    paper = torch.view_as_real(torch.view_as_complex(x.reshape(9, 4, 2).contiguous()) * rot).reshape(9, 8)
    torch.testing.assert_close(ch04.rope_interleaved_reference(x), paper, atol=1e-6, rtol=0)


def test_rope_hints():
    backwards = ch04.check_rope_interleaved(lambda x: rope_interleaved(x, direction=-1))
    assert not backwards.passed and "clockwise" in backwards.message, backwards.message

    def rotate_half_layout(x):
        T, d = x.shape
        perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> rotate-half positions
        inverse = torch.argsort(perm)
        return rope_interleaved(x[:, inverse])[:, perm]

    layout = ch04.check_rope_interleaved(rotate_half_layout)
    assert not layout.passed and "rotate-half" in layout.message, layout.message
    unchanged = ch04.check_rope_interleaved(lambda x: x)
    assert not unchanged.passed and "unchanged" in unchanged.message
    shifted = ch04.check_rope_interleaved(lambda x: rope_interleaved(torch.cat([x[:1], x]))[1:])
    assert not shifted.passed and "start at 0" in shifted.message, shifted.message
    other_base = ch04.check_rope_interleaved(lambda x: rope_interleaved(x, base=500.0))
    assert not other_base.passed and "different values" in other_base.message


def test_rope_slow_frequencies_hint():
    def half_exponent(x):
        T, d = x.shape
        out = x.clone()
        for m in range(T):
            for i in range(d // 2):
                angle = m * 10000.0 ** (-i / d)
                a, b = x[m, 2 * i], x[m, 2 * i + 1]
                out[m, 2 * i], out[m, 2 * i + 1] = a * math.cos(angle) - b * math.sin(angle), \
                    b * math.cos(angle) + a * math.sin(angle)
        return out

    result = ch04.check_rope_interleaved(half_exponent)
    assert not result.passed and "10000^(−2i/d)" in result.message


def test_interpolation_success_message_states_the_range():
    """Chen et al. §2.3 map the positions into [0, L): for T = 128, L = 64 the last is 127 · 64/128 = 63.5."""
    last = ch04.rope_interpolated_reference(128, 16, 64)[0]  # cos table; pair 0 turns 1 radian per position
    torch.testing.assert_close(last[-1, 0], torch.tensor(math.cos(63.5), dtype=torch.float64))
    result = ch04.check_rope_interpolated(hf_linear_scaling)
    assert result.passed and "[0, L)" in result.message and "below L·θ_i" not in result.message


def test_interpolation_reference_is_huggingfaces_linear_scaling():
    for T, d_k, L in ((128, 16, 64), (10, 8, 4), (48, 16, 64)):
        for ours, theirs in zip(ch04.rope_interpolated_reference(T, d_k, L), hf_linear_scaling(T, d_k, L)):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def _angles_answer(positions_of, layout="half", swap=False):
    """A reader's answer built from a rule for the positions, in float32 as a reader would write it."""
    def answer(T, d_k, L):
        inv_freq = 1.0 / 10000 ** (torch.arange(0, d_k, 2).float() / d_k)
        angles = positions_of(torch.arange(T).float(), T, L)[:, None] * inv_freq
        if layout == "half":
            angles = torch.cat([angles, angles], dim=-1)
        else:
            angles = torch.repeat_interleave(angles, 2, dim=-1)
        return (angles.sin(), angles.cos()) if swap else (angles.cos(), angles.sin())
    return answer


def test_interpolation_hints():
    squeeze = lambda m, T, L: m * min(1.0, L / T)  # noqa: E731
    cases = [
        (_angles_answer(lambda m, T, L: m), "plain tables"),
        (_angles_answer(lambda m, T, L: m * max(1.0, T / L)), "stretched"),
        (_angles_answer(lambda m, T, L: m * L / T), "unscaled"),  # scales also when T <= train_length
        (_angles_answer(lambda m, T, L: m * (L - 1) / (T - 1) if T > L else m), "(L-1)/(L'-1)"),
        (_angles_answer(lambda m, T, L: torch.floor(m * L / T) if T > L else m), "fractions"),
        (_angles_answer(squeeze, layout="interleaved"), "rotate-half"),
        (_angles_answer(squeeze, swap=True), "(sin, cos)"),
    ]
    for answer, words in cases:
        result = ch04.check_rope_interpolated(answer)
        assert not result.passed and words in result.message, (words, result.message)

    def slow_frequencies(T, d_k, L):
        inv_freq = 1.0 / 10000 ** (torch.arange(d_k // 2).float() / d_k)
        angles = (torch.arange(T).float() * min(1.0, L / T))[:, None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    slow = ch04.check_rope_interpolated(slow_frequencies)
    assert not slow.passed and "10000^(−2i/d_k)" in slow.message, slow.message
    single = ch04.check_rope_interpolated(lambda T, d_k, L: hf_linear_scaling(T, d_k, L)[0])
    assert not single.passed and "pair (cos, sin)" in single.message, single.message
    transposed = ch04.check_rope_interpolated(lambda T, d_k, L: tuple(t.T for t in hf_linear_scaling(T, d_k, L)))
    assert not transposed.passed and "shape" in transposed.message, transposed.message


def _count(d_k=16, max_distance=63, exponent=2.0, full_turn=2 * math.pi, below=True):
    """A reader's count, written independently of the checker: pairs i = 0 .. d_k/2 - 1 whose largest angle
    max_distance * 10000^(-exponent i / d_k) stays below (or, below=False, reaches) full_turn."""
    angles = [max_distance * 10000.0 ** (-exponent * i / d_k) for i in range(d_k // 2)]
    return sum((a < full_turn) == below for a in angles)


def test_partial_pairs_hints():
    assert _count() == PARTIAL_PAIRS
    # two different mistakes give the same wrong count, so its hint names both checks
    assert _count(below=False) == _count(exponent=1.0) == 3
    cases = [(_count(below=False), "−2i/d_k"), (_count(exponent=1.0), "which side of 2π"),
             (_count(full_turn=1.0), "2π radians, not 1"), (_count(d_k=32), "not 32"),
             (2 * PARTIAL_PAIRS, "only 8 rotation pairs"),  # dimensions counted instead of pairs
             (9, "only 8 rotation pairs"), (-1, "only 8 rotation pairs"), (7, "below 2π"), (0, "below 2π")]
    for answer, words in cases:
        result = ch04.check_n_partial_pairs(answer)
        assert not result.passed and words in result.message, (answer, result.message)
        hint = result.message.replace(f"got {answer}", "")
        assert str(PARTIAL_PAIRS) not in hint  # the hint hides the answer...
        assert "count the others" not in hint and "not dimensions" not in hint  # ...and no arithmetic to it


def test_partial_pairs_success_notes_the_close_call():
    """Pair 2 completes its turn only just: 63 · 10000^(-4/16) = 6.300 against 2π = 6.283."""
    assert 2 * math.pi < 63 * 10000.0 ** (-4 / 16) < 2 * math.pi + 0.02
    result = ch04.check_n_partial_pairs(PARTIAL_PAIRS)
    assert result.passed and "6.300" in result.message and "6.283" in result.message, result.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch04.check_rope_interleaved, ch04.check_rope_interpolated):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text",
                       lambda *a: torch.zeros(3, dtype=torch.long), lambda *a: (None, None),
                       lambda *a: (torch.zeros(2), "text")):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch04.check_rope_interpolated(lambda T, d_k, L: tuple(torch.full((T, d_k), float("nan")) for _ in "cs"))
    assert not nan.passed and "NaN" in nan.message, nan.message
    for answer in (None, "5", 5.5, float("nan"), True, [5], torch.zeros(2), boom):
        result = ch04.check_n_partial_pairs(answer)
        assert not result.passed and "int" in result.message, (answer, result.message)
    started = time.monotonic()
    hung = ch04.check_rope_interpolated(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
