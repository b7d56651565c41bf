"""Chapter 4's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch

from transformer_course.exercises import ch04


def sinusoidal_table(T, d):
    pe = torch.zeros(T, d)
    for pos in range(T):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            pe[pos, 2 * i] = math.sin(angle)
            pe[pos, 2 * i + 1] = math.cos(angle)
    return pe


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


def alibi_slopes(h):
    return torch.tensor([2 ** (-8 / h * i) for i in range(1, h + 1)])


def test_reference_answers_pass():
    assert ch04.check_sinusoidal_table(sinusoidal_table).passed
    assert ch04.check_rope_interleaved(rope_interleaved).passed
    assert ch04.check_alibi_slopes(alibi_slopes).passed
    assert ch04.check_alibi_slopes(lambda h: [2 ** (-8 / h * i) for i in range(1, h + 1)]).passed  # a list is fine


def test_reference_rope_is_the_papers_complex_rotation():
    """The checker's reference against RoFormer's complex form, pairs (x0 + i x1) times e^(i m θ_k)."""
    x = torch.randn(9, 8, dtype=torch.float64)
    freqs = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    rot = torch.polar(torch.ones(9, 4, dtype=torch.float64), torch.arange(9.0, dtype=torch.float64)[:, None] * freqs)
    paper = torch.view_as_real(torch.view_as_complex(x.reshape(9, 4, 2).contiguous()) * rot).reshape(9, 8)
    torch.testing.assert_close(ch04.rope_interleaved_reference(x), paper, atol=1e-6, rtol=0)


def test_sinusoidal_hints():
    def swapped(T, d):
        pe = sinusoidal_table(T, d)
        return torch.stack([pe[:, 1::2], pe[:, 0::2]], dim=-1).flatten(1)

    def halves(T, d):
        pe = sinusoidal_table(T, d)
        return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=-1)

    def slow(T, d):
        return sinusoidal_table(T, 2 * d)[:, :d].reshape(T, d)  # 10000^(2i/(2d)) = 10000^(i/d)

    def from_one(T, d):
        return sinusoidal_table(T + 1, d)[1:]

    for answer, words in ((swapped, "swapped"), (halves, "interleaves"), (slow, "exponent"), (from_one, "start at 0")):
        result = ch04.check_sinusoidal_table(answer)
        assert not result.passed and words in result.message, (words, result.message)
    transposed = ch04.check_sinusoidal_table(lambda T, d: sinusoidal_table(T, d).T)
    assert not transposed.passed and "shape" in transposed.message


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


def test_alibi_hints():
    cases = [
        (lambda h: torch.tensor([2 ** (-8 / h * i) for i in range(h)]), "not 1"),
        (lambda h: torch.tensor([2 ** (-8 / i) for i in range(1, h + 1)]), "not −8/i"),
        (lambda h: torch.tensor([2.0 ** -i for i in range(1, h + 1)]), "8-head sequence"),
        (lambda h: alibi_slopes(h).flip(0), "decreasing order"),
        (lambda h: -alibi_slopes(h), "positive"),
    ]
    for answer, words in cases:
        result = ch04.check_alibi_slopes(answer)
        assert not result.passed and words in result.message, (words, result.message)
    short = ch04.check_alibi_slopes(lambda h: alibi_slopes(h)[:-1])
    assert not short.passed and "shape" in short.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    checks = (ch04.check_sinusoidal_table, ch04.check_rope_interleaved, ch04.check_alibi_slopes)
    for check in checks:
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text",
                       lambda *a: torch.zeros(3, dtype=torch.long)):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch04.check_sinusoidal_table(lambda T, d: torch.full((T, d), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch04.check_alibi_slopes(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
