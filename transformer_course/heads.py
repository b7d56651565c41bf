"""Heads: what sits on top of the last block's hidden states `(B, T, d_model)` (Chapter 12).

- `LMHead`: a linear map to vocabulary logits `(B, T, V)`, either with its own weight or tied to the token
  embedding (Press & Wolf 2017; GPT-2 ties, Llama 2 does not): then logits = hidden @ E^T, a score for every
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

from .utils import check_bool, check_input, check_int, check_number, check_tensor


class LMHead(nn.Module):
    """hidden `(B, T, d_model)` -> logits `(B, T, V)`. With `tied_to` (a module with a `(V, d_model)` `.weight`,
    the token embedding) the head uses that very Parameter, so the two are trained as one."""

    def __init__(self, d_model: int, vocab_size: int, tied_to: nn.Module | None = None):
        super().__init__()
        check_int("d_model", d_model)
        check_int("vocab_size", vocab_size)
        if tied_to is not None:
            check_tensor("tied_to.weight", getattr(tied_to, "weight", None), (vocab_size, d_model), "float")
            self.weight = tied_to.weight  # the same nn.Parameter, registered under both modules
        else:
            self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)
        self.tied = tied_to is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        check_input("hidden", hidden, self.weight)
        return F.linear(hidden, self.weight)  # (B, T, V) = hidden @ W^T

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}, tied={self.tied}"


def last_token_index(padding_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
    """Index `(B,)` of the rightmost real token of each row (T-1 for every row without a padding mask)."""
    check_int("B", B, 0)
    check_int("T", T)
    if padding_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long)
    check_tensor("padding_mask", padding_mask, (B, T), torch.bool)
    positions = torch.arange(T, device=padding_mask.device)
    return (positions * padding_mask).argmax(dim=-1)  # rightmost True (0 for an all-padding row)


class SequenceClassificationHead(nn.Module):
    """hidden `(B, T, d_model)` -> logits `(B, n_classes)` read from each row's last real token."""

    def __init__(self, d_model: int, n_classes: int, bias: bool = False):
        super().__init__()
        self.score = nn.Linear(check_int("d_model", d_model), check_int("n_classes", n_classes),
                               bias=check_bool("bias", bias))

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_input("hidden", hidden, self.score.weight, ("B", "T"))
        if padding_mask is not None:
            check_tensor("padding_mask", padding_mask, device=hidden.device)
        B, T, _ = hidden.shape
        last = last_token_index(padding_mask, B, T).to(hidden.device)  # (B,)
        pooled = hidden[torch.arange(B, device=hidden.device), last]  # (B, d_model)
        return self.score(pooled)  # (B, n_classes)


class TokenClassificationHead(nn.Module):
    """hidden `(B, T, d_model)` -> logits `(B, T, n_labels)`, one prediction per token."""

    def __init__(self, d_model: int, n_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(check_number("dropout", dropout, "[0, 1)"))
        self.classifier = nn.Linear(check_int("d_model", d_model), check_int("n_labels", n_labels))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        check_input("hidden", hidden, self.classifier.weight)
        return self.classifier(self.dropout(hidden))  # (B, T, n_labels)
