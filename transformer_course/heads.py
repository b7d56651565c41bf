"""Heads: what sits on top of the last block's hidden states `(B, T, d_model)` (Chapter 12).

- `LMHead`: a linear map to vocabulary logits `(B, T, V)`, either with its own weight or tied to the token
  embedding (Press & Wolf 2017; GPT-2 ties, Llama 2 does not): then logits = h @ E^T, a score for every
  token by similarity to its input embedding.
- `SequenceClassificationHead`: one label per sequence. A causal model's last real token is the only one
  that has seen the whole text, so pool that token (as Hugging Face's GPT2ForSequenceClassification does:
  the rightmost non-padding position, which works for left and right padding alike).
- `TokenClassificationHead`: one label per token (tagging).

Leaves out: multiple-choice and question-answering (span) heads, value heads for RL.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LMHead(nn.Module):
    """h `(B, T, d_model)` -> logits `(B, T, V)`. With `tied_to` (a module with a `(V, d_model)` `.weight`,
    the token embedding) the head uses that very Parameter, so the two are trained as one."""

    def __init__(self, d_model: int, vocab_size: int, tied_to: nn.Module | None = None):
        super().__init__()
        if tied_to is not None:
            if tuple(tied_to.weight.shape) != (vocab_size, d_model):
                raise ValueError(
                    f"tied_to.weight must be (V, d_model) = ({vocab_size}, {d_model}), "
                    f"got {tuple(tied_to.weight.shape)}"
                )
            self.weight = tied_to.weight  # the same nn.Parameter, registered under both modules
        else:
            self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)
        self.tied = tied_to is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)  # (B, T, V) = h @ W^T

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, tied={self.tied}"


def last_token_index(padding_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
    """Index `(B,)` of the rightmost real token of each row (T-1 for every row without a padding mask)."""
    if padding_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long)
    if tuple(padding_mask.shape) != (B, T) or padding_mask.dtype != torch.bool:
        raise ValueError(
            f"padding_mask must be bool (B, T) = ({B}, {T}), got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )
    positions = torch.arange(T, device=padding_mask.device)
    return (positions * padding_mask).argmax(dim=-1)  # rightmost True (0 for an all-padding row)


class SequenceClassificationHead(nn.Module):
    """h `(B, T, d_model)` -> logits `(B, n_classes)` read from each row's last real token."""

    def __init__(self, d_model: int, n_classes: int, bias: bool = False):
        super().__init__()
        self.score = nn.Linear(d_model, n_classes, bias=bias)

    def forward(self, h: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if h.dim() != 3:
            raise ValueError(f"h must be (B, T, d_model), got shape {tuple(h.shape)}")
        B, T, _ = h.shape
        last = last_token_index(padding_mask, B, T).to(h.device)  # (B,)
        pooled = h[torch.arange(B, device=h.device), last]  # (B, d_model)
        return self.score(pooled)  # (B, n_classes)


class TokenClassificationHead(nn.Module):
    """h `(B, T, d_model)` -> logits `(B, T, n_labels)`, one prediction per token."""

    def __init__(self, d_model: int, n_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, n_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(h))  # (B, T, n_labels)
