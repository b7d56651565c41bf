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
