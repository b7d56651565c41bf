"""The course `Block` against Hugging Face's `GPT2Block` and `LlamaDecoderLayer` (built offline from configs,
weights copied in and perturbed away from HF's 0.02 init), and its own variants (d_ff=0, post-norm)."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from transformer_course.block import Block
from transformer_course.hf import from_hf
from transformer_course.model import GPTConfig

T = 7


def perturb(model, seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def causal_4d(T):
    """The additive mask HF's eager attention expects: (1, 1, T, T), 0 where allowed, the dtype's min above."""
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.zeros(1, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)


def gpt2_pair(seed=0):
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16, resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager"))
    hf = perturb(hf, seed).eval()
    return hf.transformer.h[0], from_hf(hf).eval()


def llama_pair(seed=0, n_kv=2):
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=16,
                                      rms_norm_eps=1e-5, attn_implementation="eager", bos_token_id=None,
                                      eos_token_id=None, pad_token_id=None))
    hf = perturb(hf, seed).eval()
    return hf, from_hf(hf).eval()


def x_input(seed=1, d=32):
    return torch.randn(2, T, d, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def assert_grads_close(a, b):
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-4)


def test_block_equals_gpt2_block_values_and_gradients():
    hf_block, ours = gpt2_pair()
    block = ours.blocks[0]
    x1, x2 = x_input(), x_input()
    ref = hf_block(x1, attention_mask=causal_4d(T))
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = block(x2)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (ref * r).sum().backward()
    (out * r).sum().backward()
    assert_grads_close(x2.grad, x1.grad)
    # HF Conv1D stores W as (in, out); ours is nn.Linear (out, in)
    assert_grads_close(block.attn.qkv.weight.grad, hf_block.attn.c_attn.weight.grad.T)
    assert_grads_close(block.ffn.fc.weight.grad, hf_block.mlp.c_fc.weight.grad.T)
    assert_grads_close(block.norm1.weight.grad, hf_block.ln_1.weight.grad)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_block_equals_llama_decoder_layer(n_kv):
    hf, ours = llama_pair(n_kv=n_kv)
    layer, block = hf.model.layers[0], ours.blocks[0]
    x1, x2 = x_input(), x_input()
    pos = torch.arange(T)[None]
    cos_sin = hf.model.rotary_emb(x1, pos)  # LlamaRotaryEmbedding: the layer needs it passed in
    ref = layer(x1, attention_mask=causal_4d(T), position_ids=pos, position_embeddings=cos_sin)
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = block(x2, rope=(ours.rope_cos[pos], ours.rope_sin[pos]))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (ref * r).sum().backward()
    (out * r).sum().backward()
    assert_grads_close(x2.grad, x1.grad)
    assert_grads_close(block.ffn.gate.weight.grad, layer.mlp.gate_proj.weight.grad)
    assert_grads_close(block.norm2.weight.grad, layer.post_attention_layernorm.weight.grad)


def test_hf_block_without_mask_sees_the_future():
    """Why the tests pass a mask: a standalone eager GPT2Block with no mask attends to later tokens."""
    hf_block, ours = gpt2_pair()
    x = x_input().detach()
    later = x.clone()
    later[:, -1] = torch.randn(2, 32, generator=torch.Generator().manual_seed(9))  # only the last token
    with torch.no_grad():
        def first(block_out):
            return (block_out[0] if isinstance(block_out, tuple) else block_out)[:, 0]
        assert not torch.allclose(first(hf_block(x)), first(hf_block(later)))           # no mask: leaks
        assert torch.equal(first(hf_block(x, attention_mask=causal_4d(T))),
                           first(hf_block(later, attention_mask=causal_4d(T))))
        assert torch.equal(ours.blocks[0](x)[:, 0], ours.blocks[0](later)[:, 0])      # ours: causal always


def test_pre_and_post_norm_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    for position in ("pre", "post"):
        block = perturb(Block(GPTConfig.gpt2_like(d_model=16, n_heads=2, norm_position=position)), 2, 0.3).eval()
        with torch.no_grad():
            attn = block.attn(block.norm1(x) if position == "pre" else x, causal=True)
            if position == "pre":
                h = x + attn
                expected = h + block.ffn(block.norm2(h))
            else:
                h = block.norm1(x + attn)
                expected = block.norm2(h + block.ffn(h))
            torch.testing.assert_close(block(x), expected, atol=1e-6, rtol=0)


def test_d_ff_zero_is_attention_only():
    block = Block(GPTConfig.gpt2_like(d_model=16, n_heads=2, d_ff=0))
    assert block.ffn is None and block.norm2 is None
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + block.attn(block.norm1(x), causal=True), atol=1e-6, rtol=0)
    n = sum(p.numel() for p in block.parameters())
    assert n == 2 * 16 + 4 * 16 * 16 + 4 * 16  # one LayerNorm (gain, bias); W_QKV, W_O with biases


def test_block_refuses_bad_window_and_config():
    with pytest.raises(ValueError, match="window"):
        Block(GPTConfig(), window=0)
    with pytest.raises(ValueError, match="config"):
        Block("not a config")
