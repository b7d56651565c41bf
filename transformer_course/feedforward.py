"""The position-wise feed-forward network (Chapter 10).

Applied to every token on its own: expand d_model -> d_ff, a nonlinearity, project back d_ff -> d_model.

- `MLP`: GPT-2's FFN with GELU. GPT-2 uses the tanh approximation of GELU (Hendrycks & Gimpel 2016,
  "gelu_new" in Hugging Face), so we do too: `F.gelu(x, approximate="tanh")`. It differs from the exact
  erf GELU by at most 4.7e-4, near |x| = 2.7 (measured in Chapter 10 and tests/test_feedforward.py).
- `SwiGLU`: the gated FFN of Shazeer 2020 used by Llama: down(silu(gate(x)) * up(x)). Three matrices instead
  of two, so Llama shrinks d_ff to about 2/3 of 4·d_model to keep the parameter count (`swiglu_hidden_dim`).

The FFN read as a key-value memory (Geva et al. 2021), and the experiments on it, live in `memory.py`.

Leaves out: mixture-of-experts FFNs, other GLU variants (GeGLU, ReGLU), Llama 2/3's `ffn_dim_multiplier`
(an exercise of Chapter 10).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import check_bool, check_config, check_input, check_int, check_number


def _check_sizes(d_model, d_ff, bias, dropout) -> None:
    check_int("d_model", d_model)
    check_int("d_ff", d_ff)
    check_bool("bias", bias)
    check_number("dropout", dropout, "[0, 1)")


class MLP(nn.Module):
    """x `(B, T, d_model)` -> fc -> GELU (tanh approx.) -> proj -> `(B, T, d_model)`."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        _check_sizes(d_model, d_ff, bias, dropout)
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.fc.weight)
        h = F.gelu(self.fc(x), approximate="tanh")  # (B, T, d_ff)
        return self.dropout(self.proj(h))  # (B, T, d_model)


class SwiGLU(nn.Module):
    """x `(B, T, d_model)` -> down(silu(gate(x)) * up(x)) -> `(B, T, d_model)` (Shazeer 2020, Llama)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        _check_sizes(d_model, d_ff, bias, dropout)
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("x", x, self.gate.weight)
        h = F.silu(self.gate(x)) * self.up(x)  # (B, T, d_ff): the gate decides how much of `up` passes
        return self.dropout(self.down(h))  # (B, T, d_model)


def swiglu_hidden_dim(d_model: int, multiple_of: int = 32) -> int:
    """Llama's rule: 2/3 of 4·d_model, rounded up to a multiple of `multiple_of`.

    Llama rounds to 256; the course uses 32 so that tiny models are not rounded all the way up to 4·d_model
    (d_model=128: 341 -> 352, where 256 would give 512).
    """
    check_int("d_model", d_model)
    check_int("multiple_of", multiple_of)
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def make_ffn(config) -> nn.Module:
    """The FFN a `GPTConfig` asks for, with d_ff = config.ffn_dim (config.d_ff, or the default of its kind)."""
    check_config(config)
    ffn = MLP if config.ffn == "gelu" else SwiGLU
    return ffn(config.d_model, config.ffn_dim, bias=config.bias, dropout=config.dropout)
