"""Chapter 9's claims about the norms, as tests: what each normalises over (one token's features, never other
positions: batch norm over (B, T) leaks later tokens into earlier ones), its invariances and its value on a
constant vector; the pre- and post-norm block wiring; post-norm == Hugging Face's GPT-1; the number of norm
parameters; and that the chapter's recipes differ from their baselines in the one field they name.
(nn.LayerNorm / nn.RMSNorm equivalence and fused == manual are in test_norm_ffn.py.)"""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

from transformer_course.block import Block
from transformer_course.hf import from_hf
from transformer_course.model import GPT, GPTConfig
from transformer_course.norm import LayerNorm, RMSNorm
from transformer_course.train import CONFIGS


def randomize(module, seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def batch_norm_BT(x, eps=1e-5):
    """Training-mode batch norm of `(B, T, d)`: per-feature statistics over all B*T positions."""
    mean, var = x.mean(dim=(0, 1), keepdim=True), x.var(dim=(0, 1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
@pytest.mark.parametrize("impl", ["manual", "fused"])
def test_a_token_is_normalised_from_its_own_features_only(cls, impl):
    norm = randomize(cls(8, impl=impl))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, 8, generator=g)
    changed = x.clone()
    changed[0, 5:] = torch.randn(5, 8, generator=g) * 4 + 2  # later tokens of sequence 0
    changed[1:] = torch.randn(2, 10, 8, generator=g)          # and every other sequence
    with torch.no_grad():
        assert torch.equal(norm(changed)[0, :5], norm(x)[0, :5])


def test_batch_norm_over_batch_and_time_leaks_later_tokens_in_training_only():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, 8, generator=g)
    changed = x.clone()
    changed[0, 6:] = torch.randn(6, 8, generator=g) * 2 + 1
    bn = nn.BatchNorm1d(8, affine=False)  # (B, d, T): statistics over B and T
    torch.testing.assert_close(bn(x.transpose(1, 2)).transpose(1, 2), batch_norm_BT(x), atol=1e-5, rtol=0)
    assert (batch_norm_BT(changed) - batch_norm_BT(x))[0, :6].abs().max() > 0.05  # positions 0..5 move
    bn.eval()  # running statistics: no dependence on the rest of the batch
    assert torch.equal(bn(changed.transpose(1, 2))[0, :, :6], bn(x.transpose(1, 2))[0, :, :6])


def test_invariances():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 16, generator=g) * 2 + 1
    ln, rms = randomize(LayerNorm(16, eps=1e-9)), randomize(RMSNorm(16, eps=1e-9))
    with torch.no_grad():
        torch.testing.assert_close(ln(7.0 * x - 3.0), ln(x), atol=1e-4, rtol=0)  # scale and shift
        torch.testing.assert_close(rms(7.0 * x), rms(x), atol=1e-4, rtol=0)      # scale only
        assert (rms(x + 3.0) - rms(x)).abs().max() > 0.1                         # not shift


@pytest.mark.parametrize("c", [5.0, 1e-3, -0.02])
def test_constant_vectors(c):
    """LayerNorm of a constant vector is its bias; RMSNorm gives c / sqrt(c^2 + eps) times the gain."""
    ln, rms = randomize(LayerNorm(8, eps=1e-5)), randomize(RMSNorm(8, eps=1e-5))
    x = torch.full((2, 8), c)
    with torch.no_grad():
        torch.testing.assert_close(ln(x), ln.bias.expand(2, 8), atol=1e-5, rtol=0)  # mean: rounding
        expected = c / math.sqrt(c * c + 1e-5) * rms.weight
        torch.testing.assert_close(rms(x), expected.expand(2, 8), atol=1e-5, rtol=1e-4)


def test_nn_rmsnorm_default_eps_is_machine_epsilon_not_1e5():
    """The chapter passes eps=1e-5 to nn.RMSNorm explicitly: its default (None) is float32's epsilon."""
    x = torch.full((1, 8), 1e-3)
    machine = 1e-3 / math.sqrt(1e-6 + torch.finfo(torch.float32).eps)            # 0.945
    torch.testing.assert_close(nn.RMSNorm(8)(x), torch.full((1, 8), machine), atol=1e-4, rtol=0)
    torch.testing.assert_close(nn.RMSNorm(8, eps=1e-5)(x), RMSNorm(8)(x), atol=1e-6, rtol=0)
    assert RMSNorm(8)(x).max() < 0.31                                            # 1e-3 / sqrt(1.1e-5)


def config(position, norm="layernorm", bias=True, n_layers=2):
    return GPTConfig.gpt2_like(vocab_size=50, context_length=16, n_layers=n_layers, n_heads=2, d_model=16,
                               norm_position=position, norm=norm, bias=bias)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_block_wiring(position):
    block = randomize(Block(config(position)), std=0.3).eval()
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(4))
    attn = lambda h: block.attn(h, causal=True)  # noqa: E731
    with torch.no_grad():
        if position == "pre":
            h = x + attn(block.norm1(x))
            expected = h + block.ffn(block.norm2(h))
        else:
            h = block.norm1(x + attn(x))
            expected = block.norm2(h + block.ffn(h))
        assert torch.equal(block(x), expected)


def test_post_norm_model_has_no_final_norm_and_equals_hugging_face_gpt1():
    hf_config = OpenAIGPTConfig(vocab_size=60, n_positions=16, n_embd=32, n_layer=3, n_head=4, afn="gelu",
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = randomize(OpenAIGPTLMHeadModel(hf_config), seed=5, std=0.05).eval()  # off the 0.02 init
    ours = from_hf(hf)
    assert ours.config.norm_position == "post" and isinstance(ours.norm_f, nn.Identity)
    idx = torch.randint(0, 60, (2, 11), generator=torch.Generator().manual_seed(6))
    ref = hf(idx).logits
    logits, _ = ours(idx)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    r = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7))
    (ref * r).sum().backward()
    (logits * r).sum().backward()
    pairs = [(ours.tok_emb.weight, hf.transformer.tokens_embed.weight),
             (ours.pos_emb.weight, hf.transformer.positions_embed.weight)]
    for i in range(3):
        pairs += [(ours.blocks[i].norm1.weight, hf.transformer.h[i].ln_1.weight),
                  (ours.blocks[i].norm2.bias, hf.transformer.h[i].ln_2.bias)]
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5 * b.grad.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("norm,bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", True)])
def test_number_of_norm_parameters(position, norm, bias):
    """Two norms per block and one final norm in pre-norm; 2d per LayerNorm with a bias, d otherwise."""
    L, d = 3, 16
    model = GPT(config(position, norm, bias, n_layers=L))
    counted = sum(p.numel() for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))
                  for p in m.parameters())
    per_norm = 2 * d if (norm == "layernorm" and bias) else d
    assert counted == (2 * L + (position == "pre")) * per_norm


def differences(a, b):
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return {k for k in da if da[k] != db[k]}


def test_chapter_9_recipes_change_one_thing():
    tied, rms = CONFIGS["small-tied"], CONFIGS["small-rmsnorm"]
    assert differences(tied[0], rms[0]) == {"norm"} and differences(tied[1], rms[1]) == set()
    pre, post = CONFIGS["deep-pre-nowarmup"], CONFIGS["deep-post-nowarmup"]
    assert differences(pre[0], post[0]) == {"norm_position"} and differences(pre[1], post[1]) == set()
    for name in ("deep-pre", "deep-post", "deep-post-*-lr3e-3", "deep-pre-*-lr3e-3"):
        a, b = (CONFIGS[name.replace("*", w) if "*" in name else f"{name}-{w}"] for w in ("nowarmup", "warmup"))
        assert differences(a[0], b[0]) == set() and differences(a[1], b[1]) == {"warmup_steps"}
    low = CONFIGS["deep-post-nowarmup-lr3e-3"]
    assert differences(post[0], low[0]) == set() and differences(post[1], low[1]) == {"lr", "min_lr"}
    low_pre = CONFIGS["deep-pre-nowarmup-lr3e-3"]
    assert differences(pre[0], low_pre[0]) == set() and differences(pre[1], low_pre[1]) == {"lr", "min_lr"}
    assert differences(low[0], low_pre[0]) == {"norm_position"} and differences(low[1], low_pre[1]) == set()
    assert all(CONFIGS[n][1].grad_clip == 0 for n in CONFIGS if n.startswith("deep-"))
