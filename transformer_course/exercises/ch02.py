"""Checkers for Chapter 2, "Tokenization". Each takes the reader's function and never raises.

The reader writes the three pieces of byte-level BPE: counting adjacent pairs (`get_stats`), replacing a pair by
a new id (`merge`), and encoding text with a learned merge table (`encode`). The package's own versions in
`transformer_course.tokenization` are the reference answers.
"""
import random

from ..tokenization import BPETokenizer, get_stats, merge, train_fast
from .base import CheckResult, checker, run_with_timeout


def _short(value, limit: int = 90) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _stats_cases() -> list[list[int]]:
    rng = random.Random(2)
    return [[1, 2, 1, 2, 3], [1, 2, 3, 1, 2], [7, 7, 7, 7], [5], [], list("hello world".encode("utf-8")),
            [rng.randrange(6) for _ in range(200)]]


# --------------------------------------------------------------------------------------------------------
# get_stats


@checker
def check_get_stats(fn) -> CheckResult:
    """`fn(ids) -> {(id1, id2): count}`: how often each adjacent pair occurs in the list `ids`."""
    for ids in _stats_cases():
        given = list(ids)
        got, problem = run_with_timeout(fn, given)
        if problem is not None:
            return problem
        expected = get_stats(ids)
        if given != ids:
            return CheckResult(False, "your function changed the list it was given; only read it")
        if got is None:
            return CheckResult(False, "your function returned None; did you forget to `return` the counts?")
        if isinstance(got, (list, tuple)):
            return CheckResult(False, f"return a dict mapping each pair (id1, id2) to its count, got a "
                                      f"{type(got).__name__}; collect the pairs into a dict (or a Counter)")
        if not isinstance(got, dict):
            return CheckResult(False, f"return a dict mapping each pair (id1, id2) to its count, got "
                                      f"{type(got).__name__}")
        if dict(got) == expected:
            continue
        bad_keys = [k for k in got if not (isinstance(k, tuple) and len(k) == 2)]
        if bad_keys:
            return CheckResult(False, f"the keys must be pairs (id1, id2) as tuples, got the key "
                                      f"{_short(bad_keys[0])}")
        return CheckResult(False, f"for ids = {_short(ids, 40)}: " + _stats_hint(ids, dict(got), expected))
    return CheckResult(True, "your counts match get_stats on every test list, overlapping pairs included")


def _skipping_overlaps(ids) -> dict:
    """A typical mistake: after counting a pair of equal ids, jump past both, so (7, 7, 7) counts (7, 7) once."""
    counts, i = {}, 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if pair[0] == pair[1] else 1
    return counts


def _stats_hint(ids, got, expected) -> str:
    if got == _skipping_overlaps(ids):
        return ("a count is too small: count overlapping pairs too, [7, 7, 7, 7] holds (7, 7) three times "
                "(do not skip ahead after a match)")
    if set(got) == set(expected) and all(v == 1 for v in got.values()):
        return "every pair is counted once; count every occurrence (add 1 each time you meet the pair)"
    if ids and got == get_stats(ids[:-1]):
        return "the last pair is missing: pair each id with its successor, zip(ids, ids[1:])"
    if len(ids) > 1 and got == get_stats(ids + ids[:1]):
        return "the last id has no successor: do not wrap around to the first one"
    if got and all(isinstance(k, tuple) and len(k) == 2 for k in got) and set(got) - set(expected):
        pair = sorted(set(got) - set(expected))[0]
        return f"the pair {pair} is not adjacent anywhere in ids; count only neighbours ids[i], ids[i + 1]"
    return f"expected {_short(expected)}, got {_short(got)}"


# --------------------------------------------------------------------------------------------------------
# merge


def _merge_cases() -> list[tuple[list[int], tuple[int, int], int]]:
    rng = random.Random(3)
    long = [rng.randrange(4) for _ in range(300)]
    return [([1, 2, 3, 1, 2], (1, 2), 4), ([1, 2, 3], (1, 2), 9), ([1, 1, 1], (1, 1), 9),
            ([1, 1, 1, 1], (1, 1), 9), ([3, 5, 6], (5, 6), 7), ([], (1, 2), 3), ([3], (1, 2), 4),
            ([3, 4], (1, 2), 5), (long, (2, 2), 256), (long, (0, 1), 257)]


@checker
def check_merge(fn) -> CheckResult:
    """`fn(ids, pair, idx) -> new ids`: every occurrence of `pair` in `ids`, left to right, replaced by `idx`."""
    for ids, pair, idx in _merge_cases():
        given = list(ids)
        got, problem = run_with_timeout(fn, given, pair, idx)
        if problem is not None:
            return problem
        expected = merge(ids, pair, idx)
        if got is None:
            if given != ids:
                return CheckResult(False, "you changed the list in place but returned None; return the new list")
            return CheckResult(False, "your function returned None; did you forget to `return` the new list?")
        if isinstance(got, tuple):
            got = list(got)
        if not isinstance(got, list):
            return CheckResult(False, f"return a list of ids, got {type(got).__name__}")
        if got == expected:
            continue
        where = f"merge({_short(ids, 40)}, {pair}, {idx})"
        return CheckResult(False, f"{where}: " + _merge_hint(ids, pair, idx, got, expected))
    return CheckResult(True, "every occurrence replaced, left to right, overlaps and the last id handled")


def _first_only(ids, pair, idx):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [idx] + ids[i + 2:]
    return list(ids)


def _merge_hint(ids, pair, idx, got, expected) -> str:
    if got == ids:
        return (f"nothing was replaced (expected {_short(expected)}): look for positions i where "
                f"(ids[i], ids[i + 1]) == pair")
    if got == _first_only(ids, pair, idx):
        return f"only the first occurrence was replaced; replace every one (expected {_short(expected)})"
    if ids and got == expected[:-1] and expected[-1] == ids[-1]:
        return (f"the last id is missing (got {_short(got)}, expected {_short(expected)}): when no pair starts "
                f"at the last position, still append that id")
    if pair[0] == pair[1] and pair[0] in ids:
        return (f"got {_short(got)}, expected {_short(expected)}: scan left to right and, after a match, skip "
                f"both ids of the pair (i += 2), so merge([1, 1, 1], (1, 1), 9) is [9, 1]")
    if len(got) == len(ids) and idx in got:
        return (f"got {_short(got)}: a matched pair must become ONE id; skip the second id of the pair "
                f"(expected {_short(expected)})")
    return f"expected {_short(expected)}, got {_short(got)}"


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
                f"adjacent pair is in the table (expected {_short(expected)})")
    return f"expected {_short(expected)}, got {_short(got)}"
