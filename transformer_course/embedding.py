"""Token embeddings: a lookup table from token ids to vectors (Chapter 3).

Looking up row `i` of a (V, d_model) matrix W is the same as multiplying the one-hot vector of `i` by W:
`one_hot(i) @ W == W[i]`. `one_hot_lookup` computes it that way so the chapter can check the two agree;
the module itself uses the lookup, which never builds the (B, T, V) one-hot tensor.

Tools to look at a learned table's geometry, rows compared by direction (cosine) rather than length:
`cosine_similarity_matrix`, `nearest_neighbours`, `group_cosine` (mean cosine within word groups and across
them) and `pca_2d` (a deterministic 2-D projection for plots).

Leaves out: padding_idx, max_norm and sparse gradients of `nn.Embedding`; positions (see `positional.py`);
analogy arithmetic ("king - man + woman") and non-linear projections (t-SNE, UMAP).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .utils import check_ids, check_int, check_number, check_tensor, describe


def _row_ids(name: str, ids, V: int) -> list[int]:
    """The ints of `ids` (a list or tuple of ints, or an integer tensor), each a row of a `(V, d)` table."""
    if isinstance(ids, torch.Tensor) and not ids.is_floating_point():
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple, range, set)) or not all(
            isinstance(j, int) and not isinstance(j, bool) and 0 <= j < V for j in ids):
        raise ValueError(f"{name} must be a list of row ids, ints in [0, {V}), got {describe(ids)}")
    return list(ids)


class TokenEmbedding(nn.Module):
    """`(B, T)` token ids -> `(B, T, d_model)` vectors: row `idx[b, t]` of `weight` (V, d_model)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size, self.d_model = check_int("vocab_size", vocab_size), check_int("d_model", d_model)
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        check_ids("idx", idx, self.vocab_size, device=self.weight.device)
        return F.embedding(idx, self.weight)  # (B, T, d_model) == self.weight[idx]

    def one_hot_lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """The same lookup written as a matrix product: one_hot(idx) (B, T, V) @ weight (V, d_model)."""
        check_ids("idx", idx, self.vocab_size, device=self.weight.device)
        return F.one_hot(idx, self.vocab_size).to(self.weight.dtype) @ self.weight

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.d_model}"


def _check_rows(x, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """x `(N, d)` floating point (of `like`'s dtype and device, if given), detached."""
    check_tensor(name, x, ("N", "d"), "float" if like is None else like.dtype, None if like is None else like.device)
    return x.detach()


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Cosines between the rows of `a` (N, d) and of `b` (M, d; default `a`): `(N, M)`, each in [-1, 1].

    cos(u, v) = u·v / (|u| |v|): it ignores the rows' lengths and compares their directions only.
    A zero row has cosine 0 with everything (its norm is clamped to `eps`, as `F.cosine_similarity` does).
    """
    check_number("eps", eps)
    a = _check_rows(a, "a")
    b = a if b is None else _check_rows(b, "b", like=a)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same row length d, got {tuple(a.shape)} and {tuple(b.shape)}")
    a_unit = a / a.norm(dim=1, keepdim=True).clamp_min(eps)  # (N, d)
    b_unit = b / b.norm(dim=1, keepdim=True).clamp_min(eps)  # (M, d)
    return a_unit @ b_unit.T  # (N, M)


def nearest_neighbours(weight: torch.Tensor, i: int, k: int = 5, exclude=()) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` rows of `weight` (V, d) most similar to row `i` by cosine, leaving out `i` itself and `exclude`.

    Returns `(ids, cosines)`, both `(k,)`, most similar first; ties go to the lower id.
    """
    weight = _check_rows(weight, "weight")
    V = weight.shape[0]
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < V:
        raise ValueError(f"i must be a row index in [0, {V}), got {i!r}")
    left_out = {i, *_row_ids("exclude", exclude, V)}
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= V - len(left_out):
        raise ValueError(f"k must be an int in [1, {V - len(left_out)}] (V = {V} rows, {len(left_out)} left out), "
                         f"got {k!r}")
    sims = cosine_similarity_matrix(weight[i:i + 1], weight)[0]  # (V,)
    sims[list(left_out)] = float("-inf")
    order = torch.argsort(-sims, stable=True)[:k]  # stable: equal cosines keep id order
    return order, sims[order]


def group_cosine(weight: torch.Tensor, groups) -> tuple[float, float]:
    """Mean cosine between rows of the same group, and between rows of different groups.

    `groups` is a list of lists of row ids (e.g. days, animals, colours), each with at least two ids, no id
    in two groups. Pairs of a row with itself are left out. A table whose geometry reflects the groups has
    `within` well above `across`; a random table has both near 0.
    """
    weight = _check_rows(weight, "weight")
    if not isinstance(groups, (list, tuple)):
        raise ValueError(f"groups must be a list of lists of row ids, got {describe(groups)}")
    groups = [_row_ids("each group", g, weight.shape[0]) for g in groups]
    if len(groups) < 2 or any(len(g) < 2 for g in groups):
        raise ValueError(f"groups must hold at least two groups of at least two ids each, got sizes "
                         f"{[len(g) for g in groups]}")
    ids = [j for g in groups for j in g]
    if len(set(ids)) != len(ids):
        raise ValueError("groups must not share ids")
    label = torch.tensor([n for n, g in enumerate(groups) for _ in g], device=weight.device)  # (N,)
    sims = cosine_similarity_matrix(weight[ids])  # (N, N)
    same = label[:, None] == label[None, :]  # (N, N)
    off_diagonal = ~torch.eye(len(ids), dtype=torch.bool, device=weight.device)
    return sims[same & off_diagonal].mean().item(), sims[~same].mean().item()


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Project the rows of `x` (N, d) onto their two principal directions: `(N, 2)`.

    The rows are centred, then projected onto the top two right singular vectors of the centred matrix.
    A singular vector's sign is arbitrary, so each axis is flipped to put the point farthest from the centre
    along it on the positive side: the same data always gives the same picture.
    """
    x = _check_rows(x, "x")
    if x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"x must have at least 2 rows and 2 columns, got {tuple(x.shape)}")
    centred = x - x.mean(dim=0, keepdim=True)  # (N, d)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)  # vh: (min(N, d), d)
    coords = centred.double() @ vh[:2].T  # (N, 2)
    signs = torch.sign(coords.gather(0, coords.abs().argmax(dim=0, keepdim=True)))  # (1, 2)
    return (coords * torch.where(signs == 0, 1.0, signs)).to(x.dtype)
