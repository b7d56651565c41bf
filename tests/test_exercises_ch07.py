"""Chapter 7's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch

from transformer_course.exercises import ch07


def kv_cache_bytes(n_layers, n_kv_heads, d_k, seq_len, batch_size, dtype_bytes):
    return 2 * n_layers * n_kv_heads * d_k * seq_len * batch_size * dtype_bytes


def repeat_kv(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)


def mean_pool(w, n_heads, n_kv_heads):
    r, d_k = n_heads // n_kv_heads, w.shape[0] // n_heads
    return w.reshape(n_kv_heads, r, d_k, -1).mean(dim=1).reshape(n_kv_heads * d_k, -1)


def test_reference_answers_pass():
    assert ch07.check_kv_cache_bytes(kv_cache_bytes).passed
    assert ch07.check_kv_cache_bytes(lambda *a: float(kv_cache_bytes(*a))).passed  # 2.0**31 is fine too
    assert ch07.check_repeat_kv(repeat_kv).passed
    assert ch07.check_mean_pool(mean_pool).passed


def test_kv_cache_hints():
    no_two = ch07.check_kv_cache_bytes(lambda *a: kv_cache_bytes(*a) // 2)
    assert not no_two.passed and "AND values" in no_two.message
    no_bytes = ch07.check_kv_cache_bytes(lambda *a: kv_cache_bytes(*a) // a[-1])
    assert not no_bytes.passed and "bytes per number" in no_bytes.message
    no_batch = ch07.check_kv_cache_bytes(lambda L, h, d, T, B, n: kv_cache_bytes(L, h, d, T, 1, n))
    assert not no_batch.passed and "batch_size" in no_batch.message
    four = ch07.check_kv_cache_bytes(lambda *a: 2 * kv_cache_bytes(*a))
    assert not four.passed and "not 4" in four.message
    assert "return an int" in ch07.check_kv_cache_bytes(lambda *a: "lots").message


def test_repeat_kv_hints():
    tiled = ch07.check_repeat_kv(lambda x, n: x.repeat(1, n, 1, 1))
    assert not tiled.passed and "tiled" in tiled.message
    unmerged = ch07.check_repeat_kv(lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1))
    assert not unmerged.passed and "merge" in unmerged.message
    same = ch07.check_repeat_kv(lambda x, n: x)
    assert not same.passed and "shape" in same.message


def test_mean_pool_hints():
    def strided(w, h, h_kv):
        r, d_k = h // h_kv, w.shape[0] // h
        return w.reshape(r, h_kv, d_k, -1).mean(0).reshape(h_kv * d_k, -1)

    s = ch07.check_mean_pool(strided)
    assert not s.passed and "CONSECUTIVE" in s.message
    summed = ch07.check_mean_pool(lambda w, h, h_kv: mean_pool(w, h, h_kv) * (h // h_kv))
    assert not summed.passed and "not a sum" in summed.message
    first = ch07.check_mean_pool(lambda w, h, h_kv: w[: w.shape[0] // h * h_kv])
    assert not first.passed


def test_checkers_never_crash():
    def boom(*a):
        raise RuntimeError("no")

    def hang(*a):
        time.sleep(60)

    for check in (ch07.check_kv_cache_bytes, ch07.check_repeat_kv, ch07.check_mean_pool):
        for bad in (boom, None, 3, lambda *a: None, lambda *a: math.nan, lambda *a: torch.full((2, 2), math.nan)):
            result = check(bad)
            assert not result.passed and isinstance(result.message, str)
    started = time.perf_counter()
    result = ch07.check_repeat_kv(hang)
    assert not result.passed and "did not finish" in result.message
    assert time.perf_counter() - started < 20
    nan = ch07.check_repeat_kv(lambda x, n: torch.full_like(repeat_kv(x, n), math.nan))
    assert not nan.passed and "NaN" in nan.message
