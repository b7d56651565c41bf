"""Chapter 3's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from transformer_course.exercises import ch03


def embedding_grad(idx, upstream, vocab_size):
    one_hot = F.one_hot(idx, vocab_size).to(upstream.dtype)  # (B, T, V)
    return one_hot.reshape(-1, vocab_size).T @ upstream.reshape(-1, upstream.shape[-1])  # (V, d)


def embedding_grad_index_add(idx, upstream, vocab_size):
    d = upstream.shape[-1]
    return torch.zeros(vocab_size, d).index_add_(0, idx.reshape(-1), upstream.reshape(-1, d))


def untie(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())
    return model


def nearest_tokens(weight, i, k):
    unit = weight / weight.norm(dim=1, keepdim=True)
    sims = unit @ unit[i]
    sims[i] = float("-inf")
    return sims.topk(k).indices


def test_reference_answers_pass():
    assert ch03.check_embedding_grad(embedding_grad).passed
    assert ch03.check_embedding_grad(embedding_grad_index_add).passed
    assert ch03.check_untie(untie).passed
    assert ch03.check_nearest_tokens(nearest_tokens).passed
    assert ch03.check_nearest_tokens(lambda w, i, k: nearest_tokens(w, i, k).tolist()).passed  # a list is fine


def test_embedding_grad_hints():
    def overwrite(idx, up, V):
        g = torch.zeros(V, up.shape[-1])
        for b in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                g[idx[b, t]] = up[b, t]  # the last occurrence wins
        return g

    result = ch03.check_embedding_grad(overwrite)
    assert not result.passed and "add up" in result.message

    def averaged(idx, up, V):
        counts = torch.bincount(idx.reshape(-1), minlength=V).clamp_min(1)[:, None]
        return embedding_grad(idx, up, V) / counts

    result = ch03.check_embedding_grad(averaged)
    assert not result.passed and "averaged" in result.message
    result = ch03.check_embedding_grad(lambda idx, up, V: embedding_grad(idx[:1], up[:1], V))
    assert not result.passed and "first sequence" in result.message
    result = ch03.check_embedding_grad(lambda idx, up, V: up)
    assert not result.passed and "one row per vocabulary entry" in result.message
    result = ch03.check_embedding_grad(lambda idx, up, V: embedding_grad(idx, up, V).T)
    assert not result.passed and "swapped" in result.message
    result = ch03.check_embedding_grad(lambda idx, up, V: embedding_grad(idx, up, V) + 0.1)
    assert not result.passed and "never looked up" in result.message


def test_untie_hints():
    def same(model):
        model.lm_head.weight = model.tok_emb.weight
        return model

    assert "still tied" in ch03.check_untie(same).message

    def plain_tensor(model):
        model.lm_head.weight = model.tok_emb.weight.detach().clone()
        return model

    result = ch03.check_untie(plain_tensor)  # PyTorch itself refuses; the checker passes its message on
    assert not result.passed and "raised TypeError" in result.message and "Parameter" in result.message

    def data_swap(model):
        model.lm_head.weight.data = model.tok_emb.weight.detach().clone()  # one Parameter, new values
        return model

    assert "still tied" in ch03.check_untie(data_swap).message

    def shared_storage(model):
        model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach())
        return model

    assert "share memory" in ch03.check_untie(shared_storage).message

    def fresh(model):
        model.lm_head.weight = nn.Parameter(torch.randn_like(model.tok_emb.weight) * 0.02)
        return model

    assert "logits changed" in ch03.check_untie(fresh).message

    def transposed(model):
        model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone().T)
        return model

    assert "(V, d_model)" in ch03.check_untie(transposed).message
    assert "returned None" in ch03.check_untie(lambda m: None).message
    assert "return the model" in ch03.check_untie(lambda m: m.lm_head).message


def test_untie_hint_for_config_flag_only():
    def flag_only(model):
        model.config.tie_weights = False  # the module was built already: nothing changes
        return model

    result = ch03.check_untie(flag_only)
    assert not result.passed and "still tied" in result.message


def test_nearest_tokens_hints():
    def dot(weight, i, k):
        sims = weight @ weight[i]
        sims[i] = float("-inf")
        return sims.topk(k).indices

    assert "dot products" in ch03.check_nearest_tokens(dot).message

    def with_self(weight, i, k):
        unit = weight / weight.norm(dim=1, keepdim=True)
        return (unit @ unit[i]).topk(k).indices

    assert "leave it out" in ch03.check_nearest_tokens(with_self).message

    def ascending(weight, i, k):
        unit = weight / weight.norm(dim=1, keepdim=True)
        sims = unit @ unit[i]
        sims[i] = float("inf")
        return sims.topk(k, largest=False).indices

    assert "least similar" in ch03.check_nearest_tokens(ascending).message

    def euclid(weight, i, k):
        dist = (weight - weight[i]).norm(dim=1)
        dist[i] = float("inf")
        return dist.topk(k, largest=False).indices

    assert "Euclidean" in ch03.check_nearest_tokens(euclid).message
    values = ch03.check_nearest_tokens(lambda w, i, k: nearest_tokens(w, i, k).float())
    assert "similarity values" in values.message
    reversed_order = ch03.check_nearest_tokens(lambda w, i, k: nearest_tokens(w, i, k).flip(0))
    assert "wrong order" in reversed_order.message


def test_the_neighbour_table_separates_cosine_from_dot_product():
    w = ch03._neighbour_table()
    for i, k in ((0, 5), (17, 3)):
        unit = w / w.norm(dim=1, keepdim=True)
        assert not torch.equal(ch03._ids(w, unit @ unit[i], i, k), ch03._ids(w, w @ w[i], i, k))


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch03.check_embedding_grad, ch03.check_untie, ch03.check_nearest_tokens):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text"):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch03.check_embedding_grad(lambda idx, up, V: torch.full((V, up.shape[-1]), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch03.check_nearest_tokens(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
