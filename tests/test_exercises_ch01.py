"""Chapter 1's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import torch

from transformer_course.exercises import ch01


def count_parameters(c):
    d, V, L, T = c.d_model, c.vocab_size, c.n_layers, c.context_length
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    head = 0 if c.tie_weights else V * d
    return V * d + T * d + L * block + 2 * d + head


def softmax_with_temperature(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1)


def greedy_generate(model, idx, n):
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_reference_answers_pass():
    assert ch01.check_count_parameters(count_parameters).passed
    assert ch01.check_softmax_with_temperature(softmax_with_temperature).passed
    assert ch01.check_greedy_generate(greedy_generate).passed


def test_count_parameters_hints():
    twice = ch01.check_count_parameters(lambda c: count_parameters(c) + c.vocab_size * c.d_model)
    assert not twice.passed and "count it once" in twice.message
    no_pos = ch01.check_count_parameters(lambda c: count_parameters(c) - c.context_length * c.d_model)
    assert not no_pos.passed and "position table" in no_pos.message
    always_tied = ch01.check_count_parameters(
        lambda c: count_parameters(c) - (0 if c.tie_weights else c.vocab_size * c.d_model))
    assert not always_tied.passed and "untied LM head" in always_tied.message
    assert "return an int" in ch01.check_count_parameters(lambda c: "many").message


def test_temperature_hints():
    mult = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x * t, dim=-1))
    assert not mult.passed and "multiplied" in mult.message
    ignored = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x, dim=-1))
    assert not ignored.passed and "no effect" in ignored.message
    wrong_dim = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x / t, dim=0))
    assert not wrong_dim.passed and "dim=-1" in wrong_dim.message
    raw = ch01.check_softmax_with_temperature(lambda x, t: x / t)
    assert not raw.passed and "sum to 1" in raw.message


def test_generate_hints():
    only_new = ch01.check_greedy_generate(lambda m, idx, n: greedy_generate(m, idx, n)[:, idx.shape[1]:])
    assert not only_new.passed and "only the new tokens" in only_new.message
    first = ch01.check_greedy_generate(ch01._first_position_loop)
    assert not first.passed and "last one" in first.message
    short = ch01.check_greedy_generate(lambda m, idx, n: greedy_generate(m, idx, n - 1))
    assert not short.passed and "shape (1, 11), expected (1, 12)" in short.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch01.check_count_parameters, ch01.check_softmax_with_temperature, ch01.check_greedy_generate):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan")):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch01.check_softmax_with_temperature(lambda x, t: torch.full_like(x, float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch01.check_softmax_with_temperature(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
