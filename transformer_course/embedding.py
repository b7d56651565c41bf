"""Token embeddings: a lookup table from token ids to vectors (Chapter 3).

Looking up row `i` of a (V, d_model) matrix W is the same as multiplying the one-hot vector of `i` by W:
`one_hot(i) @ W == W[i]`. `one_hot_lookup` computes it that way so the chapter can check the two agree;
the module itself uses the lookup, which never builds the (B, T, V) one-hot tensor.

Leaves out: padding_idx, max_norm and sparse gradients of `nn.Embedding`; positions (see `positional.py`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _check_ids(idx: torch.Tensor, vocab_size: int, name: str = "idx") -> None:
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long:
        raise ValueError(f"{name} must be a LongTensor of token ids, got {getattr(idx, 'dtype', type(idx).__name__)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= vocab_size):
        raise ValueError(
            f"{name} has ids outside [0, {vocab_size}): min {idx.min().item()}, max {idx.max().item()}"
        )


class TokenEmbedding(nn.Module):
    """`(B, T)` token ids -> `(B, T, d_model)` vectors: row `idx[b, t]` of `weight` (V, d_model)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_ids(idx, self.vocab_size)
        return F.embedding(idx, self.weight)  # (B, T, d_model) == self.weight[idx]

    def one_hot_lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """The same lookup written as a matrix product: one_hot(idx) (B, T, V) @ weight (V, d_model)."""
        _check_ids(idx, self.vocab_size)
        return F.one_hot(idx, self.vocab_size).to(self.weight.dtype) @ self.weight

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.d_model}"
