"""Token embeddings (Chapter 3): the lookup equals one-hot × matrix and PyTorch's nn.Embedding (values and
gradients), and the geometry helpers agree with references computed another way (F.cosine_similarity, NumPy's
SVD, torch.pca_lowrank)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_course.embedding import (
    TokenEmbedding,
    cosine_similarity_matrix,
    group_cosine,
    nearest_neighbours,
    pca_2d,
)


def _table(V=12, d=5, seed=0):
    return torch.randn(V, d, generator=torch.Generator().manual_seed(seed))


def test_lookup_equals_one_hot_product_and_nn_embedding():
    torch.manual_seed(0)
    emb = TokenEmbedding(50, 8)
    idx = torch.tensor([[3, 7, 3, 49], [0, 1, 2, 3]])  # (B, T)
    out = emb(idx)
    assert out.shape == (2, 4, 8)
    torch.testing.assert_close(emb.one_hot_lookup(idx), out, atol=0, rtol=0)  # one nonzero term per sum
    reference = nn.Embedding.from_pretrained(emb.weight.detach().clone(), freeze=False)
    torch.testing.assert_close(reference(idx), out, atol=0, rtol=0)
    assert torch.equal(out[0, 1], emb.weight[7])


def test_gradients_match_nn_embedding_and_touch_only_the_looked_up_rows():
    torch.manual_seed(0)
    emb = TokenEmbedding(20, 6)
    reference = nn.Embedding.from_pretrained(emb.weight.detach().clone(), freeze=False)
    idx = torch.tensor([[4, 9, 4], [11, 4, 0]])  # token 4 three times
    upstream = torch.randn(2, 3, 6)
    (emb(idx) * upstream).sum().backward()
    (reference(idx) * upstream).sum().backward()
    torch.testing.assert_close(emb.weight.grad, reference.weight.grad)
    touched = emb.weight.grad.abs().sum(dim=1) > 0
    assert touched.nonzero().flatten().tolist() == [0, 4, 9, 11]
    # a repeated token accumulates: row 4's gradient is the sum of its three upstream vectors
    torch.testing.assert_close(emb.weight.grad[4], upstream[0, 0] + upstream[0, 2] + upstream[1, 1])
    # the one-hot product gives the same gradient (its backward is one_hot^T @ upstream)
    w = emb.weight.detach().clone().requires_grad_()
    (F.one_hot(idx, 20).float() @ w * upstream).sum().backward()
    torch.testing.assert_close(w.grad, emb.weight.grad)


@pytest.mark.parametrize("idx, match", [
    (torch.tensor([[1.0, 2.0]]), "LongTensor"),
    ([[1, 2]], "LongTensor"),
    (torch.tensor([[1, 10]]), r"outside \[0, 10\)"),
    (torch.tensor([[-1, 2]]), "outside"),
])
def test_lookup_rejects_bad_ids(idx, match):
    emb = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=match):
        emb(idx)
    with pytest.raises(ValueError, match=match):
        emb.one_hot_lookup(idx)


def test_cosine_matrix_matches_torch_cosine_similarity():
    a, b = _table(7, 5, 1), _table(4, 5, 2)
    expected = F.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1)  # (7, 4)
    torch.testing.assert_close(cosine_similarity_matrix(a, b), expected)
    square = cosine_similarity_matrix(a)
    torch.testing.assert_close(square.diagonal(), torch.ones(7))
    torch.testing.assert_close(square, square.T)
    # direction only: rescaling rows changes nothing; a zero row gives 0, not NaN
    torch.testing.assert_close(cosine_similarity_matrix(a * torch.arange(1.0, 8.0)[:, None], b), expected)
    assert cosine_similarity_matrix(torch.zeros(1, 5), b).abs().max() == 0


def test_cosine_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D floating"):
        cosine_similarity_matrix(torch.zeros(3))
    with pytest.raises(ValueError, match="2-D floating"):
        cosine_similarity_matrix(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same row length"):
        cosine_similarity_matrix(torch.zeros(3, 2), torch.zeros(3, 4))


def test_nearest_neighbours_hand_example():
    w = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [0.5, 0.01]])
    ids, sims = nearest_neighbours(w, 0, k=4)
    assert ids.tolist() == [4, 1, 2, 3]  # row 4 is short but points almost the same way
    assert sims[-1].item() == -1.0
    ids, _ = nearest_neighbours(w, 0, k=2, exclude=[4])
    assert ids.tolist() == [1, 2]


def test_nearest_neighbours_match_brute_force_numpy():
    w = _table(40, 8, 3)
    ids, sims = nearest_neighbours(w, 5, k=6)
    x = w.numpy().astype(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit[5]
    cos[5] = -np.inf
    expected = np.argsort(-cos, kind="stable")[:6]
    assert ids.tolist() == expected.tolist()
    np.testing.assert_allclose(sims.numpy(), cos[expected], rtol=1e-5)


def test_nearest_neighbours_ties_go_to_the_lower_id():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [3.0, 0.0]])
    assert nearest_neighbours(w, 0, k=2)[0].tolist() == [2, 3]


@given(seed=st.integers(0, 10_000))
@settings(max_examples=20, deadline=None, derandomize=True, database=None)
def test_neighbours_are_invariant_under_rotation_and_row_scaling(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(30, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))  # a random orthogonal matrix
    scale = torch.rand(30, 1, generator=g, dtype=torch.float64) + 0.5
    ids, sims = nearest_neighbours(w, 0, k=5)
    ids2, sims2 = nearest_neighbours(w @ q * scale, 0, k=5)
    torch.testing.assert_close(sims2, sims)
    assert ids2.tolist() == ids.tolist()


@pytest.mark.parametrize("kwargs, match", [
    (dict(i=12), r"i must be a row index in \[0, 12\)"),
    (dict(i=-1), "i must be"),
    (dict(i=0, k=0), "k must be"),
    (dict(i=0, k=12), r"k must be an int in \[1, 11\]"),
    (dict(i=0, k=10, exclude=[1, 2]), r"in \[1, 9\]"),
])
def test_nearest_neighbours_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbours(_table(), **kwargs)


def test_group_cosine_hand_example_and_random_table():
    w = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    within, across = group_cosine(w, [[0, 1], [2, 3]])
    c = torch.nn.functional.cosine_similarity
    assert within == pytest.approx(((c(w[0], w[1], dim=0) + c(w[2], w[3], dim=0)) / 2).item(), abs=1e-6)
    pairs = [c(w[i], w[j], dim=0) for i in (0, 1) for j in (2, 3)]
    assert across == pytest.approx((sum(pairs) / 4).item(), abs=1e-6)
    within, across = group_cosine(_table(400, 256, 4), [list(range(0, 20)), list(range(20, 40))])
    assert abs(within) < 0.05 and abs(across) < 0.05  # random directions in 256-d are nearly orthogonal


@pytest.mark.parametrize("groups, match", [
    ([[0, 1]], "at least two groups"),
    ([[0, 1], [2]], "at least two groups"),
    ([[0, 1], [1, 2]], "share"),
    ([[0, 1], [2, 12]], r"\[0, 12\)"),
])
def test_group_cosine_rejects_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        group_cosine(_table(), groups)


def test_pca_2d_matches_numpy_svd_and_pca_lowrank_up_to_sign():
    x = _table(50, 10, 5) * torch.linspace(3, 0.1, 10)  # distinct variances: well separated components
    coords = pca_2d(x)
    assert coords.shape == (50, 2) and coords.dtype == x.dtype
    centred = x.double().numpy() - x.double().numpy().mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    reference = torch.from_numpy(u[:, :2] * s[:2]).float()  # (50, 2)
    lowrank_u, lowrank_s, _ = torch.pca_lowrank(x, q=10, center=True)  # q = d: exact up to rounding
    for ref in (reference, (lowrank_u * lowrank_s)[:, :2]):
        for j in range(2):
            sign = torch.sign((coords[:, j] * ref[:, j]).sum())
            torch.testing.assert_close(coords[:, j], sign * ref[:, j], atol=1e-4, rtol=1e-4)


def test_pca_2d_is_deterministic_and_sign_fixed():
    x = _table(30, 6, 6)
    coords = pca_2d(x)
    torch.testing.assert_close(pca_2d(-x), coords)  # negating the data cannot flip the picture
    torch.testing.assert_close(pca_2d(x + 5.0), coords, atol=1e-5, rtol=1e-5)  # centring
    far = coords.abs().argmax(dim=0)
    assert (coords[far, torch.arange(2)] > 0).all()
    with pytest.raises(ValueError, match="at least 2 rows"):
        pca_2d(torch.zeros(1, 4))
