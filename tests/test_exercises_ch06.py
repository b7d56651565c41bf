"""Chapter 6's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import torch

from transformer_course.exercises import ch06


def split_heads(x, n_heads):
    B, T, d_model = x.shape
    return x.view(B, T, n_heads, d_model // n_heads).transpose(1, 2)


def merge_heads(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)


def attention_flops(B, T, d_model, n_heads):
    d_k = d_model // n_heads
    return (2 * B * T * d_model * 3 * d_model + 2 * 2 * B * n_heads * T * T * d_k
            + 2 * B * T * d_model * d_model)


def test_reference_answers_pass():
    assert ch06.check_split_heads(split_heads).passed
    assert ch06.check_merge_heads(merge_heads).passed
    assert ch06.check_attention_flops(attention_flops).passed
    assert ch06.check_split_heads(ch06.reference_split_heads).passed
    assert ch06.check_merge_heads(ch06.reference_merge_heads).passed


def test_split_then_merge_is_the_identity():
    x = torch.randn(2, 5, 12)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)


def test_flop_formula_matches_flop_counter_and_ignores_h():
    for h in (1, 2, 4, 8):
        assert ch06.measured_attention_flops(2, 9, 32, h) == attention_flops(2, 9, 32, h)
    assert len({ch06.measured_attention_flops(1, 9, 32, h) for h in (1, 2, 4, 8)}) == 1


def test_split_heads_hints():
    no_transpose = ch06.check_split_heads(lambda x, h: x.view(x.shape[0], x.shape[1], h, -1))
    assert not no_transpose.passed and "transpose(1, 2)" in no_transpose.message
    direct = ch06.check_split_heads(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1))
    assert not direct.passed and "straight to (B, h, T, d_k)" in direct.message
    interleaved = ch06.check_split_heads(
        lambda x, h: x.view(x.shape[0], x.shape[1], -1, h).permute(0, 3, 1, 2))
    assert not interleaved.passed and "interleaved" in interleaved.message


def test_merge_heads_hints():
    no_reshape = ch06.check_merge_heads(lambda x: x.transpose(1, 2))
    assert not no_reshape.passed and "side by side" in no_reshape.message
    direct = ch06.check_merge_heads(lambda x: x.reshape(x.shape[0], x.shape[2], -1))
    assert not direct.passed and "mixes tokens" in direct.message
    interleaved = ch06.check_merge_heads(lambda x: x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1))
    assert not interleaved.passed and "interleaves" in interleaved.message


def test_attention_flops_hints():
    half = ch06.check_attention_flops(lambda *a: attention_flops(*a) // 2)
    assert not half.passed and "2·m·n·k" in half.message
    no_out = ch06.check_attention_flops(lambda B, T, d, h: attention_flops(B, T, d, h) - 2 * B * T * d * d)
    assert not no_out.passed and "output projection" in no_out.message
    one_proj = ch06.check_attention_flops(lambda B, T, d, h: attention_flops(B, T, d, h) - 4 * B * T * d * d)
    assert not one_proj.passed and "three projections" in one_proj.message
    one_matmul = ch06.check_attention_flops(lambda B, T, d, h: attention_flops(B, T, d, h) - 2 * B * T * T * d)
    assert not one_matmul.passed and "two matmuls" in one_matmul.message
    full_width = ch06.check_attention_flops(  # every head computed at width d_model instead of d_k
        lambda B, T, d, h: 2 * B * T * d * 3 * d + 4 * B * h * T * T * d + 2 * B * T * d * d)
    assert not full_width.passed and "d_k = d_model/h" in full_width.message
    assert "return an int" in ch06.check_attention_flops(lambda *a: "lots").message
    assert ch06.check_attention_flops(lambda *a: float(attention_flops(*a))).passed


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch06.check_split_heads, ch06.check_merge_heads, ch06.check_attention_flops):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: [1, 2]):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch06.check_merge_heads(lambda x: torch.full((x.shape[0], x.shape[2], x.shape[1] * x.shape[3]), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    ints = ch06.check_split_heads(lambda x, h: split_heads(x, h).long())
    assert not ints.passed and "dtype" in ints.message
    started = time.monotonic()
    hung = ch06.check_split_heads(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
