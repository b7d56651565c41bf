"""Chapter 2's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math
import re
import time

import numpy as np

from transformer_course.exercises import ch02
from transformer_course.tokenization import EOT, get_stats, split_text, train_fast


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


def train_with_specials(text, n_merges, special_tokens):
    """BPE on raw bytes; the text between special tokens forms separate sequences, counted together."""
    pieces = [text]
    for s in sorted(special_tokens, key=len, reverse=True):
        pieces = [part for piece in pieces for part in piece.split(s)]
    sequences = [list(p.encode("utf-8")) for p in pieces if p]
    merges = {}
    for k in range(n_merges):
        stats = {}
        for ids in sequences:
            for pair in zip(ids, ids[1:]):
                stats[pair] = stats.get(pair, 0) + 1
        pair = min(stats, key=lambda p: (-stats[p], p))
        sequences = [merge(ids, pair, 256 + k) for ids in sequences]
        merges[pair] = 256 + k
    return merges


def merges_for_run(n):
    return n.bit_length() + bin(n).count("1") - 2


def test_reference_answers_pass():
    assert ch02.check_encode(encode).passed
    assert ch02.check_encode(encode_minbpe).passed
    assert ch02.check_train_with_specials(train_with_specials).passed
    assert ch02.check_merges_for_run(merges_for_run).passed


def test_alternative_correct_answers_pass():
    assert ch02.check_encode(lambda text, merges: np.array(encode(text, merges), dtype=np.int64)).passed
    as_list = ch02.check_train_with_specials(lambda *a: list(train_with_specials(*a)))  # pairs in order
    assert as_list.passed
    assert ch02.check_merges_for_run(lambda n: float(merges_for_run(n))).passed


def test_specials_reference_on_a_hand_example():
    """Worked by hand: pieces "ab", "ba", "ba" hold (b, a) twice and (a, b) once; glued, "abbaba" ties them."""
    text = "ab<|endoftext|>ba<|endoftext|>ba"
    assert train_with_specials(text, 1, ("<|endoftext|>",)) == {(98, 97): 256}
    glued = train_with_specials(text.replace("<|endoftext|>", ""), 1, ())
    assert glued == {(97, 98): 256}  # the smallest of the tied pairs
    assert "joins the text" in ch02.check_train_with_specials(
        lambda t, n, s: train_with_specials(re.sub("|".join(map(re.escape, s)), "", t), n, ())).message


def test_run_merges_match_the_package_trainer_and_a_hand_count():
    """n = 1000: 500, 250, 125 pairs halve; 62 + 1 left ... 9 doubling merges leave 6 tokens, 5 more: 14."""
    assert ch02.run_merges(1000) == 14 == merges_for_run(1000)
    assert ch02.run_merges(8) == 3 and ch02.run_merges(1) == 0
    for n in (2, 5, 11, 100, 257):
        k = ch02.run_merges(n)
        train_fast("-" * n, 256 + k, special_tokens=())  # the trainer manages k merges...
        try:  # ...and refuses one more
            train_fast("-" * n, 256 + k + 1, special_tokens=())
        except ValueError as err:
            assert f"after {k} merges" in str(err)
        else:
            raise AssertionError(f"train_fast learned more than {k} merges from {n} bytes")


def test_what_deleting_special_tokens_breaks():
    """The solution's answer to "what goes wrong if you delete them": two claims, each checked here."""
    text = "The end.<|endoftext|>The cat."
    deleted = list(text.replace(EOT, "").encode("utf-8"))
    assert (ord("."), ord("T")) in get_stats(deleted)  # a pair across the place where the token stood...
    pieces = [list(p.encode("utf-8")) for p in text.split(EOT)]
    assert all((ord("."), ord("T")) not in get_stats(p) for p in pieces)  # ...that the split never counts
    assert split_text("end<|endoftext|>The") == ["end", "The"]  # the package splits at the token
    assert split_text("end<|endoftext|>The".replace(EOT, "")) == ["endThe"]  # deleting makes one chunk


def test_train_with_specials_hints():
    def raw(text, n, specials):
        return train_with_specials(text, n, ())

    assert "raw text" in ch02.check_train_with_specials(raw).message

    def spaced(text, n, specials):
        for s in specials:
            text = text.replace(s, " ")
        return train_with_specials(text, n, ())

    assert "replacing by ' '" in ch02.check_train_with_specials(spaced).message
    first_only = ch02.check_train_with_specials(lambda t, n, s: train_with_specials(t, n, s[:1]))
    assert not first_only.passed and "every special token" in first_only.message

    def first_seen_ties(text, n, specials):
        pieces = [text]
        for s in specials:
            pieces = [part for piece in pieces for part in piece.split(s)]
        sequences, merges = [list(p.encode()) for p in pieces if p], {}
        for k in range(n):
            stats = {}
            for ids in sequences:
                get_stats(ids, stats)
            pair = max(stats, key=stats.get)
            sequences = [merge(ids, pair, 256 + k) for ids in sequences]
            merges[pair] = 256 + k
        return merges

    assert "smallest pair" in ch02.check_train_with_specials(first_seen_ties).message
    short = ch02.check_train_with_specials(lambda t, n, s: train_with_specials(t, n - 1, s))
    assert not short.passed and "expected 12" in short.message
    ids = ch02.check_train_with_specials(lambda t, n, s: {p: i + 1 for p, i in train_with_specials(t, n, s).items()})
    assert not ids.passed and "256, 257" in ids.message
    keys = ch02.check_train_with_specials(lambda t, n, s: {"a b": 256})
    assert not keys.passed and "pairs of int ids" in keys.message
    assert "returned None" in ch02.check_train_with_specials(lambda *a: None).message
    assert "return a dict" in ch02.check_train_with_specials(lambda *a: "merges").message


def test_run_merges_by_runs_is_the_same_loop():
    """The run-length loop that checks n = 10**12 agrees with the byte-by-byte loop wherever that can run."""
    for n in range(1, 600):
        assert ch02.run_merges_by_runs(n) == ch02.run_merges(n), n
    assert ch02.run_merges_by_runs(4097) == ch02.run_merges(4097) == 13  # 2**12 + 1: 12 doublings, then 1
    # 10**12 has 40 binary digits, 13 of them ones: 39 doubling merges, then 12 to join 13 leftovers.
    assert ch02.run_merges_by_runs(10**12) == 39 + 12 == merges_for_run(10**12)


def test_merges_for_run_needs_a_formula():
    """A simulation answers every small n, so the checker also asks for n = 10**12, which no simulation reaches."""
    def simulate(n):
        return ch02.run_merges(n)  # right, but byte by byte

    result = ch02.check_merges_for_run(simulate)
    assert not result.passed and "10**12" in result.message and "cannot be built or simulated" in result.message
    floats = ch02.check_merges_for_run(lambda n: int(math.log2(n)) + bin(n).count("1") - 1)
    assert not floats.passed and "2**60 - 1" in floats.message and "floats" in floats.message
    started = time.monotonic()
    slow = ch02.check_merges_for_run(lambda n: merges_for_run(n) if n < 10**6 else time.sleep(60))
    assert not slow.passed and "did not finish" in slow.message and time.monotonic() - started < 15
    passed = ch02.check_merges_for_run(merges_for_run)
    assert "15 run lengths up to 4,097" in passed.message and "every run length" not in passed.message


def test_merges_for_run_hints():
    assert "n = 8 by hand" in ch02.check_merges_for_run(lambda n: n - 1).message
    floor_log = ch02.check_merges_for_run(lambda n: n.bit_length() - 1)
    assert not floor_log.passed and "powers of two" in floor_log.message
    assert "vocabulary size" in ch02.check_merges_for_run(lambda n: 256 + merges_for_run(n)).message
    assert "one too many" in ch02.check_merges_for_run(lambda n: merges_for_run(n) + 1).message
    assert "return an int" in ch02.check_merges_for_run(lambda n: "14").message
    for wrong in (lambda n: n // 2, lambda n: 3):  # the generic hint names n and the reader's value only
        message = ch02.check_merges_for_run(wrong).message
        assert "by hand or with train_fast" in message and "14" not in message


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


def test_encode_hints_never_reveal_the_ids():
    wiki = "[258, 100, 258, 97, 99]"  # the expected ids of the first case
    for wrong in (lambda text, merges: [1, 2, 3], lambda text, merges: [258] * 9):
        result = ch02.check_encode(wrong)
        assert not result.passed and wiki not in result.message and "258, 100" not in result.message


def test_checkers_never_crash():
    def boom(*args):
        raise RuntimeError("oops")

    def hang(*args):
        time.sleep(60)

    for check in (ch02.check_encode, ch02.check_train_with_specials, ch02.check_merges_for_run):
        for answer in (boom, None, 42, lambda *a: None, lambda *a: float("nan"), lambda *a: {object(): 1},
                       lambda *a: [[1, 2, 3]], lambda *a: {(1, 2): "x"}):
            result = check(answer)
            assert not result.passed and result.message
    started = time.monotonic()
    hung = ch02.check_train_with_specials(hang)
    assert not hung.passed and "did not finish" in hung.message
    assert time.monotonic() - started < 15
