"""Fuzzing the public API: bad input is refused with a ValueError naming the argument, good input is accepted.

Each test draws arguments of the wrong type (None, str, bool, float, int, list, tensor), shape (wrong rank,
zero size, mismatched), dtype (int64, float64, bool, float16), device (`meta`, which needs no GPU) or range
(negative, zero, huge) and checks the refusal: `ValueError`, and a message that starts with (or names) the
argument. The last tests check that random valid input still runs, so that no check refuses good input.
"""
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_course.attention import Attention, LayerKVCache, allowed_mask, attention, attention_weights
from transformer_course.block import Block
from transformer_course.checkpoints import load_checkpoint, save_checkpoint
from transformer_course.embedding import TokenEmbedding, cosine_similarity_matrix, group_cosine, nearest_neighbours
from transformer_course.feedforward import MLP, SwiGLU, make_ffn, swiglu_hidden_dim
from transformer_course.generation import (
    apply_temperature, filtered_probs, generate, left_pad, next_token_distribution, pick_next, top_k_filter,
    top_p_filter,
)
from transformer_course.gqa import kv_cache_bytes, mean_pool_kv_heads, mha_to_gqa, repeat_kv
from transformer_course.heads import LMHead, SequenceClassificationHead, TokenClassificationHead, last_token_index
from transformer_course.hf import config_from_hf, to_hf_state_dict
from transformer_course.model import (ATTN_IMPLS, FFNS, GPT, NORM_IMPLS, NORM_POSITIONS, NORMS, POSITIONAL, GPTConfig,
                                      KVCache)
from transformer_course.norm import LayerNorm, RMSNorm, make_norm
from transformer_course.positional import (
    LearnedPositionalEmbedding, alibi_bias, alibi_bias_from_positions, alibi_slopes, apply_rope,
    interleaved_to_rotate_half, rope_cos_sin, rotate_half, rotate_half_to_interleaved, sinusoidal_encoding,
)
from transformer_course.sparse_attention import (
    banded_attention, causal_mask, fixed_mask, mask_to_bias, receptive_field, sliding_window_mask, strided_mask,
)
from transformer_course.tokenization import BPETokenizer, get_stats, merge, split_text, to_hf_tokenizer, train_fast
from transformer_course.training import TrainConfig, estimate_loss, get_batch, lr_at, make_optimizer
from transformer_course.utils import describe, seed_everything

FUZZ = dict(derandomize=True, deadline=None, database=None)
V, CTX = 12, 8

# ----------------------------------------------------------------------------- strategies: wrong values

TENSORS = st.sampled_from([torch.tensor(3), torch.tensor([1.0, 2.0]), torch.tensor(True)])
NOT_INT = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3),
                    st.sampled_from(["3", "10"]), st.lists(st.integers(), max_size=2), TENSORS)
NOT_NUMBER = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.sampled_from(["0.1", "10000", "1e-5"]),
                       st.lists(st.floats(), max_size=2), TENSORS, st.just(math.nan))
NOT_BOOL = st.one_of(st.none(), st.integers(), st.floats(), st.sampled_from(["False", "no", "True", ""]), TENSORS)


def bad_int(minimum=1, maximum=None, none_ok=False):
    """Anything but an int in [minimum, maximum] (None too, unless None means "the default")."""
    out_of_range = st.integers(max_value=minimum - 1)
    out_of_range |= st.just(10**30) if maximum is None else st.integers(min_value=maximum + 1)  # past 64 bits
    wrong = NOT_INT | out_of_range | st.just(-(10**30))
    return wrong.filter(lambda v: v is not None) if none_ok else wrong


def bad_number(outside):
    """Anything but a real number inside the interval whose complement `outside` draws from."""
    return NOT_NUMBER | outside | st.sampled_from([math.inf, -math.inf])


POSITIVE = bad_number(st.floats(max_value=0.0))  # not in (0, inf)
PROBABILITY = bad_number(st.floats(max_value=0.0, exclude_max=True) | st.floats(min_value=1.0))  # not in [0, 1)


def bad_choice(allowed):
    return st.one_of(st.none(), st.integers(), st.lists(st.sampled_from(allowed), min_size=1, max_size=2),
                     st.text(max_size=8).filter(lambda s: s not in allowed),
                     st.sampled_from([a.upper() for a in allowed]))


DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.bool)
NOT_FLOAT = (torch.int64, torch.bool)
ANY_SHAPE = ("type", "dtype", "meta")  # for arguments of any shape


@st.composite
def not_like(draw, shape, dtype=torch.float32, kinds=("type", "dtype", "last", "rank", "meta"), dtypes=DTYPES):
    """A stand-in for a CPU tensor `shape` of `dtype` that is wrong in one of `kinds` of way: not a tensor, another
    of `dtypes`, a longer last dimension, another rank, or on the meta device."""
    kind = draw(st.sampled_from(kinds))
    if kind == "type":
        return draw(st.one_of(st.none(), st.floats(), st.text(max_size=3), st.just([[1.0] * shape[-1]])))
    if kind == "dtype":
        return torch.zeros(shape, dtype=draw(st.sampled_from([d for d in dtypes if d != dtype])))
    if kind == "last":
        return torch.zeros(*shape[:-1], shape[-1] + draw(st.integers(1, 3)), dtype=dtype)
    if kind == "rank":
        return torch.zeros(shape[1:] if draw(st.booleans()) else (1, *shape), dtype=dtype)
    return torch.zeros(shape, dtype=dtype, device="meta")


def refused(name, call, *args, **kwargs):
    """`call(*args, **kwargs)` raises a ValueError whose message starts with (or names) `name`."""
    with pytest.raises(ValueError, match=rf"(^|\W){re.escape(name)}\b") as info:
        call(*args, **kwargs)
    return str(info.value)


def small_config(**kw):
    return GPTConfig(**{**dict(vocab_size=V, context_length=CTX, n_layers=1, n_heads=2, d_model=8), **kw})


MODEL = GPT(small_config()).eval()


def tokens(B=2, T=3):
    return torch.arange(B * T).reshape(B, T) % V


# ----------------------------------------------------------------------------- the model and its config

CONFIG_FIELDS = {
    **{name: bad_int() for name in ("vocab_size", "context_length", "n_layers", "n_heads", "d_model")},
    **{name: bad_int(none_ok=True) for name in ("n_kv_heads", "d_ff", "attention_window")},
    "positional": bad_choice(POSITIONAL), "norm": bad_choice(NORMS), "ffn": bad_choice(FFNS),
    "attn_impl": bad_choice(ATTN_IMPLS), "norm_position": bad_choice(NORM_POSITIONS),
    "norm_impl": bad_choice(NORM_IMPLS),
    "rope_theta": POSITIVE, "norm_eps": POSITIVE, "dropout": PROBABILITY,
    "bias": NOT_BOOL, "tie_weights": NOT_BOOL, "scale_embeddings": NOT_BOOL,
    "layer_pattern": st.one_of(st.text(max_size=6), st.integers(), st.lists(
        st.sampled_from(["global", "sparse", 1]), min_size=1, max_size=5).filter(lambda p: p != ["global"] * 4)),
}


@settings(max_examples=50, **FUZZ)
@given(st.data())
def test_config_refuses_a_field_of_the_wrong_type_or_range(data):
    field = data.draw(st.sampled_from(sorted(CONFIG_FIELDS)))
    value = data.draw(CONFIG_FIELDS[field], label=field)
    message = refused(field, GPTConfig, **{field: value})
    if field == "layer_pattern" and isinstance(value, list):
        value = tuple(value)  # a list (from JSON) becomes a tuple first
    assert describe(value) in message  # says what it got


@settings(max_examples=20, **FUZZ)
@given(d=st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.integers()),
       layer=bad_int(0, 0))
def test_config_from_dict_and_layer_window_refuse_bad_arguments(d, layer):
    refused("d", GPTConfig.from_dict, d)
    refused("layer", small_config().layer_window, layer)
    assert GPTConfig.from_dict({}) == GPTConfig()  # an old checkpoint's missing fields take their defaults


def test_a_config_changed_after_construction_is_checked_again():
    config = small_config()
    config.bias = "False"
    refused("bias", GPT, config)


@st.composite
def bad_idx(draw, kinds=("dtype", "rank", "empty", "range", "meta", "type")):
    """Token ids `(B, T)` that are wrong: not a LongTensor, not 2-D, empty, outside [0, V), on another device."""
    kind = draw(st.sampled_from(kinds))
    if kind == "dtype":
        return torch.zeros(2, 3, dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bool, torch.int32])))
    if kind == "rank":
        return torch.zeros(draw(st.sampled_from([(3,), (1, 2, 3), ()])), dtype=torch.long)
    if kind == "empty":
        return torch.zeros(draw(st.sampled_from([(0, 3), (2, 0)])), dtype=torch.long)
    if kind == "range":
        return torch.full((2, 3), draw(st.integers(V, 10**9) | st.integers(-(10**9), -1)))
    if kind == "meta":
        return torch.zeros(2, 3, dtype=torch.long, device="meta")
    return draw(st.one_of(st.none(), st.just([[1, 2]]), st.text(max_size=3)))


@settings(max_examples=40, **FUZZ)
@given(idx=bad_idx())
def test_model_refuses_bad_idx(idx):
    refused("idx", MODEL, idx)


@settings(max_examples=40, **FUZZ)
@given(target=st.integers(V, 10**6) | st.integers(-(10**6), -1).filter(lambda t: t != -100),
       where=st.integers(0, 5))
def test_model_refuses_targets_outside_the_vocabulary_but_keeps_minus_100(target, where):
    targets = tokens().roll(-1, 1)
    targets[0, 0] = -100  # ignored by the loss: fine
    _, loss = MODEL(tokens(), targets)
    assert torch.isfinite(loss)
    targets.view(-1)[where] = target
    refused("targets", MODEL, tokens(), targets)


@settings(max_examples=30, **FUZZ)
@given(targets=not_like((2, 3), torch.long).filter(lambda t: t is not None),
       mask=not_like((2, 3), torch.bool).filter(lambda m: m is not None))
def test_model_refuses_bad_targets_and_padding_masks(targets, mask):
    refused("targets", MODEL, tokens(), targets)
    refused("padding_mask", MODEL, tokens(), padding_mask=mask)


@settings(max_examples=30, **FUZZ)
@given(batch_size=bad_int(), max_len=bad_int(1, CTX, none_ok=True),
       cache=st.one_of(st.none(), st.text(max_size=2), st.just("other")))
def test_kv_cache_refuses_bad_sizes_and_foreign_caches(batch_size, max_len, cache):
    refused("batch_size", MODEL.new_cache, batch_size)
    refused("max_len", MODEL.new_cache, 1, max_len)
    refused("dtype", KVCache, MODEL.config, 1, dtype=torch.long)
    refused("device", KVCache, MODEL.config, 1, device="toaster")
    foreign = KVCache(small_config(n_heads=1), 2) if cache == "other" else cache
    if foreign is not None:
        refused("cache", MODEL, tokens(), cache=foreign)


# ----------------------------------------------------------------------------- attention

QKV = (1, 2, 3, 4)


@st.composite
def bad_qkv(draw):
    """q, k, v, one of them wrong (its type, dtype, device or rank), and its name."""
    qkv = {name: torch.randn(QKV) for name in "qkv"}
    name = draw(st.sampled_from("qkv"))
    qkv[name] = draw(not_like(QKV, kinds=("type", "dtype", "rank", "meta")))
    return qkv, name  # a floating q of another dtype or device is blamed on "k (like q)": the message names both


@settings(max_examples=50, **FUZZ)
@given(case=bad_qkv(), impl=st.sampled_from(["manual", "sdpa"]))
def test_attention_refuses_bad_q_k_v(case, impl):
    qkv, name = case
    refused(name, attention, qkv["q"], qkv["k"], qkv["v"], impl=impl)


@settings(max_examples=50, **FUZZ)
@given(arg=st.sampled_from(["bias", "padding_mask", "causal", "scale", "dropout_p", "impl", "window"]),
       data=st.data())
def test_attention_refuses_bad_keywords(arg, data):
    bad = {
        "bias": st.one_of(st.floats(), st.just(torch.zeros(3, 3, dtype=torch.bool)), st.just(torch.zeros(3, 3).long()),
                          st.just(torch.zeros(3, 3, device="meta")), st.none().map(lambda _: [[0.0] * 3] * 3)),
        "padding_mask": not_like((1, 3), torch.bool),
        "causal": NOT_BOOL.filter(lambda v: v is not None),
        "scale": bad_number(st.floats(max_value=0.0, exclude_max=True)).filter(lambda v: v is not None),
        "dropout_p": PROBABILITY, "impl": bad_choice(("manual", "sdpa")), "window": bad_int(none_ok=True),
    }[arg]
    kwargs = {arg: data.draw(bad, label=arg), **({"causal": True} if arg == "window" else {})}
    q = torch.randn(QKV)
    message = refused(arg, attention, q, q, q, **kwargs)
    if arg == "bias" and isinstance(kwargs["bias"], torch.Tensor) and kwargs["bias"].dtype == torch.bool:
        assert "padding_mask" in message and "-inf" in message  # says what to use instead


@settings(max_examples=20, **FUZZ)
@given(h=st.integers(0, 2), h_kv=st.integers(0, 2), d_k=st.integers(0, 2))
def test_attention_refuses_zero_heads_or_width_instead_of_dividing_by_zero(h, h_kv, d_k):
    q, k = torch.randn(1, h, 3, d_k), torch.randn(1, h_kv, 3, d_k)
    if min(h, h_kv, d_k) == 0:
        with pytest.raises(ValueError, match="head"):
            attention_weights(q, k)
    if h_kv:
        refused("n_kv_heads", Attention, 8, 2, h_kv - 1 if h_kv == 1 else -h_kv)
    refused("n_heads", Attention, 8, -h)


@settings(max_examples=30, **FUZZ)
@given(Tq=bad_int(0), window=bad_int(none_ok=True), device=st.sampled_from(["toaster", 3, "gpu"]))
def test_allowed_mask_refuses_bad_arguments(Tq, window, device):
    refused("Tq", allowed_mask, Tq, 3)
    refused("window", allowed_mask, 3, 3, causal=True, window=window)
    refused("device", allowed_mask, 3, 3, causal=True, device=device)


@settings(max_examples=40, **FUZZ)
@given(arg=st.sampled_from(["bias", "fused_qkv", "dropout", "impl", "d_model"]), data=st.data())
def test_attention_module_refuses_bad_arguments(arg, data):
    bad = {"bias": NOT_BOOL, "fused_qkv": NOT_BOOL, "dropout": PROBABILITY, "impl": bad_choice(ATTN_IMPLS),
           "d_model": bad_int()}[arg]
    value = data.draw(bad, label=arg)
    refused(arg, Attention, **{"d_model": 8, "n_heads": 2, arg: value})
    refused("rope", Attention(8, 2), torch.randn(1, 3, 8), rope=torch.randn(2, 3, 4))
    refused("cache", Attention(8, 2), torch.randn(1, 3, 8), cache={})
    refused("k", LayerKVCache(1, 2, 4, 4).update, torch.zeros(1, 2, 1, 4).double(), torch.zeros(1, 2, 1, 4).double())


# ----------------------------------------------------------------------------- layers


ANY_RANK = ("type", "dtype", "last", "meta")
LAYERS = {  # name -> (layer, input name, the kinds of wrong input for it); the good input is (2, 3, 8)
    "LayerNorm": (LayerNorm(8), "x", ANY_RANK), "RMSNorm": (RMSNorm(8), "x", ANY_RANK),
    "MLP": (MLP(8, 16), "x", ANY_RANK), "SwiGLU": (SwiGLU(8, 16), "x", ANY_RANK),
    "LMHead": (LMHead(8, V), "hidden", ANY_RANK), "TokenClassificationHead": (TokenClassificationHead(8, 3), "hidden", ANY_RANK),
    "SequenceClassificationHead": (SequenceClassificationHead(8, 3), "hidden", ANY_RANK + ("rank",)),
    "Block": (Block(small_config()), "x", ANY_RANK + ("rank",)),
    "Attention": (Attention(8, 2), "x", ANY_RANK + ("rank",)),
}


@settings(max_examples=50, **FUZZ)
@given(layer=st.sampled_from(sorted(LAYERS)), data=st.data())
def test_layers_refuse_inputs_of_the_wrong_type_shape_dtype_or_device(layer, data):
    module, name, kinds = LAYERS[layer]
    refused(name, module, data.draw(not_like((2, 3, 8), kinds=kinds), label=name))
    module(torch.randn(2, 3, 8))  # the good input still works


CONSTRUCTORS = [  # (what, argument, strategy of bad values)
    (lambda v: LayerNorm(v), "d", bad_int()), (lambda v: LayerNorm(8, eps=v), "eps", POSITIVE),
    (lambda v: LayerNorm(8, bias=v), "bias", NOT_BOOL), (lambda v: RMSNorm(8, eps=v), "eps", POSITIVE),
    (lambda v: MLP(8, v), "d_ff", bad_int()), (lambda v: MLP(8, 16, dropout=v), "dropout", PROBABILITY),
    (lambda v: SwiGLU(v, 16), "d_model", bad_int()), (lambda v: SwiGLU(8, 16, bias=v), "bias", NOT_BOOL),
    (lambda v: swiglu_hidden_dim(v), "d_model", bad_int()),
    (lambda v: swiglu_hidden_dim(8, v), "multiple_of", bad_int()),
    (lambda v: LMHead(8, v), "vocab_size", bad_int()),
    (lambda v: SequenceClassificationHead(8, v), "n_classes", bad_int()),
    (lambda v: SequenceClassificationHead(8, 2, bias=v), "bias", NOT_BOOL),
    (lambda v: TokenClassificationHead(8, 2, dropout=v), "dropout", PROBABILITY),
    (lambda v: TokenEmbedding(v, 8), "vocab_size", bad_int()),
    (lambda v: LearnedPositionalEmbedding(v, 8), "context_length", bad_int()),
    (lambda v: Block(small_config(), window=v), "window", bad_int(none_ok=True)),
    (lambda v: make_norm(v), "config", st.one_of(st.none(), st.text(max_size=2), st.just({"norm": "layernorm"}))),
    (lambda v: make_ffn(v), "config", st.one_of(st.none(), st.just({"ffn": "gelu"}))),
    (lambda v: Block(v), "config", st.one_of(st.none(), st.just(TrainConfig()))),
    (lambda v: GPT(v), "config", st.one_of(st.none(), st.just({"vocab_size": 10}))),
    (lambda v: KVCache(v, 1), "config", st.one_of(st.none(), st.text(max_size=2))),
    (lambda v: LayerKVCache(1, 1, 4, 4, dtype=v), "dtype", st.sampled_from([torch.long, torch.bool, "float32", None])),
    (lambda v: LMHead(8, V, tied_to=v), "tied_to.weight", st.sampled_from([torch.nn.ReLU(), TokenEmbedding(V + 1, 8)])),
]


@settings(max_examples=50, **FUZZ)
@given(case=st.sampled_from(range(len(CONSTRUCTORS))), data=st.data())
def test_constructors_refuse_bad_sizes_and_flags(case, data):
    build, name, bad = CONSTRUCTORS[case]
    refused(name, build, data.draw(bad, label=name))


@settings(max_examples=30, **FUZZ)
@given(B=bad_int(0), T=bad_int(),
       mask=not_like((2, 3), torch.bool, kinds=("type", "dtype", "last", "rank")).filter(lambda m: m is not None))
def test_last_token_index_refuses_bad_sizes_and_masks(B, T, mask):
    refused("B", last_token_index, None, B, 3)
    refused("T", last_token_index, None, 2, T)
    refused("padding_mask", last_token_index, mask, 2, 3)
    meta_mask = torch.ones(2, 3, dtype=torch.bool, device="meta")
    refused("padding_mask", SequenceClassificationHead(8, 2), torch.randn(2, 3, 8), meta_mask)


# ----------------------------------------------------------------------------- positions and embeddings

@settings(max_examples=40, **FUZZ)
@given(T=bad_int(0), d=bad_int() | st.sampled_from([3, 5, 7]), n=bad_int(), base=POSITIVE)
def test_position_tables_refuse_bad_sizes(T, d, n, base):
    refused("sinusoidal_encoding", sinusoidal_encoding, T, 4)
    refused("sinusoidal_encoding", sinusoidal_encoding, 4, d)
    refused("base", sinusoidal_encoding, 4, 4, base)
    refused("T", rope_cos_sin, T, 4)
    refused("d_k", rope_cos_sin, 4, d)
    refused("theta", rope_cos_sin, 4, 4, base)
    refused("n_heads", alibi_slopes, n)
    refused("T", alibi_bias, 2, T)


@settings(max_examples=40, **FUZZ)
@given(x=not_like((2, 2, 3, 4), dtypes=NOT_FLOAT), cos=not_like((3, 4), kinds=ANY_SHAPE, dtypes=NOT_FLOAT),
       odd=st.integers(1, 4).map(lambda n: 2 * n + 1))
def test_rope_refuses_bad_tensors(x, cos, odd):
    good_cos, good_sin = rope_cos_sin(3, 4)
    refused("x", apply_rope, x, good_cos, good_sin)  # float64 x with float32 angles is fine: it is promoted
    refused("cos", apply_rope, torch.randn(2, 2, 3, 4), cos, good_sin)
    with pytest.raises(ValueError, match="cos/sin"):  # a batch of angles that is not the batch of x
        apply_rope(torch.randn(2, 2, 3, 4), good_cos.expand(3, 3, 4), good_sin.expand(3, 3, 4))
    for f in (rotate_half, interleaved_to_rotate_half, rotate_half_to_interleaved):
        refused("x", f, torch.randn(2, odd))
        refused("x", f, [1.0, 2.0])


@settings(max_examples=30, **FUZZ)
@given(positions=not_like((3,), torch.long, kinds=ANY_SHAPE),
       slopes=not_like((2,), kinds=ANY_SHAPE + ("rank",), dtypes=NOT_FLOAT),
       kind=st.sampled_from(["float", "batch", "meta"]), beyond=st.integers(CTX, 10**6) | st.integers(-(10**6), -1))
def test_learned_positions_and_alibi_refuse_bad_tensors(positions, slopes, kind, beyond):
    refused("positions", LearnedPositionalEmbedding(CTX, 4), positions)
    refused("positions", LearnedPositionalEmbedding(CTX, 4), torch.tensor([0, beyond]))
    refused("slopes", alibi_bias_from_positions, slopes, torch.arange(3), torch.arange(3))
    pos = {"float": torch.arange(3.0), "batch": torch.zeros(3, 3, dtype=torch.long),
           "meta": torch.arange(3, device="meta")}[kind]
    refused("q_pos", alibi_bias_from_positions, alibi_slopes(2), pos, torch.zeros(2, 3, dtype=torch.long))


NOT_ROW_IDS = st.one_of(st.none(), st.integers(), st.lists(  # rows of a (10, d) table: ints in [0, 10)
    st.one_of(st.text(max_size=1), st.floats(), st.integers(10, 99), st.integers(-9, -1)), min_size=1, max_size=2))


@settings(max_examples=40, **FUZZ)
@given(idx=bad_idx(kinds=("dtype", "range", "meta", "type")),
       b=not_like((5, 4), kinds=ANY_SHAPE).filter(lambda b: b is not None), exclude=NOT_ROW_IDS)
def test_embedding_tools_refuse_bad_ids_tables_and_rows(idx, b, exclude):
    emb = TokenEmbedding(V, 4)
    refused("idx", emb, idx)
    refused("idx", emb.one_hot_lookup, idx)
    table = torch.randn(10, 4)
    refused("b", cosine_similarity_matrix, table, b)
    refused("eps", cosine_similarity_matrix, table, eps="1e-8")
    refused("exclude", nearest_neighbours, table, 0, 2, exclude=exclude)
    refused("group", group_cosine, table, [[0, 1], exclude if exclude is not None else [None]])
    refused("groups", group_cosine, table, 5)


# ----------------------------------------------------------------------------- generation

@settings(max_examples=40, **FUZZ)
@given(arg=st.sampled_from(["temperature", "top_k", "top_p", "greedy", "use_cache", "generator", "max_new_tokens"]),
       data=st.data())
def test_generate_refuses_bad_sampling_arguments(arg, data):
    bad = {"temperature": POSITIVE, "top_k": bad_int(none_ok=True),
           "top_p": bad_number(st.floats(max_value=0.0) | st.floats(min_value=1.0, exclude_min=True)).filter(
               lambda v: v is not None),
           "greedy": NOT_BOOL, "use_cache": NOT_BOOL, "generator": st.one_of(st.integers(), st.text(max_size=2)),
           "max_new_tokens": bad_int(0)}[arg]
    kwargs = {"max_new_tokens": 2, arg: data.draw(bad, label=arg)}
    refused(arg, generate, MODEL, tokens(), kwargs.pop("max_new_tokens"), **kwargs)


@settings(max_examples=30, **FUZZ)
@given(idx=bad_idx(), model=st.one_of(st.none(), st.text(max_size=2), st.just(torch.nn.Linear(2, 2))))
def test_generate_refuses_bad_prompts_and_models(idx, model):
    refused("idx", generate, MODEL, idx, 1)
    refused("idx", generate, MODEL, torch.zeros(2, 0, dtype=torch.long), 1)  # an empty prompt
    refused("model", generate, model, tokens(), 1)
    refused("padding_mask", generate, MODEL, tokens(), 1, padding_mask=torch.ones(2, 3, device="meta").bool())


@settings(max_examples=40, **FUZZ)
@given(logits=not_like((2, V), kinds=("type", "dtype"), dtypes=NOT_FLOAT), empty=st.sampled_from([(2, 0), (0,)]))
def test_sampling_helpers_refuse_bad_logits(logits, empty):
    for f, extra in ((apply_temperature, 1.0), (top_k_filter, 2), (top_p_filter, 0.5)):
        refused("logits", f, logits, extra)
        refused("logits", f, torch.zeros(empty), extra)
    refused("logits", filtered_probs, logits)
    refused("logits", pick_next, torch.randn(V))  # (V,): one row needs to be (1, V)
    refused("generator", pick_next, torch.randn(2, V, device="meta"), generator=torch.Generator())


NOT_PROMPTS = st.one_of(  # not a non-empty list of non-empty lists of ints
    st.none(), st.just([]), st.just([[]]), st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=2),
    st.lists(st.lists(st.floats() | st.booleans() | st.text(max_size=1), min_size=1, max_size=2), min_size=1,
             max_size=2))


@settings(max_examples=30, **FUZZ)
@given(sequences=NOT_PROMPTS, pad_id=bad_int(0))
def test_left_pad_refuses_bad_sequences(sequences, pad_id):
    refused("sequences", left_pad, sequences)
    refused("pad_id", left_pad, [[1, 2]], pad_id)


# ----------------------------------------------------------------------------- sparse attention and GQA

@settings(max_examples=40, **FUZZ)
@given(T=bad_int(), w=bad_int(), dtype=st.sampled_from([torch.long, torch.bool, "float32", None]))
def test_sparse_patterns_refuse_bad_sizes(T, w, dtype):
    for f in (sliding_window_mask, strided_mask, fixed_mask):
        refused("T", f, T, 2)
    refused("T", causal_mask, T)
    refused("window", sliding_window_mask, 4, w)
    refused("stride", strided_mask, 4, w)
    refused("c", fixed_mask, 4, 2, w)
    refused("layers", receptive_field, w, 2)
    refused("device", causal_mask, 4, device="toaster")
    refused("dtype", mask_to_bias, causal_mask(3), dtype=dtype)
    refused("allowed", mask_to_bias, causal_mask(3).float())


@settings(max_examples=30, **FUZZ)
@given(case=bad_qkv(), window=bad_int(), scale=bad_number(st.floats(max_value=0.0, exclude_max=True)).filter(
    lambda v: v is not None))
def test_banded_attention_refuses_bad_inputs(case, window, scale):
    qkv, name = case
    refused(name, banded_attention, qkv["q"], qkv["k"], qkv["v"], 2)
    q = torch.randn(QKV)
    refused("window", banded_attention, q, q, q, window)
    refused("scale", banded_attention, q, q, q, 2, scale=scale)
    empty = torch.randn(1, 2, 0, 4)
    refused("q, k, v", banded_attention, empty, empty, empty, 2)


@settings(max_examples=30, **FUZZ)
@given(field=st.sampled_from(["n_layers", "n_heads", "n_kv_heads", "d_model"]), value=bad_int(none_ok=True),
       seq_len=bad_int(), n_rep=bad_int())
def test_gqa_helpers_refuse_bad_numbers(field, value, seq_len, n_rep):
    numbers = dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=16)
    refused(field, kv_cache_bytes, {**numbers, field: value}, 8)
    refused("seq_len", kv_cache_bytes, MODEL.config, seq_len)
    refused("config", kv_cache_bytes, "llama", 8)
    with pytest.raises(ValueError, match="divisible"):
        kv_cache_bytes(dict(n_layers=1, n_heads=4, d_model=10), 8)
    refused("n_rep", repeat_kv, torch.randn(1, 2, 3, 4), n_rep)
    refused("x", repeat_kv, torch.randn(2, 3, 4), 2)
    refused("w", mean_pool_kv_heads, torch.ones(8, 2, dtype=torch.long), 4, 2)
    refused("n_kv_heads", mha_to_gqa, MODEL, n_rep)


# ----------------------------------------------------------------------------- tokenizer

TOKENIZER = BPETokenizer([(104, 105), (256, 33)])


@settings(max_examples=40, **FUZZ)
@given(ids=st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just(torch.tensor([1, 2]))),
       pair=st.one_of(st.none(), st.integers(), st.just((1,)), st.just((1, 2, 3)), st.text(min_size=3, max_size=3)),
       idx=bad_int(0), pattern=st.sampled_from(["(", "[a", 5, b"\\w+", ["a"]]))
def test_bpe_helpers_refuse_bad_arguments(ids, pair, idx, pattern):
    refused("ids", get_stats, ids)
    refused("counts", get_stats, [1, 2], counts=[])
    refused("ids", merge, ids, (1, 2), 256)
    refused("pair", merge, [1, 2], pair, 256)
    refused("idx", merge, [1, 2], (1, 2), idx)
    refused("text", split_text, 5 if isinstance(ids, str) else ids)
    refused("pattern", split_text, "hi", pattern=pattern)
    refused("pattern", train_fast, "hi hi hi", 258, pattern=pattern)
    refused("pattern", BPETokenizer, [], pattern=pattern)
    refused("merges", BPETokenizer, ids if ids is not None else 5)
    refused("meta", BPETokenizer, [], meta="provenance")
    with pytest.raises(ValueError, match="allowed_special"):
        TOKENIZER.encode("hi", allowed_special=[["not", "hashable"]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


WRONG_ENTRIES = {  # a field of a saved tokenizer -> values it must not hold
    "format": st.one_of(st.none(), st.integers(), st.text(max_size=3)),
    "version": st.one_of(st.none(), st.integers(2), st.text(max_size=3), st.just([1])),
    "merges": st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just([[1]]), st.just({"a": 1}),
                        st.just([[300, 1]])),
    "special_tokens": st.one_of(st.none(), st.just([]), st.just({"<|endoftext|>": 999}), st.just(["<|endoftext|>"])),
    "pattern": st.one_of(st.integers(), st.just(["a"]), st.sampled_from(["(", "[a", "*"])),
}


@settings(max_examples=40, **FUZZ)
@given(field=st.sampled_from(sorted(WRONG_ENTRIES)), drop=st.booleans(), data=st.data())
def test_tokenizer_load_names_the_file_and_the_field(folder, field, drop, data):
    d = TOKENIZER.to_dict()
    if drop:
        del d[field]
    else:
        d[field] = data.draw(WRONG_ENTRIES[field], label=field)
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(d))
    message = refused(str(path), BPETokenizer.load, path)
    assert re.search(field.split("_")[0], message)  # "merges", "special", ...
    path.write_bytes(b"\x80 not JSON")
    refused(str(path), BPETokenizer.load, path)
    refused("path", BPETokenizer.load, None)
    refused("path", TOKENIZER.save, "")


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def saved(folder):
    path = save_checkpoint(folder / "good.pt", MODEL, TOKENIZER)
    return path, torch.load(path, weights_only=True)


@settings(max_examples=30, **FUZZ)
@given(data=st.data(), broken=st.sampled_from(["missing", "shape", "extra"]))
def test_load_checkpoint_names_the_path_and_the_tensor(saved, folder, data, broken):
    good_path, payload = saved
    state = dict(payload["state_dict"])
    name = data.draw(st.sampled_from(sorted(state)), label="tensor")
    if broken == "missing":
        del state[name]
    elif broken == "shape":
        state[name] = torch.zeros(*state[name].shape, 2)
    else:
        name = "blocks.9.attn.qkv.weight"
        state[name] = torch.zeros(2)
    path = folder / "broken.pt"
    torch.save({**payload, "state_dict": state}, path)
    message = refused(str(path), load_checkpoint, path)
    assert name in message


@settings(max_examples=20, **FUZZ)
@given(device=st.one_of(st.none(), st.integers(), st.floats(), st.sampled_from(["toaster", "cuda:99", "", "gpu"])),
       path=st.one_of(st.none(), st.integers(), st.just(["tiny"])))
def test_load_checkpoint_blames_a_bad_device_or_path_on_the_argument(saved, device, path):
    good_path, _ = saved
    message = refused("device", load_checkpoint, good_path, device=device)
    assert str(good_path) not in message  # the file is fine
    refused("path_or_name", load_checkpoint, path)
    refused("path", save_checkpoint, path, MODEL, TOKENIZER)
    model, _, _ = load_checkpoint(good_path, device="meta")  # a valid device that needs no GPU
    assert model.tok_emb.weight.device.type == "meta"


# ----------------------------------------------------------------------------- training and Hugging Face

TRAIN_FIELDS = {
    **{name: bad_int() for name in ("steps", "batch_size", "block_size", "eval_interval", "eval_batches")},
    "warmup_steps": bad_int(0, 1000), "seed": NOT_INT | st.sampled_from([2**64, -(2**63) - 1]),
    "lr": POSITIVE, "min_lr": bad_number(st.floats(max_value=0.0, exclude_max=True) | st.floats(min_value=0.1)),
    "weight_decay": bad_number(st.floats(max_value=0.0, exclude_max=True)),
    "grad_clip": bad_number(st.floats(max_value=0.0, exclude_max=True)),
    "betas": st.one_of(st.none(), st.floats(), st.just((0.9,)), st.tuples(st.just(0.9), PROBABILITY)),
    "device": st.one_of(st.integers(), st.sampled_from(["toaster", "cuda:99", torch.device("cpu")])),
}


@settings(max_examples=50, **FUZZ)
@given(data=st.data())
def test_train_config_refuses_a_field_of_the_wrong_type_or_range(data):
    field = data.draw(st.sampled_from(sorted(TRAIN_FIELDS)))
    value = data.draw(TRAIN_FIELDS[field], label=field)
    refused(f"TrainConfig.{field}", TrainConfig, **{field: value})


@settings(max_examples=30, **FUZZ)
@given(size=bad_int(), step=bad_int(0), ids=not_like((50,), torch.long))
def test_get_batch_and_lr_at_refuse_bad_arguments(size, step, ids):
    refused("batch_size", get_batch, torch.arange(50), size, 4)
    refused("block_size", get_batch, torch.arange(50), 2, size)
    refused("generator", get_batch, torch.arange(50), 2, 4, generator=1)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 1 and not ids.is_floating_point()
            and ids.dtype != torch.bool):
        refused("ids", get_batch, ids, 2, 4)
    refused("step", lr_at, step, TrainConfig())
    refused("cfg", lr_at, 3, {"lr": 1.0})
    refused("seed", seed_everything, "0")
    refused("seed", seed_everything, 2**64)


@settings(max_examples=20, **FUZZ)
@given(missing=st.sampled_from(["vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "layer_norm_epsilon"]),
       hf_config=st.one_of(st.none(), st.integers(), st.text(max_size=2), st.just({"vocab_size": 3})))
def test_hf_conversion_refuses_incomplete_configs_and_foreign_models(missing, hf_config):
    gpt2 = dict(model_type="gpt2", activation_function="gelu_new", vocab_size=V, n_positions=CTX, n_layer=1,
                n_head=2, n_embd=8, layer_norm_epsilon=1e-5)
    del gpt2[missing]
    refused(missing, config_from_hf, gpt2)
    refused("hf_config", config_from_hf, hf_config)
    refused("model", to_hf_state_dict, hf_config)


@settings(max_examples=30, **FUZZ)
@given(thing=st.one_of(st.none(), st.integers(), st.text(max_size=2), st.just({"config": None}),
                       st.just(torch.nn.Linear(2, 2))),
       length=bad_int(0))
def test_more_entry_points_refuse_what_is_not_theirs(folder, thing, length):
    refused("length", GPT.position_ids, None, length)
    refused("padding_mask", GPT.position_ids, [[True, False]], 2)
    refused("model", next_token_distribution, thing, tokens())
    refused("model", mha_to_gqa, thing, 1)
    refused("model", save_checkpoint, folder / "m.pt", thing, TOKENIZER)
    refused("tokenizer", save_checkpoint, folder / "m.pt", MODEL, thing)
    refused("path", save_checkpoint, folder, MODEL, TOKENIZER)  # a folder, not a file
    refused("tokenizer", to_hf_tokenizer, thing)
    refused("cfg", estimate_loss, MODEL, torch.arange(50) % V, thing)
    refused("cfg", make_optimizer, MODEL, thing)
    refused("model", make_optimizer, {"weight": torch.zeros(2)}, TrainConfig())


# ----------------------------------------------------------------------------- valid input is accepted


@st.composite
def valid_configs(draw):
    n_heads = draw(st.sampled_from([1, 2, 4]))
    n_layers = draw(st.integers(1, 2))
    window = draw(st.none() | st.integers(1, 6))
    pattern = None if window is None else draw(st.none() | st.lists(st.sampled_from(["global", "local"]),
                                                                    min_size=n_layers, max_size=n_layers))
    positional, dropout = draw(st.sampled_from(POSITIONAL)), draw(st.floats(0.0, 0.5) | st.just(0))
    impl = draw(st.sampled_from(ATTN_IMPLS))
    if impl == "flash" and (dropout > 0 or positional == "alibi" or window is not None):
        impl = "manual"  # the tiles support no attention dropout, bias or window (refused: tested)
    return GPTConfig(
        vocab_size=draw(st.integers(2, 40)), context_length=draw(st.integers(4, 12)), n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=draw(st.sampled_from([None] + [g for g in (1, 2, 4) if n_heads % g == 0])),
        d_model=n_heads * draw(st.sampled_from([2, 4, 6])), d_ff=draw(st.none() | st.integers(1, 24)),
        positional=positional, rope_theta=draw(st.floats(1.0, 1e6) | st.integers(2, 10**6)),
        norm=draw(st.sampled_from(NORMS)), norm_eps=draw(st.floats(1e-8, 0.1) | st.just(1)),
        ffn=draw(st.sampled_from(FFNS)), bias=draw(st.booleans()), tie_weights=draw(st.booleans()),
        dropout=dropout, attention_window=window, layer_pattern=pattern,
        attn_impl=impl, norm_position=draw(st.sampled_from(NORM_POSITIONS)),
        norm_impl=draw(st.sampled_from(NORM_IMPLS)), scale_embeddings=draw(st.booleans()),
    )


@settings(max_examples=30, **FUZZ)
@given(config=valid_configs(), B=st.integers(1, 3), data=st.data())
def test_valid_configs_build_run_and_generate(config, B, data):
    assert GPTConfig.from_dict(config.to_dict()) == config
    model = GPT(config).eval()
    T = data.draw(st.integers(1, config.context_length - 1), label="T")
    idx = torch.randint(config.vocab_size, (B, T), generator=torch.Generator().manual_seed(T))
    targets = idx.roll(-1, 1)
    if T > 1:
        targets[:, -1] = -100  # nothing to predict after the last token
    logits, loss = model(idx, targets)
    assert logits.shape == (B, T, config.vocab_size) and torch.isfinite(loss)
    out = generate(model, idx, 1, greedy=True)
    assert out.shape == (B, T + 1) and torch.equal(out[:, :T], idx)


@settings(max_examples=40, **FUZZ)
@given(B=st.integers(0, 2), h_kv=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]), Tq=st.integers(0, 4),
       extra=st.integers(0, 3), d_k=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.float64]),
       bias_dtype=st.sampled_from([None, torch.float32, torch.float64, torch.float16]), causal=st.booleans(),
       padded=st.booleans(), scale=st.none() | st.floats(0.0, 2.0))
def test_valid_attention_inputs_are_accepted_and_both_impls_agree(B, h_kv, group, Tq, extra, d_k, dtype, bias_dtype,
                                                                  causal, padded, scale):
    g = torch.Generator().manual_seed(B * 100 + Tq * 10 + d_k)
    Tk = Tq + extra
    q = torch.randn(B, h_kv * group, Tq, d_k, generator=g, dtype=dtype)
    k, v = (torch.randn(B, h_kv, Tk, d_k, generator=g, dtype=dtype) for _ in range(2))
    bias = None if bias_dtype is None else torch.randn(Tq, Tk, generator=g).to(bias_dtype)  # any float dtype: cast
    mask = (torch.arange(Tk) >= Tk // 2).expand(B, Tk) if padded else None
    kw = dict(causal=causal, bias=bias, padding_mask=mask, scale=scale)
    manual, sdpa = attention(q, k, v, **kw), attention(q, k, v, impl="sdpa", **kw)
    assert manual.shape == (B, h_kv * group, Tq, d_k) and manual.dtype == dtype and not manual.isnan().any()
    torch.testing.assert_close(sdpa, manual, atol=1e-5, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:var")  # LayerNorm of no vectors at all
@settings(max_examples=20, **FUZZ)
@given(shape=st.sampled_from([(8,), (3, 8), (2, 3, 8), (0, 8)]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_valid_layer_inputs_are_accepted_in_any_dtype_the_layer_has(shape, dtype):
    for module in (LayerNorm(8), RMSNorm(8), MLP(8, 4), SwiGLU(8, 4), LMHead(8, V), TokenClassificationHead(8, 2)):
        module = module.to(dtype)
        out = module(torch.randn(shape, dtype=dtype))
        assert out.dtype == dtype and out.shape[:-1] == shape[:-1]
