"""Checkers for Chapter 8, "Local and sparse attention". Each takes the reader's answer and never raises."""
import torch

from ..sparse_attention import sliding_window_mask
from .base import CheckResult, as_int, check_tensor, checker, run_for_int, run_with_timeout

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


def _earliest(t, windows):
    if any(w is None for w in windows):  # one global layer reads every earlier position
        return 0
    return max(0, t - sum(w - 1 for w in windows))


@checker
def check_earliest_input(fn) -> CheckResult:
    """`fn(t, windows) -> int`: the earliest input position output t depends on; windows[l] None = global."""
    cases = [
        (100, (8, 4, 16)),  # windows that differ tell the usual mistakes apart
        (50, (5, 5, 5)),
        (10, (4,)),
        (7, (3, 3, 3, 3)),  # the field reaches past the start of the sequence
        (100, (4, None, 4)),
        (100, (None, None)),
        (30, (1, 1)),
        (500, (64, 32, 16, 8)),  # not the exercise's question (t = 1000)
    ]
    for t, windows in cases:
        got, problem = run_with_timeout(fn, t, windows)
        if problem is not None and None in windows and "raised" in problem.message:
            return CheckResult(False, f"for windows={windows} {problem.message}; an entry None is a global layer")
        if problem is not None:
            return problem
        got, problem = as_int(got, "a position")
        if problem is not None:
            return problem
        expected = _earliest(t, windows)
        if got == expected:
            continue
        where = f"for t={t}, windows={windows}: got {got}"
        if None in windows:
            return CheckResult(False, f"{where}. A global layer (None) lets position t read every earlier "
                                      f"position, so what reaches the output can start anywhere")
        reach = sum(w - 1 for w in windows)
        if got == t - reach:
            return CheckResult(False, f"{where}. Positions start at 0: clip with max(0, ...)")
        if got in {t - sum(windows), max(0, t - sum(windows)), t - sum(windows) + 1, max(0, t - sum(windows) + 1)}:
            return CheckResult(False, f"{where}. A layer of window w reaches w - 1 positions back (the window "
                                      f"counts the query itself)")
        same = {max(0, t - len(windows) * (w - 1)) for w in windows}
        if got in same:
            return CheckResult(False, f"{where}. The layers have different windows: add up what each one "
                                      f"reaches rather than using one window for all")
        if got in {max(0, t - (w - 1)) for w in windows}:
            return CheckResult(False, f"{where}. That is one layer's reach; each of the {len(windows)} layers "
                                      f"reaches further back from where the layer below already reached")
        return CheckResult(False, f"{where}. Each local layer of window w lets position t reach w - 1 "
                                  f"positions further back than the layer below it")
    return CheckResult(True, "local layers add up their reaches, sum of (w - 1); one global layer reaches 0")


BANDED_T, BANDED_WINDOW = 1000, 64


@checker
def check_banded_scores(answer) -> CheckResult:
    """`answer`: how many scores banded_attention forms per batch element and head for T=1000, window=64."""
    got, problem = as_int(answer, "a number of scores")
    if problem is not None:
        return problem
    T, w = BANDED_T, BANDED_WINDOW
    n = -(-T // w)  # chunks, the last one padded
    expected = n * w * 2 * w
    if got == expected:
        return CheckResult(True, f"{n} chunks (T is padded from {T} to {n * w}) x {w} queries x {2 * w} keys; "
                                 f"the band itself keeps {w * T - w * (w - 1) // 2:,} of them")
    hints = {
        T * T: "that is the full T x T score matrix, which the masked version forms; banded_attention never "
               "forms it",
        T * (T + 1) // 2: "that is the causal triangle; banded_attention never forms scores outside its chunks",
        2 * T * w: "close: 2 T w assumes T divides into chunks of the window; look at what the code does when "
                   "it does not",
        w * T - w * (w - 1) // 2: "that counts the pairs the softmax keeps; the code also forms the scores "
                                  "inside each block that it then masks",
        T * w: "that counts about the pairs the softmax keeps; the code also forms the scores inside each "
               "block that it then masks",
        n * w * w: "each chunk of queries is scored against the keys of its own chunk and of the one before it",
        (T // w) * w * 2 * w: "the last chunk is not dropped: the code pads T up to a multiple of the window",
    }
    if got in hints:
        return CheckResult(False, f"got {got:,}. {hints[got]}")
    if got > 0 and got % expected == 0:
        return CheckResult(False, f"got {got:,}: count for one batch element and one head")
    return CheckResult(False, f"got {got:,}. Count the chunks n = ceil(T / window) and the shape of the "
                              f"scores tensor, (B, h, n, window, 2 window)")


# (label, T, windows per layer (None = global), n_kv_heads, d_k, dtype_bytes)
_CACHE_CASES = [  # the first case tells the usual mistakes apart
    ("windows (4, None, 4), 10 tokens, 2 KV heads, d_k=8, float32", 10, (4, None, 4), 2, 8, 4),
    ("windows (8, None), 3 tokens, 1 KV head, d_k=4, 16-bit", 3, (8, None), 1, 4, 2),
    ("Mistral 7B's shapes (32 local layers of window 4096), 32768 tokens", 32768, (4096,) * 32, 8, 128, 2),
    ("Mistral 7B's shapes, layers alternating local (4096) and global, 32768 tokens",
     32768, (4096, None) * 16, 8, 128, 2),
    ("two global layers, 5 tokens", 5, (None, None), 4, 16, 4),
]


def _cache_bytes(T, windows, h_kv, d_k, nbytes, slots=lambda T, w: min(T, w)):
    return sum(2 * h_kv * d_k * nbytes * (T if w is None else slots(T, w)) for w in windows)


@checker
def check_windowed_cache_bytes(fn) -> CheckResult:
    """`fn(T, windows, n_kv_heads, d_k, dtype_bytes) -> int`: KV-cache bytes of one sequence after T tokens."""
    for label, T, windows, h_kv, d_k, nbytes in _CACHE_CASES:
        got, problem = run_for_int(fn, T, windows, h_kv, d_k, nbytes, what="a number of bytes")
        if problem is not None:
            return problem
        expected = _cache_bytes(T, windows, h_kv, d_k, nbytes)
        if got == expected:
            continue
        where = f"for {label}: got {got:,}"
        wrong = {
            _cache_bytes(T, windows, h_kv, d_k, nbytes, lambda T, w: T):
                "a local layer keeps only its last `window` positions (a rolling buffer), not all T",
            _cache_bytes(T, windows, h_kv, d_k, nbytes, lambda T, w: w):
                "before the window fills up, a local layer holds only the T tokens seen so far: min(T, window)",
            _cache_bytes(T, windows, h_kv, d_k, nbytes, lambda T, w: min(T, w - 1)):
                "the window counts the newest token itself, so the buffer holds `window` positions",
            expected // 2: "the cache holds keys AND values: multiply by 2",
            expected // nbytes: "multiply by the bytes per number (dtype_bytes) to get bytes, not numbers",
            expected // (2 * nbytes): "multiply by 2 (keys and values) and by dtype_bytes",
            _cache_bytes(T, [w for w in windows if w is not None], h_kv, d_k, nbytes):
                "the global layers (None) have a cache too: they keep all T positions",
        }
        if got in wrong:
            return CheckResult(False, f"{where}. {wrong[got]}")
        return CheckResult(False, f"{where}. Add up the layers: each holds 2 x n_kv_heads x d_k x dtype_bytes "
                                  f"bytes per position it keeps")
    full = _cache_bytes(32768, (None,) * 32, 8, 128, 2) / 2**30
    mixed = _cache_bytes(32768, (4096, None) * 16, 8, 128, 2) / 2**30
    return CheckResult(True, f"each layer keeps T (global) or min(T, window) (local) positions; alternating "
                             f"layers need {mixed:.2f} GiB at 32K tokens, full attention {full:.0f} GiB")
