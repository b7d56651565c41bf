"""Chapter 3's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from transformer_course.checkpoints import load_checkpoint, save_checkpoint
from transformer_course.exercises import ch03
from transformer_course.tokenization import BPETokenizer
from transformer_course.training import TrainConfig, lr_at


def embedding_grad(idx, upstream, vocab_size):
    one_hot = F.one_hot(idx, vocab_size).to(upstream.dtype)  # (B, T, V)
    return one_hot.reshape(-1, vocab_size).T @ upstream.reshape(-1, upstream.shape[-1])  # (V, d)


def embedding_grad_index_add(idx, upstream, vocab_size):
    d = upstream.shape[-1]
    return torch.zeros(vocab_size, d).index_add_(0, idx.reshape(-1), upstream.reshape(-1, d))


def untie(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())
    model.config.tie_weights = False  # so that a model rebuilt from the config has a head of its own
    return model


def decay_shrink(schedule):
    """Written from PyTorch's AdamW rule theta <- theta - lr_t * lambda * theta, one factor per update."""
    factor = 1.0
    for step in range(schedule.steps):
        factor *= 1 - lr_at(step, schedule) * schedule.weight_decay
    return factor


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
    assert ch03.check_decay_shrink(decay_shrink).passed
    assert ch03.check_decay_shrink(lambda s: torch.tensor(decay_shrink(s))).passed
    # exp(-lambda * sum of lr_t), the first-order estimate, is within the checker's 1 %
    assert ch03.check_decay_shrink(
        lambda s: math.exp(-s.weight_decay * sum(lr_at(t, s) for t in range(s.steps)))).passed


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


def _untie_without_config(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())
    return model


def test_untie_must_survive_save_and_reload():
    result = ch03.check_untie(_untie_without_config)
    assert not result.passed and "comes back tied" in result.message
    assert "tok_emb" not in result.message and "clone" not in result.message  # no code in the hints


def test_untie_round_trip_through_real_checkpoints(tmp_path):
    # independent of the checker's own rebuild: the package's save_checkpoint / load_checkpoint
    tokenizer = BPETokenizer.train("abc abd abe " * 20, vocab_size=260)  # any tokenizer: not checked
    for fn, stays_untied in ((untie, True), (_untie_without_config, False)):
        model = fn(ch03._tied_model())
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        reloaded, _, _ = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, tokenizer))
        assert (reloaded.lm_head.weight is not reloaded.tok_emb.weight) == stays_untied
        assert torch.equal(reloaded.tok_emb.weight, model.tok_emb.weight) == stays_untied


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
    assert "1e-6" in result.message and "inside the root" in result.message  # only tiny gradients expose it

    def no_eps(grads, lr, betas, eps):
        return adam_updates(grads, lr, betas, 0.0)

    result = ch03.check_adam_updates(no_eps)
    assert not result.passed and "without eps" in result.message
    for message in (result.message, ch03.check_adam_updates(eps_inside).message):
        assert "1.5e-3" not in message and "0.0015" not in message  # the prediction is not given away

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


def test_decay_shrink_hints():
    course = ch03._decay_cases()[0][1]
    # independent numbers: a 3-step schedule by hand, lr 0.5 (warm-up 1/3, 2/3), then cosine down to min_lr
    tiny = TrainConfig(steps=4, batch_size=1, lr=0.5, min_lr=0.1, warmup_steps=2, weight_decay=0.1)
    assert [round(lr_at(t, tiny), 6) for t in range(4)] == [0.25, 0.5, 0.5, 0.1]
    assert math.isclose(decay_shrink(tiny), 0.975 * 0.95 * 0.95 * 0.99)
    assert math.isclose(ch03._shrink(tiny), 0.975 * 0.95 * 0.95 * 0.99)
    peak = ch03.check_decay_shrink(lambda s: (1 - s.lr * s.weight_decay) ** s.steps)
    assert not peak.passed and "peak learning rate" in peak.message
    no_lr = ch03.check_decay_shrink(lambda s: (1 - s.weight_decay) ** s.steps)
    assert not no_lr.passed and "learning rate of the step" in no_lr.message
    summed = ch03.check_decay_shrink(
        lambda s: 1 - s.weight_decay * sum(lr_at(t, s) for t in range(s.steps)))
    assert not summed.passed and "multiply" in summed.message
    # right on the course's schedule only (e.g. a constant): the second schedule catches it
    const = ch03.check_decay_shrink(lambda s: decay_shrink(course))
    assert not const.passed and "400 steps" in const.message
    for bad in (None, "0.78", [0.78], float("nan"), float("inf"), -0.5, 2.0, True):
        result = ch03.check_decay_shrink(lambda s, bad=bad: bad)
        assert not result.passed and result.message
    for wrong in (peak, no_lr, summed):  # the hints never give the value away
        assert "0.78" not in wrong.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch03.check_embedding_grad, ch03.check_untie, ch03.check_adam_updates,
                  ch03.check_decay_shrink):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: "text"):
            result = check(answer)
            assert not result.passed and result.message
    nan = ch03.check_embedding_grad(lambda idx, up, V: torch.full((V, up.shape[-1]), float("nan")))
    assert not nan.passed and "NaN" in nan.message
    started = time.monotonic()
    hung = ch03.check_adam_updates(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 20  # its limit is 10 s (see check_adam_updates)


def test_decay_shrink_matches_the_untied_checkpoint():
    # the checker's factor on the course's schedule is the one the shipped untied model's unused rows show
    from transformer_course.model import GPT
    from transformer_course.train import CONFIGS, course_data

    model, tokenizer, meta = load_checkpoint("small-untied")
    config, schedule = CONFIGS["small-untied"]
    torch.manual_seed(schedule.seed)
    start = GPT(config).tok_emb.weight.detach()
    train_ids, _ = course_data(tokenizer)
    unused = torch.bincount(train_ids, minlength=config.vocab_size) == 0
    end, begin = model.tok_emb.weight.detach()[unused], start[unused]
    fitted = ((end * begin).sum() / (begin * begin).sum()).item()
    assert meta["steps"] == schedule.steps
    assert math.isclose(fitted, ch03._shrink(ch03._decay_cases()[0][1]), rel_tol=1e-4)
    assert math.isclose(decay_shrink(schedule), fitted, rel_tol=1e-4)
