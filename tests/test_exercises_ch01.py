"""Chapter 1's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import re
import time

import torch

from transformer_course.exercises import ch01
from transformer_course.model import GPT, GPTConfig


def count_parameters(c):
    d, V, L, T = c.d_model, c.vocab_size, c.n_layers, c.context_length
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    head = 0 if c.tie_weights else V * d
    return V * d + T * d + L * block + 2 * d + head


def softmax_with_temperature(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1)


def tokens_processed(T, n, use_cache):
    if n == 0:
        return 0
    return T + (n - 1) if use_cache else n * T + n * (n - 1) // 2


def test_reference_answers_pass():
    assert ch01.check_count_parameters(count_parameters).passed
    assert ch01.check_softmax_with_temperature(softmax_with_temperature).passed
    assert ch01.check_tokens_processed(tokens_processed).passed


def test_gpt2_small_count_comes_from_hugging_face():
    """The checker's 124,439,808 is Hugging Face's count for GPT-2 small, not ours (built on the meta device)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())  # the defaults are GPT-2 small: 50257, 1024, 768, 12 layers
    assert sum(p.numel() for p in hf.parameters()) == ch01.GPT2_SMALL_PARAMETERS  # tied: counted once
    with torch.device("meta"):
        ours = GPT(GPTConfig.gpt2_like(**ch01.GPT2_SMALL))
    assert ours.num_parameters() == ch01.GPT2_SMALL_PARAMETERS


def test_count_parameters_hints():
    twice = ch01.check_count_parameters(lambda c: count_parameters(c) + c.vocab_size * c.d_model)
    assert not twice.passed and "count it once" in twice.message
    no_pos = ch01.check_count_parameters(lambda c: count_parameters(c) - c.context_length * c.d_model)
    assert not no_pos.passed and "position table" in no_pos.message
    always_tied = ch01.check_count_parameters(
        lambda c: count_parameters(c) - (0 if c.tie_weights else c.vocab_size * c.d_model))
    assert not always_tied.passed and "untied LM head" in always_tied.message
    assert "return an int" in ch01.check_count_parameters(lambda c: "many").message


def test_count_parameters_never_prints_the_expected_count():
    """A reader could fit the formula from expected counts; the hints name parts, never the numbers."""
    expected = [GPT(cfg).num_parameters() for _, cfg in ch01._parameter_configs()]
    expected.append(ch01.GPT2_SMALL_PARAMETERS)
    off_when_untied = lambda c: count_parameters(c) - (0 if c.tie_weights else 1)  # noqa: E731
    for wrong in (lambda c: 0, lambda c: count_parameters(c) + 7, off_when_untied):
        result = ch01.check_count_parameters(wrong)
        assert not result.passed and "off by" not in result.message
        for number in expected:
            assert f"{number:,}" not in result.message and str(number) not in result.message
    assert "too many" in ch01.check_count_parameters(lambda c: count_parameters(c) + 7).message
    assert "too few" in ch01.check_count_parameters(lambda c: 0).message
    assert "untied" in ch01.check_count_parameters(off_when_untied).message  # names the config, not the count


def test_temperature_hints_use_tau():
    mult = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x * t, dim=-1))
    assert not mult.passed and "multiplied" in mult.message and "τ" in mult.message
    ignored = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x, dim=-1))
    assert not ignored.passed and "no effect" in ignored.message
    wrong_dim = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x / t, dim=0))
    assert not wrong_dim.passed and "dim=-1" in wrong_dim.message
    raw = ch01.check_softmax_with_temperature(lambda x, t: x / t)
    assert not raw.passed and "sum to 1" in raw.message


def test_temperature_checker_tries_a_single_position():
    """dim=1 is right for (B, V) but raises on the (V,) logits of one position: the checker must try both."""
    dim1 = ch01.check_softmax_with_temperature(lambda x, t: torch.softmax(x / t, dim=1))
    assert not dim1.passed and "dim=-1" in dim1.message and "(V,)" in dim1.message
    batch_only = ch01.check_softmax_with_temperature(  # flattens a 1-D input to (1, V)
        lambda x, t: torch.softmax(x.view(-1, x.shape[-1]) / t, dim=1))
    assert not batch_only.passed and "shape" in batch_only.message
    one_d = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(softmax_with_temperature(one_d, 0.5), torch.softmax(one_d * 2, dim=0))
    assert " T " not in ch01.check_softmax_with_temperature(softmax_with_temperature).message


def test_positions_are_measured_not_restated():
    """The checker's expected counts come from hooking a real model: they match the passes the chapter shows."""
    assert ch01.measured_positions(5, 25, use_cache=True) == 5 + 24  # Chapter 1: (1, 5) once, then 24 x (1, 1)
    assert ch01.measured_positions(5, 3, use_cache=False) == 5 + 6 + 7
    assert ch01.measured_positions(4, 0, use_cache=False) == ch01.measured_positions(4, 0, use_cache=True) == 0


def test_tokens_processed_hints():
    def swapped(T, n, use_cache):
        return tokens_processed(T, n, not use_cache)

    assert "swapped" in ch01.check_tokens_processed(swapped).message
    one_more = ch01.check_tokens_processed(lambda T, n, c: T + n if c else tokens_processed(T, n, c))
    assert not one_more.passed and "fed back" in one_more.message and "one too many" not in one_more.message
    prompt_each_time = ch01.check_tokens_processed(lambda T, n, c: n * T if c else tokens_processed(T, n, c))
    assert not prompt_each_time.passed and "computed once" in prompt_each_time.message
    counted_own = ch01.check_tokens_processed(
        lambda T, n, c: tokens_processed(T, n, c) if c else n * T + n * (n + 1) // 2)
    assert not counted_own.passed and "too many" in counted_own.message and "before" in counted_own.message
    assert not re.search(r"\d+ too many", counted_own.message)  # the direction, never the offset
    prompt_only = ch01.check_tokens_processed(lambda T, n, c: tokens_processed(T, n, c) if c else n * T)
    assert not prompt_only.passed and "reruns" in prompt_only.message
    no_zero_case = ch01.check_tokens_processed(lambda T, n, c: T + n - 1 if c else n * T + n * (n - 1) // 2)
    assert not no_zero_case.passed and "n = 0" in no_zero_case.message
    for wrong in (lambda T, n, c: 0, lambda T, n, c: T * n * n):  # no specific hint, never the answer
        message = ch01.check_tokens_processed(wrong).message
        assert "add them up" in message and "425" not in message and "29" not in message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    checks = (ch01.check_count_parameters, ch01.check_softmax_with_temperature, ch01.check_tokens_processed)
    for check in checks:
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "many",
                       lambda *a: torch.ones(3)):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch01.check_softmax_with_temperature(lambda x, t: torch.full_like(x, float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch01.check_tokens_processed(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
