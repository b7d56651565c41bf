"""Checkers for Chapter 2, "Tokenization". Each takes the reader's answer and never raises.

The exercises: encoding with a learned merge table (`encode`, the warm-up, which retypes the chapter's
`encode_by_hand`), the training loop extended to special tokens that are never merged and never merged
across (`train_with_specials`, a case the chapter does not show), and how many merges a run of one repeated
byte allows (`merges_for_run`, a number to derive). The package's `tokenization` module gives the reference
answers.
"""
from ..tokenization import BPETokenizer, get_stats, merge, train_fast, train_naive
from .base import CheckResult, as_int, checker, run_for_int, run_with_timeout


def _short(value, limit: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------
# encode


def _encode_cases() -> list[tuple[str, dict, str]]:
    """(name, merges, text): the reader's encode(text, merges) must equal BPETokenizer(merges).encode(text)."""
    wiki = BPETokenizer([(97, 97), (97, 98), (256, 257)], special_tokens=(), pattern=None).merges
    english = train_fast("the cat sat on the mat. the rat ate the hat; that cat sat on that rat. " * 4, 286,
                         special_tokens=(), pattern=None).merges
    return [("the Wikipedia merges", wiki, "aaabdaaabac"),
            ("merges learned from a short English text", english, "the cat sat on the hat"),
            ("merges learned from a short English text", english, "that rat ate the mat, the cat ran!"),
            ("merges learned from a short English text", english, "café à 5€ 😀 the cat"),
            ("merges learned from a short English text", english, ""),
            ("no merges at all", {}, "plain bytes")]


@checker
def check_encode(fn) -> CheckResult:
    """`fn(text, merges) -> ids`: UTF-8 bytes of `text`, then the merges applied in the order they were learned.

    `merges` is a dict {(id1, id2): new_id} in learning order, like `BPETokenizer.merges`; no pre-split.
    """
    for name, merges, text in _encode_cases():
        reference = BPETokenizer(list(merges), special_tokens=(), pattern=None)
        expected = reference.encode(text)
        got, problem = run_with_timeout(fn, text, dict(merges))
        if problem is not None:
            return problem
        if got is None:
            return CheckResult(False, "your function returned None; did you forget to `return` the ids?")
        if hasattr(got, "tolist") and not isinstance(got, (str, bytes)):  # a tensor or array: check before converting
            shape = tuple(getattr(got, "shape", ()))
            if len(shape) != 1:
                return CheckResult(False, f"return a 1-D sequence of ids, got shape {shape}")
            if shape[0] != len(expected):
                return CheckResult(False, f"with {name}, encode({text!r}): {shape[0]:,} ids, expected {len(expected)}")
            got = got.tolist()
        if isinstance(got, (bytes, bytearray)):
            return CheckResult(False, "you returned the raw bytes; turn them into a list of ints and apply the merges")
        if isinstance(got, str) or not isinstance(got, (list, tuple)):
            return CheckResult(False, f"return a list of int ids, got {type(got).__name__}")
        got = list(got)
        if got == expected:
            continue
        return CheckResult(False, f"with {name}, encode({text!r}): " + _encode_hint(text, merges, got, expected))
    return CheckResult(True, "UTF-8 bytes, then every merge in the order it was learned: same ids as BPETokenizer")


def _apply(ids, merges):
    """Apply each merge of the dict `merges` once, in the dict's order."""
    for pair, idx in merges.items():
        ids = merge(ids, pair, idx)
    return ids


def _encode_hint(text, merges, got, expected) -> str:
    raw = list(text.encode("utf-8"))
    if any(not isinstance(i, int) or isinstance(i, bool) for i in got):
        return f"the ids must be ints, got {_short(got)}"
    if any(ord(c) > 255 for c in text) and got == _apply([ord(c) for c in text], merges):
        return ("you started from code points (ord); start from the UTF-8 bytes, list(text.encode('utf-8')): "
                "'é' is the two bytes [195, 169]")
    if merges and got == raw:
        return "no merge was applied; after turning the text into bytes, apply the merges"
    reversed_order = dict(reversed(list(merges.items())))
    if len(merges) > 1 and got == _apply(raw, reversed_order):
        return ("you applied the merges in reverse; apply them in the order they were learned (the dict's "
                "order): later merges are built from the ids of earlier ones")
    if len(got) > len(expected):
        return (f"{len(got)} ids, expected {len(expected)}: some merges were not applied; keep merging until no "
                f"adjacent pair is in the table")
    return (f"got {_short(got)}, {len(got)} ids where {len(expected)} were expected; start from the UTF-8 "
            f"bytes and apply each merge, in the order of the dict, to the whole sequence")


# --------------------------------------------------------------------------------------------------------
# train_with_specials: the training loop when special tokens are never merged and never merged across


def _learn(sequences, n_merges, tie="smallest"):
    """BPE on several id sequences counted together; merges never cross from one sequence to the next.

    `tie="first"` breaks ties by the pair met first (a typical alternative to the chapter's smallest pair).
    """
    sequences, merges = [list(s) for s in sequences], {}
    for k in range(n_merges):
        stats = {}
        for ids in sequences:
            get_stats(ids, stats)
        if not stats:
            break
        if tie == "first":
            pair = max(stats, key=stats.get)
        else:
            pair = min(stats, key=lambda p: (-stats[p], p))
        sequences = [merge(ids, pair, 256 + k) for ids in sequences]
        merges[pair] = 256 + k
    return merges


def _cut(text, specials):
    """The pieces of `text` between its special tokens (all of them, longest first), as byte sequences."""
    pieces = [text]
    for s in sorted(specials, key=len, reverse=True):
        pieces = [part for piece in pieces for part in piece.split(s)]
    return [list(p.encode("utf-8")) for p in pieces if p]


def _specials_cases():
    from ..data import synthetic_corpus

    eot = "<|endoftext|>"
    chat = ("<|user|>", "<|assistant|>")
    return [
        ("the end.<|endoftext|>The end. The cat.<|endoftext|>The cat sat.", 12, (eot,)),
        (synthetic_corpus(2_000, seed=5), 40, (eot,)),
        ("<|user|>hi there!<|assistant|>hello there!<|user|>bye.<|assistant|>bye bye.", 14, chat),
        ("<|endoftext|><|endoftext|>aaaa<|endoftext|>aaab<|endoftext|>", 3, (eot,)),
    ]


def _as_merges(got):
    """The reader's answer as a dict {(id1, id2): new_id}, or a CheckResult saying why it is not one."""
    if got is None:
        return CheckResult(False, "your function returned None; did you forget to `return` the merges?")
    if isinstance(got, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in got):
        got = {tuple(p): 256 + k for k, p in enumerate(got)}  # a list of pairs in learning order is fine too
    if not isinstance(got, dict):
        return CheckResult(False, f"return a dict {{(id1, id2): new_id}} in learning order, like train_by_hand, "
                                  f"got {type(got).__name__}")
    pairs = list(got)
    if not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(i, int) for i in p) for p in pairs):
        return CheckResult(False, f"the keys must be pairs of int ids (id1, id2), got {_short(pairs[:3])}")
    if list(got.values()) != [256 + k for k in range(len(got))]:
        return CheckResult(False, f"new ids must be 256, 257, ... in the order the merges were learned, got "
                                  f"{_short(list(got.values())[:6])}")
    return got


def _specials_hint(text, n, specials, got, expected) -> str:
    def same(merges):
        return list(got.items()) == list(merges.items())

    raw = list(text.encode("utf-8"))
    if same(_learn([raw], n)):
        return ("these are the merges of the raw text: the special tokens' own characters were counted and merged "
                "('<', '|', ...); cut the text at every special token first")
    for filler in ("", " ", "\n"):
        glued = text
        for s in specials:
            glued = glued.replace(s, filler)
        if same(_learn([list(glued.encode("utf-8"))], n)):
            what = "deleting" if not filler else f"replacing by {filler!r}"
            return (f"{what} each special token joins the text on its two sides into one sequence, so pairs are "
                    f"counted across the place where it stood; keep the pieces between special tokens apart")
    if len(specials) > 1 and same(_learn(_cut(text, specials[:1]), n)):
        return f"only {specials[0]!r} was taken out; every special token in the list must be"
    if same(_learn(_cut(text, specials), n, tie="first")):
        return "a tie went to the pair met first; like the chapter, take the smallest pair (id1, id2) among ties"
    if len(got) != len(expected):
        return f"{len(got)} merges, expected {n}: learn exactly n_merges merges"
    k = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
    return (f"merge {k} differs: got {list(got)[k]}, expected {list(expected)[k]}; count the pairs of every piece "
            f"between special tokens, together")


@checker
def check_train_with_specials(fn) -> CheckResult:
    """`fn(text, n_merges, special_tokens) -> {(id1, id2): new_id}`: BPE with special tokens cut out.

    No pre-split; no merge contains a special token or spans the place where one stood; ties: smallest pair.
    The reference is the package's `train_naive(..., pattern=None)`.
    """
    for text, n, specials in _specials_cases():
        reference = train_naive(text, 256 + n + len(specials), special_tokens=specials, pattern=None)
        expected = dict(reference.merges)
        got, problem = run_with_timeout(fn, text, n, specials)
        if problem is not None:
            return problem
        got = _as_merges(got)
        if isinstance(got, CheckResult):
            return got
        if list(got.items()) != list(expected.items()):
            where = f"for {_short(text, 40)} with {n} merges and special tokens {list(specials)}"
            return CheckResult(False, f"{where}: " + _specials_hint(text, n, specials, got, expected))
    return CheckResult(True, "special tokens are never merged and never merged across: the merges of train_naive")


# --------------------------------------------------------------------------------------------------------
# merges_for_run: how many merges does a run of n identical bytes allow?

_RUN_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 100, 1000, 1023, 1024, 4097]  # simulated byte by byte
_HUGE_RUNS = [10**12, 2**60 - 1]  # far too long to simulate byte by byte: only a formula answers in time


def run_merges(n: int) -> int:
    """Merges BPE learns from n copies of one byte (one sequence) until no pair is left, by running the loop."""
    ids, merges = [45] * n, 0  # "-" * n
    while len(ids) > 1:
        stats = get_stats(ids)
        pair = min(stats, key=lambda p: (-stats[p], p))
        ids = merge(ids, pair, 256 + merges)
        merges += 1
    return merges


def run_merges_by_runs(n: int) -> int:
    """`run_merges(n)` for any n: the same loop on the run-length form [[id, count], ...] of the sequence.

    The sequence is always a few runs of one repeated id each (O(log n) of them), so the pair counts of
    `get_stats` and the left-to-right replacement of `merge` can be done per run without building n ids.
    """
    runs, merges = [[45, n]], 0
    while sum(count for _, count in runs) > 1:
        stats = {}
        for i, (t, count) in enumerate(runs):
            if count > 1:  # inside a run of t: count - 1 overlapping pairs (t, t), as get_stats counts
                stats[(t, t)] = stats.get((t, t), 0) + count - 1
            if i + 1 < len(runs):  # one pair across each boundary between runs
                stats[(t, runs[i + 1][0])] = stats.get((t, runs[i + 1][0]), 0) + 1
        pair = min(stats, key=lambda p: (-stats[p], p))
        new, out = 256 + merges, []
        for i, (t, count) in enumerate(runs):
            if pair == (t, t):  # left to right: count // 2 new ids, then one t if count is odd
                out += [[new, count // 2], [t, count % 2]]
            elif t == pair[0] and i + 1 < len(runs) and runs[i + 1][0] == pair[1] and count:
                out += [[t, count - 1], [new, 1]]  # the last t joins the first id of the next run
                runs[i + 1][1] -= 1
            else:
                out.append([t, count])
        runs = []
        for t, count in out:  # drop empty runs, join neighbours with the same id
            if count and runs and runs[-1][0] == t:
                runs[-1][1] += count
            elif count:
                runs.append([t, count])
        merges += 1
    return merges


def _runs_hint(got: dict, expected: dict) -> str:
    wrong = [n for n in got if got[n] != expected[n]]
    n = wrong[0]
    if all(got[m] == m - 1 for m in got):
        return ("n - 1 would be right if every merge removed one byte, but merging a frequent pair replaces all "
                "its occurrences at once; work out n = 8 by hand")
    if all(got[m] == 256 + expected[m] for m in got):
        return "you returned a vocabulary size (256 + merges); return the number of merges"
    if all(got[m] == expected[m] + 1 for m in got):
        return "one too many for every n: count the merges, not the tokens (a single byte allows no merge)"
    if all(got[m] == expected[m] - 1 for m in got if expected[m]):
        return "one too few for every n: the last merge, which joins the final two tokens, counts too"
    powers = [m for m in got if m & (m - 1) == 0]
    if all(got[m] == expected[m] for m in powers):
        return (f"right for powers of two, wrong for n = {n} (got {got[n]}): an odd count leaves one symbol over "
                f"at a step; those leftovers are merged too, even pairs seen once, until one token is left")
    if all(got[m] <= expected[m] for m in got):
        return (f"too few for n = {n} (got {got[n]}): BPE keeps merging pairs that occur only once, until the run "
                f"is a single token")
    return f"for n = {n} you return {got[n]}; train on '-' * {n} by hand or with train_fast and compare"


def _huge(n: int) -> str:
    return "10**12" if n == 10**12 else f"2**{(n + 1).bit_length() - 1} - 1" if n & (n + 1) == 0 else f"{n:,}"


@checker
def check_merges_for_run(fn) -> CheckResult:
    """`fn(n) -> int`: merges BPE learns from a text of n identical bytes (one chunk) before no pair is left.

    Run lengths up to 4,097 are checked against the loop itself (`run_merges`); 10**12 and 2**60 - 1, which no
    byte-by-byte simulation reaches in time, against the same loop on runs (`run_merges_by_runs`).
    """
    got = {}
    for n in _RUN_LENGTHS:
        value, problem = run_for_int(fn, n, what="a number of merges")
        if problem is not None:
            return problem
        got[n] = value
    expected = {n: run_merges(n) for n in got}
    if got != expected:
        return CheckResult(False, _runs_hint(got, expected))
    for n in _HUGE_RUNS:
        value, problem = run_with_timeout(fn, n, timeout=2.0)
        if problem is not None:
            return CheckResult(False, f"right for every n up to {_RUN_LENGTHS[-1]:,}, but for n = {_huge(n)} "
                                      f"{problem.message[0].lower()}{problem.message[1:]}: a text that long "
                                      f"cannot be built or simulated; derive the formula from the small cases "
                                      f"(hint: write n in binary)")
        value, problem = as_int(value, "a number of merges")
        if problem is not None:
            return problem
        if value != run_merges_by_runs(n):
            return CheckResult(False, f"right for every n up to {_RUN_LENGTHS[-1]:,}, but for n = {_huge(n)} you "
                                      f"return {value}; if you used floats (math.log2), they round for large n: "
                                      f"count with integers")
    return CheckResult(True, f"your formula matches BPE's count for {len(_RUN_LENGTHS)} run lengths up to "
                             f"{_RUN_LENGTHS[-1]:,}, and for n = 10**12 and 2**60 - 1, where no simulation "
                             f"finishes in time")
