"""The pre-norm transformer block (Chapter 11).

    x = x + attn(norm1(x))      tokens exchange information
    x = x + ffn(norm2(x))       each token is processed on its own

The residual stream x `(B, T, d_model)` runs straight through; each sub-layer reads a normalised copy and
adds its result back. GPT-2 and Llama both normalise before each sub-layer (pre-norm); the original
Transformer normalised after the addition (post-norm: x = norm(x + attn(x))), which trains less stably
without warm-up (Xiong et al. 2020). A model ends with one more norm after the last block (`model.py`).

Leaves out: post-norm, parallel attention + FFN (GPT-J), cross-attention of decoders in encoder-decoders.
"""
import torch
import torch.nn as nn

from .attention import Attention, LayerKVCache
from .feedforward import make_ffn
from .norm import make_norm
from .utils import check_config, check_int


class Block(nn.Module):
    """One pre-norm block for a `GPTConfig`; `window` is this layer's sliding window (None = global)."""

    def __init__(self, config, window: int | None = None):
        super().__init__()
        check_config(config)
        self.window = window if window is None else check_int("window", window)
        self.norm1 = make_norm(config)
        self.attn = Attention(
            config.d_model, config.n_heads, config.n_kv_heads,
            bias=config.bias, dropout=config.dropout, impl=config.attn_impl,
        )
        self.norm2 = make_norm(config)
        self.ffn = make_ffn(config)

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
        x = x + self.attn(
            self.norm1(x), causal=True, rope=rope, bias=bias, window=self.window,
            padding_mask=padding_mask, cache=cache,
        )
        x = x + self.ffn(self.norm2(x))
        return x
