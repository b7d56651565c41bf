"""Checkers for Chapter 8, "Local and sparse attention". Each takes the reader's function and never raises."""
import torch

from ..sparse_attention import sliding_window_mask, strided_mask
from .base import CheckResult, as_int, check_tensor, checker, run_with_timeout

MASK_CASES = [(6, 3), (10, 4), (9, 1), (5, 8)]  # (T, window or stride)


def _as_mask(got, T, name):
    """Accept a bool mask, or a 0/1 integer or float one; explain anything else. Returns (mask, problem)."""
    if got is None:
        return None, CheckResult(False, f"{name} is None; did you forget to `return` it?")
    if not isinstance(got, torch.Tensor):
        return None, CheckResult(False, f"{name} should be a torch.Tensor of shape ({T}, {T}), "
                                        f"got {type(got).__name__}")
    if tuple(got.shape) != (T, T):
        return None, check_tensor(got, torch.zeros(T, T, dtype=torch.bool), name=name)
    if got.dtype != torch.bool:
        if got.is_floating_point() and torch.isneginf(got).any():
            return None, CheckResult(False, f"{name} looks like an additive bias (0 and -inf); return a bool mask, "
                                            f"True where query i may attend to key j")
        if not ((got == 0) | (got == 1)).all():
            return None, CheckResult(False, f"{name} should hold True/False (or 0/1), got other values")
        got = got != 0
    return got, None


def _mask_hint(got, T, n, reference, name) -> CheckResult | None:
    expected = reference(T, n)
    if torch.equal(got, expected):
        return CheckResult(True, "")
    if torch.equal(got, expected.T):
        return CheckResult(False, f"{name} is transposed: rows are queries i, columns keys j, and j <= i "
                                  f"(the mask is lower-triangular)")
    if got.triu(1).any():
        return CheckResult(False, f"{name} lets query i see a later key j > i (first at {_first(got.triu(1))}); "
                                  f"causal attention only looks back")
    return None


def _first(mask):
    return tuple(int(i) for i in mask.nonzero()[0])


@checker
def check_window_mask(fn) -> CheckResult:
    """`fn(T, window) -> bool (T, T)`: query i sees keys i-window+1 .. i."""
    for T, w in MASK_CASES:
        got, problem = run_with_timeout(fn, T, w)
        if problem is not None:
            return problem
        name = f"the mask for T={T}, window={w}"
        got, problem = _as_mask(got, T, name)
        if problem is not None:
            return problem
        hint = _mask_hint(got, T, w, sliding_window_mask, name)
        if hint is not None and hint.passed:
            continue
        if hint is not None:
            return hint
        if w < T and torch.equal(got, sliding_window_mask(T, w + 1)):
            return CheckResult(False, f"{name} lets each query see {w + 1} keys; the window counts the query "
                                      f"itself, so it sees itself and the {w - 1} keys before it (i - j < window)")
        if w > 1 and torch.equal(got, sliding_window_mask(T, w - 1)):
            return CheckResult(False, f"{name} lets each query see only {w - 1} keys; the window of {w} counts the "
                                      f"query itself plus the {w - 1} keys before it")
        if torch.equal(got, torch.ones(T, T, dtype=torch.bool).tril()):
            return CheckResult(False, f"{name} is the full causal mask: also drop keys more than window-1 "
                                      f"positions back")
        off_diagonal = ~torch.eye(T, dtype=torch.bool)
        if torch.equal(got & off_diagonal, sliding_window_mask(T, w) & off_diagonal):
            return CheckResult(False, f"{name} is right except on the diagonal: a query always sees itself")
        return check_tensor(got, sliding_window_mask(T, w), name=name)
    return CheckResult(True, "each query sees itself and the window-1 keys before it, never a later one")


@checker
def check_strided_mask(fn) -> CheckResult:
    """`fn(T, stride) -> bool (T, T)`: Child et al.'s strided pattern, the union of its two heads."""
    cases = [(12, 3), (16, 4), (7, 2), (5, 1)]
    for T, l in cases:
        got, problem = run_with_timeout(fn, T, l)
        if problem is not None:
            return problem
        name = f"the mask for T={T}, stride={l}"
        got, problem = _as_mask(got, T, name)
        if problem is not None:
            return problem
        hint = _mask_hint(got, T, l, strided_mask, name)
        if hint is not None and hint.passed:
            continue
        if hint is not None:
            return hint
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        causal = j <= i
        local = causal & (i - j <= l)
        every = causal & ((i - j) % l == 0)
        if torch.equal(got, local):
            return CheckResult(False, f"{name} has only the local part (A1); add every stride-th earlier "
                                      f"position, (i - j) % stride == 0 (A2)")
        if torch.equal(got, every):
            return CheckResult(False, f"{name} has only the strided part (A2); add the previous stride positions "
                                      f"(A1: max(0, i - stride) <= j <= i)")
        if torch.equal(got, causal & ((i - j <= l) | (j % l == 0))):
            return CheckResult(False, f"{name} keeps the columns j % stride == 0; the strided head counts back "
                                      f"from the query: (i - j) % stride == 0")
        if torch.equal(got, local & every):
            return CheckResult(False, f"{name} is the intersection of the two parts; a merged head sees their "
                                      f"union (|)")
        return check_tensor(got, strided_mask(T, l), name=name)
    return CheckResult(True, "the previous stride positions and every stride-th one before them, causal")


def _earliest(t, pattern, window):
    if "global" in pattern:
        return 0
    return max(0, t - len(pattern) * (window - 1))


@checker
def check_earliest_input(fn) -> CheckResult:
    """`fn(t, pattern, window) -> int`: the earliest input position that output t depends on."""
    cases = [
        (50, ("local",) * 3, 5),
        (10, ("local",), 4),
        (100, ("local",) * 4, 8),
        (7, ("local",) * 4, 3),  # the field reaches past the start of the sequence
        (100, ("local", "global", "local"), 4),
        (100, ("global", "global"), 4),
        (30, ("local",) * 2, 1),
    ]
    for t, pattern, w in cases:
        got, problem = run_with_timeout(fn, t, pattern, w)
        if problem is not None:
            return problem
        got, problem = as_int(got, "a position")
        if problem is not None:
            return problem
        expected = _earliest(t, pattern, w)
        if got == expected:
            continue
        where = f"for t={t}, pattern={pattern}, window={w}: got {got}, expected {expected}"
        L = len(pattern)
        if "global" in pattern:
            return CheckResult(False, f"{where}. One global layer lets position t read every earlier position, "
                                      f"so the field starts at 0")
        if got == t - L * (w - 1):
            return CheckResult(False, f"{where}. Positions start at 0: clip with max(0, ...)")
        if got in (t - L * w, max(0, t - L * w), t - L * w + 1, max(0, t - L * w + 1)):
            return CheckResult(False, f"{where}. Each local layer reaches window-1 positions back (the window "
                                      f"counts the query itself), so L layers reach L (window - 1)")
        if got in (t - (w - 1), max(0, t - (w - 1))):
            return CheckResult(False, f"{where}. That is one layer's reach; each of the {L} local layers adds "
                                      f"window-1 more")
        return CheckResult(False, where)
    return CheckResult(True, "L local layers reach back L (w - 1) positions; one global layer reaches position 0")
