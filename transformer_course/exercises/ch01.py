"""Checkers for Chapter 1, "The big picture". Each takes the reader's answer and never raises.

The exercises: count a GPT-2-flavoured model's parameters from its config (a derived formula), the temperature
softmax (the warm-up), and how many token positions generation computes with and without a KV cache (a
formula the chapter does not show, checked against a measurement on a tiny model).
"""
import torch

from ..generation import generate
from ..model import GPT, GPTConfig
from .base import CheckResult, check_tensor, checker, run_for_int, run_with_timeout

# GPT-2 small (Radford et al. 2019): V = 50257, 1024 positions, L = 12, d_model = 768, 12 heads, tied head.
# Hugging Face's GPT2LMHeadModel has 124,439,808 parameters for it (tests/test_exercises_ch01.py counts them),
# independent of this package. The paper's Table 2 says 117M: OpenAI's gpt-2 README notes that the original
# parameter counts were wrong due to an error.
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
        got, problem = run_for_int(fn, cfg, what="a count")
        if problem is not None:
            return problem
        if got != expected:  # the hint names what is wrong, never the expected count
            return CheckResult(False, f"for {name}: got {got:,}: "
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
    direction = "too many" if diff > 0 else "too few"
    return known.get(diff, f"{direction}; list the tensors of one block and count each one")


@checker
def check_softmax_with_temperature(fn) -> CheckResult:
    """`fn(logits, temperature) -> probs`: softmax(logits / τ) over the last dimension, for (V,) or (B, V)."""
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(3, 11, generator=g) * 3  # (B, V)
    single = torch.randn(11, generator=g) * 3  # (V,): one position's logits, as in the chapter
    for logits, tau in [(batch, 1.0), (batch, 0.5), (batch, 2.0), (single, 0.5)]:
        shape = f"logits of shape {tuple(logits.shape)}"
        got, problem = run_with_timeout(fn, logits.clone(), tau)
        if problem is not None:
            if logits.dim() == 1 and problem.message.startswith("your function raised"):
                return CheckResult(False, f"with {shape}, {problem.message}; a (V,) tensor has only one "
                                          f"dimension: normalise over the last one, dim=-1, which works for "
                                          f"(V,) and (B, V) alike")
            return problem
        expected = torch.softmax(logits / tau, dim=-1)
        if (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()
                and torch.isfinite(got).all()):
            hint = _temperature_hint(got, logits, tau)
            if hint:
                return CheckResult(False, f"with {shape} at τ = {tau:g}: {hint}")
        result = check_tensor(got, expected, name=f"probs for {shape} at τ = {tau:g}")
        if not result.passed:
            return result
    return CheckResult(True, "softmax(logits / τ) over the vocabulary, for (V,) and (B, V), rows summing to 1")


def _temperature_hint(got, logits, tau) -> str | None:
    def close(x):
        return torch.allclose(got, x, atol=1e-5)

    if close(torch.softmax(logits / tau, dim=-1)):
        return None
    if tau != 1.0 and close(torch.softmax(logits * tau, dim=-1)):
        return "you multiplied by τ; divide the logits by it (τ > 1 flattens, τ < 1 sharpens)"
    if tau != 1.0 and close(torch.softmax(logits, dim=-1)):
        return "τ has no effect: divide the logits by it before the softmax"
    if logits.dim() == 2 and close(torch.softmax(logits / tau, dim=0)):
        return "the softmax runs over the wrong dimension: normalise over the vocabulary, dim=-1"
    if close(logits / tau) or not torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4):
        return "the rows do not sum to 1: apply a softmax to the scaled logits"
    return None


# --------------------------------------------------------------------------------------------------------
# How many token positions does generation compute?

_POSITION_CASES = [(5, 25), (1, 1), (3, 2), (7, 0), (12, 9), (1, 40)]  # (T, n): prompt length, new tokens


def measured_positions(T: int, n: int, use_cache: bool) -> int:
    """Generate n tokens from a T-token prompt with a tiny model; return the input positions of all its passes.

    A forward hook on the model records the length of the input of every forward pass, so this measures what
    `generation.generate` does rather than restating a formula.
    """
    torch.manual_seed(0)
    config = GPTConfig.gpt2_like(vocab_size=20, context_length=64, n_layers=1, n_heads=1, d_model=8)
    model = GPT(config).eval()
    lengths = []
    hook = model.register_forward_hook(lambda module, args, output: lengths.append(args[0].shape[1]))
    try:
        generate(model, torch.zeros(1, T, dtype=torch.long), n, greedy=True, use_cache=use_cache)
    finally:
        hook.remove()
    return sum(lengths)


def _positions_hint(T, n, got, use_cache) -> str:
    where = f"with T = {T}, n = {n}, use_cache={use_cache}: got {got:,}"
    if n == 0:
        return f"{where}; with n = 0 new tokens there is nothing to choose, and the model never runs"
    other = measured_positions(T, n, not use_cache)
    if got == other and other != measured_positions(T, n, use_cache):
        return f"{where}, which is the count for use_cache={not use_cache}: the two cases are swapped"
    if use_cache:
        if got == T + n:
            return f"{where}: count the passes again: is the last token chosen ever fed back into the model?"
        if got == n * T or got == n * (T + 1):
            return (f"{where}: with the cache the prompt's positions are computed once, in the first pass; "
                    f"each later pass computes only the newest token")
        if got == n:
            return f"{where}: the first pass runs on the whole prompt of T tokens, not on one token"
    else:
        if got == n * T + n * (n + 1) // 2:
            return (f"{where}, too many: a pass chooses its token before that token is appended; which "
                    f"sequence lengths do the n passes see?")
        if got == n * T:
            return f"{where}: too few; without a cache every pass also reruns the tokens generated so far"
        if got == n:
            return f"{where}: without a cache a pass runs on the whole sequence so far, not on one token"
    return f"{where}; write down the input length of each forward pass and add them up"


@checker
def check_tokens_processed(fn) -> CheckResult:
    """`fn(T, n, use_cache) -> int`: token positions the model computes, over all passes, to add n tokens to T."""
    for use_cache in (False, True):
        for T, n in _POSITION_CASES:
            got, problem = run_for_int(fn, T, n, use_cache, what="a number of token positions")
            if problem is not None:
                return problem
            if got != measured_positions(T, n, use_cache):
                return CheckResult(False, _positions_hint(T, n, got, use_cache))
    T, n = _POSITION_CASES[0]
    without, with_cache = measured_positions(T, n, False), measured_positions(T, n, True)
    return CheckResult(True, f"your counts match what generate computes: {T} prompt tokens + {n} new ones cost "
                             f"{without:,} positions without the cache, {with_cache:,} with it "
                             f"({without / with_cache:.1f} times as many without)")
