"""Chapter 6's claims about multi-head attention, as tests: the split/merge reshapes, per-head weights equal to
nn.MultiheadAttention's, the output as a sum of per-head terms, and parameter/FLOP counts free of h."""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from transformer_course.attention import Attention, attention_weights


def split_heads(x, h):
    B, T, d_model = x.shape
    return x.view(B, T, h, d_model // h).transpose(1, 2)  # (B, h, T, d_k)


def merge_heads(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)  # (B, T, h*d_k)


def test_split_heads_matches_project_qkv_and_merge_inverts_it():
    torch.manual_seed(0)
    m = Attention(24, 3)
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        q, k, v = m.qkv(x).split(24, dim=-1)
        q_ref, k_ref, v_ref = m.project_qkv(x)
    for ours, ref in ((q, q_ref), (k, k_ref), (v, v_ref)):
        assert torch.equal(split_heads(ours, 3), ref)
        assert torch.equal(merge_heads(split_heads(ours, 3)), ours)


@pytest.mark.parametrize("h", [1, 2, 4, 8])
def test_per_head_weights_match_nn_multihead_attention(h):
    torch.manual_seed(h)
    d_model, T = 32, 9
    ours = Attention(d_model, h).eval()
    ref = nn.MultiheadAttention(d_model, h, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
        x = torch.randn(2, T, d_model)
        blocked = torch.ones(T, T, dtype=torch.bool).triu(1)
        y_ref, w_ref = ref(x, x, x, attn_mask=blocked, average_attn_weights=False)  # (B, h, T, T)
        q, k, _ = ours.project_qkv(x)
        torch.testing.assert_close(attention_weights(q, k, causal=True), w_ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours(x), y_ref, atol=1e-5, rtol=0)


def test_output_is_a_sum_of_per_head_terms_and_zeroing_a_slice_removes_one():
    torch.manual_seed(0)
    d_model, h, T = 16, 4, 6
    d_k = d_model // h
    m = Attention(d_model, h)
    x = torch.randn(1, T, d_model)
    with torch.no_grad():
        q, k, v = m.project_qkv(x)
        heads = attention_weights(q, k, causal=True) @ v  # (B, h, T, d_k)
        W_O = m.out_proj.weight
        terms = [heads[:, i] @ W_O[:, i * d_k:(i + 1) * d_k].T for i in range(h)]
        torch.testing.assert_close(sum(terms) + m.out_proj.bias, m(x), atol=1e-6, rtol=0)

        def drop_head_2(module, args):
            out = args[0].clone()
            out[..., 2 * d_k:3 * d_k] = 0
            return (out,)

        hook = m.out_proj.register_forward_pre_hook(drop_head_2)
        ablated = m(x)
        hook.remove()
        expected = sum(t for i, t in enumerate(terms) if i != 2) + m.out_proj.bias
        torch.testing.assert_close(ablated, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_parameters_and_flops_do_not_depend_on_h(fused):
    d_model, B, T = 64, 2, 12
    x = torch.zeros(B, T, d_model)
    for h in (1, 2, 4, 8, 16):
        m = Attention(d_model, h, fused_qkv=fused)
        assert sum(p.numel() for p in m.parameters()) == 4 * d_model**2 + 4 * d_model
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(x)
        d_k = d_model // h
        formula = (2 * B * T * d_model * 3 * d_model + 2 * 2 * B * h * T * T * d_k
                   + 2 * B * T * d_model * d_model)
        assert counter.get_total_flops() == formula == 8 * B * T * d_model**2 + 4 * B * T * T * d_model


def test_flop_counter_counts_a_matmul_as_2mnk():
    with FlopCounterMode(display=False) as counter:
        torch.ones(3, 5) @ torch.ones(5, 7)
    assert counter.get_total_flops() == 2 * 3 * 5 * 7
