"""Chapter 7's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transformer_course.attention import Attention
from transformer_course.exercises import ch07


def repeat_kv(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)


def gqa_flops(B, T, d_model, n_heads, n_kv_heads):
    d_k = d_model // n_heads
    projections = 2 * B * T * d_model * (2 * n_heads + 2 * n_kv_heads) * d_k  # q, out; k, v
    return projections + 2 * 2 * B * n_heads * T * T * d_k  # scores and weighted sum, per query head


# Llama 2 70B, 16-bit, 4096 tokens: 2 x 80 layers x h_kv x 128 x 4096 x 2 bytes = 1.25 GiB (h_kv = 8) or 10 GiB
# (h_kv = 64) per sequence; 40e9 / 1.342e9 = 29.8 and 40e9 / 10.74e9 = 3.7 whole sequences.
FITS = (29, 3)
EXTRA = 80 * 2 * 56 * 8192 * 128  # 56 more heads of d_k = 128 rows of 8192 weights, in k and v, in 80 layers


def test_reference_answers_pass():
    assert ch07.check_repeat_kv(repeat_kv).passed
    assert ch07.check_fits_in_40gb(FITS).passed
    assert "9.7x, not 8x" in ch07.check_fits_in_40gb(FITS).message  # 29 / 3: the floors, not 8
    assert ch07.check_fits_in_40gb([29.0, torch.tensor(3)]).passed  # a list, an integral float, a tensor
    assert ch07.check_gqa_flops(gqa_flops).passed
    assert ch07.check_extra_params(EXTRA).passed
    assert ch07.check_extra_params(9_395_240_960).passed


@pytest.mark.parametrize("h_kv", [8, 2, 1])
def test_gqa_flop_formula_is_what_pytorch_counts(h_kv):
    """The closed form above, independently of the checker: FlopCounterMode on the package's layer."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        Attention(64, 8, n_kv_heads=h_kv)(torch.zeros(2, 12, 64))
    assert counter.get_total_flops() == gqa_flops(2, 12, 64, 8, h_kv)


def test_fits_hints():
    def message(answer):
        result = ch07.check_fits_in_40gb(answer)
        assert not result.passed
        return result.message

    assert "wrong way round" in message((3, 29))
    assert "GiB" in message((32, 4))          # 40 * 2**30 bytes
    assert "round down" in message((30, 4))   # ceil
    assert "AND values" in message((59, 7))   # no factor 2
    assert "2 bytes" in message((14, 1))      # float32
    assert "80 layers" in message((2384, 298))
    assert "should differ" in message((3, 3))
    assert "MHA" in message((29, 5)) and "GQA number is right" in message((29, 5))
    assert "whole sequences" in message((29.8, 3.7))
    for bad in (None, 29, "29, 3", (29,), (29, 3, 1), {"GQA": 29, "MHA": 3}, (math.nan, 3), (True, 3)):
        assert isinstance(message(bad), str)


def test_gqa_flops_hints():
    def message(fn):
        result = ch07.check_gqa_flops(fn)
        assert not result.passed
        return result.message

    assert "2 FLOPs" in message(lambda *a: gqa_flops(*a) // 2)
    assert "multi-head count" in message(lambda B, T, d, h, h_kv: gqa_flops(B, T, d, h, h))
    scores_per_kv = lambda B, T, d, h, h_kv: gqa_flops(B, T, d, h, h_kv) - 4 * B * (h - h_kv) * T * T * (d // h)
    assert "QUERY head" in message(scores_per_kv)
    assert "output projection" in message(lambda B, T, d, h, h_kv: gqa_flops(B, T, d, h, h_kv) - 2 * B * T * d * d)
    one_kv = lambda B, T, d, h, h_kv: gqa_flops(B, T, d, h, h_kv) - 2 * B * T * d * h_kv * (d // h)
    assert "key or the value" in message(one_kv)
    assert "off by" in message(lambda *a: gqa_flops(*a) + 1)
    assert "int" in message(lambda *a: "many")


def test_extra_params_hints():
    def message(answer):
        result = ch07.check_extra_params(answer)
        assert not result.passed
        return result.message

    assert "one layer" in message(EXTRA // 80)
    assert "both" in message(EXTRA // 2)
    assert "all of the MHA" in message(80 * 2 * 64 * 8192 * 128)
    assert "already hold" in message(80 * 2 * 8 * 8192 * 128)
    assert "query and output" in message(2 * EXTRA)
    assert "56" in message(EXTRA + 1)
    assert "int" in message("9.4 billion")


def test_repeat_kv_hints():
    tiled = ch07.check_repeat_kv(lambda x, n: x.repeat(1, n, 1, 1))
    assert not tiled.passed and "tiled" in tiled.message
    unmerged = ch07.check_repeat_kv(lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1))
    assert not unmerged.passed and "merge" in unmerged.message
    same = ch07.check_repeat_kv(lambda x, n: x)
    assert not same.passed and "shape" in same.message


def test_checkers_never_crash():
    def boom(*a):
        raise RuntimeError("no")

    def hang(*a):
        time.sleep(60)

    for check in (ch07.check_repeat_kv, ch07.check_gqa_flops):
        for bad in (boom, None, 3, lambda *a: None, lambda *a: math.nan, lambda *a: torch.full((2, 2), math.nan)):
            result = check(bad)
            assert not result.passed and isinstance(result.message, str)
    for check in (ch07.check_fits_in_40gb, ch07.check_extra_params):
        for bad in (boom, None, math.nan, math.inf, -1, 2.5, torch.full((2, 2), math.nan), [None, None]):
            result = check(bad)
            assert not result.passed and isinstance(result.message, str)
    for check in (ch07.check_repeat_kv, ch07.check_gqa_flops):
        started = time.perf_counter()
        result = check(hang)
        assert not result.passed and "did not finish" in result.message
        assert time.perf_counter() - started < 20
    nan = ch07.check_repeat_kv(lambda x, n: torch.full_like(repeat_kv(x, n), math.nan))
    assert not nan.passed and "NaN" in nan.message
