"""Checkers for Chapter 3, "Embeddings". Each takes the reader's function and never raises."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..embedding import nearest_neighbours
from ..model import GPT, GPTConfig
from .base import CheckResult, check_tensor, checker, run_with_timeout

# ------------------------------------------------------------------------------------------------------
# ex-03-embedding-grad: the gradient of the table is one_hot^T @ upstream, a scatter-add into the rows


def _grad_case():
    g = torch.Generator().manual_seed(3)
    idx = torch.tensor([[2, 7, 2, 0, 5], [7, 7, 1, 2, 9]])  # (B, T): 2 and 7 appear three times each
    upstream = torch.randn(2, 5, 4, generator=g)  # (B, T, d)
    return idx, upstream, 12  # V = 12: rows 3, 4, 6, 8, 10, 11 are never looked up


def _autograd_table_grad(idx, upstream, vocab_size):
    weight = torch.zeros(vocab_size, upstream.shape[-1], requires_grad=True)
    (F.embedding(idx, weight) * upstream).sum().backward()
    return weight.grad  # (V, d)


@checker
def check_embedding_grad(fn) -> CheckResult:
    """`fn(idx, upstream, vocab_size) -> (V, d)`: d loss / d table, given upstream = d loss / d (table[idx])."""
    idx, upstream, V = _grad_case()
    expected = _autograd_table_grad(idx, upstream, V)
    got, problem = run_with_timeout(fn, idx.clone(), upstream.clone(), V)
    if problem is not None:
        return problem
    if isinstance(got, torch.Tensor) and got.shape == upstream.shape:
        return CheckResult(False, f"you returned a tensor shaped like upstream {tuple(upstream.shape)}; the "
                                  f"gradient of the table has one row per vocabulary entry, (V, d) = "
                                  f"({V}, {upstream.shape[-1]})")
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point():
        hint = _grad_hint(got.detach(), idx, upstream, V)
        if hint:
            return CheckResult(False, hint)
    result = check_tensor(got, expected, name="the table's gradient")
    if result.passed:
        return CheckResult(True, "one row per vocabulary entry; repeated tokens add up, unused rows stay 0")
    return result


def _grad_hint(got, idx, upstream, V) -> str | None:
    d = upstream.shape[-1]
    expected = _autograd_table_grad(idx, upstream, V)
    if torch.allclose(got, expected, atol=1e-5):
        return None
    flat_idx, flat_up = idx.reshape(-1), upstream.reshape(-1, d)
    overwritten = torch.zeros(V, d)
    overwritten[flat_idx] = flat_up  # one write per row wins
    if torch.allclose(got, overwritten, atol=1e-5) or _rows_match_one_occurrence(got, flat_idx, flat_up, expected):
        return ("rows of tokens that occur more than once are wrong: a repeated token must add up all its "
                "upstream vectors (index_add_, or one_hot(idx).T @ upstream), not keep one of them")
    counts = torch.bincount(flat_idx, minlength=V).clamp_min(1)[:, None].float()
    if torch.allclose(got, expected / counts, atol=1e-5):
        return "you averaged the upstream vectors of a repeated token; the gradient sums them"
    first_row = _autograd_table_grad(idx[:1], upstream[:1], V)
    if torch.allclose(got, first_row, atol=1e-5):
        return "only the first sequence of the batch contributed; every (b, t) position adds to its token's row"
    untouched = torch.bincount(flat_idx, minlength=V) == 0
    if got[untouched].abs().max() > 0:
        return ("rows of tokens that were never looked up must have gradient 0: the loss does not depend on "
                "them")
    return None


def _rows_match_one_occurrence(got, flat_idx, flat_up, expected) -> bool:
    """True when single-occurrence rows are right and each repeated row equals one of its upstream vectors."""
    counts = torch.bincount(flat_idx, minlength=got.shape[0])
    for row in range(got.shape[0]):
        if counts[row] <= 1:
            if not torch.allclose(got[row], expected[row], atol=1e-5):
                return False
        elif not any(torch.allclose(got[row], flat_up[j], atol=1e-5) for j in (flat_idx == row).nonzero().flatten()):
            return False
    return True


# ------------------------------------------------------------------------------------------------------
# ex-03-untie: give a tied model's LM head its own copy of the table


def _tied_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.gpt2_like(vocab_size=40, context_length=16, n_layers=1, n_heads=2, d_model=8)).eval()


@checker
def check_untie(fn) -> CheckResult:
    """`fn(model) -> model`: the LM head gets its own Parameter, initialised to a copy of the token table."""
    model = _tied_model()
    V, d = model.config.vocab_size, model.config.d_model
    idx = torch.tensor([[1, 5, 9, 5, 30]])  # (1, T)
    with torch.no_grad():
        before = model(idx)[0]
    n_before = model.num_parameters()
    got, problem = run_with_timeout(fn, model)
    if problem is not None:
        return problem
    if got is None:
        return CheckResult(False, "your function returned None; return the model (changed in place is fine)")
    if not isinstance(got, GPT):
        return CheckResult(False, f"return the model (a GPT), got {type(got).__name__}")
    head, table = got.lm_head.weight, got.tok_emb.weight
    if head is table:
        return CheckResult(False, "still tied: the head uses the very same Parameter as the embedding; give it "
                                  "its own, e.g. nn.Parameter(model.tok_emb.weight.detach().clone())")
    if not isinstance(head, nn.Parameter):
        return CheckResult(False, "the head's weight is a plain tensor, not an nn.Parameter: it would not be "
                                  "in model.parameters(), so the optimizer would never train it")
    if tuple(head.shape) != (V, d):
        return CheckResult(False, f"the head's weight has shape {tuple(head.shape)}, expected (V, d_model) = "
                                  f"({V}, {d}): logits = h @ W.T needs one row per token")
    if head.untyped_storage().data_ptr() == table.untyped_storage().data_ptr():
        return CheckResult(False, "the two Parameters share memory, so training one changes the other: "
                                  "copy the values with .clone()")
    with torch.no_grad():
        after = got(idx)[0]
    if not torch.allclose(after, before, atol=1e-5):
        return CheckResult(False, "the logits changed: start the new head as a copy of the embedding table, "
                                  "so that untying alone changes nothing until training moves the two apart")
    if got.num_parameters() != n_before + V * d:
        return CheckResult(False, f"the model has {got.num_parameters():,} parameters, expected "
                                  f"{n_before:,} + V × d_model = {n_before + V * d:,}")
    return CheckResult(True, f"the head is its own {V} × {d} Parameter (+{V * d} parameters), logits unchanged")


# ------------------------------------------------------------------------------------------------------
# ex-03-neighbours: cosine nearest neighbours


def _neighbour_table():
    """Rows whose lengths vary a hundredfold, so the dot product and the cosine rank them differently."""
    g = torch.Generator().manual_seed(11)
    directions = torch.randn(30, 6, generator=g)
    lengths = torch.logspace(-1, 1, 30)[torch.randperm(30, generator=g)]  # 0.1 .. 10
    return directions * lengths[:, None]  # (V, d) = (30, 6)


def _ids(weight, scores, i, k, descending=True):
    scores = scores.clone()
    scores[i] = float("-inf") if descending else float("inf")
    return torch.argsort(scores, descending=descending, stable=True)[:k]


@checker
def check_nearest_tokens(fn) -> CheckResult:
    """`fn(weight, i, k) -> ids (k,)`: the k rows most similar to row i by cosine, most similar first, i left out."""
    weight = _neighbour_table()
    for i, k in ((0, 5), (17, 3)):
        expected, _ = nearest_neighbours(weight, i, k)
        got, problem = run_with_timeout(fn, weight.clone(), i, k)
        if problem is not None:
            return problem
        if isinstance(got, (list, tuple)) and all(isinstance(j, int) for j in got):
            got = torch.tensor(got, dtype=torch.long)
        if isinstance(got, tuple) and got and isinstance(got[0], torch.Tensor):
            return CheckResult(False, "return only the ids, a LongTensor of shape (k,), not a tuple")
        if isinstance(got, torch.Tensor) and got.is_floating_point() and got.shape == (k,):
            return CheckResult(False, "you returned similarity values; return the ids of the rows (the indices "
                                      "from topk/argsort), a LongTensor")
        if isinstance(got, torch.Tensor) and got.shape == (k,) and not got.is_floating_point():
            hint = _neighbour_hint(got, weight, i, k)
            if hint:
                return CheckResult(False, f"for row {i}, k = {k}: {hint}")
        result = check_tensor(got, expected, name=f"the {k} neighbours of row {i}")
        if not result.passed:
            return result
    return CheckResult(True, "cosine similarity, the token itself left out, most similar first")


def _neighbour_hint(got, weight, i, k) -> str | None:
    unit = weight / weight.norm(dim=1, keepdim=True)
    cos, dot = unit @ unit[i], weight @ weight[i]
    expected = _ids(weight, cos, i, k)
    if torch.equal(got, expected):
        return None
    if torch.equal(got, _ids(weight, dot, i, k)):
        return ("these are the largest dot products, which favour long rows; divide each row by its length "
                "first (cosine similarity)")
    with_self = torch.argsort(cos, descending=True, stable=True)[:k]
    if torch.equal(got, with_self) or int(i) in got.tolist():
        return "the row itself is its own nearest neighbour (cosine 1); leave it out"
    if torch.equal(got, _ids(weight, cos, i, k, descending=False)):
        return "these are the least similar rows; sort in descending order of cosine"
    distance = (weight - weight[i]).norm(dim=1)
    if torch.equal(got, _ids(weight, distance, i, k, descending=False)):
        return "these are the nearest rows by Euclidean distance; the exercise asks for cosine similarity"
    if sorted(got.tolist()) == sorted(expected.tolist()):
        return "the right rows in the wrong order: most similar first"
    return None
