"""The GPT model and its one config (Chapters 1, 11-14).

    idx (B, T) -> token embedding (+ learned/sinusoidal positions) -> L pre-norm blocks -> final norm
               -> LM head -> logits (B, T, V)

`GPTConfig` expresses both a GPT-2-like model (learned positions, LayerNorm, GELU MLP, biases, tied head) and
a Llama-like one (RoPE, RMSNorm, SwiGLU, no biases, untied head, optional grouped-query attention), plus
the switches later chapters turn on: ALiBi, a sliding attention window and a per-layer local/global pattern.

Positions count real tokens only: with left padding (a batch of prompts of different lengths, padded on the
left for generation) token t of a row sits at position (number of real tokens before it), the rule Hugging
Face applies with `position_ids = attention_mask.cumsum(-1) - 1`. So a padded row gives the same logits as
the same prompt alone.

`KVCache` keeps every layer's keys and values between calls, so generation feeds one new token per step.
Leaves out: encoder-decoder models, mixture of experts, weight sharing across layers, gradient
checkpointing, mixed precision, `torch.compile`.
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import IMPLS, LayerKVCache
from .block import Block
from .embedding import TokenEmbedding
from .feedforward import swiglu_hidden_dim
from .heads import LMHead
from .norm import make_norm
from .positional import (
    LearnedPositionalEmbedding,
    alibi_bias_from_positions,
    alibi_slopes,
    rope_cos_sin,
    sinusoidal_encoding,
)
from .utils import check_bool, check_choice, check_config, check_ids, check_int, check_number, check_tensor, describe

POSITIONAL = ("none", "learned", "sinusoidal", "rope", "alibi")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
NORM_IMPLS = ("manual", "fused")
FFNS = ("gelu", "swiglu")
ATTN_IMPLS = IMPLS  # manual | sdpa | flash (attention.py)


@dataclass
class GPTConfig:
    """Every architectural choice of the course model. None means "the usual default" (see the properties)."""

    vocab_size: int = 1024
    context_length: int = 128  # the most positions the model handles (learned table, RoPE table, KV cache)
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (multi-head); 1 -> multi-query; between -> grouped-query
    d_model: int = 128
    d_ff: int | None = None  # None -> 4*d_model for gelu, Llama's 2/3 rule for swiglu; 0 -> blocks without FFN
    positional: str = "learned"  # none | learned | sinusoidal | rope | alibi
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # pre (GPT-2, Llama: x + f(norm(x)), a final norm) | post (2017, GPT-1: norm(x + f(x)))
    norm_impl: str = "manual"  # manual (the written-out norm) | fused (F.layer_norm / F.rms_norm)
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al. 2017, §3.4)
    ffn: str = "gelu"  # gelu | swiglu
    bias: bool = True  # biases in every Linear and LayerNorm
    tie_weights: bool = True  # LM head shares the token embedding matrix
    dropout: float = 0.0
    attention_window: int | None = None  # sliding window of the "local" layers
    layer_pattern: tuple[str, ...] | None = None  # "global"/"local" per layer; None: all local if a window is set
    attn_impl: str = "manual"  # manual | sdpa | flash (Chapter 15; no dropout, ALiBi or window)

    def __post_init__(self):
        if isinstance(self.layer_pattern, list):
            self.layer_pattern = tuple(self.layer_pattern)  # JSON gives a list
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the first field of the wrong type or with an impossible value."""
        for name in ("vocab_size", "context_length", "n_layers", "n_heads", "d_model"):
            check_int(name, getattr(self, name))
        for name in ("n_kv_heads", "attention_window"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.d_ff is not None:
            check_int("d_ff (0: no FFN)", self.d_ff, 0)
        for name, allowed in (("positional", POSITIONAL), ("norm", NORMS), ("ffn", FFNS), ("attn_impl", ATTN_IMPLS),
                              ("norm_position", NORM_POSITIONS), ("norm_impl", NORM_IMPLS)):
            check_choice(name, getattr(self, name), allowed)
        check_number("rope_theta", self.rope_theta)
        check_number("norm_eps", self.norm_eps)
        check_number("dropout", self.dropout, "[0, 1)")
        check_bool("bias", self.bias)
        check_bool("tie_weights", self.tie_weights)
        check_bool("scale_embeddings", self.scale_embeddings)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.h_kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.positional == "rope" and self.d_k % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_k = d_model/n_heads = {self.d_k}")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if self.layer_pattern is not None:
            pattern = self.layer_pattern
            if (not isinstance(pattern, (tuple, list)) or len(pattern) != self.n_layers
                    or not all(isinstance(e, str) and e in ("global", "local") for e in pattern)):
                raise ValueError(f'layer_pattern must be a tuple of n_layers={self.n_layers} entries, each "global" '
                                 f'or "local", got {describe(pattern)}')
            if "local" in pattern and self.attention_window is None:
                raise ValueError('layer_pattern has "local" layers but attention_window is None')
        if self.attn_impl == "flash":
            unsupported = dict(dropout=self.dropout > 0, positional=self.positional == "alibi",
                               attention_window=self.attention_window is not None)
            if any(unsupported.values()):
                raise ValueError(
                    f'attn_impl="flash" supports no attention dropout, ALiBi bias or window; got '
                    f"dropout={self.dropout}, positional={self.positional!r}, "
                    f"attention_window={self.attention_window}")

    @property
    def d_k(self) -> int:
        """Dimension of one head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @property
    def h_kv(self) -> int:
        """Number of key/value heads (n_kv_heads, or n_heads when None)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the FFN: d_ff if given (0: none), else 4*d_model (gelu) or Llama's 2/3 rule (swiglu)."""
        if self.d_ff is not None:
            return self.d_ff
        return 4 * self.d_model if self.ffn == "gelu" else swiglu_hidden_dim(self.d_model)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer` (None = global attention)."""
        check_int("layer", layer, 0, self.n_layers - 1)
        if self.layer_pattern is None:
            return self.attention_window
        return self.attention_window if self.layer_pattern[layer] == "local" else None

    @classmethod
    def gpt2_like(cls, **overrides) -> "GPTConfig":
        """Learned positions, LayerNorm, GELU MLP, biases, tied LM head (Radford et al. 2019)."""
        base = dict(positional="learned", norm="layernorm", ffn="gelu", bias=True, tie_weights=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama_like(cls, **overrides) -> "GPTConfig":
        """RoPE, RMSNorm, SwiGLU, no biases, untied LM head (Touvron et al. 2023). Set n_kv_heads for GQA."""
        base = dict(positional="rope", norm="rmsnorm", ffn="swiglu", bias=False, tie_weights=False)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        d = asdict(self)
        if d["layer_pattern"] is not None:
            d["layer_pattern"] = list(d["layer_pattern"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Inverse of `to_dict`. Missing fields take their defaults (older checkpoints); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"d must be a dict of GPTConfig fields, got {describe(d)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)


class KVCache:
    """Keys and values of every layer, `(B, h_kv, max_len, d_k)` each, preallocated; `length` tokens filled.

    `length` is also the position offset of the next token fed to the model.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int | None = None, *, device=None,
                 dtype=torch.float32):
        check_config(config)
        max_len = config.context_length if max_len is None else check_int("max_len", max_len, 1, config.context_length)
        self.layers = [
            LayerKVCache(batch_size, config.h_kv, max_len, config.d_k, device=device, dtype=dtype)
            for _ in range(config.n_layers)
        ]

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held: 2 (k and v) x L x B x h_kv x max_len x d_k x bytes per number."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.k, layer.v))


class GPT(nn.Module):
    """A decoder-only transformer language model for a `GPTConfig`."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        check_config(config)
        self.config = c = config
        self.tok_emb = TokenEmbedding(c.vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos_emb = LearnedPositionalEmbedding(c.context_length, c.d_model)
        elif c.positional == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_encoding(c.context_length, c.d_model), persistent=False)
        elif c.positional == "rope":
            cos, sin = rope_cos_sin(c.context_length, c.d_k, c.rope_theta)  # (context_length, d_k) each
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif c.positional == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(c.n_heads), persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c, window=c.layer_window(i)) for i in range(c.n_layers)])
        self.norm_f = make_norm(c) if c.norm_position == "pre" else nn.Identity()  # post-norm ends normalised
        self.lm_head = LMHead(c.d_model, c.vocab_size, tied_to=self.tok_emb if c.tie_weights else None)
        self._init_weights()

    def _init_weights(self):
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections that write into the
        residual stream scaled down by 1/sqrt(2L), so that the stream's variance does not grow with depth.
        (Embeddings and untied heads start N(0, 0.02) in their constructors, norms at weight 1, bias 0.)"""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "ffn.proj.weight", "ffn.down.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    def num_parameters(self) -> int:
        """Trainable numbers, a tied embedding/head matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty `KVCache` on the model's device and dtype (max_len defaults to the context length)."""
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    @staticmethod
    def position_ids(padding_mask: torch.Tensor | None, length: int, device=None) -> torch.Tensor:
        """Positions of all `length` tokens, `(1, length)`, or `(B, length)` counting only real tokens.

        Padding positions get 0 (they are masked anyway), as in Hugging Face's generate.
        """
        if padding_mask is None:
            return torch.arange(check_int("length", length, 0), device=device)[None]  # (1, length)
        check_tensor("padding_mask", padding_mask, ("B", length), torch.bool)
        return (padding_mask.long().cumsum(-1) - 1).masked_fill(~padding_mask, 0)  # (B, length)

    def _check_cache(self, cache, B: int) -> int:
        """Refuse a cache that this model's `new_cache(B, ...)` would not have made; return its length."""
        c, weight = self.config, self.tok_emb.weight
        layer = cache.layers[0].k if isinstance(cache, KVCache) else None
        if (layer is None or len(cache.layers) != c.n_layers or layer.shape[1::2] != (c.h_kv, c.d_k)
                or layer.dtype != weight.dtype or layer.device != weight.device):
            got = describe(cache) if layer is None else f"{len(cache.layers)} layers of {describe(layer)}"
            raise ValueError(f"cache must be a KVCache from this model's new_cache(): {c.n_layers} layers of "
                             f"(B, {c.h_kv}, max_len, {c.d_k}) {weight.dtype} on {weight.device}, got {got}")
        if cache.batch_size != B:
            raise ValueError(f"idx has batch size {B} but the cache was made for {cache.batch_size}")
        return cache.length

    def features(self, idx: torch.Tensor, *, padding_mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states `(B, T, d_model)` (after the last norm), input to any head.

        idx `(B, T)` long. padding_mask `(B, past + T)` bool, True for real tokens, covering the cached
        tokens too. cache: a `KVCache` holding `past` tokens; idx then holds only the new ones.
        """
        c, weight = self.config, self.tok_emb.weight
        check_tensor("idx", idx, ("B", "T"), torch.long, weight.device)
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"idx must hold at least one sequence of at least one token, got shape {(B, T)}")
        past = 0 if cache is None else self._check_cache(cache, B)
        if past + T > c.context_length:
            raise ValueError(
                f"{past} cached + {T} new tokens exceed the context length {c.context_length}"
            )
        if padding_mask is not None:
            check_tensor("padding_mask", padding_mask, (B, past + T), torch.bool, weight.device)
        k_pos = self.position_ids(padding_mask, past + T, idx.device)  # (1 or B, past + T): every key
        q_pos = k_pos[:, past:]  # (1 or B, T): the new tokens

        x = self.tok_emb(idx)  # (B, T, d_model)
        if c.scale_embeddings:
            x = x * math.sqrt(c.d_model)
        if c.positional == "learned":
            x = x + self.pos_emb(q_pos)
        elif c.positional == "sinusoidal":
            x = x + self.pos_table[q_pos]
        x = self.drop(x)
        rope = (self.rope_cos[q_pos], self.rope_sin[q_pos]) if c.positional == "rope" else None  # (1|B, T, d_k)
        bias = alibi_bias_from_positions(self.alibi_slopes, q_pos, k_pos) if c.positional == "alibi" else None

        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            x = block(x, rope=rope, bias=bias, padding_mask=padding_mask, cache=layer_cache)
        return self.norm_f(x)  # (B, T, d_model)

    def forward(self, idx, targets=None, *, padding_mask=None, cache: KVCache | None = None):
        """idx `(B, T)` -> (logits `(B, T, V)`, loss or None).

        targets `(B, T)`: the next token at every position (idx shifted left by one); -100 marks positions
        left out of the mean cross-entropy loss. padding_mask and cache: see `features`.
        """
        logits = self.lm_head(self.features(idx, padding_mask=padding_mask, cache=cache))  # (B, T, V)
        loss = None
        if targets is not None:
            check_tensor("targets", targets, tuple(idx.shape), torch.long, idx.device)
            check_ids("targets", targets, self.config.vocab_size, ignore_index=-100)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss
