"""The course GPT on its own: every positional/attention variant gives the same logits left-padded as alone and
with a KV cache as without; the loss; input checks; GPT-2's initialisation and parameter count by hand;
GPTConfig's validation and serialisation. (Comparisons with Hugging Face: test_hf_reference.py.)"""
import copy
import dataclasses
import json
import math

import pytest
import torch

from transformer_course.generation import generate, left_pad
from transformer_course.model import GPT, GPTConfig, KVCache

V, CTX = 100, 32


def perturb(model, seed=0, std=0.02):
    """Move every parameter (norm gains and biases included) away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tokens(B=3, T=12, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


PROMPTS = [[5, 17, 3, 99, 42, 8, 1, 60, 23, 7], [11, 12, 13, 14, 15, 16], [70, 2, 9]]


VARIANTS = {
    "gpt2": GPTConfig.gpt2_like(),
    "llama-gqa": GPTConfig.llama_like(n_kv_heads=2),
    "alibi-mqa": GPTConfig(positional="alibi", n_kv_heads=1),
    "sinusoidal": GPTConfig(positional="sinusoidal"),
    "none": GPTConfig(positional="none"),
    "window-pattern": GPTConfig.llama_like(n_layers=2, attention_window=3, layer_pattern=("local", "global")),
    "sdpa": GPTConfig.llama_like(n_kv_heads=2, attn_impl="sdpa", attention_window=5),
    "post-norm-fused": GPTConfig.gpt2_like(norm_position="post", norm_impl="fused", scale_embeddings=True),
}
SMALL = dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2)


def small_model(name, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig.from_dict(VARIANTS[name].to_dict() | SMALL)
    return perturb(GPT(cfg), seed).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_left_padded_equals_one_by_one(name):
    model = small_model(name)
    idx, mask = left_pad(PROMPTS)
    batched, _ = model(idx, padding_mask=mask)
    for row, prompt in enumerate(PROMPTS):
        alone, _ = model(torch.tensor([prompt]))
        torch.testing.assert_close(batched[row, -len(prompt):], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_kv_cache_equals_full_pass(name):
    model = small_model(name)
    idx, mask = left_pad(PROMPTS)
    full, _ = model(idx, padding_mask=mask)
    cache = model.new_cache(batch_size=3)
    pieces, start = [], 0
    for size in (4, 1, 1, 3, 1):
        end = start + size
        logits, _ = model(idx[:, start:end], padding_mask=mask[:, :end], cache=cache)
        pieces.append(logits)
        start = end
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_loss_is_the_mean_cross_entropy_over_targets_not_minus_100():
    model = small_model("gpt2")
    idx = tokens(T=16)
    targets = idx.roll(-1, 1)
    targets[:, :5] = -100
    logits, loss = model(idx, targets=targets)
    kept = targets != -100
    manual = -torch.log_softmax(logits, -1)[kept].gather(-1, targets[kept][:, None]).mean()
    torch.testing.assert_close(loss, manual, atol=1e-6, rtol=0)
    assert model(idx)[1] is None


def test_post_norm_block_normalises_each_sum_and_the_model_has_no_final_norm():
    """Post-norm (Vaswani et al. 2017 §3.1, GPT-1): x = norm1(x + attn(x)); x = norm2(x + ffn(x)); no final norm."""
    model = small_model("post-norm-fused")
    block, x = model.blocks[0], torch.randn(2, 5, 32)
    with torch.no_grad():
        h = block.norm1(x + block.attn(x, causal=True))
        by_hand = block.norm2(h + block.ffn(h))
        torch.testing.assert_close(block(x), by_hand, atol=0, rtol=0)  # the same operations in the same order
    assert isinstance(model.norm_f, torch.nn.Identity) and "norm_f.weight" not in model.state_dict()
    pre = small_model("gpt2")
    with torch.no_grad():
        h = x + pre.blocks[0].attn(pre.blocks[0].norm1(x), causal=True)
        torch.testing.assert_close(pre.blocks[0](x), h + pre.blocks[0].ffn(pre.blocks[0].norm2(h)), atol=0, rtol=0)


def test_scale_embeddings_multiplies_the_token_vectors_by_sqrt_d_model():
    """Vaswani et al. 2017 §3.4: "we multiply those weights by sqrt(d_model)"; positions are added unscaled."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**SMALL, positional="sinusoidal")).eval()
    scaled = GPT(GPTConfig(**SMALL, positional="sinusoidal", scale_embeddings=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    idx, seen = tokens(B=1, T=4), {}
    for name, model in (("plain", plain), ("scaled", scaled)):
        model.blocks[0].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
        model(idx)
    table = plain.pos_table[:4]
    torch.testing.assert_close(seen["scaled"] - table, math.sqrt(32) * (seen["plain"] - table), atol=1e-5, rtol=1e-5)


def test_forward_validates_its_inputs():
    model = small_model("gpt2")
    with pytest.raises(ValueError, match="context length"):
        model(tokens(1, CTX + 1))
    with pytest.raises(ValueError, match="LongTensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 3), V))
    with pytest.raises(ValueError, match="padding_mask"):
        model(tokens(2, 5), padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets"):
        model(tokens(2, 5), targets=tokens(2, 4))
    cache = model.new_cache(batch_size=2, max_len=6)
    model(tokens(2, 5), cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        model(tokens(1, 1), cache=cache)
    with pytest.raises(ValueError, match="padding_mask"):
        model(tokens(2, 1), cache=cache, padding_mask=torch.ones(2, 1, dtype=torch.bool))


# ----------------------------------------------------------------------------- init, size, config


def test_parameter_count_of_gpt2_by_hand():
    d, L, c = 64, 3, GPTConfig.gpt2_like(vocab_size=V, context_length=CTX, d_model=64, n_layers=3)
    per_block = 12 * d * d + 13 * d  # qkv 3d²+3d, out d²+d, fc 4d²+4d, proj 4d²+d, two LayerNorms 4d
    assert GPT(c).num_parameters() == V * d + CTX * d + L * per_block + 2 * d
    untied = GPT(GPTConfig.gpt2_like(vocab_size=V, context_length=CTX, d_model=64, n_layers=3, tie_weights=False))
    assert untied.num_parameters() == GPT(c).num_parameters() + V * d


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=4, d_model=128))
    assert model.lm_head.weight is model.tok_emb.weight
    block = model.blocks[0]
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.001
    assert abs(block.attn.out_proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.0004
    assert abs(block.ffn.proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.0004
    assert torch.equal(block.attn.qkv.bias, torch.zeros_like(block.attn.qkv.bias))
    assert torch.equal(block.norm1.weight, torch.ones(128))
    assert not GPT(GPTConfig.llama_like()).lm_head.tied


def test_config_round_trips_through_json_and_tolerates_missing_fields():
    c = GPTConfig.llama_like(n_kv_heads=2, attention_window=8, layer_pattern=("local", "global", "local", "global"))
    again = GPTConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.layer_pattern == ("local", "global", "local", "global")
    old = c.to_dict()
    del old["attn_impl"], old["layer_pattern"]  # a checkpoint from before these fields existed
    assert GPTConfig.from_dict(old).attn_impl == "manual"
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_embd"):
        GPTConfig.from_dict({"n_embd": 64})


def test_config_defaults_and_derived_values():
    c = GPTConfig()
    assert (c.vocab_size, c.context_length, c.n_layers, c.n_heads, c.d_model) == (1024, 128, 4, 4, 128)
    assert (c.d_k, c.h_kv, c.ffn_dim) == (32, 4, 512)
    assert GPTConfig(ffn="swiglu").ffn_dim == 352
    assert [GPTConfig(attention_window=4).layer_window(i) for i in range(4)] == [4] * 4
    pattern = GPTConfig(attention_window=4, layer_pattern=["global", "local"] * 2)
    assert [pattern.layer_window(i) for i in range(4)] == [None, 4, None, 4]
    assert GPTConfig.gpt2_like(d_model=64).d_model == 64


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(d_model=100, n_heads=3), "divisible by n_heads"),
        (dict(n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(n_kv_heads=0), "n_kv_heads"),
        (dict(positional="rotary"), "positional"),
        (dict(norm="batchnorm"), "norm"),
        (dict(ffn="relu"), "ffn"),
        (dict(attn_impl="tiled"), "attn_impl"),
        (dict(positional="rope", d_model=12, n_heads=4), "even head dimension"),
        (dict(dropout=1.0), "dropout"),
        (dict(n_layers=0), "n_layers"),
        (dict(vocab_size=10.5), "vocab_size"),
        (dict(layer_pattern=("local",)), "layer_pattern"),
        (dict(layer_pattern=("global", "global", "global", "sparse")), "layer_pattern"),
        (dict(layer_pattern=("local",) * 4), "attention_window"),
        (dict(attention_window=0), "attention_window"),
        (dict(norm_eps=0.0), "norm_eps"),
    ],
)
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kw)


def test_kv_cache_memory_is_counted():
    c = GPTConfig(n_layers=2, n_heads=4, n_kv_heads=1, d_model=32, context_length=16)
    cache = KVCache(c, batch_size=3)
    assert cache.nbytes == 2 * 2 * 3 * 1 * 16 * 8 * 4  # k and v, L, B, h_kv, max_len, d_k, float32
    with pytest.raises(ValueError, match="max_len"):
        KVCache(c, batch_size=1, max_len=17)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: CPU vs CUDA parity not checked")
@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "sdpa"])
def test_cpu_and_cuda_agree(name):
    model = small_model(name)
    on_gpu = copy.deepcopy(model).cuda()
    idx, mask = left_pad(PROMPTS)
    cpu = model(idx, padding_mask=mask)[0]
    gpu = on_gpu(idx.cuda(), padding_mask=mask.cuda())[0].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)
    assert torch.equal(generate(on_gpu, idx.cuda(), 10, greedy=True, padding_mask=mask.cuda()).cpu(),
                       generate(model, idx, 10, greedy=True, padding_mask=mask))


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_d_ff_zero_gives_attention_only_blocks(norm_position):
    """d_ff=0: no FFN and no second norm; each block is only its attention sub-layer (Chapter 10)."""
    from transformer_course.hf import to_hf_state_dict

    config = GPTConfig(vocab_size=50, context_length=16, n_layers=2, n_heads=2, d_model=16, d_ff=0,
                       norm_position=norm_position)
    model = GPT(config)
    assert not any(".ffn." in name or ".norm2." in name for name, _ in model.named_parameters())
    with_ffn = GPT(dataclasses.replace(config, d_ff=64))
    assert with_ffn.num_parameters() - model.num_parameters() == 2 * (16 * 64 + 64 + 64 * 16 + 16 + 2 * 16)
    block, x = model.blocks[0], torch.randn(2, 5, 16)
    expected = (block.norm1(x + block.attn(x, causal=True)) if norm_position == "post"
                else x + block.attn(block.norm1(x), causal=True))
    torch.testing.assert_close(block(x), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="d_ff"):
        GPTConfig(d_ff=-1)
    with pytest.raises(ValueError, match="no FFN"):
        to_hf_state_dict(model)
