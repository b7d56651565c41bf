"""gqa.py (Chapter 7): KV-cache bytes, repeat_kv, mean-pool conversion; references: SDPA enable_gqa, HF Llama."""
import json

import pytest
import torch
import torch.nn.functional as F

from transformer_course.attention import Attention, attention
from transformer_course.gqa import kv_cache_bytes, mean_pool_kv_heads, mha_to_gqa, repeat_kv
from transformer_course.hf import from_hf, to_hf_state_dict
from transformer_course.model import GPT, GPTConfig, KVCache
from transformer_course.training import held_out_loss


@pytest.mark.parametrize("h_kv", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_matches_allocation(h_kv, dtype):
    c = GPTConfig(n_layers=3, n_heads=4, n_kv_heads=h_kv, d_model=32, context_length=20)
    cache = KVCache(c, batch_size=2, max_len=17, dtype=dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    assert kv_cache_bytes(c, 17, 2, size) == cache.nbytes == 2 * 3 * h_kv * 8 * 17 * 2 * size
    storage = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in (layer.k, layer.v))
    assert storage == cache.nbytes


def test_kv_cache_bytes_published_numbers():
    # Llama 2 70B: 80 layers, 64 heads of 128, 8 KV heads; 4096 tokens in 16-bit: 1.25 GiB
    llama2_70b = dict(n_layers=80, n_heads=64, n_kv_heads=8, d_model=8192)
    assert kv_cache_bytes(llama2_70b, 4096, 1, 2) == 5 * 2**28
    assert kv_cache_bytes(dict(n_layers=32, n_heads=32, d_model=4096), 4096, 1, 2) == 2**31  # Llama 2 7B, MHA


@pytest.mark.parametrize("bad", [dict(n_layers=2), "x", dict(n_layers=2, n_heads=0, d_model=8)])
def test_kv_cache_bytes_rejects(bad):
    with pytest.raises(ValueError):
        kv_cache_bytes(bad, 4)
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes(GPTConfig(), 0)


def test_repeat_kv_matches_repeat_interleave_and_sdpa():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 5, 4, generator=g)
    k, v = torch.randn(2, 2, 7, 4, generator=g), torch.randn(2, 2, 7, 4, generator=g)
    assert torch.equal(repeat_kv(k, 4), k.repeat_interleave(4, dim=1))
    naive = F.scaled_dot_product_attention(q, repeat_kv(k, 4), repeat_kv(v, 4))
    torch.testing.assert_close(attention(q, k, v), naive, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, enable_gqa=True), naive, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        repeat_kv(k[0], 2)


def test_mean_pool_kv_heads():
    w = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4 * 3, 2)  # 4 heads of d_k=3, d_in=2
    pooled = mean_pool_kv_heads(w, 4, 2)
    assert pooled.shape == (6, 2)
    torch.testing.assert_close(pooled[:3], (w[0:3] + w[3:6]) / 2)
    torch.testing.assert_close(pooled[3:], (w[6:9] + w[9:12]) / 2)
    assert torch.equal(mean_pool_kv_heads(w, 4, 4), w)
    torch.testing.assert_close(mean_pool_kv_heads(w[:, 0], 4, 1), w[:, 0].reshape(4, 3).mean(0))
    with pytest.raises(ValueError, match="multiple"):
        mean_pool_kv_heads(w, 4, 3)


def _identical_heads_model(config):
    """A model whose key/value heads are identical within each group of 2: conversion to h/2 is exact."""
    model = GPT(config).eval()
    q_dim, d_k = config.n_heads * config.d_k, config.d_k
    with torch.no_grad():
        for block in model.blocks:
            for name in ("weight", "bias"):
                p = getattr(block.attn.qkv, name, None)
                if p is None:
                    continue
                for part in (0, 1):  # k, then v
                    start = q_dim + part * config.h_kv * d_k
                    for head in range(0, config.h_kv, 2):
                        a = start + head * d_k
                        p[a + d_k: a + 2 * d_k] = p[a: a + d_k]
    return model


@pytest.mark.parametrize("flavour", ["gpt2_like", "llama_like"])
def test_mha_to_gqa_exact_when_grouped_heads_agree(flavour):
    config = getattr(GPTConfig, flavour)(n_layers=2, n_heads=4, d_model=32, context_length=16)
    model = _identical_heads_model(config)
    idx = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    converted = mha_to_gqa(model, 2)
    assert converted.config.h_kv == 2 and model.config.h_kv == 4
    assert converted.num_parameters() < model.num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(converted(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)


def test_mha_to_gqa_identity_and_chain():
    model = GPT(GPTConfig(n_layers=1, n_heads=4, d_model=16, context_length=8)).eval()
    same = mha_to_gqa(model, 4)
    for (n1, a), (n2, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)
    # MHA -> GQA-2 -> MQA equals MHA -> MQA: the mean of means of equal-sized groups
    chained, direct = mha_to_gqa(mha_to_gqa(model, 2), 1), mha_to_gqa(model, 1)
    for a, b in zip(chained.state_dict().values(), direct.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="multiple"):
        mha_to_gqa(model, 3)
    with pytest.raises(ValueError):
        mha_to_gqa(torch.nn.Linear(2, 2), 1)


def test_mha_to_gqa_matches_hugging_face_llama_with_pooled_heads():
    """Convert a Llama-like MHA model to MQA; HF Llama with num_key_value_heads=1 and the pooled weights agrees."""
    transformers = pytest.importorskip("transformers")
    config = GPTConfig.llama_like(vocab_size=64, n_layers=2, n_heads=4, d_model=32, context_length=16)
    torch.manual_seed(0)
    mqa = mha_to_gqa(GPT(config), 1).eval()
    hf_config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=config.ffn_dim, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16, rms_norm_eps=config.norm_eps,
        tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict(to_hf_state_dict(mqa))
    idx = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(mqa(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-4)
    back = from_hf(hf)
    assert back.config.h_kv == 1


@pytest.mark.parametrize("h_kv", [4, 2, 1])
def test_attention_module_matches_sdpa_enable_gqa(h_kv):
    att = Attention(32, 4, n_kv_heads=h_kv).eval()
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    q, k, v = att.project_qkv(x)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref = att.out_proj(ref.transpose(1, 2).reshape(2, 6, 32))
    with torch.no_grad():
        torch.testing.assert_close(att(x), ref, atol=1e-6, rtol=1e-5)


def test_held_out_loss():
    from transformer_course.data import held_out_split
    from transformer_course.tokenization import load_course_tokenizer

    tokenizer = load_course_tokenizer()
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layers=1, n_heads=2, d_model=16,
                          context_length=32)).train()
    ids = torch.tensor(tokenizer.encode(held_out_split(2_000).text, allowed_special="all"))
    n = (len(ids) - 1) // 32 * 32
    with torch.no_grad():
        expected = model.eval()(ids[:n].view(-1, 32), ids[1: n + 1].view(-1, 32))[1].item()
    model.train()
    assert held_out_loss(model, tokenizer, 2_000) == pytest.approx(expected, rel=1e-6)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="model"):
        held_out_loss(torch.nn.Linear(2, 2), tokenizer)
    with pytest.raises(ValueError, match="n_chars"):
        held_out_loss(model, tokenizer, 0)
    with pytest.raises(ValueError, match="tokenizer"):
        held_out_loss(model, "gpt2")


@pytest.mark.parametrize("h_kv", [8, 4, 2, 1])
@pytest.mark.parametrize("Tq, Tk, causal", [(1, 9, False), (1, 9, True), (6, 6, True), (3, 7, True), (4, 5, False)])
def test_package_attention_groups_like_repeat_kv_and_sdpa(h_kv, Tq, Tk, causal):
    g = torch.Generator().manual_seed(h_kv * 10 + Tq)
    q = torch.randn(2, 8, Tq, 4, generator=g)
    k, v = torch.randn(2, h_kv, Tk, 4, generator=g), torch.randn(2, h_kv, Tk, 4, generator=g)
    out = attention(q, k, v, causal=causal)
    r = 8 // h_kv
    torch.testing.assert_close(out, attention(q, repeat_kv(k, r), repeat_kv(v, r), causal=causal), atol=1e-6, rtol=1e-5)
    if not causal or Tq == Tk:
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_repeat_kv_copies_only_when_it_must():
    """h_kv = 1 (or n_rep = 1): a view of x, stride 0 across the repeated heads; otherwise a copy."""
    x = torch.randn(2, 1, 5, 4)
    one = repeat_kv(x, 3)
    assert one.stride(1) == 0 and one.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert repeat_kv(x, 1).untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    many = torch.randn(2, 2, 5, 4)
    assert repeat_kv(many, 3).untyped_storage().data_ptr() != many.untyped_storage().data_ptr()
    assert torch.equal(repeat_kv(x, 3), x.repeat_interleave(3, dim=1))
