"""Chapter 13's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math

import pytest
import torch
import torch.nn.functional as F

from transformer_course.exercises import ch13
from checker_robustness import assert_survives_exceptions_and_hangs, message


def first_adamw_step(theta, grad, lr, weight_decay, eps):
    # one real torch.optim.AdamW step, independent of the closed form the checker uses
    p = torch.nn.Parameter(theta.clone())
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=weight_decay, eps=eps)
    p.grad = grad.clone()
    opt.step()
    return p.detach()


def accumulated_grads(model, batches):
    # written independently of the checker: one backward of the summed token losses over the token count
    model.zero_grad()
    total = sum(y.numel() for _, y in batches)
    summed = sum(model(x, y)[1] * y.numel() for x, y in batches)
    (summed / total).backward()
    return [p.grad for p in model.parameters()]


def one_batch_grads(model, batches):
    # the definition itself: every token's loss, pooled, averaged once
    model.zero_grad()
    losses = []
    for x, y in batches:
        logits, _ = model(x, y)
        losses.append(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none"))
    torch.cat(losses).mean().backward()
    return [p.grad for p in model.parameters()]


def lr_1000_by_hand():
    # 1500 updates, warm-up 100, lr 3e-3 -> 3e-4: the cosine runs over updates 100..1499
    progress = (1000 - 100) / (1499 - 100)
    return 3e-4 + 0.5 * (1 + math.cos(math.pi * progress)) * (3e-3 - 3e-4)


def test_reference_answers_pass():
    assert ch13.check_initial_loss(math.log(50257)).passed
    assert ch13.check_initial_loss(10.8249).passed
    assert ch13.check_initial_loss(math.log(50257) + (0.02 * 768**0.5) ** 2 / 2).passed  # 10.98
    assert ch13.check_initial_loss(11.02).passed   # a fresh gpt2_like(50257, d_model=768) measured
    assert ch13.check_first_adamw_step(first_adamw_step).passed
    assert ch13.check_lr_at_1000(lr_1000_by_hand()).passed
    assert ch13.check_accumulated_grads(accumulated_grads).passed
    assert ch13.check_accumulated_grads(one_batch_grads).passed


def test_initial_loss_from_a_fresh_gpt2_sized_model():
    # the range the checker accepts holds a measured fresh model (V 50,257, d_model 768; 2 layers, which
    # do not change the logits' scale: the final LayerNorm sets it)
    from transformer_course.model import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig.gpt2_like(vocab_size=50257, context_length=128, n_layers=2, n_heads=12, d_model=768)
    x = torch.randint(0, 50257, (8, 128), generator=torch.Generator().manual_seed(0))  # 1024 positions
    with torch.no_grad():
        loss = GPT(cfg).eval()(x, torch.roll(x, -1, 1))[1].item()
    assert ch13.check_initial_loss(loss).passed, loss


def test_initial_loss_hints():
    m = lambda v: message(ch13.check_initial_loss, v)  # noqa: E731
    assert "log10" in m(math.log10(50257))
    assert "log2" in m(math.log2(50257))
    assert "probability" in m(1 / 50257)
    assert "V itself" in m(50257)
    assert "course vocabulary" in m(math.log(1024))
    assert "near-uniform" in m(3.0)
    assert "too high" in m(11.3)
    assert "number" in m("10.8") and "finite" in m(math.nan)


def test_first_adamw_step_hints():
    m = lambda fn: message(ch13.check_first_adamw_step, fn)  # noqa: E731

    def adam_l2(theta, grad, lr, wd, eps):  # torch's Adam: weight_decay adds wd * theta to the gradient
        p = torch.nn.Parameter(theta.clone())
        opt = torch.optim.Adam([p], lr=lr, weight_decay=wd, eps=eps)
        p.grad = grad.clone()
        opt.step()
        return p.detach()

    def no_bias_correction(theta, grad, lr, wd, eps):
        m1, v1 = 0.1 * grad, 0.001 * grad**2
        return theta * (1 - lr * wd) - lr * m1 / (v1.sqrt() + eps)

    # The first optimizer step of a process imports torch._dynamo, sympy and triton (seconds on a
    # loaded machine): done once here, so the timed child of the check does not pay for it.
    adam_l2(torch.zeros(2), torch.ones(2), 1e-3, 0.1, 1e-8)
    assert "L2" in m(adam_l2)
    assert "bias correction" in m(no_bias_correction)
    assert "multiplied by the learning rate" in m(lambda t, g, lr, wd, eps: t * (1 - wd) - lr * g / (g.abs() + eps))
    assert "left out the weight decay" in m(lambda t, g, lr, wd, eps: t - lr * g / (g.abs() + eps))
    assert "sign" in m(lambda t, g, lr, wd, eps: t * (1 - lr * wd) + lr * g / (g.abs() + eps))
    assert "eps" in m(lambda t, g, lr, wd, eps: t * (1 - lr * wd) - lr * g.sign())
    assert "shape" in m(lambda t, g, lr, wd, eps: t[:3])


def test_lr_at_1000_hints():
    m = lambda v: message(ch13.check_lr_at_1000, v)  # noqa: E731
    cos = lambda p: 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    assert "min_lr, not to 0" in m(3e-3 * cos(900 / 1399))
    assert "after the warm-up" in m(3e-4 + 2.7e-3 * cos(1000 / 1500))
    assert "length of the decay" in m(3e-4 + 2.7e-3 * cos(900 / 1400))
    assert "halfway" in m((3e-3 + 3e-4) / 2)
    assert "peak" in m(3e-3)
    assert "which branch" in m(2e-3)
    assert "number" in m(None)


def test_accumulation_hints():
    m = lambda fn: message(ch13.check_accumulated_grads, fn)  # noqa: E731
    grads = lambda model: [p.grad for p in model.parameters()]  # noqa: E731

    def weighted(weight, divide, zero=True):
        def fn(model, batches):
            if zero:
                model.zero_grad()
            for x, y in batches:
                (model(x, y)[1] * weight(x, y, batches) / divide(batches)).backward()
            return grads(model)
        return fn

    n = len
    tokens = lambda b: sum(y.numel() for _, y in b)  # noqa: E731
    assert "plain mean" in m(weighted(lambda x, y, b: 1, n))
    assert "summed with equal weights" in m(weighted(lambda x, y, b: 1, lambda b: 1))
    assert "divided by the number of micro-batches" in m(weighted(lambda x, y, b: y.numel(), n))
    assert "not divided by their total" in m(weighted(lambda x, y, b: y.numel(), lambda b: 1))
    assert "windows (B)" in m(weighted(lambda x, y, b: y.shape[0], lambda b: sum(v.shape[0] for _, v in b)))
    assert "positions (T)" in m(weighted(lambda x, y, b: y.shape[1], lambda b: sum(v.shape[1] for _, v in b)))
    assert "still in .grad" in m(weighted(lambda x, y, b: y.numel(), tokens, zero=False))
    assert "still in .grad" in m(weighted(lambda x, y, b: 1, n, zero=False))

    def zero_inside(model, batches):
        for x, y in batches:
            model.zero_grad()
            (model(x, y)[1] * y.numel() / tokens(batches)).backward()
        return grads(model)

    assert "last micro-batch" in m(zero_inside)
    assert "is None" in m(lambda model, batches: [None, None])
    assert "list" in m(lambda model, batches: torch.zeros(3))
    assert "gradient" in m(lambda model, batches: [torch.zeros_like(p) for p in model.parameters()])


CHECKS = [ch13.check_first_adamw_step, ch13.check_accumulated_grads]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("bad", [None, 3, "x", math.nan, [1, 2]])
def test_non_functions_fail_without_raising(check, bad):
    result = check(bad)
    assert not result.passed and "function" in result.message


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("returns", [None, math.nan, "tensor", [0, 1], torch.tensor(float("nan"))])
def test_bad_returns_fail_without_raising(check, returns):
    result = check(lambda *args: returns)
    assert not result.passed


@pytest.mark.parametrize("check", [ch13.check_initial_loss, ch13.check_lr_at_1000])
@pytest.mark.parametrize("bad", [None, "x", math.nan, math.inf, [1, 2], True, torch.zeros(2)])
def test_bad_values_fail_without_raising(check, bad):
    assert not check(bad).passed


@pytest.mark.parametrize("check", CHECKS)
def test_exceptions_and_hangs(check):
    assert_survives_exceptions_and_hangs(check)


def test_nan_outputs_fail():
    result = ch13.check_first_adamw_step(lambda t, g, lr, wd, eps: torch.full_like(t, float("nan")))
    assert not result.passed and "NaN" in result.message
