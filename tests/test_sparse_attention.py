"""Sparse and local attention (Chapter 8): the masks follow their definitions, the banded implementation equals
the masked one and PyTorch's fused attention with an explicit band mask, and a window >= T is causal attention."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from transformer_course.attention import attention, attention_weights
from transformer_course.model import GPT, GPTConfig
from transformer_course.sparse_attention import (
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
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
