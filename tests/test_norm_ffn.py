"""LayerNorm/RMSNorm against nn.LayerNorm/nn.RMSNorm; the FFNs against the GELU formula and Hugging Face's
GPT-2 and Llama MLPs."""
import math

import pytest
import torch
import torch.nn as nn
from transformers import GPT2Config, LlamaConfig
from transformers.activations import ACT2FN
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP

from transformer_course.feedforward import MLP, SwiGLU, make_ffn, swiglu_hidden_dim
from transformer_course.model import GPTConfig
from transformer_course.norm import LayerNorm, RMSNorm, make_norm


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module


def outputs_and_grads(module, x, r):
    x = x.clone().requires_grad_()
    out = module(x)
    (out * r).sum().backward()
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_matches_nn_layernorm(bias, eps):
    ours, ref = randomize(LayerNorm(16, eps=eps, bias=bias)), nn.LayerNorm(16, eps=eps, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x, r = torch.randn(3, 5, 16) * 3 + 1, torch.randn(3, 5, 16)
    (o1, gx1, gp1), (o2, gx2, gp2) = outputs_and_grads(ours, x, r), outputs_and_grads(ref, x, r)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=0)
    assert gp1.keys() == gp2.keys()
    for name in gp1:
        torch.testing.assert_close(gp1[name], gp2[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rmsnorm_matches_nn_rmsnorm(eps):
    ours, ref = randomize(RMSNorm(16, eps=eps)), nn.RMSNorm(16, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x, r = torch.randn(3, 5, 16) * 3 + 1, torch.randn(3, 5, 16)
    (o1, gx1, gp1), (o2, gx2, gp2) = outputs_and_grads(ours, x, r), outputs_and_grads(ref, x, r)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-5, rtol=0)
    torch.testing.assert_close(gp1["weight"], gp2["weight"], atol=1e-5, rtol=0)


def test_norm_statistics_and_the_difference_between_them():
    x = torch.randn(4, 32) * 5 + 3
    ln = LayerNorm(32)(x)
    torch.testing.assert_close(ln.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(ln.var(-1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    rms = RMSNorm(32)(x)
    torch.testing.assert_close(rms.pow(2).mean(-1), torch.ones(4), atol=1e-3, rtol=0)
    assert rms.mean(-1).abs().min() > 0.1  # RMSNorm does not centre
    # on zero-mean inputs the two coincide
    centred = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(LayerNorm(32, eps=0.0 + 1e-12)(centred), RMSNorm(32, eps=1e-12)(centred),
                               atol=1e-5, rtol=0)


def test_make_norm_follows_the_config():
    gpt2 = make_norm(GPTConfig.gpt2_like(d_model=32, n_heads=4, norm_eps=1e-3))
    assert isinstance(gpt2, LayerNorm) and gpt2.bias is not None and gpt2.eps == 1e-3
    assert make_norm(GPTConfig(d_model=32, n_heads=4, bias=False)).bias is None
    assert isinstance(make_norm(GPTConfig.llama_like(d_model=32, n_heads=4)), RMSNorm)


# ----------------------------------------------------------------------------- feed-forward


def test_mlp_uses_the_tanh_gelu_of_gpt2():
    x = torch.linspace(-5, 5, 101)
    formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # Hendrycks & Gimpel
    mlp = MLP(1, 1)
    with torch.no_grad():
        for lin in (mlp.fc, mlp.proj):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    torch.testing.assert_close(mlp(x[:, None])[:, 0], formula, atol=1e-6, rtol=0)
    torch.testing.assert_close(ACT2FN["gelu_new"](x), formula, atol=1e-6, rtol=0)


def test_mlp_matches_hugging_face_gpt2_mlp():
    config = GPT2Config(n_embd=16, resid_pdrop=0.0)
    hf = randomize(GPT2MLP(64, config))
    ours = MLP(16, 64)
    with torch.no_grad():  # Conv1D stores (in, out): transpose into nn.Linear's (out, in)
        ours.fc.weight.copy_(hf.c_fc.weight.t())
        ours.fc.bias.copy_(hf.c_fc.bias)
        ours.proj.weight.copy_(hf.c_proj.weight.t())
        ours.proj.bias.copy_(hf.c_proj.bias)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-5)


def test_swiglu_matches_hugging_face_llama_mlp():
    config = LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, vocab_size=10)
    hf = randomize(LlamaMLP(config))
    ours = SwiGLU(16, 40)
    with torch.no_grad():
        ours.gate.weight.copy_(hf.gate_proj.weight)
        ours.up.weight.copy_(hf.up_proj.weight)
        ours.down.weight.copy_(hf.down_proj.weight)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), hf(x), atol=1e-4, rtol=1e-5)


def test_swiglu_hidden_dim_reproduces_llama_7b():
    assert swiglu_hidden_dim(4096, multiple_of=256) == 11008  # LLaMA-7B's intermediate_size
    assert swiglu_hidden_dim(128) == 352


def test_make_ffn_follows_the_config():
    gelu = make_ffn(GPTConfig(d_model=32, n_heads=4))
    assert isinstance(gelu, MLP) and gelu.fc.out_features == 128 and gelu.fc.bias is not None
    swiglu = make_ffn(GPTConfig.llama_like(d_model=32, n_heads=4))
    assert isinstance(swiglu, SwiGLU) and swiglu.up.out_features == swiglu_hidden_dim(32) and swiglu.up.bias is None
    assert make_ffn(GPTConfig(d_model=32, n_heads=4, d_ff=50)).fc.out_features == 50


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_norm_equals_the_written_out_one(norm, bias):
    """`norm_impl="fused"` (F.layer_norm / F.rms_norm) computes what the readable path computes, gradients too."""
    manual = randomize(make_norm(GPTConfig(d_model=16, n_heads=2, norm=norm, bias=bias)))
    fused = make_norm(GPTConfig(d_model=16, n_heads=2, norm=norm, bias=bias, norm_impl="fused"))
    fused.load_state_dict(manual.state_dict())
    x, r = torch.randn(3, 5, 16) * 3 + 1, torch.randn(3, 5, 16)
    (o1, gx1, gp1), (o2, gx2, gp2) = outputs_and_grads(manual, x, r), outputs_and_grads(fused, x, r)
    torch.testing.assert_close(o1, o2, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-4, rtol=1e-4)
    for name in gp1:
        torch.testing.assert_close(gp1[name], gp2[name], atol=1e-4, rtol=1e-4)
    assert "impl=fused" in repr(fused)
