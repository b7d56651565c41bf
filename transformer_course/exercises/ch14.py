"""Checkers for Chapter 14, "Generation". Each takes the reader's answer and never raises."""
import math

import torch

from .base import CheckResult, as_int, checker, run_with_timeout


def min_p_reference(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): drop every token whose probability is below min_p x the top probability."""
    probs = torch.softmax(logits, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (..., 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def _min_p_cases():
    """(logits, min_p) pairs: a peaked and a flat row in one batch, logits far from probabilities."""
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(1, 50, generator=g) * 3
    peaked[0, 7] = 12.0  # one token far ahead: min-p keeps few
    flat = torch.randn(1, 50, generator=g) * 0.5 + 4  # many near the top: min-p keeps many
    batch = torch.cat([peaked, flat])  # (2, 50)
    return [(torch.randn(3, 7, 40, generator=g) * 2, 0.05), (batch, 0.1), (batch, 0.3)]


@checker
def check_min_p_filter(fn) -> CheckResult:
    """`fn(logits, min_p)` -> logits `(..., V)` with -inf where p < min_p * max p, the rest unchanged."""
    for logits, min_p in _min_p_cases():
        got, problem = run_with_timeout(fn, logits.clone(), min_p)
        if problem is not None:
            return problem
        expected = min_p_reference(logits, min_p)
        if not isinstance(got, torch.Tensor):
            return CheckResult(False, f"return a tensor of logits, got {type(got).__name__}")
        if got.shape != logits.shape:
            return CheckResult(False, f"return logits of the input's shape {tuple(logits.shape)}, got "
                                      f"{tuple(got.shape)}")
        if not got.is_floating_point():
            return CheckResult(False, f"return floating-point logits, got {got.dtype}")
        got = got.detach().float()
        if torch.isnan(got).any():
            return CheckResult(False, "your logits contain NaN: mark the dropped tokens with float('-inf')")
        probs = torch.softmax(logits, dim=-1)
        if torch.allclose(got.sum(-1), torch.ones(got.shape[:-1]), atol=1e-4) and (got >= 0).all():
            return CheckResult(False, "that looks like probabilities: return the logits, with -inf at the "
                                      "dropped tokens (sampling applies the softmax afterwards)")
        kept, want = torch.isfinite(got), torch.isfinite(expected)
        absolute = probs >= min_p
        on_logits = logits >= min_p * logits.amax(-1, keepdim=True)
        whole_batch = probs >= min_p * probs.max()
        if not torch.equal(kept, want):
            if torch.equal(kept, whole_batch) and not torch.equal(whole_batch, absolute):
                return CheckResult(False, "you scale by the largest probability of the whole batch; each row "
                                          "(each distribution) needs its own maximum: amax(-1, keepdim=True)")
            if torch.equal(kept, absolute):
                return CheckResult(False, "you keep tokens with probability >= min_p; min-p scales the threshold "
                                          "by the probability of the most likely token")
            if torch.equal(kept, on_logits):
                return CheckResult(False, "compare probabilities, not logits: softmax first, then keep "
                                          "p >= min_p * max p")
            if torch.equal(kept, ~want):
                return CheckResult(False, "you keep exactly the tokens that should be dropped: the condition "
                                          "is reversed")
            n_got, n_want = kept.sum().item(), want.sum().item()
            return CheckResult(False, f"you keep {n_got} tokens where {n_want} should stay (min_p={min_p}): "
                                      f"keep the tokens with p >= min_p * max p along the last dimension")
        if not torch.allclose(got[kept], logits[kept], atol=1e-5):
            return CheckResult(False, "the right tokens are kept, but their logits changed: leave them as they "
                                      "are (the softmax renormalises)")
    return CheckResult(True, "min-p keeps more tokens when the model is unsure and fewer when it is confident")


def _expected_tokens(alpha: float, k: int) -> float:
    """Leviathan et al. 2023, eq. (1): (1 - alpha^(k+1)) / (1 - alpha); k + 1 at alpha = 1 (k = gamma)."""
    return k + 1.0 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def _boundary_hint(fn) -> CheckResult | None:
    """A hint from the two cases with an obvious answer, or None if fn gets both right."""
    for alpha, k, want, why in ((0.0, 4, 1.0, "a round always emits the target's own token, even when the "
                                              "first draft is rejected"),
                                (1.0, 4, 5.0, "with every draft accepted a round emits gamma + 1 tokens")):
        got, problem = run_with_timeout(fn, alpha, k)
        if problem is not None:
            return None  # reported elsewhere (alpha = 1 has its own message)
        try:
            value = float(got.item() if isinstance(got, torch.Tensor) else got)
        except (TypeError, ValueError, RuntimeError):
            return None
        if math.isfinite(value) and abs(value - want) > 1e-6:
            return CheckResult(False, f"check a boundary: alpha = {alpha:g}, gamma = {k} should give {want:g}, you "
                                      f"return {value:.4g} ({why})")
    return None


@checker
def check_expected_tokens(fn) -> CheckResult:
    """`fn(alpha, k)` -> expected tokens emitted per target pass; alpha: acceptance probability, k = gamma drafts."""
    cases = [(0.8, 4), (0.6, 3), (0.5, 1), (0.0, 5), (0.9, 8), (0.3, 2)]
    for alpha, k in cases:
        got, problem = run_with_timeout(fn, alpha, k)
        if problem is not None:
            return problem
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return CheckResult(False, f"return a number, got {type(got).__name__}")
        if not math.isfinite(got):
            return CheckResult(False, f"got {got} for alpha={alpha}, gamma={k}: return a finite number")
        want = _expected_tokens(alpha, k)
        if abs(got - want) <= 1e-6 * max(1.0, want):
            continue
        hints = {
            "no bonus": (_expected_tokens(alpha, k) - 1,
                         "count the token the target always adds at the end of a round (a correction or the "
                         "bonus token): every round emits at least 1"),
            "mean accepted": (alpha * k, "the drafted tokens are not accepted independently: the first "
                                         "rejection ends the round, so token i counts only if 1..i all passed"),
            "accepted plus one": (alpha * k + 1, "the drafted tokens are not accepted independently: the first "
                                                 "rejection ends the round, so token i counts only if 1..i "
                                                 "all passed"),
            "k tokens": ((1 - alpha ** k) / (1 - alpha) if alpha != 1 else k,
                         "close: a round can emit gamma + 1 tokens (gamma accepted plus the bonus token), "
                         "not at most gamma"),
        }
        for value, hint in hints.values():
            if abs(got - value) <= 1e-6 * max(1.0, abs(value)):
                return CheckResult(False, hint)
        boundary = _boundary_hint(fn)
        if boundary is not None:
            return boundary
        return CheckResult(False, f"for alpha={alpha}, gamma={k} you return {got:.4g}, which is not it; your formula "
                                  f"does pass the boundary checks (alpha = 0 gives 1, alpha = 1 gives gamma + 1)")
    got, problem = run_with_timeout(fn, 1.0, 4)
    if problem is not None:
        return CheckResult(False, f"alpha = 1 (the draft is always right) fails: {problem.message}")
    value, problem = (None, None)
    try:
        value = float(got.item() if isinstance(got, torch.Tensor) else got)
    except (TypeError, ValueError):
        return CheckResult(False, f"alpha = 1: return a number, got {type(got).__name__}")
    if not math.isfinite(value) or abs(value - 5) > 1e-6:
        return CheckResult(False, f"alpha = 1, gamma = 4 gives {value}: with every draft accepted a round emits "
                                  f"gamma + 1 tokens; handle alpha = 1 apart (the formula divides 0 by 0)")
    return CheckResult(True, "(1 - alpha^(gamma+1)) / (1 - alpha): a geometric series, at most gamma + 1")


# Mistral 7B (Jiang et al. 2023, Table 1 and section 2): 32 layers, 8 key/value heads of 128 dimensions,
# a sliding window of 4096 tokens kept in a rolling buffer cache; 16-bit numbers, context 8192, batch 1.
MISTRAL = dict(n_layers=32, h_kv=8, d_k=128, window=4096, context=8192, n_heads=32, bytes=2)


@checker
def check_mistral_kv_bytes(answer) -> CheckResult:
    """`answer`: the bytes of Mistral 7B's rolling-buffer KV cache for one 8192-token sequence in bfloat16."""
    n, problem = as_int(answer, "a number of bytes")
    if problem is not None:
        return problem
    m = MISTRAL
    per_position = 2 * m["n_layers"] * m["h_kv"] * m["d_k"] * m["bytes"]
    want = per_position * m["window"]
    hints = {
        want // 2: "you count one tensor per layer: the cache holds keys AND values",
        want * 2: "two possible slips give this number: counting positions the rolling buffer has already "
                  "overwritten (it keeps only the last W = 4096, its sliding window), or 4 bytes per number "
                  "where bfloat16 takes 2",
        want * m["n_heads"] // m["h_kv"]: "Mistral uses grouped-query attention: count its key/value heads, "
                                          "not its query heads",
        want // m["n_layers"]: "that is one layer: every layer keeps its own keys and values",
        per_position * m["context"] * m["n_heads"] // m["h_kv"]: "two things at once: count key/value heads (GQA) "
                                                                 "and only the positions the rolling buffer keeps",
    }
    if n == want:
        return CheckResult(True, f"{want:,} bytes = 512 MiB: 2 x 32 x 8 x 128 x 4096 x 2 (K and V, layers, "
                                 f"key/value heads, d_k, window, bytes)")
    if n in hints:
        return CheckResult(False, hints[n])
    if n in (want // 2**20, want // 10**6):
        return CheckResult(False, "give the answer in bytes, not in MiB or MB")
    return CheckResult(False, f"{n:,} bytes is not it: 2 (K, V) x layers x key/value heads x d_k x cached "
                              f"positions x bytes per number")
