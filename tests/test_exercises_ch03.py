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


def adam_updates(grads, lr, betas, eps):
    """Adam written from Kingma & Ba's Algorithm 1, independently of the checker's torch.optim reference."""
    (b1, b2), m, v, out = betas, 0.0, 0.0, []
    for t, g in enumerate(grads.tolist(), start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        out.append(-lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + eps))
    return torch.tensor(out)


def adam_updates_torch(grads, lr, betas, eps):
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, betas=betas, eps=eps)
    out = []
    for g in grads:
        before = w.detach().clone()
        w.grad = g.reshape(1).float()
        opt.step()
        out.append((w.detach() - before)[0])
    return torch.stack(out)


def simulated_share_768():
    x = torch.randn(2000, 768, generator=torch.Generator().manual_seed(5)) ** 2
    return (x.max(dim=1).values / x.sum(dim=1)).mean().item()


def test_reference_answers_pass():
    assert ch03.check_embedding_grad(embedding_grad).passed
    assert ch03.check_embedding_grad(embedding_grad_index_add).passed
    assert ch03.check_untie(untie).passed
    assert ch03.check_adam_updates(adam_updates).passed
    assert ch03.check_adam_updates(adam_updates_torch).passed  # float32 and torch.optim: fine too
    # the checker's own Adam (written out) against torch.optim.Adam, in float64
    for _, grads in ch03._ADAM_CASES:
        w = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], **ch03._ADAM_SETTINGS)
        steps = []
        for g in grads:
            before = w.detach().clone()
            w.grad = g.clone()
            opt.step()
            steps.append(w.detach() - before)
        torch.testing.assert_close(ch03._adam_variant(grads, **ch03._ADAM_SETTINGS), torch.stack(steps))
    assert ch03.check_adam_updates(lambda *a: adam_updates(*a).tolist()).passed  # a list is fine
    assert ch03.check_share_768(simulated_share_768()).passed
    assert ch03.check_share_768(torch.tensor(simulated_share_768())).passed


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


def test_adam_hints():
    def sgd(grads, lr, betas, eps):
        return -lr * grads

    assert "plain SGD" in ch03.check_adam_updates(sgd).message

    def no_bias_correction(grads, lr, betas, eps):
        (b1, b2), m, v, out = betas, 0.0, 0.0, []
        for g in grads.tolist():
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            out.append(-lr * m / (v**0.5 + eps))
        return torch.tensor(out)

    assert "bias correction" in ch03.check_adam_updates(no_bias_correction).message

    def eps_inside(grads, lr, betas, eps):
        (b1, b2), m, v, out = betas, 0.0, 0.0, []
        for t, g in enumerate(grads.tolist(), start=1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            out.append(-lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) + eps) ** 0.5)
        return torch.tensor(out)

    result = ch03.check_adam_updates(eps_inside)
    assert "1e-6" in result.message and "eps" in result.message  # only tiny gradients expose it

    def not_squared(grads, lr, betas, eps):
        (b1, b2), m, v, out = betas, 0.0, 0.0, []
        for t, g in enumerate(grads.tolist(), start=1):
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * abs(g)
            out.append(-lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + eps))
        return torch.tensor(out)

    assert "squared" in ch03.check_adam_updates(not_squared).message
    assert "against it" in ch03.check_adam_updates(lambda *a: -adam_updates(*a)).message
    assert "values after each step" in ch03.check_adam_updates(lambda *a: adam_updates(*a).cumsum(0)).message
    signs = ch03.check_adam_updates(lambda *a: -adam_updates(*a).abs())  # right only for positive gradients
    assert not signs.passed and "signs" in signs.message
    zero_t = ch03.check_adam_updates(lambda g, lr, b, e: adam_updates(g, lr, b, e) / 0)  # inf / NaN
    assert not zero_t.passed and ("NaN" in zero_t.message or "inf" in zero_t.message)
    short = ch03.check_adam_updates(lambda *a: adam_updates(*a)[:-1])
    assert not short.passed and "shape" in short.message


def test_share_768_hints():
    assert "percentage" in ch03.check_share_768(100 * simulated_share_768()).message
    assert "even spread" in ch03.check_share_768(1 / 768).message
    assert "typical size" in ch03.check_share_768(768**-0.5).message
    assert "128 dimensions" in ch03.check_share_768(0.064).message  # the value for d_model = 128
    assert "Gaussian" in ch03.check_share_768(1 / 256).message  # torch.rand: max ~1, |u|^2 ~ d / 3
    assert "too large" in ch03.check_share_768(1.3 * simulated_share_768()).message
    assert "too small" in ch03.check_share_768(0.7 * simulated_share_768()).message
    for bad in (None, "0.015", [0.015], float("nan"), float("inf"), -0.01, 0.0, 1000.0, True):
        result = ch03.check_share_768(bad)
        assert not result.passed and result.message
    # the hints never give the value away
    for bad in (1 / 768, 0.064, 0.5, 1.3 * simulated_share_768(), 0.7 * simulated_share_768()):
        message = ch03.check_share_768(bad).message
        assert not any(answer in message for answer in ("0.014", "0.015", "1.4%", "1.5%", "1.49"))


def test_share_768_reference_is_the_known_order_of_magnitude():
    # the largest of d chi-square(1) variables is about 2 ln d, so the share is about 2 ln(d) / d: 1.7 %
    # for d = 768 (an upper estimate; the exact mean is a little lower)
    import math

    share = ch03._largest_share(768)
    assert 0.7 * 2 * math.log(768) / 768 < share < 2 * math.log(768) / 768


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch03.check_embedding_grad, ch03.check_untie, ch03.check_adam_updates):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text"):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch03.check_embedding_grad(lambda idx, up, V: torch.full((V, up.shape[-1]), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch03.check_adam_updates(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 20  # its limit is 10 s (see check_adam_updates)
