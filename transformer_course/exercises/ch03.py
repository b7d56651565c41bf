"""Checkers for Chapter 3, "Embeddings". Each takes the reader's function or number and never raises."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import GPT, GPTConfig
from ..training import TrainConfig, lr_at
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


def _reload(model: GPT) -> GPT:
    """Rebuild `model` from its config and state dict, as `load_checkpoint` does after `save_checkpoint`."""
    copy = GPT(GPTConfig.from_dict(model.config.to_dict()))
    copy.load_state_dict(model.state_dict())
    return copy.eval()


@checker
def check_untie(fn) -> CheckResult:
    """`fn(model) -> model`: the LM head gets its own Parameter, a copy of the table, and stays untied on reload."""
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
        return CheckResult(False, "still tied: the head uses the very same Parameter as the embedding, and "
                                  "changing the config after the model is built does not rebuild the head")
    if not isinstance(head, nn.Parameter):
        return CheckResult(False, "the head's weight is a plain tensor, not an nn.Parameter: it would not be "
                                  "in model.parameters(), so the optimizer would never train it")
    if tuple(head.shape) != (V, d):
        return CheckResult(False, f"the head's weight has shape {tuple(head.shape)}, expected (V, d_model) = "
                                  f"({V}, {d}): logits = x @ W.T needs one row per token")
    if head.untyped_storage().data_ptr() == table.untyped_storage().data_ptr():
        return CheckResult(False, "the two Parameters share memory, so training one changes the other: "
                                  "the head needs values of its own")
    with torch.no_grad():
        after = got(idx)[0]
    if not torch.allclose(after, before, atol=1e-5):
        return CheckResult(False, "the logits changed: start the new head as a copy of the embedding table, "
                                  "so that untying alone changes nothing until training moves the two apart")
    if got.num_parameters() != n_before + V * d:
        return CheckResult(False, f"the model has {got.num_parameters():,} parameters, expected "
                                  f"{n_before:,} + V × d_model = {n_before + V * d:,}")
    with torch.no_grad():  # make the two tables differ, as training would, then save and reload
        got.lm_head.weight.add_(1.0)
        head_values, table_values = got.lm_head.weight.clone(), got.tok_emb.weight.clone()
    try:
        reloaded = _reload(got)
    except Exception as exc:  # a config that no longer loads
        return CheckResult(False, f"rebuilding the model from its config and state dict failed "
                                  f"({type(exc).__name__}: {exc})")
    if reloaded.lm_head.weight is reloaded.tok_emb.weight:
        return CheckResult(False, "the model is untied now, but after a save and reload it comes back tied, "
                                  "and one table overwrites the other: its config still describes a tied model")
    if not (torch.equal(reloaded.lm_head.weight, head_values)
            and torch.equal(reloaded.tok_emb.weight, table_values)):
        return CheckResult(False, "after a save and reload the two tables do not hold what was saved")
    return CheckResult(True, f"its own {V} × {d} head (+{V * d} parameters), same logits, untied after a reload")


# ------------------------------------------------------------------------------------------------------
# ex-03-adam: Adam's update for a sequence of gradients of one weight (no weight decay)


def _adam_variant(grads: torch.Tensor, lr: float, betas, eps: float, *, correct=True, squared=True,
                  eps_inside=False) -> torch.Tensor:
    """Adam's updates theta_t - theta_(t-1) for one weight that receives `grads` (steps,) in turn, in float64.

    With the defaults, Kingma & Ba's Algorithm 1 (tests check it against torch.optim.Adam, which this module
    does not call: its first step imports torch._dynamo, seconds in every checking process). The keywords
    switch on one of the usual mistakes, which the hints compare with.
    """
    (b1, b2), m, v, out = betas, 0.0, 0.0, []
    for t, g in enumerate(grads.tolist(), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g * g if squared else abs(g))
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if correct else (m, v)
        out.append(-lr * m_hat / ((v_hat + eps) ** 0.5 if eps_inside else v_hat**0.5 + eps))
    return torch.tensor(out, dtype=torch.float64)


_ADAM_CASES = (  # (what the gradients are, grads); lr, betas and eps as in the course's training
    ("a constant gradient of 1e-6", torch.full((30,), 1e-6, dtype=torch.float64)),
    ("a constant gradient of 1e-8, about eps", torch.full((30,), 1e-8, dtype=torch.float64)),
    ("a constant gradient of 0.5", torch.full((30,), 0.5, dtype=torch.float64)),
    ("gradients that change sign", torch.tensor([0.2, -0.1] * 5 + [-0.3] * 10 + [0.05] * 10, dtype=torch.float64)),
)
_ADAM_SETTINGS = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)


@checker
def check_adam_updates(fn) -> CheckResult:
    """`fn(grads, lr, betas, eps) -> (steps,)`: the updates Adam makes to one weight given `grads` (steps,)."""
    for what, grads in _ADAM_CASES:
        expected = _adam_variant(grads, **_ADAM_SETTINGS)
        # 10 s: an answer that calls torch.optim pays for importing torch._dynamo on its first step
        got, problem = run_with_timeout(fn, grads.clone(), _ADAM_SETTINGS["lr"], _ADAM_SETTINGS["betas"],
                                        _ADAM_SETTINGS["eps"], timeout=10.0)
        if problem is not None:
            return problem
        if isinstance(got, (list, tuple)) and all(isinstance(u, (int, float)) for u in got):
            got = torch.tensor(got, dtype=torch.float64)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point():
            hint = _adam_hint(got.detach().double(), grads, expected)
            if hint:
                return CheckResult(False, f"for {what}: {hint}")
        result = check_tensor(got, expected, name=f"the updates for {what}", atol=1e-9, rtol=1e-5)
        if not result.passed:
            return result
    return CheckResult(True, "bias-corrected moments, eps outside the root: the updates of torch.optim.Adam")


def _adam_hint(got, grads, expected) -> str | None:
    def close(a, b):
        return torch.allclose(a, b, rtol=1e-4, atol=1e-12)

    lr, betas, eps = _ADAM_SETTINGS.values()
    if close(got, expected):
        return None
    if close(got, expected.cumsum(0)):
        return "these are the weight's values after each step; return the updates, theta_t - theta_(t-1)"
    if close(got, -expected):
        return "your updates go with the gradient; Adam steps against it, theta <- theta - lr * ..."
    if close(got.abs(), expected.abs()):
        return "the sizes are right but some signs are wrong: each update has the sign of -m_hat"
    if close(got.abs(), (lr * grads).abs()):
        return ("these are plain SGD steps, lr * g: Adam divides a running mean of the gradients by the square "
                "root of a running mean of their squares")
    if close(got, _adam_variant(grads, lr, betas, eps, correct=False)):
        return ("the first updates are too small: without bias correction m and v are pulled towards their "
                "zero start; divide them by 1 - beta1**t and 1 - beta2**t, with t counted from 1")
    if close(got, _adam_variant(grads, lr, betas, eps, squared=False)):
        return "v must be a running mean of the squared gradients, g * g"
    if close(got, _adam_variant(grads, lr, betas, 0.0)):
        return ("these are Adam's steps without eps: Algorithm 1 adds eps to the square root of v_hat, and for a "
                "gradient as small as eps that halves the step")
    if close(got, _adam_variant(grads, lr, betas, eps, eps_inside=True)):
        return "check where eps enters: Adam adds it to the square root of v_hat, not inside the root"
    return None


# ------------------------------------------------------------------------------------------------------
# ex-03-decay-shrink: the factor by which AdamW's weight decay alone shrinks a row that never gets a gradient


def _decay_cases():
    """(what, schedule): the course's schedule and one with another length, warm-up, peak and decay."""
    return (
        ("the course's schedule", TrainConfig(steps=1500, batch_size=16, lr=3e-3, min_lr=3e-4,
                                              warmup_steps=100, weight_decay=0.1)),
        ("a schedule of 400 steps, lr 1e-2, weight decay 0.3",
         TrainConfig(steps=400, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=40, weight_decay=0.3)),
    )


def _shrink(cfg: TrainConfig, lr: float | None = None) -> float:
    """prod_t (1 - lr_t * weight_decay) over the schedule's updates; `lr` fixes every step's rate (a mistake)."""
    return math.prod(1 - (lr_at(t, cfg) if lr is None else lr) * cfg.weight_decay for t in range(cfg.steps))


@checker
def check_decay_shrink(fn) -> CheckResult:
    """`fn(schedule) -> float`: the factor weight decay alone multiplies a never-used row by over a schedule."""
    for what, cfg in _decay_cases():
        got, problem = run_with_timeout(fn, cfg)
        if problem is not None:
            return problem
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.is_floating_point():
            got = got.item()
        if isinstance(got, int) and not isinstance(got, bool):
            got = float(got)
        if not isinstance(got, float):
            return CheckResult(False, f"return the factor as a float, got {type(got).__name__}")
        if got != got or got in (float("inf"), float("-inf")):
            return CheckResult(False, f"for {what} you returned {got}; expected a finite factor")
        expected = _shrink(cfg)
        if abs(got - expected) <= 0.01 * expected:  # exp(-lambda * sum of lr_t) is a fine approximation
            continue
        if not 0 < got <= 1:
            return CheckResult(False, f"for {what} you returned {got:.4g}: decay multiplies a row by a factor "
                                      f"between 0 and 1 at every step, so the product lies between 0 and 1 too")
        variants = [
            (_shrink(cfg, lr=cfg.lr), "you used the peak learning rate at every step; the schedule warms up "
                                      "and then decays, and each step decays by its own rate (lr_at)"),
            (_shrink(cfg, lr=1.0), "PyTorch's AdamW multiplies the decay by the learning rate of the step: "
                                   "theta <- theta - lr_t * lambda * theta"),
            (1 - sum(lr_at(t, cfg) for t in range(cfg.steps)) * cfg.weight_decay,
             "the decays multiply, they do not add: the factor is a product over the steps"),
        ]
        for value, hint in variants:
            if abs(got - value) <= 1e-3 * abs(value):
                return CheckResult(False, f"for {what}: {hint}")
        side = "too large" if got > expected else "too small"
        return CheckResult(False, f"for {what} your factor {got:.4g} is {side} by more than 1 %: multiply the factors of all the "
                                  f"updates, each with the learning rate of its step")
    course = _shrink(_decay_cases()[0][1])
    return CheckResult(True, f"a product of 1 - lr_t * weight_decay over the steps; {course:.3f} on the "
                             f"course's schedule")
