"""Chapter 10's FFN claims: SwiGLU == Hugging Face's LlamaMLP (values and gradients, perturbed weights), the
GELU == GPT-2's tanh GELU from Hugging Face, the exact/tanh GELU gap, Llama's width rounding against the
published Llama configurations, and the refusals of the FFN modules."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP

from transformer_course.feedforward import MLP, SwiGLU, make_ffn, swiglu_hidden_dim
from transformer_course.model import GPT, GPTConfig


def perturb(module, seed=0, scale=0.5):
    """Weights far from Hugging Face's 0.02 init, which would hide errors below the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def value_and_grads(module, x, r):
    x = x.clone().requires_grad_()
    out = module(x)
    (out * r).sum().backward()
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_equals_hugging_face_llama_mlp_values_and_gradients(bias):
    config = LlamaConfig(hidden_size=24, intermediate_size=56, num_attention_heads=2, mlp_bias=bias,
                         hidden_act="silu")
    hf = perturb(LlamaMLP(config))
    ours = SwiGLU(24, 56, bias=bias)
    names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    with torch.no_grad():
        for mine, theirs in names.items():
            getattr(ours, mine).weight.copy_(getattr(hf, theirs).weight)
            if bias:
                getattr(ours, mine).bias.copy_(getattr(hf, theirs).bias)
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(2, 7, 24, generator=g) * 2, torch.randn(2, 7, 24, generator=g)
    (o1, gx1, gp1), (o2, gx2, gp2) = value_and_grads(ours, x, r), value_and_grads(hf, x, r)
    scale = o2.abs().max().item()
    torch.testing.assert_close(o1, o2, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-5 * gx2.abs().max().item(), rtol=0)
    for mine, theirs in names.items():
        for kind in ("weight", "bias") if bias else ("weight",):
            ref = gp2[f"{theirs}.{kind}"]
            torch.testing.assert_close(gp1[f"{mine}.{kind}"], ref, atol=1e-5 * ref.abs().max().item(), rtol=0)


def test_a_swapped_gate_and_up_is_caught():
    """The comparison above can fail: silu on the wrong branch gives a different function."""
    hf = perturb(LlamaMLP(LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2)))
    ours = SwiGLU(8, 16)
    with torch.no_grad():
        ours.gate.weight.copy_(hf.up_proj.weight)
        ours.up.weight.copy_(hf.gate_proj.weight)
        ours.down.weight.copy_(hf.down_proj.weight)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    assert (ours(x) - hf(x)).abs().max() > 1e-2


def test_mlp_equals_hugging_face_gpt2_mlp_values_and_gradients():
    hf = perturb(GPT2MLP(64, GPT2Config(n_embd=16, resid_pdrop=0.0, activation_function="gelu_new")))
    ours = MLP(16, 64)
    with torch.no_grad():  # Conv1D keeps (in, out); nn.Linear keeps (out, in)
        ours.fc.weight.copy_(hf.c_fc.weight.t())
        ours.fc.bias.copy_(hf.c_fc.bias)
        ours.proj.weight.copy_(hf.c_proj.weight.t())
        ours.proj.bias.copy_(hf.c_proj.bias)
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    (o1, gx1, _), (o2, gx2, _) = value_and_grads(ours, x, r), value_and_grads(hf, x, r)
    torch.testing.assert_close(o1, o2, atol=1e-5 * o2.abs().max().item(), rtol=0)
    torch.testing.assert_close(gx1, gx2, atol=1e-5 * gx2.abs().max().item(), rtol=0)


def test_exact_and_tanh_gelu_differ_by_at_most_5e_4():
    x = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # Hendrycks & Gimpel's definition, x * Phi(x)
    tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    gap = (exact - tanh).abs()
    assert 4.5e-4 < gap.max().item() < 5e-4
    assert 2.5 < abs(x[gap.argmax()].item()) < 2.9  # the largest gap sits near |x| = 2.7
    torch.testing.assert_close(F.gelu(x), exact, atol=1e-12, rtol=0)


@pytest.mark.parametrize("d_model, published", [
    (4096, 11008),  # Llama 2 7B (and LLaMA 7B): intermediate_size 11008
    (5120, 13824),  # Llama 2 13B
    (6656, 17920),  # LLaMA 33B
    (8192, 22016),  # LLaMA 65B
])
def test_llama_rounding_to_256_gives_the_published_widths(d_model, published):
    assert swiglu_hidden_dim(d_model, multiple_of=256) == published


def test_swiglu_hidden_dim_rounds_up_and_keeps_its_course_default():
    assert swiglu_hidden_dim(128) == 352  # the shipped tiny-llama checkpoint depends on this default
    assert swiglu_hidden_dim(64, multiple_of=1) == 170
    for d in (32, 96, 100, 4096):
        h = swiglu_hidden_dim(d, multiple_of=64)
        assert h % 64 == 0 and 0 <= h - int(8 * d / 3) < 64


def test_swiglu_at_the_2_3_width_has_about_the_parameters_of_a_4d_mlp():
    d = 768
    mlp, swiglu = MLP(d, 4 * d, bias=False), SwiGLU(d, swiglu_hidden_dim(d, multiple_of=1))
    n_mlp, n_swiglu = (sum(p.numel() for p in m.parameters()) for m in (mlp, swiglu))
    assert n_mlp == 8 * d * d and abs(n_swiglu - n_mlp) / n_mlp < 1e-3


def test_d_ff_zero_removes_the_ffn_and_its_parameters():
    base = dict(vocab_size=50, context_length=16, n_layers=2, n_heads=2, d_model=16)
    with_ffn, without = GPT(GPTConfig.gpt2_like(**base)), GPT(GPTConfig.gpt2_like(**base, d_ff=0))
    per_layer = 2 * 16 * 64 + 64 + 16 + 2 * 16  # fc, proj (weights and biases) and norm2
    assert with_ffn.num_parameters() - without.num_parameters() == 2 * per_layer
    assert all(block.ffn is None for block in without.blocks)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True, None])
def test_the_ffns_refuse_bad_widths_by_name(bad):
    for ffn in (MLP, SwiGLU):
        with pytest.raises(ValueError, match="d_ff"):
            ffn(16, bad)
    with pytest.raises(ValueError, match="d_model"):
        swiglu_hidden_dim(bad)
    with pytest.raises(ValueError, match="multiple_of"):
        swiglu_hidden_dim(64, multiple_of=bad)


def test_the_ffns_refuse_an_input_of_the_wrong_width():
    with pytest.raises(ValueError, match="x"):
        MLP(16, 32)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="x"):
        SwiGLU(16, 32)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError):
        make_ffn("not a config")
