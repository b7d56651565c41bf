"""Training loop: config validation, the schedule at exact points, batches, evaluation and a loss that falls."""
import dataclasses
import math
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from transformer_course.training import TrainConfig, estimate_loss, get_batch, lr_at, make_optimizer, train


class Bigram(nn.Module):
    """A stand-in model with the course contract: `model(idx, targets) -> (logits, loss)`."""

    def __init__(self, vocab_size=11, d=16, context_length=32):
        super().__init__()
        self.config = types.SimpleNamespace(context_length=context_length)
        self.emb = nn.Embedding(vocab_size, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.head(self.norm(self.emb(idx)))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def pattern(n, period=7):
    """A stream whose next token is a function of the current one: a bigram model can learn it exactly."""
    return torch.arange(n) % period


def small_cfg(**kw):
    base = dict(steps=60, batch_size=8, block_size=16, lr=3e-2, min_lr=3e-3, warmup_steps=5,
                eval_interval=20, eval_batches=3, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", -1), ("block_size", 1.5), ("eval_interval", 0), ("eval_batches", 0),
    ("warmup_steps", 61), ("lr", 0.0), ("lr", math.nan), ("min_lr", 1.0), ("weight_decay", -0.1),
    ("grad_clip", -1.0), ("betas", (0.9,)), ("betas", (0.9, 1.0)), ("seed", "0"), ("device", "toaster"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        small_cfg(**{field: value})


def test_config_is_revalidated_by_train():
    cfg = small_cfg()
    cfg.lr = -1.0
    with pytest.raises(ValueError, match="lr"):
        train(Bigram(), pattern(200), pattern(100), cfg, progress=False)


def test_lr_schedule_at_exact_points():
    cfg = small_cfg(steps=101, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)       # first warm-up step: lr / warmup_steps
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)       # end of warm-up
    assert lr_at(10, cfg) == pytest.approx(1.0)      # cosine starts at the peak
    assert lr_at(55, cfg) == pytest.approx(0.55)     # midpoint of the cosine: (lr + min_lr) / 2
    assert lr_at(100, cfg) == pytest.approx(0.1)     # the last update
    assert lr_at(1000, cfg) == pytest.approx(0.1)    # past the end: stays at min_lr
    assert lr_at(0, small_cfg(warmup_steps=0, lr=1.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, cfg)


def test_cosine_part_matches_torch_scheduler():
    cfg = small_cfg(steps=101, warmup_steps=10, lr=1.0, min_lr=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=90, eta_min=0.1)
    for t in range(91):
        assert lr_at(10 + t, cfg) == pytest.approx(sched.get_last_lr()[0], abs=1e-9)
        opt.step()
        sched.step()


def test_get_batch_windows_are_shifted_by_one():
    ids = torch.arange(100)
    x, y = get_batch(ids, batch_size=6, block_size=10, generator=torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (6, 10) and x.dtype == torch.long
    assert torch.equal(y, x + 1)                      # y[:, t] is the token after x[:, t]
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(6, 9, dtype=torch.long))  # contiguous windows
    assert int(y.max()) <= 99
    x2, _ = get_batch(ids, 6, 10, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2)


def test_get_batch_covers_the_last_window():
    ids = torch.arange(12)
    starts = {int(get_batch(ids, 64, 10, torch.Generator().manual_seed(s))[0][:, 0].min()) for s in range(3)}
    ends = set(get_batch(ids, 256, 10, torch.Generator().manual_seed(0))[1][:, -1].tolist())
    assert starts == {0} and ends == {10, 11}


@pytest.mark.parametrize("ids, match", [
    (torch.arange(20).reshape(4, 5), "1-D"), (torch.rand(50), "integer"), ([1, 2, 3], "1-D"),
    (torch.arange(10), "more than block_size"),
])
def test_get_batch_rejects_bad_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        get_batch(ids, 2, 10)


def test_estimate_loss_is_deterministic_and_leaves_model_alone():
    torch.manual_seed(0)
    model = Bigram()
    model.train()
    cfg = small_cfg()
    first, second = estimate_loss(model, pattern(300), cfg), estimate_loss(model, pattern(300), cfg)
    assert first == second
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert first == pytest.approx(math.log(11), rel=0.2)  # untrained: about uniform over V = 11


def test_weight_decay_only_on_matrices():
    model = Bigram()
    decay, no_decay = make_optimizer(model, small_cfg(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.emb.weight), id(model.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.norm.weight), id(model.norm.bias), id(model.head.bias)}


def test_train_reduces_loss_and_reports_history(capsys):
    torch.manual_seed(0)
    model = Bigram()
    cfg = small_cfg()
    history = train(model, pattern(2000), pattern(500), cfg, progress=False)
    assert capsys.readouterr().out == ""             # progress=False prints nothing
    assert [row["step"] for row in history] == [0, 20, 40, 60]
    assert set(history[0]) == {"step", "lr", "train_loss", "val_loss"}
    assert [row["lr"] for row in history] == [lr_at(s, cfg) for s in (0, 20, 40, 60)]
    assert history[0]["val_loss"] > 2.0               # about log(11) = 2.4
    assert history[-1]["val_loss"] < 0.3 * history[0]["val_loss"]
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]


def test_train_is_reproducible():
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(train(Bigram(), pattern(2000), pattern(500), small_cfg(steps=20), progress=False))
    assert runs[0] == runs[1]


class DropoutBigram(Bigram):
    """Bigram with dropout on the embeddings: its loss depends on the dropout masks drawn."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, idx, targets=None):
        logits = self.head(self.norm(self.drop(self.emb(idx))))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def fresh_dropout_model():
    with torch.random.fork_rng():  # the same initial weights each time, whatever the global RNG holds
        torch.manual_seed(5)
        return DropoutBigram()


def test_seed_fixes_dropout_and_batches_whatever_the_global_rng():
    runs = []
    for outer_seed in (1, 2):
        torch.manual_seed(outer_seed)
        runs.append(train(fresh_dropout_model(), pattern(2000), pattern(500), small_cfg(steps=20), progress=False))
    assert runs[0] == runs[1]
    torch.manual_seed(1)
    other_seed = train(fresh_dropout_model(), pattern(2000), pattern(500), small_cfg(steps=20, seed=3),
                       progress=False)
    assert other_seed[-1]["train_loss"] != runs[0][-1]["train_loss"]


def test_dropout_masks_follow_the_seed():
    """The same batches with a different dropout stream must give a different run: dropout is really seeded."""
    cfg = small_cfg(steps=20)
    base = train(fresh_dropout_model(), pattern(2000), pattern(500), cfg, progress=False)
    real_seed = torch.manual_seed
    calls = []

    def shifted(seed):  # seed dropout's global RNG differently, leave the batch generator's seed alone
        calls.append(seed)
        return real_seed(seed + 1)

    model = fresh_dropout_model()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "manual_seed", shifted)
        shifted_run = train(model, pattern(2000), pattern(500), cfg, progress=False)
    assert calls == [cfg.seed]
    assert shifted_run[-1]["train_loss"] != base[-1]["train_loss"]


def test_train_leaves_the_callers_rng_as_it_was():
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    train(fresh_dropout_model(), pattern(500), pattern(200), small_cfg(steps=3, warmup_steps=1), progress=False)
    assert torch.equal(torch.rand(5), expected)


def test_train_progress_prints_evaluations(capsys):
    train(Bigram(), pattern(500), pattern(200), small_cfg(steps=4, warmup_steps=1, eval_interval=2), progress=True)
    captured = capsys.readouterr()
    assert "step      2" in captured.out + captured.err
    assert "val" in captured.out + captured.err


def test_clipping_is_applied(monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        norms.append(max_norm)
        return clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    train(Bigram(), pattern(500), pattern(200), small_cfg(steps=3, warmup_steps=1, grad_clip=0.5), progress=False)
    assert norms == [0.5, 0.5, 0.5]
    train(Bigram(), pattern(500), pattern(200), small_cfg(steps=3, warmup_steps=1, grad_clip=0.0), progress=False)
    assert len(norms) == 3


def test_train_validates_inputs():
    with pytest.raises(ValueError, match="context_length"):
        train(Bigram(context_length=8), pattern(500), pattern(200), small_cfg(block_size=16), progress=False)
    with pytest.raises(ValueError, match="val_ids"):
        train(Bigram(), pattern(500), pattern(10), small_cfg(), progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        train(Bigram(), pattern(500), pattern(200), small_cfg(), progress=False, checkpoint_path="x.pt")
    with pytest.raises(ValueError, match="model"):
        train("gpt", pattern(500), pattern(200), small_cfg(), progress=False)


def test_config_round_trips_through_dict():
    cfg = small_cfg(betas=(0.8, 0.9))
    assert TrainConfig(**cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, steps=5).steps == 5


# ---- Chapter 13: AdamW written out, gradient accumulation, the recorded gradient norms

from transformer_course.model import GPT, GPTConfig  # noqa: E402
from transformer_course.training import train_step  # noqa: E402


def adamw_by_hand(theta, grads, lr, betas, eps, weight_decay):
    """Loshchilov & Hutter (2019), Algorithm 2, as PyTorch documents it: decay theta, then the Adam step."""
    b1, b2 = betas
    m, v, path = torch.zeros_like(theta), torch.zeros_like(theta), []
    for t, g in enumerate(grads, start=1):
        theta = theta * (1 - lr * weight_decay)           # decoupled: not part of the gradient
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)   # bias correction
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
        path.append(theta)
    return path


@pytest.mark.parametrize("weight_decay", [0.0, 0.1, 0.5])
def test_adamw_by_hand_equals_torch_step_for_step(weight_decay):
    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) * s for s in (1.0, 0.01, 3.0, 1e-4, 0.5, 2.0)]
    p = nn.Parameter(theta0.clone())
    opt = torch.optim.AdamW([p], lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    for step, (grad, expected) in enumerate(zip(grads, adamw_by_hand(theta0, grads, 0.05, (0.9, 0.95), 1e-8,
                                                                     weight_decay))):
        p.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14, msg=f"step {step + 1}")


def test_adam_weight_decay_is_l2_not_adamw():
    """torch.optim.Adam's weight_decay adds wd * theta to the gradient (L2), which AdamW does not."""
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(5, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(3)]
    results = {}
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        p = nn.Parameter(theta0.clone())
        opt = cls([p], lr=0.1, weight_decay=0.5)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        results[name] = p.detach()
    assert (results["adam"] - results["adamw"]).abs().max() > 1e-3
    theta, m, v = theta0.clone(), 0, 0  # Adam + L2 by hand: the decay goes through the moments
    for t, grad in enumerate(grads, start=1):
        grad = grad + 0.5 * theta
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        theta = theta - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    torch.testing.assert_close(results["adam"], theta, rtol=1e-12, atol=1e-14)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig.gpt2_like(vocab_size=23, context_length=8, n_layers=1, n_heads=2, d_model=8)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the 0.02 initialisation, so that every parameter matters
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


@pytest.mark.parametrize("grad_clip", [0.0, 0.3])
@pytest.mark.parametrize("n", [2, 4])
def test_accumulated_micro_batches_equal_one_large_batch(n, grad_clip):
    g = torch.Generator().manual_seed(n)
    x, y = torch.randint(0, 23, (2 * n, 8), generator=g), torch.randint(0, 23, (2 * n, 8), generator=g)
    cfg = small_cfg(weight_decay=0.1)
    big, acc = tiny_gpt(), tiny_gpt()
    opt_big, opt_acc = make_optimizer(big, cfg), make_optimizer(acc, cfg)
    loss_big, norm_big = train_step(big, opt_big, [(x, y)], grad_clip)
    loss_acc, norm_acc = train_step(acc, opt_acc, list(zip(x.split(2), y.split(2))), grad_clip)
    assert loss_acc == pytest.approx(loss_big, rel=1e-12) and norm_acc == pytest.approx(norm_big, rel=1e-10)
    if grad_clip:
        assert norm_big > grad_clip  # the clipping did act
    for (name, a), b in zip(acc.named_parameters(), big.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-13, msg=f"gradient of {name}")
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13, msg=f"{name} after one AdamW step")
    one = tiny_gpt()
    train_step(one, make_optimizer(one, cfg), [(x[:2], y[:2])], grad_clip)
    assert not torch.allclose(one.tok_emb.weight, big.tok_emb.weight)  # another batch, another step: it can fail


def test_train_step_returns_the_norm_clip_grad_norm_returns():
    model = tiny_gpt()
    x = torch.randint(0, 23, (3, 8), generator=torch.Generator().manual_seed(0))
    loss, norm = train_step(model, make_optimizer(model, small_cfg()), [(x, x.roll(-1, 1))], 0.0)
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="batches"):
        train_step(model, make_optimizer(model, small_cfg()), [], 0.0)
    with pytest.raises(ValueError, match="grad_clip"):
        train_step(model, make_optimizer(model, small_cfg()), [(x, x)], -1.0)
    with pytest.raises(ValueError, match="optimizer"):
        train_step(model, "adamw", [(x, x)], 0.0)
    with pytest.raises(ValueError, match="grad_norms"):
        train(Bigram(), pattern(500), pattern(200), small_cfg(), progress=False, grad_norms=())


def test_train_records_the_norm_before_clipping(monkeypatch):
    returned = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        returned.append(clip(params, max_norm, *a, **kw).item())
        return torch.tensor(returned[-1])

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    norms = []
    train(Bigram(), pattern(500), pattern(200), small_cfg(steps=5, warmup_steps=1, grad_clip=0.5), progress=False,
          grad_norms=norms)
    assert norms == returned and len(norms) == 5 and max(norms) > 0.5


def test_grad_accum_steps_in_train_equals_a_larger_batch():
    """train() draws the micro-batches one after the other from its generator; CPU randint gives the same
    starts for (8,) as for two (4,) draws, so the two runs see the same windows."""
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    if not torch.equal(torch.randint(99, (8,), generator=g1),
                       torch.cat([torch.randint(99, (4,), generator=g2) for _ in range(2)])):
        pytest.skip("this torch draws randint in another order: the windows differ")
    runs = {}
    for batch, accum in ((8, 1), (4, 2), (4, 1)):
        model = Bigram().double()
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, dtype=torch.float64))
        train(model, pattern(500), pattern(200), small_cfg(steps=6, batch_size=batch, grad_accum_steps=accum),
              progress=False)  # (its evaluations differ: they draw batches of batch_size windows)
        runs[batch, accum] = model
    for (name, a), b in zip(runs[8, 1].named_parameters(), runs[4, 2].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    assert not torch.allclose(runs[4, 1].emb.weight, runs[8, 1].emb.weight)  # half the batch: another run


def test_grad_accum_steps_is_validated_and_recorded_only_when_used():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        small_cfg(grad_accum_steps=0)
    assert "grad_accum_steps" not in small_cfg().to_dict()  # old records still equal their recipes
    cfg = small_cfg(grad_accum_steps=4)
    assert cfg.to_dict()["grad_accum_steps"] == 4 and TrainConfig(**cfg.to_dict()) == cfg


def test_window_batch_walks_the_stream_in_order_without_overlap():
    from transformer_course.training import window_batch
    ids = torch.arange(23)  # 22 usable tokens -> 5 whole windows of 4 (the last token is only a target)
    x, y = window_batch(ids, 0, 3, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] and torch.equal(y, x + 1)
    x, _ = window_batch(ids, 4, 2, 4)  # window 4, then window 5 % 5 = 0: the stream again, in order
    assert x.tolist() == [[16, 17, 18, 19], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="first"):
        window_batch(ids, -1, 2, 4)


def test_sequential_sampling_reads_each_token_once():
    seen = []

    class Recorder(Bigram):
        def forward(self, idx, targets=None):
            if self.training:
                seen.append(idx.clone())
            return super().forward(idx, targets)

    cfg = small_cfg(steps=5, batch_size=2, block_size=8, grad_accum_steps=2, sampling="sequential")
    train(Recorder(), torch.arange(200) % 11, pattern(100), cfg, progress=False)
    starts = [row[0].item() for batch in seen for row in batch]  # stream = arange % 11: recover the offsets
    read = torch.cat([b.flatten() for b in seen])
    assert len(read) == 5 * 2 * 2 * 8 and len(seen) == 10
    assert torch.equal(read, torch.arange(160) % 11)  # windows 0..19 in order: every token read once
    assert starts[:3] == [0, 8 % 11, 16 % 11]
    with pytest.raises(ValueError, match="sampling"):
        small_cfg(sampling="shuffled")
    assert "sampling" not in small_cfg().to_dict() and cfg.to_dict()["sampling"] == "sequential"


def test_cross_entropy_is_minus_log_p_of_the_target():
    """The model's loss == -log softmax(logits)[target], averaged over positions == F.cross_entropy."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, context_length=16, n_layers=1, n_heads=2, d_model=16))
    x = torch.randint(0, 50, (3, 16))
    y = torch.randint(0, 50, (3, 16))
    logits, loss = model(x, y)
    by_hand = -(logits.softmax(-1).gather(-1, y[..., None]).log()).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 50), y.view(-1)), atol=1e-6)


@pytest.mark.parametrize("vocab_size", [64, 1024])
def test_a_fresh_model_starts_near_ln_v(vocab_size):
    """At the 0.02 init the logits are near zero, so the prediction is near uniform: loss ~ ln V (a bit
    above it, by about half the logit variance); a model that starts far from ln V is initialised wrong."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, context_length=32, n_layers=2, n_heads=2, d_model=32))
    x = torch.randint(0, vocab_size, (8, 32))
    with torch.no_grad():
        logits, loss = model(x, x.roll(-1, 1))
    excess = logits.var(-1).mean().item() / 2
    assert math.log(vocab_size) - 0.02 <= loss.item() <= math.log(vocab_size) + excess + 0.05
