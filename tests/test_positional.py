"""Positional encodings against the papers' formulas and Hugging Face's implementations (Llama RoPE,
BLOOM ALiBi), plus the properties the chapter claims."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.distilbert.modeling_distilbert import create_sinusoidal_embeddings
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from transformer_course.positional import (
    LearnedPositionalEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    interleaved_to_rotate_half,
    rope_cos_sin,
    rotate_half,
    rotate_half_to_interleaved,
    sinusoidal_encoding,
)


def test_sinusoidal_hand_values():
    pe = sinusoidal_encoding(50, 4)
    assert pe.shape == (50, 4)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))  # sin 0, cos 0, sin 0, cos 0
    pos = 7.0  # d=4: frequencies 1 and 1/10000^(2/4) = 1/100
    expected = torch.tensor([math.sin(pos), math.cos(pos), math.sin(pos / 100), math.cos(pos / 100)])
    torch.testing.assert_close(pe[7], expected, atol=1e-6, rtol=0)


def test_sinusoidal_matches_the_formula_elementwise():
    T, d = 20, 16
    pe = sinusoidal_encoding(T, d)
    for pos in range(T):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert abs(pe[pos, 2 * i] - math.sin(angle)) < 1e-5
            assert abs(pe[pos, 2 * i + 1] - math.cos(angle)) < 1e-5


@pytest.mark.parametrize("T, d", [(1, 2), (64, 16), (128, 128)])
def test_sinusoidal_matches_distilbert(T, d):
    """DistilBERT's sinusoidal option builds the same interleaved table (NumPy, float64)."""
    reference = create_sinusoidal_embeddings(T, d, torch.empty(T, d))
    # float32 angles near 127 radians are rounded to ~8e-6, so the sines agree to about that
    torch.testing.assert_close(sinusoidal_encoding(T, d), reference, atol=2e-5, rtol=0)


@given(p=st.integers(0, 40), offset=st.integers(0, 40))
@settings(max_examples=30, deadline=None, derandomize=True, database=None)
def test_sinusoidal_dot_product_depends_only_on_offset(p, offset):
    pe = sinusoidal_encoding(100, 32).double()
    torch.testing.assert_close(pe[p] @ pe[p + offset], pe[0] @ pe[offset], atol=1e-4, rtol=0)


@pytest.mark.parametrize("T, d", [(4, 3), (4, 0), (-1, 4)])
def test_sinusoidal_rejects_bad_sizes(T, d):
    with pytest.raises(ValueError, match="even d"):
        sinusoidal_encoding(T, d)


def test_learned_positional_embedding_rejects_positions_past_the_table():
    emb = LearnedPositionalEmbedding(8, 4)
    assert emb(torch.arange(8)).shape == (8, 4)
    assert emb(torch.arange(8)[None].expand(3, 8)).shape == (3, 8, 4)
    with pytest.raises(ValueError, match="context length"):
        emb(torch.arange(9))


# ----------------------------------------------------------------------------- RoPE


def hf_rope(positions: torch.Tensor, d_k: int, theta: float, n_heads: int = 2):
    config = LlamaConfig(hidden_size=d_k * n_heads, num_attention_heads=n_heads, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    return LlamaRotaryEmbedding(config)(torch.zeros(1), positions)  # cos, sin (B, T, d_k)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_tables_and_rotation_match_hugging_face_llama(theta):
    d_k, T = 16, 12
    cos, sin = rope_cos_sin(T, d_k, theta)
    hf_cos, hf_sin = hf_rope(torch.arange(T)[None], d_k, theta)
    torch.testing.assert_close(cos, hf_cos[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, hf_sin[0], atol=1e-6, rtol=0)
    q, k = torch.randn(2, 3, T, d_k), torch.randn(2, 3, T, d_k)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), hf_k, atol=1e-6, rtol=0)


def test_rope_with_per_sequence_positions():
    """(B, T, d_k) tables (left padding: each row its own positions) match Hugging Face with position_ids."""
    d_k = 8
    positions = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    cos, sin = rope_cos_sin(5, d_k)
    hf_cos, hf_sin = hf_rope(positions, d_k, 10000.0)
    x = torch.randn(2, 3, 5, d_k)
    torch.testing.assert_close(apply_rope(x, cos[positions], sin[positions]),
                               apply_rotary_pos_emb(x, x, hf_cos, hf_sin)[0], atol=1e-6, rtol=0)


def test_rotate_half_hand_example():
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


@given(m=st.integers(0, 60), n=st.integers(0, 60), shift=st.integers(0, 60), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None, derandomize=True, database=None)
def test_rope_score_depends_only_on_relative_position(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    d_k = 16
    q, k = torch.randn(1, 1, 1, d_k, generator=g).double(), torch.randn(1, 1, 1, d_k, generator=g).double()
    cos, sin = (t.double() for t in rope_cos_sin(128, d_k))

    def score(a, b):
        return (apply_rope(q, cos[a : a + 1], sin[a : a + 1]) * apply_rope(k, cos[b : b + 1], sin[b : b + 1])).sum()

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=0)  # float32 tables
    # and a rotation keeps the length of the vector
    torch.testing.assert_close(apply_rope(q, cos[m : m + 1], sin[m : m + 1]).norm(), q.norm())


def rope_paper_complex(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoFormer eq. (34) with interleaved pairs (x0, x1), (x2, x3), ... as complex numbers (Meta's Llama code)."""
    B, h, T, d = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, d, 2).double() / d)  # (d/2,)
    rot = torch.polar(torch.ones(T, d // 2, dtype=torch.float64), torch.arange(T).double()[:, None] * freqs)
    pairs = torch.view_as_complex(x.double().reshape(B, h, T, d // 2, 2).contiguous())
    return torch.view_as_real(pairs * rot).reshape(B, h, T, d).float()


def test_interleaved_pairs_and_rotate_half_are_the_same_rotation_under_a_permutation():
    x = torch.randn(2, 3, 10, 16)
    cos, sin = rope_cos_sin(10, 16)
    paper = rope_paper_complex(x)
    ours = apply_rope(interleaved_to_rotate_half(x), cos, sin)
    torch.testing.assert_close(ours, interleaved_to_rotate_half(paper), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate_half_to_interleaved(ours), paper, atol=1e-5, rtol=0)


def test_layout_permutation_hand_example_and_round_trip():
    x = torch.arange(6.0)
    assert interleaved_to_rotate_half(x).tolist() == [0, 2, 4, 1, 3, 5]
    assert torch.equal(rotate_half_to_interleaved(interleaved_to_rotate_half(x)), x)


@pytest.mark.parametrize("shapes", [((2, 3, 5, 8), (5, 6)), ((2, 3, 5, 8), (4, 8)), ((2, 5, 8), (5, 8))])
def test_apply_rope_rejects_mismatched_shapes(shapes):
    x_shape, cos_shape = shapes
    with pytest.raises(ValueError):
        apply_rope(torch.randn(x_shape), torch.randn(cos_shape), torch.randn(cos_shape))


def test_rope_rejects_odd_head_dimension():
    with pytest.raises(ValueError, match="even"):
        rope_cos_sin(4, 7)


# ----------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_of_the_paper_for_8_heads():
    assert alibi_slopes(8).tolist() == [1 / 2 ** i for i in range(1, 9)]


@pytest.mark.parametrize("h", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24])
def test_alibi_slopes_match_bloom(h):
    # BLOOM's bias is slope * key_position; its slopes are the per-head factor.
    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), h, torch.float32)  # (h, 1, 2)
    torch.testing.assert_close(alibi_slopes(h), bloom[:, 0, 1], atol=0, rtol=1e-6)


def test_alibi_bias_hand_values():
    bias = alibi_bias(2, 3)  # slopes 2^-4, 2^-8
    expected_head0 = -torch.tensor([[0, 1, 2], [1, 0, 1], [2, 1, 0]]) / 16
    torch.testing.assert_close(bias[0], expected_head0.float())
    assert bias.shape == (2, 3, 3)


def test_alibi_gives_the_same_causal_attention_as_bloom():
    """BLOOM adds slope * j (key position) and relies on softmax's shift invariance; under the causal mask
    that equals the paper's -slope * (i - j) row by row."""
    h, T = 6, 7
    scores = torch.randn(1, h, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    bloom = build_alibi_tensor(torch.ones(1, T, dtype=torch.long), h, torch.float32).reshape(1, h, 1, T)
    ours = torch.softmax((scores + alibi_bias(h, T)).masked_fill(~causal, float("-inf")), -1)
    ref = torch.softmax((scores + bloom).masked_fill(~causal, float("-inf")), -1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- Chapter 4's extrapolation models


def test_extrapolation_configs_train_short_and_share_one_schedule():
    """pos-*: one model per scheme, same schedule and seed, trained on half the positions they can be run on."""
    from transformer_course.model import POSITIONAL
    from transformer_course.train import CONFIGS

    schedules = set()
    for scheme in POSITIONAL:
        model_config, train_config = CONFIGS[f"pos-{scheme}"]
        assert model_config.positional == scheme
        assert 2 * train_config.block_size == model_config.context_length
        others = {k: v for k, v in model_config.to_dict().items() if k != "positional"}
        schedules.add((repr(sorted(others.items())), repr(train_config)))
    assert len(schedules) == 1


def test_scaled_sinusoidal_recipe_differs_from_pos_sinusoidal_only_in_the_scale():
    from transformer_course.train import CONFIGS

    (plain, plain_train), (scaled, scaled_train) = CONFIGS["pos-sinusoidal"], CONFIGS["pos-sinusoidal-scaled"]
    assert scaled.scale_embeddings and not plain.scale_embeddings
    assert {**scaled.to_dict(), "scale_embeddings": False} == plain.to_dict() and scaled_train == plain_train
