"""The transformer block, pre-norm or post-norm (Chapters 9, 11).

    pre-norm (GPT-2, Llama)            post-norm (2017 Transformer, GPT-1)
    x = x + attn(norm1(x))             x = norm1(x + attn(x))      tokens exchange information
    x = x + ffn(norm2(x))              x = norm2(x + ffn(x))       each token is processed on its own

In a pre-norm block the residual stream x `(B, T, d_model)` runs straight through; each sub-layer reads a
normalised copy and adds its result back, and the model ends with one more norm after the last block
(`model.py`). In a post-norm block every addition is normalised, so the stream itself is renormalised twice
per layer and no final norm is needed; it trains less stably without warm-up (Xiong et al. 2020).

Leaves out: parallel attention + FFN (GPT-J), cross-attention of decoders in encoder-decoders.
"""
import torch
import torch.nn as nn

from .attention import Attention, LayerKVCache
from .feedforward import make_ffn
from .norm import make_norm
from .utils import check_config, check_int


class Block(nn.Module):
    """One block for a `GPTConfig` (`norm_position` pre or post); `window`: this layer's sliding window or None.

    With `d_ff=0` the block has no FFN (and no norm2): attention only, for Chapter 10's width sweep.
    """

    def __init__(self, config, window: int | None = None):
        super().__init__()
        check_config(config)
        self.window = window if window is None else check_int("window", window)
        self.norm1 = make_norm(config)
        self.attn = Attention(
            config.d_model, config.n_heads, config.n_kv_heads,
            bias=config.bias, dropout=config.dropout, impl=config.attn_impl,
        )
        self.norm2 = make_norm(config) if config.ffn_dim else None
        self.ffn = make_ffn(config) if config.ffn_dim else None  # d_ff=0: attention only (Chapter 10)
        self.post_norm = config.norm_position == "post"

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x `(B, T, d_model)` -> `(B, T, d_model)`; the keywords go to `Attention.forward` (causal)."""
        def attend(h):
            return self.attn(h, causal=True, rope=rope, bias=bias, window=self.window,
                             padding_mask=padding_mask, cache=cache)

        if self.post_norm:
            x = self.norm1(x + attend(x))
            return x if self.ffn is None else self.norm2(x + self.ffn(x))
        x = x + attend(self.norm1(x))
        return x if self.ffn is None else x + self.ffn(self.norm2(x))
