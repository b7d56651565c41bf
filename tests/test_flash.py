"""flash.py (Chapter 15): online softmax equals softmax; the tiled forward equals PyTorch's fused
attention (SDPA) and its backward equals autograd through the naive attention; the counted FLOPs,
HBM traffic and skipped tiles follow from the loops (checked against torch's FLOP counter and
Dao et al. 2022, Theorem 2); no T x T tensor is ever made; the Triton kernel equals SDPA under
Triton's CPU interpreter."""
import dataclasses
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import transformer_course.attention as attention_module
from transformer_course.attention import allowed_mask, attention
from transformer_course.flash import (
    FlashAttention, flash_attention, online_softmax, tiled_attention_backward,
    tiled_attention_forward, triton_attention,
)
from transformer_course.model import GPT, GPTConfig, KVCache

CASES = [  # B, h, h_kv, Tq, Tk, d
    (2, 4, 4, 64, 64, 16),  # multi-head, blocks divide T
    (1, 4, 2, 37, 37, 8),  # grouped-query, ragged last block
    (2, 6, 1, 50, 80, 16),  # multi-query, queries are the last 50 of 80 positions
]


def qkv(B, h, h_kv, Tq, Tk, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, h, Tq, d, generator=g, dtype=dtype)
    k, v = (torch.randn(B, h_kv, Tk, d, generator=g, dtype=dtype) for _ in range(2))
    return q, k, v


def left_padding(B, Tk, n_pad=11):
    """Row 0 unpadded, the others padded on the left: causal, their first queries see no key."""
    mask = torch.ones(B, Tk, dtype=torch.bool)
    mask[1:, :n_pad] = False
    return mask


def sdpa(q, k, v, causal, padding_mask, scale=None):
    """PyTorch's fused attention with an explicit mask; rows that see no key: 0 (SDPA: NaN)."""
    allowed = allowed_mask(q.shape[2], k.shape[2], causal=causal, padding_mask=padding_mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out if allowed is None else out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)


# ----------------------------------------------------------------------------- online softmax


@pytest.mark.parametrize("block_size", [1, 3, 16, 128, 1000])
def test_online_softmax_equals_softmax(block_size):
    x = torch.randn(4, 5, 300, generator=torch.Generator().manual_seed(1))
    assert (online_softmax(x, block_size) - torch.softmax(x, -1)).abs().max() < 1e-6


def test_online_softmax_where_the_naive_exp_overflows():
    x = torch.tensor([[1000.0, 999.0, 0.0], [-1000.0, -1001.0, -2000.0]])
    naive = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    assert naive.isnan().any()  # exp(1000) = inf, inf / inf = NaN; exp(-1000) = 0, 0 / 0 = NaN
    assert (online_softmax(x, 1) - torch.softmax(x, -1)).abs().max() < 1e-6


def test_online_softmax_masked_blocks_and_rows():
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    x[0, :32] = float("-inf")  # the first two blocks fully masked, the rest not
    x[1, 10:] = float("-inf")  # the later blocks fully masked
    x[2] = float("-inf")  # a row with nothing: zeros, as attention gives a query that sees no key
    out = online_softmax(x, 16)
    assert (out[:2] - torch.softmax(x[:2], -1)).abs().max() < 1e-6
    assert torch.equal(out[2], torch.zeros(64)) and not out.isnan().any()


def test_online_softmax_rejects():
    with pytest.raises(ValueError, match="x must be"):
        online_softmax(torch.arange(4))
    with pytest.raises(ValueError, match="block_size"):
        online_softmax(torch.randn(4), 0)


# ----------------------------------------------------------------------------- tiled forward


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("blocks", [(16, 16), (32, 8), (128, 128)])
def test_tiled_forward_equals_sdpa(case, causal, padded, blocks):
    q, k, v = qkv(*case)
    mask = left_padding(q.shape[0], k.shape[2]) if padded else None
    out, lse, _ = tiled_attention_forward(q, k, v, causal=causal, padding_mask=mask,
                                          block_q=blocks[0], block_k=blocks[1])
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert (out - sdpa(q, k, v, causal, mask)).abs().max() < 1e-5
    # the LSE is log sum_j exp(s_ij) over the keys query i sees; +inf for a query that sees none
    k_per_head = k.repeat_interleave(q.shape[1] // k.shape[1], 1)  # (B, h, Tk, d)
    scores = q @ k_per_head.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = allowed_mask(q.shape[2], k.shape[2], causal=causal, padding_mask=mask)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    ref = torch.logsumexp(scores, -1)
    assert torch.equal(torch.isinf(lse), torch.isinf(ref)) and (lse.isinf() <= (lse > 0)).all()
    assert (lse - ref)[ref.isfinite()].abs().max() < 1e-5


def test_tiled_forward_scale_and_dtypes():
    q, k, v = qkv(1, 2, 2, 40, 40, 16)
    out, _, _ = tiled_attention_forward(q, k, v, causal=True, scale=0.3, block_q=16, block_k=16)
    assert (out - sdpa(q, k, v, True, None, scale=0.3)).abs().max() < 1e-5
    wide_v = torch.randn(1, 2, 40, 24, generator=torch.Generator().manual_seed(5))  # d_v != d_k
    out, _, _ = tiled_attention_forward(q, k, wide_v, causal=True, block_q=16, block_k=16)
    assert (out - sdpa(q, k, wide_v, True, None)).abs().max() < 1e-5
    half, _, _ = tiled_attention_forward(*(t.bfloat16() for t in (q, k, v)), causal=True)
    assert half.dtype == torch.bfloat16
    assert (half.float() - sdpa(q, k, v, True, None)).abs().max() < 0.05


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 2), h_kv=st.integers(1, 2), g=st.integers(1, 3), Tq=st.integers(1, 40),
       extra=st.integers(0, 20), d=st.integers(1, 9), bq=st.integers(1, 50), bk=st.integers(1, 50),
       causal=st.booleans())
def test_tiled_forward_any_shape_and_block(B, h_kv, g, Tq, extra, d, bq, bk, causal):
    q, k, v = qkv(B, g * h_kv, h_kv, Tq, Tq + extra, d)
    out, _, _ = tiled_attention_forward(q, k, v, causal=causal, block_q=bq, block_k=bk)
    assert (out - attention(q, k, v, causal=causal)).abs().max() < 1e-5


def test_flops_are_naive_less_the_skipped_tiles():
    B, h, T, d, b = 1, 2, 128, 8, 16
    q, k, v = qkv(B, h, h, T, T, d)
    naive = 2 * B * h * T * T * (d + d)  # Q K^T and P V: 2 FLOPs per multiply-add
    tile = 2 * B * h * b * b * (d + d)
    n = T // b
    for causal, skipped in ((False, 0), (True, n * (n - 1) // 2)):  # causal: above the diagonal
        with FlopCounterMode(display=False) as counter:
            _, _, stats = tiled_attention_forward(q, k, v, causal=causal, block_q=b, block_k=b)
        assert stats.skipped == skipped and stats.tiles == n * n - skipped
        assert stats.flops == naive - skipped * tile
        assert stats.flops == counter.get_total_flops()  # torch's own count
    wide_v = torch.randn(B, h, T, 3 * d, generator=torch.Generator().manual_seed(4))  # d_v != d_k
    with FlopCounterMode(display=False) as counter:
        _, _, stats = tiled_attention_forward(q, k, wide_v, block_q=b, block_k=b)
    assert stats.flops == 2 * B * h * T * T * (d + 3 * d) == counter.get_total_flops()
    # the backward does 5 matmuls per tile for the forward's 2 (FlashAttention-2, section 3.1.2)
    out, lse, fwd = tiled_attention_forward(q, k, v, causal=True, block_q=b, block_k=b)
    with FlopCounterMode(display=False) as counter:
        *_, bwd = tiled_attention_backward(q, k, v, out, lse, torch.ones_like(out), causal=True,
                                           block_q=b, block_k=b)
    assert bwd.flops == 5 * fwd.flops // 2 == counter.get_total_flops()
    assert bwd.skipped == fwd.skipped


def test_hbm_traffic_follows_theorem_2():
    """Dao et al. 2022, Theorem 2: Theta(T^2 d^2 / M) HBM accesses with on-chip memory M, the blocks
    holding M / (4 d) rows. Here: Q read and O written once, K and V once per block of queries."""
    B, h, T, d = 1, 2, 128, 8
    q, k, v = qkv(B, h, h, T, T, d)
    kv_reads = {}
    for b in (8, 16, 32, 64):
        _, _, stats = tiled_attention_forward(q, k, v, block_q=b, block_k=b)
        assert stats.hbm_writes == B * h * T * (d + 1)  # O and the LSE, once
        kv_reads[b] = stats.hbm_reads - B * h * T * d  # all but Q's
        assert kv_reads[b] == (T // b) * 2 * B * h * T * d  # K and V, T / b times each
    for b in (8, 16, 32):
        assert kv_reads[b] == 2 * kv_reads[2 * b]  # twice the on-chip memory, half the traffic
        M = 4 * b * d  # on-chip memory for a tile each of Q, K, V and O, in elements
        assert kv_reads[b] * M == 8 * B * h * T**2 * d**2  # c T^2 d^2 / M, c = 2 (K, V) x 4 x B h


# ----------------------------------------------------------------------------- backward


def naive_grads(q, k, v, d_out, causal, mask):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    attention(q, k, v, causal=causal, padding_mask=mask).backward(d_out)
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_backward_equals_autograd_through_naive_attention(case, causal, padded, dtype, rtol):
    q, k, v = qkv(*case, dtype=dtype)
    mask = left_padding(q.shape[0], k.shape[2]) if padded else None
    d_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, causal=causal, padding_mask=mask, block_q=16, block_k=32)
    out.backward(d_out)
    assert (out - attention(q, k, v, causal=causal, padding_mask=mask)).abs().max() < 10 * rtol
    refs = naive_grads(q, k, v, d_out, causal, mask)
    for name, got, ref in zip("qkv", (t.grad for t in leaves), refs):
        assert (got - ref).abs().max() <= rtol * ref.abs().max(), name


def test_gradcheck_fp64():
    q, k, _ = qkv(1, 4, 2, 9, 13, 3, dtype=torch.float64)
    v = torch.randn(1, 2, 13, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    q, k, v = (t.requires_grad_() for t in (q, k, v))  # grouped heads, d_v != d_k
    mask = left_padding(1, 13)
    for causal in (False, True):
        def fn(q, k, v):
            return flash_attention(q, k, v, causal=causal, padding_mask=mask, block_q=4, block_k=5)
        assert torch.autograd.gradcheck(fn, (q, k, v))


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any operation's output has."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_extra_memory_is_linear_in_T():
    B, h, T, d, b = 1, 2, 512, 16, 64
    q, k, v = (t.requires_grad_() for t in qkv(B, h, h, T, T, d))
    saved = []
    with LargestTensor() as largest, torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel()) or t, lambda t: t):
        flash_attention(q, k, v, causal=True, block_q=b, block_k=b).sum().backward()
    assert largest.numel <= B * h * T * d  # nothing larger than q: a tile holds B h b^2 = 8192
    assert max(saved) <= B * h * T * d  # saved for the backward: q, k, v, out, the LSE
    with LargestTensor() as naive:  # the same recorder sees the T x T scores of the naive attention
        attention(q, k, v, causal=True).sum().backward()
    assert naive.numel >= B * h * T * T


def test_flash_attention_refuses_what_it_does_not_fuse():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    with pytest.raises(ValueError, match="bias"):
        flash_attention(q, k, v, bias=torch.zeros(8, 8))
    with pytest.raises(ValueError, match="window"):
        flash_attention(q, k, v, causal=True, window=4)
    with pytest.raises(ValueError, match="dropout_p=0.1"):
        flash_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attention(q, k, v, dropout_p="0.1")
    for kwargs, match in ((dict(block_q=0), "block_q"), (dict(block_k=True), "block_k"),
                          (dict(causal="yes"), "causal"), (dict(scale=-1.0), "scale"),
                          (dict(padding_mask=torch.ones(1, 7, dtype=torch.bool)), "padding_mask")):
        with pytest.raises(ValueError, match=match):
            flash_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        flash_attention(q, k[:, :, :4], v[:, :, :4], causal=True)
    with pytest.raises(ValueError, match="k"):
        flash_attention(q, k[..., :3], v)
    assert FlashAttention.apply(q, k, v, False, None, None, 4, 4).shape == q.shape


def test_course_model_gives_the_same_loss_and_gradients_with_flash():
    """GPTConfig(attn_impl="flash") == "manual" with the same weights: GQA, RoPE, causal with left
    padding, and the KV-cached decoding of one more token (Tq < Tk)."""
    config = GPTConfig(vocab_size=50, context_length=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       d_model=32, positional="rope")
    torch.manual_seed(0)
    manual = GPT(config)
    flash = GPT(dataclasses.replace(config, attn_impl="flash"))
    flash.load_state_dict(manual.state_dict())
    idx = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(7))
    mask = left_padding(2, 20, 5)
    mask_21 = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)

    def loss_and_grads(model):
        logits, loss = model(idx, idx, padding_mask=mask)
        loss.backward()
        cache = KVCache(config, batch_size=2, max_len=21)
        with torch.no_grad():
            model(idx, padding_mask=mask, cache=cache)
            step, _ = model(idx[:, :1], padding_mask=mask_21, cache=cache)  # 1 query, 21 keys
        return logits, step, [p.grad for p in model.parameters()]

    reference, (logits, step, grads) = loss_and_grads(manual), loss_and_grads(flash)
    assert (logits - reference[0]).abs().max() < 1e-5 and (step - reference[1]).abs().max() < 1e-5
    for got, ref in zip(grads, reference[2]):
        assert (got - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("field", [dict(dropout=0.1), dict(positional="alibi"),
                                   dict(attention_window=4)])
def test_flash_config_refuses_what_the_tiles_do_not_support(field):
    with pytest.raises(ValueError, match="flash.*" + next(iter(field))):
        GPTConfig(attn_impl="flash", **field)


# ----------------------------------------------------------------------------- the Triton kernel


TRITON_CASES = [(1, 2, 2, 64, 64, 64), (2, 4, 2, 50, 70, 24)]


def triton_checks():
    """Run in a child process started with TRITON_INTERPRET=1 (set before triton is imported)."""
    for case in TRITON_CASES:
        q, k, v = qkv(*case)
        for causal in (False, True):
            for padding_mask in (None, left_padding(q.shape[0], k.shape[2])):
                out, lse = triton_attention(q, k, v, causal=causal, padding_mask=padding_mask,
                                            block_q=32, block_k=16)
                assert (out - sdpa(q, k, v, causal, padding_mask)).abs().max() < 1e-5
                _, ref, _ = tiled_attention_forward(q, k, v, causal=causal,
                                                    padding_mask=padding_mask)
                assert torch.equal(lse.isinf(), ref.isinf())
                assert (lse - ref)[ref.isfinite()].abs().max() < 1e-5
    print("triton kernel == SDPA")


def test_triton_kernel_equals_sdpa_under_the_interpreter():
    pytest.importorskip("triton", reason="triton is not installed (it has Linux wheels only)")
    here = pathlib.Path(__file__).resolve().parent
    child = subprocess.run([sys.executable, "-c", "import test_flash; test_flash.triton_checks()"],
                           cwd=here, env={**os.environ, "TRITON_INTERPRET": "1"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and "triton kernel == SDPA" in child.stdout, child.stderr[-3000:]


def test_triton_kernel_refuses(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed (it has Linux wheels only)")
    q, k, v = qkv(1, 2, 2, 32, 32, 16)
    with pytest.raises(ValueError, match="block_q must be a power of 2"):
        triton_attention(q, k, v, block_q=24)
    with pytest.raises(ValueError, match="float16"):
        triton_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="d_v == d_k"):
        triton_attention(q, k, v[..., :8])
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            triton_attention(q, k, v)
        import triton.language  # here without the interpreter: compiled for a GPU

        if type(triton.language.zeros).__name__ != "InterpretedFunction":
            monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late
            with pytest.raises(RuntimeError, match="set after triton was imported"):
                triton_attention(q, k, v)
    monkeypatch.setitem(sys.modules, "triton", None)  # as if not installed
    with pytest.raises(RuntimeError, match="needs the triton package"):
        triton_attention(q, k, v)
