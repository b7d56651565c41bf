"""Chapter 2's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import time

import numpy as np

from transformer_course.exercises import ch02


def get_stats(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode(text, merges):
    ids = list(text.encode("utf-8"))
    for pair, idx in merges.items():  # the order they were learned
        ids = merge(ids, pair, idx)
    return ids


def encode_minbpe(text, merges):
    """minbpe's loop: repeatedly merge the present pair that was learned first."""
    ids = list(text.encode("utf-8"))
    while len(ids) >= 2:
        stats = get_stats(ids)
        pair = min(stats, key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


def test_reference_answers_pass():
    assert ch02.check_get_stats(get_stats).passed
    assert ch02.check_merge(merge).passed
    assert ch02.check_encode(encode).passed
    assert ch02.check_encode(encode_minbpe).passed


def test_alternative_correct_answers_pass():
    from collections import Counter

    assert ch02.check_get_stats(lambda ids: Counter(zip(ids, ids[1:]))).passed
    assert ch02.check_merge(lambda ids, pair, idx: tuple(merge(ids, pair, idx))).passed
    assert ch02.check_encode(lambda text, merges: np.array(encode(text, merges), dtype=np.int64)).passed


def test_get_stats_hints():
    missing_last = ch02.check_get_stats(lambda ids: get_stats(ids[:-1]))
    assert not missing_last.passed and "last pair is missing" in missing_last.message
    wrap = ch02.check_get_stats(lambda ids: get_stats(ids + ids[:1]))
    assert not wrap.passed and "wrap around" in wrap.message
    once = ch02.check_get_stats(lambda ids: {p: 1 for p in zip(ids, ids[1:])})
    assert not once.passed and "counted once" in once.message

    def skip_after_match(ids):
        counts, i = {}, 0
        while i < len(ids) - 1:
            pair = (ids[i], ids[i + 1])
            counts[pair] = counts.get(pair, 0) + 1
            i += 2 if pair[0] == pair[1] else 1
        return counts

    overlap = ch02.check_get_stats(skip_after_match)
    assert not overlap.passed and "overlapping" in overlap.message
    pairs = ch02.check_get_stats(lambda ids: list(zip(ids, ids[1:])))
    assert not pairs.passed and "dict" in pairs.message
    keys = ch02.check_get_stats(lambda ids: {f"{a},{b}": n for (a, b), n in get_stats(ids).items()})
    assert not keys.passed and "tuples" in keys.message

    def mutate(ids):
        counts = get_stats(ids)
        ids.clear()
        return counts

    assert "changed the list" in ch02.check_get_stats(mutate).message


def test_merge_hints():
    def first_only(ids, pair, idx):
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                return ids[:i] + [idx] + ids[i + 2:]
        return list(ids)

    first = ch02.check_merge(first_only)
    assert not first.passed and "only the first occurrence" in first.message

    def drops_last(ids, pair, idx):
        out, i = [], 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == pair:
                out.append(idx)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    last = ch02.check_merge(drops_last)
    assert not last.passed and "last id is missing" in last.message

    def no_skip(ids, pair, idx):
        return [idx if (a, b) == pair else a for a, b in zip(ids, ids[1:] + [None])]

    skip = ch02.check_merge(no_skip)
    assert not skip.passed and ("ONE id" in skip.message or "skip" in skip.message)

    def in_place(ids, pair, idx):
        ids[:] = merge(ids, pair, idx)

    assert "returned None" in ch02.check_merge(in_place).message
    assert "nothing was replaced" in ch02.check_merge(lambda ids, pair, idx: list(ids)).message
    assert "list of ids" in ch02.check_merge(lambda ids, pair, idx: "4 3 4").message


def test_encode_hints():
    def code_points(text, merges):
        ids = [ord(c) for c in text]
        for pair, idx in merges.items():
            ids = merge(ids, pair, idx)
        return ids

    cp = ch02.check_encode(code_points)
    assert not cp.passed and "UTF-8" in cp.message
    none_applied = ch02.check_encode(lambda text, merges: list(text.encode("utf-8")))
    assert not none_applied.passed and "no merge was applied" in none_applied.message
    backwards = ch02.check_encode(lambda text, merges: encode(text, dict(reversed(list(merges.items())))))
    assert not backwards.passed and "reverse" in backwards.message
    raw = ch02.check_encode(lambda text, merges: text.encode("utf-8"))
    assert not raw.passed and "raw bytes" in raw.message
    as_text = ch02.check_encode(lambda text, merges: text)
    assert not as_text.passed and "list of int ids" in as_text.message

    def one_round(text, merges):  # only the first merge that applies, once
        ids = list(text.encode("utf-8"))
        for pair, idx in merges.items():
            new = merge(ids, pair, idx)
            if new != ids:
                return new
        return ids

    partial = ch02.check_encode(one_round)
    assert not partial.passed and "not applied" in partial.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch02.check_get_stats, ch02.check_merge, ch02.check_encode):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: {object(): 1}):
            result = check(answer)
            assert not result.passed and result.message
    started = time.monotonic()
    hung = ch02.check_merge(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
