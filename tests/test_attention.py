"""attention() and Attention against references nobody here wrote: F.scaled_dot_product_attention
(incl. enable_gqa) and nn.MultiheadAttention, plus hand-built masks."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_course.attention import Attention, LayerKVCache, attention, attention_weights

ATOL = 1e-5


def qkv(B=2, h=4, h_kv=4, Tq=6, Tk=6, d_k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, h, Tq, d_k, generator=g), torch.randn(B, h_kv, Tk, d_k, generator=g),
            torch.randn(B, h_kv, Tk, d_k, generator=g))


def left_padding(B, T, n_pad):
    """(B, T) bool, row b has n_pad[b] padding positions on the left."""
    return torch.arange(T)[None, :] >= torch.tensor(n_pad)[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("h_kv", [4, 2, 1])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_manual_matches_torch_sdpa(causal, h_kv, scale):
    q, k, v = qkv(h_kv=h_kv)
    ours = attention(q, k, v, causal=causal, scale=scale)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=h_kv != 4)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_padding_mask_matches_torch_sdpa_on_real_rows():
    q, k, v = qkv(Tq=7, Tk=7, h_kv=2)
    pm = left_padding(2, 7, [0, 3])
    ref_mask = pm[:, None, None, :] & torch.ones(7, 7, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask, enable_gqa=True)
    ours = attention(q, k, v, causal=True, padding_mask=pm)
    real_rows = pm[:, None, :, None]  # compare where the query itself is a real token
    torch.testing.assert_close(ours * real_rows, ref * real_rows, atol=ATOL, rtol=0)
    # the padding queries see no key at all: defined as zeros
    assert torch.equal(ours[1, :, :3], torch.zeros_like(ours[1, :, :3]))


def test_non_causal_padding_matches_torch_sdpa():
    q, k, v = qkv(Tq=3, Tk=7)
    pm = left_padding(2, 7, [2, 5])
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=pm[:, None, None, :])
    torch.testing.assert_close(attention(q, k, v, padding_mask=pm), ref, atol=ATOL, rtol=0)


def test_additive_bias_matches_torch_sdpa():
    q, k, v = qkv(h_kv=2)
    bias = torch.randn(4, 6, 6)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    torch.testing.assert_close(attention(q, k, v, bias=bias), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(causal=True),
        dict(causal=True, window=3),
        dict(causal=True, padding_mask=left_padding(2, 9, [0, 4])),
        dict(causal=True, window=2, padding_mask=left_padding(2, 9, [1, 8]), bias=torch.randn(1, 4, 1, 9)),
        dict(padding_mask=left_padding(2, 9, [3, 9])),  # row 1: no real key at all
        dict(scale=2.0, bias=torch.randn(4, 9, 9)),
    ],
)
@pytest.mark.parametrize("shape", [dict(Tq=9, Tk=9), dict(Tq=1, Tk=9), dict(Tq=4, Tk=9)])
@pytest.mark.parametrize("h_kv", [4, 2])
def test_sdpa_impl_equals_manual_impl(kwargs, shape, h_kv):
    q, k, v = qkv(h_kv=h_kv, **shape)
    kwargs = dict(kwargs)
    if "bias" in kwargs and kwargs["bias"].shape[-2] not in (1, shape["Tq"]):
        kwargs["bias"] = kwargs["bias"][..., -shape["Tq"]:, :]
    manual = attention(q, k, v, impl="manual", **kwargs)
    fused = attention(q, k, v, impl="sdpa", **kwargs)
    assert not fused.isnan().any()
    torch.testing.assert_close(manual, fused, atol=ATOL, rtol=0)


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v = (t.requires_grad_() for t in qkv())
    pm = torch.zeros(2, 6, dtype=torch.bool)
    pm[0, 2] = True
    bias = torch.zeros(1, 1, 6, 6)
    bias[..., 4, :] = float("-inf")  # a query whose every key is forbidden by the bias
    for impl in ("manual", "sdpa"):
        out = attention(q, k, v, padding_mask=pm, bias=bias, impl=impl)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert torch.equal(out[0, :, 4], torch.zeros_like(out[0, :, 4]))
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    w = attention_weights(q, k, padding_mask=pm)
    assert torch.equal(w[1], torch.zeros_like(w[1]))


def test_window_matches_explicit_band_mask():
    T, window = 10, 3
    q, k, v = qkv(Tq=T, Tk=T)
    band = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            band[i, j] = i - window < j <= i  # itself and the window-1 keys before it
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
    torch.testing.assert_close(attention(q, k, v, causal=True, window=window), ref, atol=ATOL, rtol=0)
    w = attention_weights(q, k, causal=True, window=window)
    assert torch.equal(w[0, 0] > 0, band)


def test_causal_with_fewer_queries_is_end_aligned():
    """Decoding with a KV cache: the last Tq queries see exactly what they see in the full causal pass."""
    q, k, v = qkv(Tq=10, Tk=10, h_kv=2)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    for Tq in (1, 3):
        for impl in ("manual", "sdpa"):
            tail = attention(q[:, :, -Tq:], k, v, causal=True, impl=impl)
            torch.testing.assert_close(tail, full[:, :, -Tq:], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(q=torch.randn(2, 4, 6)), "4-D"),
        (dict(k=torch.randn(2, 3, 6, 8), v=torch.randn(2, 3, 6, 8)), "multiple"),
        (dict(k=torch.randn(3, 4, 6, 8), v=torch.randn(3, 4, 6, 8)), "must agree"),
        (dict(v=torch.randn(2, 4, 5, 8)), "must agree"),
        (dict(padding_mask=torch.ones(2, 5, dtype=torch.bool)), "padding_mask"),
        (dict(padding_mask=torch.ones(2, 6)), "padding_mask"),
        (dict(window=3), "causal"),
        (dict(window=0, causal=True), "window"),
        (dict(bias=torch.randn(3, 6, 6)), "broadcast"),
        (dict(impl="tiled"), "impl"),
    ],
)
def test_bad_arguments_raise_value_error(args, message):
    q, k, v = qkv()
    call = dict(q=q, k=k, v=v) | args
    with pytest.raises(ValueError, match=message):
        attention(call.pop("q"), call.pop("k"), call.pop("v"), **call)


@given(
    T=st.integers(1, 8), n_pad=st.integers(0, 4), h_kv=st.sampled_from([1, 2, 4]), causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
def test_rows_sum_to_one_and_padding_keys_change_nothing(T, n_pad, h_kv, causal, seed):
    q, k, v = qkv(B=1, h_kv=h_kv, Tq=T, Tk=T, seed=seed)
    w = attention_weights(q, k, causal=causal)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, T), atol=1e-6, rtol=0)
    # Put n_pad junk keys in front, masked out: the real queries' outputs do not change.
    g = torch.Generator().manual_seed(seed + 1)
    junk_k, junk_v = torch.randn(1, h_kv, n_pad, 8, generator=g), torch.randn(1, h_kv, n_pad, 8, generator=g)
    pm = left_padding(1, n_pad + T, [n_pad])
    padded = attention(q, torch.cat([junk_k, k], 2), torch.cat([junk_v, v], 2), causal=causal, padding_mask=pm)
    torch.testing.assert_close(padded, attention(q, k, v, causal=causal), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- the module


def copy_into_mha(ours: Attention, mha: nn.MultiheadAttention):
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)  # rows [q; k; v], the same layout
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        if ours.qkv.bias is not None:
            mha.in_proj_bias.copy_(ours.qkv.bias)
            mha.out_proj.bias.copy_(ours.out_proj.bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_module_matches_nn_multihead_attention(bias, causal):
    torch.manual_seed(0)
    d_model, h, T = 32, 4, 7
    ours = Attention(d_model, h, bias=bias)
    for p in ours.parameters():
        nn.init.normal_(p, std=0.3)
    mha = nn.MultiheadAttention(d_model, h, bias=bias, batch_first=True)
    copy_into_mha(ours, mha)
    x = torch.randn(3, T, d_model, requires_grad=True)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None  # MHA: True = NOT allowed
    ref, _ = mha(x, x, x, attn_mask=mask, need_weights=False)
    out = ours(x, causal=causal)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    r = torch.randn_like(out)
    g_ours, = torch.autograd.grad((out * r).sum(), x)
    g_ref, = torch.autograd.grad((ref * r).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, atol=ATOL, rtol=0)


def test_module_padding_matches_nn_multihead_attention_key_padding_mask():
    torch.manual_seed(1)
    ours = Attention(16, 2)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    copy_into_mha(ours, mha)
    x = torch.randn(2, 5, 16)
    pm = left_padding(2, 5, [0, 2])
    ref, _ = mha(x, x, x, key_padding_mask=~pm, need_weights=False)
    torch.testing.assert_close(ours(x, causal=False, padding_mask=pm), ref, atol=ATOL, rtol=0)


def test_separate_projections_equal_fused_and_grouped_heads_equal_repeated_kv():
    torch.manual_seed(2)
    fused = Attention(32, 4, n_kv_heads=2)
    separate = Attention(32, 4, n_kv_heads=2, fused_qkv=False)
    with torch.no_grad():
        wq, wk, wv = fused.qkv.weight.split([32, 16, 16])
        bq, bk, bv = fused.qkv.bias.split([32, 16, 16])
        for lin, w, b in ((separate.q_proj, wq, bq), (separate.k_proj, wk, bk), (separate.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        separate.out_proj.load_state_dict(fused.out_proj.state_dict())
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(fused(x), separate(x), atol=ATOL, rtol=0)
    # GQA == MHA whose key/value heads are the shared ones repeated (Hugging Face's repeat_kv)
    q, k, v = fused.project_qkv(x)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    ref = fused.out_proj(ref.transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(fused(x), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("h_kv", [4, 1])
def test_module_with_kv_cache_equals_full_pass(h_kv):
    torch.manual_seed(3)
    att = Attention(32, 4, n_kv_heads=h_kv).eval()
    x = torch.randn(2, 9, 32)
    full = att(x)
    cache = LayerKVCache(2, h_kv, 9, 8)
    pieces = [att(x[:, :4], cache=cache)] + [att(x[:, t : t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="do not fit"):
        att(x[:, :1], cache=cache)


def test_scores_are_scaled_by_sqrt_dk():
    q, k, _ = qkv(B=1, h=1, h_kv=1, Tq=3, Tk=3, d_k=16)
    w = attention_weights(q, k)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(16), -1), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- cross-attention (Chapter 5)


@pytest.mark.parametrize("scale", [None, 0.25])
@pytest.mark.parametrize("Tq, Tk", [(3, 8), (8, 3), (1, 5)])
def test_cross_attention_matches_torch_sdpa(Tq, Tk, scale):
    """Queries from one sequence, keys and values from another: Tq != Tk, and d_v != d_k."""
    g = torch.Generator().manual_seed(Tq * 10 + Tk)
    q, k = torch.randn(2, 3, Tq, 8, generator=g), torch.randn(2, 3, Tk, 8, generator=g)
    v = torch.randn(2, 3, Tk, 5, generator=g)  # values may have their own width d_v
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale)
    for impl in ("manual", "sdpa"):
        out = attention(q, k, v, scale=scale, impl=impl)
        assert out.shape == (2, 3, Tq, 5)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_cross_attention_with_projections_matches_nn_multihead_attention():
    """The decoder's encoder-decoder attention of Vaswani et al. (2017), Sec. 3.2.3, from the pieces here."""
    torch.manual_seed(4)
    d_model, h = 16, 2
    mha = nn.MultiheadAttention(d_model, h, batch_first=True)
    target, source = torch.randn(2, 3, d_model), torch.randn(2, 6, d_model)  # decoder states, encoder output
    pm = left_padding(2, 6, [0, 2])  # the source sentence of row 1 has two padding tokens
    ref, _ = mha(target, source, source, key_padding_mask=~pm, need_weights=False)
    wq, wk, wv = mha.in_proj_weight.split(d_model)
    bq, bk, bv = mha.in_proj_bias.split(d_model)

    def heads(x):  # (B, T, d_model) -> (B, h, T, d_k)
        return x.view(x.shape[0], x.shape[1], h, d_model // h).transpose(1, 2)

    q, k, v = heads(target @ wq.T + bq), heads(source @ wk.T + bk), heads(source @ wv.T + bv)
    out = attention(q, k, v, padding_mask=pm).transpose(1, 2).reshape(2, 3, d_model)
    torch.testing.assert_close(mha.out_proj(out), ref, atol=ATOL, rtol=0)


def test_scale_changes_the_weights_as_a_temperature():
    """scale multiplies the scores before the softmax: scale=0 gives uniform weights, as in SDPA."""
    q, k, v = qkv(Tq=4, Tk=6)
    w = attention_weights(q, k, scale=0.0)
    torch.testing.assert_close(w, torch.full_like(w, 1 / 6), atol=1e-7, rtol=0)
    torch.testing.assert_close(attention(q, k, v, scale=0.0), v.mean(-2, keepdim=True).expand(2, 4, 4, 8),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(attention(q, k, v, scale=0.0), F.scaled_dot_product_attention(q, k, v, scale=0.0),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", ["manual", "sdpa"])
def test_values_may_be_wider_or_narrower_than_keys(impl):
    """d_v need not equal d_k: the output takes v's last dimension (the docstring's shapes)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    for d_v in (3, 12):
        v = torch.randn(2, 2, 5, d_v, generator=g)
        out = attention(q, k, v, causal=True, impl=impl)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        assert out.shape == (2, 4, 5, d_v)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
