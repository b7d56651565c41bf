"""Checkers for Chapter 1, "The big picture". Each takes the reader's function and never raises."""
import torch

from ..generation import generate
from ..model import GPT, GPTConfig
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout

# GPT-2 small (Radford et al. 2019): V = 50257, 1024 positions, L = 12, d_model = 768, 12 heads, tied head.
# Hugging Face's GPT2LMHeadModel reports 124,439,808 parameters for it, independent of this package.
GPT2_SMALL = dict(vocab_size=50257, context_length=1024, n_layers=12, n_heads=12, d_model=768)
GPT2_SMALL_PARAMETERS = 124_439_808


def _parameter_configs():
    return [
        ("the course's tiny GPT", GPTConfig.gpt2_like()),
        ("an untied head (tie_weights=False)", GPTConfig.gpt2_like(tie_weights=False, n_layers=2)),
        ("a 3-layer, 96-wide model with vocabulary 300", GPTConfig.gpt2_like(vocab_size=300, d_model=96,
                                                                             n_layers=3, context_length=40)),
    ]


@checker
def check_count_parameters(fn) -> CheckResult:
    """`fn(config) -> int`: the number of trainable parameters of a GPT-2-flavoured `GPT(config)`."""
    cases = [(name, cfg, GPT(cfg).num_parameters()) for name, cfg in _parameter_configs()]
    cases.append(("GPT-2 small", GPTConfig.gpt2_like(**GPT2_SMALL), GPT2_SMALL_PARAMETERS))
    for name, cfg, expected in cases:
        got, problem = run_with_timeout(fn, cfg)
        if problem is not None:
            return problem
        got, problem = as_int(got, "a count")
        if problem is not None:
            return problem
        if got != expected:
            return CheckResult(False, f"for {name}: got {got:,}, expected {expected:,}. "
                                      + _parameter_hint(got - expected, cfg))
    return CheckResult(True, f"your formula gives GPT-2 small's {GPT2_SMALL_PARAMETERS:,} parameters and the "
                             f"course model's {cases[0][2]:,}")


def _parameter_hint(diff: int, c: GPTConfig) -> str:
    d, V, L = c.d_model, c.vocab_size, c.n_layers
    known = {
        V * d: "the tied LM head shares the embedding matrix: count it once",
        -V * d: "an untied LM head (tie_weights=False) is a second V × d_model matrix",
        -c.context_length * d: "the learned position table has context_length × d_model entries",
        -2 * d: "the final LayerNorm has a weight and a bias (2 × d_model)",
        -4 * d * L: "each block has two LayerNorms, each with a weight and a bias",
        -(3 * d + d + 4 * d + d) * L: "count the biases of the four Linear layers in each block",
    }
    return known.get(diff, f"you are off by {diff:+,}; list the tensors of one block and count each one")


@checker
def check_softmax_with_temperature(fn) -> CheckResult:
    """`fn(logits, temperature) -> probs`: softmax(logits / T) over the last dimension, for (V,) or (B, V)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 11, generator=g) * 3  # (B, V)
    for t in (1.0, 0.5, 2.0):
        got, problem = run_with_timeout(fn, logits.clone(), t)
        if problem is not None:
            return problem
        expected = torch.softmax(logits / t, dim=-1)
        if (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()
                and torch.isfinite(got).all()):
            hint = _temperature_hint(got, logits, t)
            if hint:
                return CheckResult(False, f"at temperature {t:g}: {hint}")
        result = check_tensor(got, expected, name=f"probs at temperature {t:g}")
        if not result.passed:
            return result
    return CheckResult(True, "softmax(logits / T) over the vocabulary, rows summing to 1")


def _temperature_hint(got, logits, t) -> str | None:
    def close(x):
        return torch.allclose(got, x, atol=1e-5)

    if close(torch.softmax(logits / t, dim=-1)):
        return None
    if t != 1.0 and close(torch.softmax(logits * t, dim=-1)):
        return "you multiplied by the temperature; divide the logits by it (T > 1 flattens, T < 1 sharpens)"
    if t != 1.0 and close(torch.softmax(logits, dim=-1)):
        return "the temperature has no effect: divide the logits by it before the softmax"
    if close(torch.softmax(logits / t, dim=0)):
        return "the softmax runs over the wrong dimension: normalise over the vocabulary, dim=-1"
    if close(logits / t) or not torch.allclose(got.sum(-1), torch.ones(got.shape[0]), atol=1e-4):
        return "the rows do not sum to 1: apply a softmax to the scaled logits"
    return None


def _tiny_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig.gpt2_like(vocab_size=50, context_length=24, n_layers=2, n_heads=2, d_model=16))
    return model.eval()


@checker
def check_greedy_generate(fn) -> CheckResult:
    """`fn(model, idx, n) -> ids (1, T + n)`: the autoregressive loop, always appending the most likely token."""
    model = _tiny_model()
    prompt = torch.tensor([[3, 17, 4, 9]])  # (1, T)
    n = 8
    with torch.no_grad():
        expected = generate(model, prompt, n, greedy=True)
        got, problem = run_with_timeout(fn, model, prompt.clone(), n)
    if problem is not None:
        return problem
    if isinstance(got, torch.Tensor) and got.dim() == 2 and got.shape == (1, n):
        return CheckResult(False, "you returned only the new tokens; return the prompt followed by them, (1, T + n)")
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got[:, :4], prompt):
        first = _first_position_loop(model, prompt, n)
        if torch.equal(got, first):
            return CheckResult(False, "you read the logits of the first position; the next token comes from the "
                                      "last one, logits[:, -1, :]")
    return check_tensor(got, expected, name="the generated sequence")


def _first_position_loop(model, idx, n):
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, 0, :].argmax(-1, keepdim=True)], dim=1)
    return idx
