"""Sparse and local attention (Chapter 8): the masks follow their definitions, the banded implementation equals
the masked one and PyTorch's fused attention with an explicit band mask, and a window >= T is causal attention."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from transformer_course.attention import attention, attention_weights
from transformer_course.model import GPT, GPTConfig
from transformer_course.sparse_attention import (
    RollingKVCache,
    banded_attention,
    causal_mask,
    fixed_mask,
    mask_to_bias,
    receptive_field,
    sliding_window_mask,
    strided_mask,
)

ATOL = 1e-6


def qkv(B, h, T, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, T, d, generator=g) for _ in range(3))


def test_masks_follow_their_definitions():
    T = 23
    for window in (1, 3, 7, 40):
        m = sliding_window_mask(T, window)
        for i in range(T):
            for j in range(T):
                assert m[i, j] == (i - window < j <= i)
    for l in (1, 3, 5):
        m = strided_mask(T, l)
        for i in range(T):
            for j in range(T):
                assert m[i, j] == (j <= i and (max(0, i - l) <= j or (i - j) % l == 0))
    for l, c in ((4, 1), (5, 2), (3, 3)):
        m = fixed_mask(T, l, c)
        for i in range(T):
            for j in range(T):
                assert m[i, j] == (j <= i and (j // l == i // l or j % l in range(l - c, l)))
    assert torch.equal(causal_mask(T), torch.ones(T, T, dtype=torch.bool).tril())


def test_masks_are_causal_and_see_themselves():
    for m in (sliding_window_mask(30, 4), strided_mask(30, 5), fixed_mask(30, 6, 2)):
        assert not m.triu(1).any() and m.diagonal().all()


def test_window_mask_matches_the_attention_entry_point():
    T, w = 12, 4
    q, k, _ = qkv(1, 2, T, 8)
    weights = attention_weights(q, k, causal=True, window=w)
    assert torch.equal(weights[0, 0] > 0, sliding_window_mask(T, w))


@pytest.mark.parametrize("T,window", [(1, 1), (7, 1), (10, 3), (16, 4), (17, 4), (33, 5), (64, 16), (5, 9)])
def test_banded_equals_masked_attention(T, window):
    q, k, v = qkv(2, 3, T, 8)
    expected = attention(q, k, v, causal=True, window=window)
    torch.testing.assert_close(banded_attention(q, k, v, window), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("T,window", [(10, 3), (50, 8), (64, 64)])
def test_banded_equals_sdpa_with_an_explicit_band_mask(T, window):
    q, k, v = qkv(1, 4, T, 16, seed=1)
    # the reference: PyTorch's fused attention with a hand-written band (True = attend)
    band = torch.tensor([[i - window < j <= i for j in range(T)] for i in range(T)])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    torch.testing.assert_close(banded_attention(q, k, v, window), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("T,window", [(16, 16), (16, 100), (1, 5)])
def test_window_at_least_the_sequence_is_full_causal_attention_exactly(T, window):
    q, k, v = qkv(2, 2, T, 8, seed=2)
    full = attention(q, k, v, causal=True)
    assert torch.equal(attention(q, k, v, causal=True, window=window), full)
    assert torch.equal(banded_attention(q, k, v, window), full)


def test_banded_attention_gradients_match():
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, 19, 8, seed=3))
    g1 = torch.autograd.grad(banded_attention(q, k, v, 5).square().sum(), (q, k, v))
    g2 = torch.autograd.grad(attention(q, k, v, causal=True, window=5).square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_banded_attention_forms_only_the_band_scores():
    # record the size of every matmul result: the largest is the score tensor
    T, window = 1024, 16
    q, k, v = qkv(1, 1, T, 4)
    shapes = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.matmul, torch.Tensor.__matmul__, torch.Tensor.matmul):
                shapes.append(tuple(out.shape))
            return out

    with Record():
        banded_attention(q, k, v, window)
    scores = max(torch.Size(s).numel() for s in shapes)
    assert scores == T * 2 * window  # not T * T


def test_sparse_masks_as_bias_give_the_same_attention_as_sdpa():
    T = 20
    q, k, v = qkv(1, 2, T, 8, seed=4)
    for allowed in (strided_mask(T, 4), fixed_mask(T, 5, 2)):
        ours = attention(q, k, v, bias=mask_to_bias(allowed))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_receptive_field_of_a_local_stack_is_measured_exactly():
    T, w, L = 24, 3, 3
    torch.manual_seed(0)
    model = GPT(GPTConfig.gpt2_like(vocab_size=16, context_length=T, n_layers=L, n_heads=2, d_model=16,
                                    attention_window=w)).eval()
    x = torch.randn(1, T, 16, requires_grad=True)
    h = x
    for block in model.blocks:
        h = block(h)
    t = T - 1
    (grad,) = torch.autograd.grad(h[0, t].sum(), x)
    reached = grad[0].abs().sum(-1) > 0  # (T,)
    field = receptive_field(L, w)
    assert torch.equal(reached, torch.arange(T) > t - field)


def test_one_global_layer_restores_the_full_field():
    T, w = 24, 3
    torch.manual_seed(0)
    config = GPTConfig.gpt2_like(vocab_size=16, context_length=T, n_layers=3, n_heads=2, d_model=16,
                                 attention_window=w, layer_pattern=("local", "global", "local"))
    model = GPT(config).eval()
    assert [b.window for b in model.blocks] == [w, None, w]
    x = torch.randn(1, T, 16, requires_grad=True)
    h = x
    for block in model.blocks:
        h = block(h)
    (grad,) = torch.autograd.grad(h[0, -1].sum(), x)
    assert (grad[0].abs().sum(-1) > 0).all()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: sliding_window_mask(5, 0), "window"),
        (lambda: strided_mask(0, 2), "T"),
        (lambda: fixed_mask(8, 4, 5), "c"),
        (lambda: mask_to_bias(torch.ones(2, 2)), "bool"),
        (lambda: receptive_field(0, 3), "layers"),
        (lambda: banded_attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), 2), "4-D"),
        (lambda: banded_attention(*qkv(1, 2, 4, 8)[:2], torch.zeros(1, 1, 4, 8), 2), "same shape"),
        (lambda: banded_attention(*qkv(1, 2, 4, 8), 1.5), "window"),
        (lambda: RollingKVCache(1, 2, 0, 8), "window"),
        (lambda: RollingKVCache(1, 2, 4, 8, dtype=torch.long), "dtype"),
        (lambda: RollingKVCache(1, 2, 4, 8).update(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8)), "one new"),
        (lambda: RollingKVCache(1, 2, 4, 8).update(torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8)), "k"),
        (lambda: RollingKVCache(1, 2, 4, 8).update(torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8).double()), "v"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def band_reference(q, k, v, window):
    """PyTorch's fused attention with a band written out cell by cell; k, v repeated for grouped heads."""
    T, r = q.shape[2], q.shape[1] // k.shape[1]
    band = torch.tensor([[i - window < j <= i for j in range(T)] for i in range(T)])
    k, v = (t.repeat_interleave(r, dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=band)


@pytest.mark.parametrize("T,window,h,h_kv", [(37, 5, 4, 2), (6, 10, 2, 2), (12, 1, 2, 1), (16, 16, 2, 2)])
def test_decoding_with_a_rolling_cache_is_sliding_window_attention(T, window, h, h_kv):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, h, T, 8, generator=g)
    k, v = (torch.randn(2, h_kv, T, 8, generator=g) for _ in range(2))
    cache = RollingKVCache(2, h_kv, window, 8)
    outs = []
    for t in range(T):  # one token at a time, as in generation
        keys, values = cache.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        assert keys.shape == (2, h_kv, min(t + 1, window), 8)
        outs.append(attention(q[:, :, t : t + 1], keys, values))  # no mask: every cached key is in the window
    torch.testing.assert_close(torch.cat(outs, dim=2), band_reference(q, k, v, window), atol=1e-5, rtol=0)


def test_the_rolling_cache_keeps_the_last_window_positions_in_slot_p_mod_window():
    T, window = 23, 4
    cache = RollingKVCache(1, 1, window, 1)
    for p in range(T):
        position = torch.full((1, 1, 1, 1), float(p))
        cache.update(position, -position)
    assert cache.length == T and cache.k.shape == (1, 1, window, 1)  # memory does not grow with T
    for p in range(T - window, T):
        assert cache.k[0, 0, p % window, 0] == p and cache.v[0, 0, p % window, 0] == -p


def test_the_local_configs_are_small_tied_with_a_window_and_their_results_match_them():
    import dataclasses

    from transformer_course.train import CONFIGS, load_results

    base_model, base_schedule = CONFIGS["small-tied"]
    for name, pattern in (("local-all", ("local", "local")), ("local-alternating", ("local", "global"))):
        model_config, schedule = CONFIGS[name]
        assert schedule == base_schedule  # same steps, batches, learning rate and seed
        assert model_config == dataclasses.replace(base_model, attention_window=8, layer_pattern=pattern)
        for run in (name, f"{name}-seed1"):  # the shipped results were made with this very config
            results = load_results(run)
            assert GPTConfig.from_dict(results["model_config"]) == model_config  # later fields: defaults
            assert results["steps"] == schedule.steps and results["config_name"] == name
