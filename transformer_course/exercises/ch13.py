"""Checkers for Chapter 13, "Training". Each takes the reader's answer and never raises."""
import math

import torch
import torch.nn.functional as F

from ..training import TrainConfig, lr_at
from .base import CheckResult, as_float, check_tensor, checker, run_with_timeout


@checker
def check_initial_loss(answer) -> CheckResult:
    """`answer`: the loss of a freshly initialised model with GPT-2's vocabulary, V = 50,257."""
    got, problem = as_float(answer, "a loss in nats")
    if problem is not None:
        return problem
    V, d_model = 50257, 768
    low = math.log(V)                              # the uniform guess
    excess = (0.02 * math.sqrt(d_model)) ** 2 / 2  # sigma^2 / 2 = 0.15
    if low - 0.005 <= got <= low + excess + 0.05:
        return CheckResult(True, f"ln {V:,} = {low:.2f} nats, plus about sigma^2/2 = {excess:.2f} for logits "
                                 f"of std 0.02 sqrt({d_model}) = {math.sqrt(2 * excess):.2f}: between "
                                 f"{low:.2f} and {low + excess:.2f}")
    wrong = {
        math.log10(V): "that is log10; the loss uses the natural log",
        math.log2(V): "that is log2 (bits); the loss is in nats, the natural log",
        1 / V: "that is the probability of each token; the loss is minus its log",
        float(V): "that is V itself; the loss is -log(1/V)",
        math.log(1024): "that is ln 1024, the course vocabulary; GPT-2's has 50,257 tokens",
    }
    for value, hint in wrong.items():
        if abs(got - value) <= 0.01 * max(1.0, abs(value)):
            return CheckResult(False, hint)
    if low + excess + 0.05 < got <= low + 1.0:
        return CheckResult(False, "a little too high: near-uniform logits put the loss just above the uniform "
                                  "guess; how large is sigma^2/2 for logits of std 0.02 sqrt(d_model)?")
    return CheckResult(False, "not yet: what probability does a near-uniform model give the right token?")


def _first_step_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=g, dtype=torch.float64)
    grad = torch.randn(6, generator=g, dtype=torch.float64) * torch.tensor([1, 1e-3, 10, 1e-10, 1, 3.0])
    return theta, grad


@checker
def check_first_adamw_step(fn) -> CheckResult:
    """`fn(theta, grad, lr, weight_decay, eps)` -> the parameters after AdamW's first step (any betas)."""
    for seed, (lr, wd, eps) in enumerate(((1e-2, 0.1, 1e-8), (3e-3, 0.5, 1e-6))):
        theta, grad = _first_step_inputs(seed)
        got, problem = run_with_timeout(fn, theta.clone(), grad.clone(), lr, wd, eps)
        if problem is not None:
            return problem
        expected = theta * (1 - lr * wd) - lr * grad / (grad.abs() + eps)
        b1, b2 = 0.9, 0.999  # torch's defaults: the uncorrected moments are (1-b1) g and (1-b2) g^2
        wrong = [
            (theta * (1 - lr * wd) - lr * (1 - b1) * grad / ((1 - b2) ** 0.5 * grad.abs() + eps),
             "no bias correction: at step 1 the moment estimates must be divided by (1 - beta^1)"),
            (theta - lr * (grad + wd * theta) / ((grad + wd * theta).abs() + eps),
             "that is Adam with L2: the decay went into the gradient; AdamW decays theta separately"),
            (theta * (1 - wd) - lr * grad / (grad.abs() + eps),
             "the decay is multiplied by the learning rate: theta * (1 - lr * weight_decay)"),
            (theta - lr * grad / (grad.abs() + eps), "you left out the weight decay"),
            (theta * (1 - lr * wd) + lr * grad / (grad.abs() + eps), "the sign: step against the gradient"),
            (theta * (1 - lr * wd) - lr * grad.sign(), "close: sign(g) ignores eps, which matters for tiny g"),
        ]
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point():
            for value, hint in wrong:
                if torch.allclose(got.double(), value, rtol=1e-9, atol=1e-12):
                    return CheckResult(False, hint)
        result = check_tensor(got, expected, name="your parameters after step 1", atol=1e-12, rtol=1e-9)
        if not result.passed:
            return result
    return CheckResult(True, "theta (1 - lr*wd) - lr g/(|g| + eps): the first step moves every entry by about lr, "
                             "whatever the gradient's size")


TINY_SCHEDULE = TrainConfig(steps=1500, batch_size=16, block_size=128, lr=3e-3, min_lr=3e-4, warmup_steps=100)


@checker
def check_lr_at_1000(answer) -> CheckResult:
    """`answer`: the learning rate of update 1000 (0-based) of the tiny recipe's schedule."""
    got, problem = as_float(answer, "a learning rate")
    if problem is not None:
        return problem
    c = TINY_SCHEDULE
    expected = lr_at(1000, c)
    if abs(got - expected) <= 1e-3 * expected:
        return CheckResult(True, f"{expected:.4g}: 64 % of the way through the cosine, whose factor "
                                 f"(1 + cos(pi p)) / 2 is then 0.28")
    cos = lambda p: 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    wrong = {
        c.lr * cos(1000 / 1499): "the cosine starts after the warm-up: measure progress from step 100",
        c.lr * cos(900 / 1399): "the cosine falls to min_lr, not to 0: min_lr + (lr - min_lr) * ...",
        c.min_lr + (c.lr - c.min_lr) * cos(900 / 1400): "close: check the length of the decay in lr_at's code: "
                                                        "at which step does progress reach 1?",
        c.min_lr + (c.lr - c.min_lr) * cos(1000 / 1500): "the cosine starts after the warm-up: measure progress "
                                                        "from step 100",
        (c.lr + c.min_lr) / 2: "that is the value halfway through the decay, near step 800; step 1000 is "
                               "further on",
        c.lr: "that is the peak; the cosine has been falling since step 100",
    }
    for value, hint in wrong.items():
        if abs(got - value) <= 1e-4 * value:
            return CheckResult(False, hint)
    return CheckResult(False, "not yet: follow lr_at's code for step 1000: which branch, and what progress?")


class _Tiny(torch.nn.Module):
    """A model with the course contract, `model(x, y) -> (logits, loss)`: an embedding, a bias-free head."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(7, 4, generator=g, dtype=torch.float64))
        self.head = torch.nn.Parameter(torch.randn(7, 4, generator=g, dtype=torch.float64))

    def forward(self, x, y):
        logits = self.emb[x] @ self.head.T  # (B, T, V)
        return logits, F.cross_entropy(logits.flatten(0, 1), y.flatten())


# (B, T) of each micro-batch: token counts 6, 20, 4 and 9, 8, 14, 5; weighting by windows (B) or by
# positions (T) alone gives other weights than by tokens (B * T)
SHAPES = (((2, 3), (4, 5), (1, 4)), ((3, 3), (1, 8), (2, 7), (1, 5)))


def _micro_batches(seed: int, shapes):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 7, s, generator=g), torch.randint(0, 7, s, generator=g)) for s in shapes]


def _weighted_grad(batches, weights):
    """Gradients of the _Tiny model's sum_i weights[i] * loss_i, the losses of the micro-batches."""
    m = _Tiny()
    total = sum(w * m(x, y)[1] for w, (x, y) in zip(weights, batches))
    return list(torch.autograd.grad(total, list(m.parameters())))


@checker
def check_accumulated_grads(fn) -> CheckResult:
    """`fn(model, batches)` -> [p.grad for p in model.parameters()]: the gradient of the mean loss over
    every token of the micro-batches `batches`, which differ in size, whatever `.grad` held before."""
    for seed, shapes in enumerate(SHAPES):
        batches = _micro_batches(seed, shapes)
        model = _Tiny()
        g = torch.Generator().manual_seed(10 + seed)
        stale = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in model.parameters()]
        for p, s in zip(model.parameters(), stale):
            p.grad = s.clone()  # the previous update's gradients, as in a training loop
        got, problem = run_with_timeout(fn, model, [(x.clone(), y.clone()) for x, y in batches])
        if problem is not None:
            return problem
        n = len(batches)
        tokens = [y.numel() for _, y in batches]
        total = sum(tokens)
        last = [0.0] * (n - 1)
        candidates = [
            ([t / total for t in tokens], None),
            ([1 / n] * n, "that is the plain mean of the micro-batch losses: a micro-batch of 4 tokens counts "
                          "as much as one of 20; weight each loss by its share of all the tokens"),
            ([1.0] * n, "the losses are summed with equal weights: weight each by its share of all the tokens"),
            ([t / n for t in tokens], "weighted by tokens, but divided by the number of micro-batches: divide by "
                                      "the total number of tokens"),
            ([float(t) for t in tokens], "weighted by tokens but not divided by their total: the gradient is "
                                         f"{total} times too large"),
            ([y.shape[0] / sum(b[1].shape[0] for b in batches) for b in batches for y in [b[1]]],
             "weighted by windows (B), but the micro-batches also differ in length T: weight by tokens, B * T"),
            ([y.shape[1] / sum(b[1].shape[1] for b in batches) for b in batches for y in [b[1]]],
             "weighted by positions (T), but the micro-batches also differ in B: weight by tokens, B * T"),
            (last + [tokens[-1] / total], "only the last micro-batch's gradient is left: zero the gradients "
                                          "once, before the loop"),
            (last + [1 / n], "only the last micro-batch's gradient is left: zero the gradients once, before "
                             "the loop"),
            (last + [1.0], "only the last micro-batch's gradient is left: zero the gradients once, before the loop"),
        ]
        grads = [(_weighted_grad(batches, w), hint) for w, hint in candidates]
        expected = grads[0][0]
        if not isinstance(got, (list, tuple)) or len(got) != 2:
            return CheckResult(False, "return the list [p.grad for p in model.parameters()] (two tensors here)")
        if any(g is None for g in got):
            return CheckResult(False, "a gradient is None: call backward() on each micro-batch's loss")
        if all(isinstance(g, torch.Tensor) and g.shape == e.shape and g.is_floating_point()
               for g, e in zip(got, expected)):
            same = lambda a, b: all(torch.allclose(u.double(), v, rtol=1e-9, atol=1e-12)  # noqa: E731
                                    for u, v in zip(a, b))
            for values, hint in grads:
                if same(got, [v + s for v, s in zip(values, stale)]):
                    return CheckResult(False, "the previous update's gradients are still in .grad: zero them "
                                              "once, before the loop")
                if hint is not None and same(got, values):
                    return CheckResult(False, hint)
        for name, g, e in zip(("the embedding's gradient", "the head's gradient"), got, expected):
            result = check_tensor(g, e, name=name, atol=1e-12, rtol=1e-9)
            if not result.passed:
                return result
    return CheckResult(True, "each micro-batch's loss weighted by its share of the tokens: the gradient of "
                             "the mean over every token, as one batch would give")
