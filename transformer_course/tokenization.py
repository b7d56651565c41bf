"""Byte-level BPE tokenization, as in GPT-2 (Chapter 2).

Text becomes UTF-8 bytes (ids 0..255); training repeatedly merges the most frequent adjacent pair of ids
into a new id. Ties go to the smallest pair (id1, id2), so training is reproducible. Before counting, text is
cut at special tokens (never merged) and into chunks by GPT-2's regex, so no merge crosses a chunk boundary
(" dog" and "." stay apart). Encoding replays the merges in the order they were learned.

Two trainers give exactly the same merges:
- `train_naive`, the teaching version: after every merge, recount every pair in every chunk (minbpe's
  RegexTokenizer);
- `train_fast`, used by `BPETokenizer.train`: each distinct chunk is counted once, and a merge only
  updates the pair counts of the chunks it touched; a heap finds the next pair, skipping stale entries.

`to_hf_tokenizer` translates a trained tokenizer into a Hugging Face `tokenizers.Tokenizer` with the same
vocabulary and merges, so that its independent BPE code can check our ids.

The course tokenizer (`load_course_tokenizer()`, V = `COURSE_VOCAB_SIZE` = 1024) was trained on
`data.synthetic_corpus(seed=0)`; rebuild it with `python -m transformer_course.tokenization --rebuild`.

Leaves out: GPT-4's split pattern and its 100k vocabulary, byte-fallback and unknown tokens (byte-level BPE
needs neither), BPE dropout, normalization (lower-casing, Unicode NFC), and the speed of tiktoken or Hugging
Face `tokenizers` (Rust); encoding caches each distinct chunk in a dict instead.
"""
import argparse
import contextlib
import gc
import hashlib
import heapq
import json
import operator
import time
from collections import Counter, defaultdict
from pathlib import Path

import regex

from .utils import check_int, check_path, describe

# GPT-2's pre-split (openai/gpt-2, src/encoder.py): contractions, letters, numbers, other symbols, whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
COURSE_VOCAB_SIZE = 1024
COURSE_CORPUS = {"seed": 0, "n_chars": 1_000_000}  # arguments of data.synthetic_corpus for the course tokenizer
COURSE_TOKENIZER_PATH = Path(__file__).resolve().parent / "assets" / "tokenizer.json"
REBUILD_COMMAND = "python -m transformer_course.tokenization --rebuild"


# --------------------------------------------------------------------------------------------------------
# The two helpers everything else is made of


def _check_id_list(ids) -> None:
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"ids must be a list of token ids (ints), got {describe(ids)}")


def get_stats(ids, counts=None):
    """Count adjacent pairs: [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}; adds into `counts` if given."""
    _check_id_list(ids)
    if counts is not None and not isinstance(counts, dict):
        raise ValueError(f"counts must be None or a dict to add into, got {describe(counts)}")
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx):
    """Replace every occurrence of `pair`, left to right, by `idx`: merge([1, 1, 1], (1, 1), 9) -> [9, 1]."""
    _check_id_list(ids)
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ValueError(f"pair must be a pair of ids (id1, id2), got {describe(pair)}")
    check_int("idx", idx, 0)
    out, i = [], 0
    while i < len(ids):
        if ids[i] == pair[0] and i < len(ids) - 1 and ids[i + 1] == pair[1]:  # the rare test first
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _split_special(text: str, special_tokens) -> list[str]:
    """Cut `text` at the special tokens, keeping them: "a<|endoftext|>b" -> ["a", "<|endoftext|>", "b"].

    Even positions hold ordinary text, odd positions special tokens. Longer tokens are tried first.
    """
    if not special_tokens:
        return [text]
    alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    return regex.split(f"({alternatives})", text)


def split_text(text: str, pattern=GPT2_SPLIT_PATTERN, special_tokens=(EOT,)) -> list[str]:
    """The chunks BPE trains on: `text` without its special tokens, cut by `pattern` (None: no cut).

    The pattern must match every character (GPT-2's does); characters it skips would be lost.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {describe(text)}")
    _check_special_tokens(special_tokens)
    compiled = _compile(pattern)
    parts = _split_special(text, special_tokens)[::2]
    if compiled is None:
        return [part for part in parts if part]
    return [chunk for part in parts for chunk in compiled.findall(part)]


# --------------------------------------------------------------------------------------------------------
# Training


def _check_training_args(text, vocab_size, special_tokens, pattern) -> int:
    """Validate the arguments of a trainer; return the number of merges to learn."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {describe(text)}")
    if not text:
        raise ValueError("text is empty: BPE needs training text to count pairs in")
    _check_special_tokens(special_tokens)
    _compile(pattern)
    smallest = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
        raise ValueError(f"vocab_size must be an int >= 256 bytes + {len(special_tokens)} special tokens "
                         f"= {smallest}, got {vocab_size!r}")
    return vocab_size - smallest


def _check_special_tokens(special_tokens) -> None:
    if isinstance(special_tokens, str) or not isinstance(special_tokens, (list, tuple)):
        raise ValueError(f"special_tokens must be a list or tuple of str, got {special_tokens!r}")
    if not all(isinstance(s, str) and s for s in special_tokens) or len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")


def _compile(pattern):
    """The compiled split pattern (None: no pattern), or a ValueError naming it."""
    if pattern is None:
        return None
    try:
        if not isinstance(pattern, str):
            raise TypeError("not a str")
        return regex.compile(pattern)
    except (TypeError, regex.error) as exc:
        raise ValueError(f"pattern must be None or a valid regular expression (str), got {describe(pattern)}: "
                         f"{exc}") from None


def _no_pair_left(done: int, wanted: int, vocab_size: int) -> ValueError:
    return ValueError(f"the training text has no pair left to merge after {done} merges, but "
                      f"vocab_size={vocab_size} needs {wanted}: use more text or a smaller vocab_size")


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector, then restore it as it was.

    `train_naive` allocates millions of short lists that reference counting alone frees; each counts towards
    the collector's next pass, and every full pass rescans all long-lived objects of the process: the
    ~150,000 that `import torch` makes. Paused, it runs as fast as in a process without torch
    (`benchmarks/tokenizer_training.py` measures both).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def train_naive(text: str, vocab_size: int, special_tokens=(EOT,), pattern=GPT2_SPLIT_PATTERN) -> "BPETokenizer":
    """Learn `vocab_size - 256 - len(special_tokens)` merges the slow, obvious way (the teaching version).

    After every merge, every pair in every chunk is counted again: O(merges x text length).
    """
    num_merges = _check_training_args(text, vocab_size, special_tokens, pattern)
    chunks = [list(chunk.encode("utf-8")) for chunk in split_text(text, pattern, special_tokens)]
    merges = []
    with _gc_paused():
        for k in range(num_merges):
            stats = {}
            for ids in chunks:
                get_stats(ids, stats)
            if not stats:
                raise _no_pair_left(k, num_merges, vocab_size)
            pair = min(stats, key=lambda p: (-stats[p], p))  # the most frequent pair; ties: the smallest pair
            chunks = [merge(ids, pair, 256 + k) for ids in chunks]
            merges.append(pair)
    return BPETokenizer(merges, special_tokens, pattern)


def train_fast(text: str, vocab_size: int, special_tokens=(EOT,), pattern=GPT2_SPLIT_PATTERN) -> "BPETokenizer":
    """Learn exactly the merges of `train_naive`, incrementally.

    Each distinct chunk ("word") is stored once with its count. `stats[pair]` is the pair's count over the
    whole text and `where[pair]` the words that may contain it. A merge rewrites only the words in
    `where[pair]` and adds the change of their pair counts to `stats`; every new count goes onto a heap of
    (-count, pair), whose top is the most frequent pair with the smallest (id1, id2): the same tie rule as
    `train_naive`. Entries whose count has changed since they were pushed are skipped when popped.
    """
    num_merges = _check_training_args(text, vocab_size, special_tokens, pattern)
    counts = Counter(split_text(text, pattern, special_tokens))
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    stats, where = defaultdict(int), defaultdict(set)
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            stats[pair] += freq
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in stats.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < num_merges:
        if not heap:
            raise _no_pair_left(len(merges), num_merges, vocab_size)
        neg_count, pair = heapq.heappop(heap)
        if stats.get(pair) != -neg_count:
            continue  # stale: this pair's count changed after the entry was pushed
        idx = 256 + len(merges)
        merges.append(pair)
        delta = defaultdict(int)
        for w in where.pop(pair):
            ids, new = words[w], merge(words[w], pair, idx)
            if len(new) == len(ids):
                continue  # an earlier merge already took the pair out of this word
            for p in zip(ids, ids[1:]):
                delta[p] -= freqs[w]
            for p in zip(new, new[1:]):
                delta[p] += freqs[w]
                where[p].add(w)
            words[w] = new
        for p, change in delta.items():
            if change:
                stats[p] += change
                if stats[p]:
                    heapq.heappush(heap, (-stats[p], p))
                else:
                    del stats[p]
    return BPETokenizer(merges, special_tokens, pattern)


# --------------------------------------------------------------------------------------------------------
# The tokenizer


class BPETokenizer:
    """A trained byte-level BPE: ids 0..255 are bytes, then one id per merge, then the special tokens.

    `merges[k] = (id1, id2)` created id 256 + k; special token j has id 256 + len(merges) + j.
    Build one with `BPETokenizer.train(text, vocab_size)`, `BPETokenizer.load(path)` or
    `load_course_tokenizer()`.
    """

    def __init__(self, merges, special_tokens=(EOT,), pattern=GPT2_SPLIT_PATTERN, meta=None):
        _check_special_tokens(special_tokens)
        if not isinstance(merges, (list, tuple)):
            raise ValueError(f"merges must be a list of pairs (id1, id2), got {describe(merges)}")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"meta must be None or a dict, got {describe(meta)}")
        self.vocab = [bytes([i]) for i in range(256)]  # id -> bytes
        self.merges = {}  # (id1, id2) -> merged id; dict order is the order of learning
        for k, pair in enumerate(merges):
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 256 + k for i in pair)):
                raise ValueError(f"merges[{k}] must be a pair of existing ids (< {256 + k}), got {pair!r}")
            a, b = pair
            self.merges[(a, b)] = 256 + k
            self.vocab.append(self.vocab[a] + self.vocab[b])
        if len(self.merges) != len(merges):
            raise ValueError("merges contains the same pair twice")
        self.special_tokens = {s: len(self.vocab) + j for j, s in enumerate(special_tokens)}  # str -> id
        self.vocab += [s.encode("utf-8") for s in special_tokens]
        self.pattern = pattern
        self._compiled = _compile(pattern)
        self.meta = dict(meta or {})  # provenance, saved with the tokenizer
        self._cache = {}  # chunk -> ids

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(EOT,), pattern=GPT2_SPLIT_PATTERN) -> "BPETokenizer":
        """Train with `train_fast`; `vocab_size` counts the 256 bytes, the merges and the special tokens."""
        return train_fast(text, vocab_size, special_tokens, pattern)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eot_id(self):
        """The id of "<|endoftext|>", or None if this tokenizer has no such special token."""
        return self.special_tokens.get(EOT)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    # -- encoding

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Apply the merges to one chunk, earliest-learned pair first (as minbpe); cached per chunk."""
        ids = self._cache.get(chunk)
        if ids is None:
            ids = list(chunk.encode("utf-8"))
            while len(ids) >= 2:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
                if pair not in self.merges:
                    break  # no pair of this chunk was ever merged
                ids = merge(ids, pair, self.merges[pair])
            self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens: "<|endoftext|>" is just 13 characters here."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        chunks = self._compiled.findall(text) if self._compiled is not None else [text]
        ids = []
        for chunk in chunks:
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Text -> ids. `allowed_special`: "all", "none", or a set of special tokens to recognise.

        A special token that is not allowed is encoded as ordinary text, byte by byte (merges permitting).
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if allowed_special == "all":
            special = self.special_tokens
        elif allowed_special == "none":
            special = {}
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            unknown = [s for s in allowed_special if not isinstance(s, str) or s not in self.special_tokens]
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {unknown}; "
                                 f"this tokenizer has {list(self.special_tokens)}")
            special = {s: self.special_tokens[s] for s in allowed_special}
        else:
            raise ValueError(f'allowed_special must be "all", "none" or a set of str, got {allowed_special!r}')
        ids = []
        for i, part in enumerate(_split_special(text, special)):
            if i % 2:
                ids.append(special[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids

    # -- decoding and display

    def _check_id(self, i, where: str = "") -> int:
        try:
            if isinstance(i, bool):
                raise TypeError
            i = operator.index(i)
        except TypeError:
            raise ValueError(f"token ids must be ints, got {i!r}{where}") from None
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"unknown token id {i}{where}: ids run from 0 to {self.vocab_size - 1}")
        return i

    def decode(self, ids) -> str:
        """Ids -> text. Byte sequences that are not valid UTF-8 become U+FFFD (errors="replace").

        That happens when the ids cut a multi-byte character: [226, 130] is the first two bytes of "€".
        Accepts a list of ints, a 1-D tensor or array.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"ids must be a sequence of ints, got {type(ids).__name__}")
        data = b"".join(self.vocab[self._check_id(i, f" at position {pos}")] for pos, i in enumerate(ids))
        return data.decode("utf-8", errors="replace")

    def id_to_bytes(self, i) -> bytes:
        """The bytes of token `i` (a special token: its UTF-8 text)."""
        return self.vocab[self._check_id(i)]

    def token_str(self, i) -> str:
        """Token `i` for display: its text, partial UTF-8 shown as U+FFFD, control characters escaped (\\n)."""
        text = self.id_to_bytes(i).decode("utf-8", errors="replace")
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

    # -- saving and loading

    def to_dict(self) -> dict:
        """A JSON-able description: pattern, special tokens with their ids, merges as [id1, id2], meta."""
        return {"format": "transformer_course.BPETokenizer", "version": 1, "pattern": self.pattern,
                "special_tokens": dict(self.special_tokens), "meta": dict(self.meta),
                "merges": [list(pair) for pair in self.merges]}

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        if not isinstance(d, dict) or d.get("format") != "transformer_course.BPETokenizer":
            raise ValueError("not a tokenizer description: expected a dict with "
                             "format='transformer_course.BPETokenizer'")
        if d.get("version") != 1:
            raise ValueError(f"unsupported tokenizer version {d.get('version')!r}; this code reads version 1")
        missing = [name for name in ("merges", "special_tokens", "pattern") if name not in d]
        if missing:
            raise ValueError(f"the tokenizer description lacks the field(s) {missing}")
        merges, special = d["merges"], d["special_tokens"]
        if not isinstance(merges, list) or not isinstance(special, dict):
            raise ValueError(f"merges must be a list of [id1, id2] and special_tokens a dict {{token: id}}, got "
                             f"{describe(merges)} and {describe(special)}")
        expected = {s: 256 + len(merges) + j for j, s in enumerate(special)}
        if special != expected:
            raise ValueError(f"special token ids must follow the merges in order: expected {expected}, "
                             f"got {special}")
        return cls(merges, tuple(special), d["pattern"], d.get("meta"))

    def save(self, path) -> None:
        """Write JSON, one merge per line so that a changed merge table shows as a readable diff."""
        path = check_path("path", path)
        d = self.to_dict()
        merges = d.pop("merges")
        head = json.dumps(d, indent=2, ensure_ascii=False)[:-2]  # without the closing "\n}"
        lines = ",\n".join(f"    [{a}, {b}]" for a, b in merges)
        path.write_text(f'{head},\n  "merges": [\n{lines}\n  ]\n}}\n', encoding="utf-8")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """The tokenizer `save` wrote to `path`; a file that is not one is refused by name."""
        path = check_path("path", path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:  # also invalid JSON and invalid UTF-8
            raise ValueError(f"{path} is not a readable tokenizer file: {exc}") from None


# --------------------------------------------------------------------------------------------------------
# The same tokenizer in Hugging Face `tokenizers` (Chapter 2 checks our ids against it)


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (openai/gpt-2, src/encoder.py): byte -> one character.

    Printable Latin-1 bytes stand for themselves ("a" -> "a"); the other 68 (controls, the space, ...) get
    the characters from U+0100 on, in byte order: the space (byte 32) becomes "Ġ", the newline (10) "Ċ".
    Vocabulary files of GPT-2 and of Hugging Face byte-level BPEs spell tokens this way (" like" -> "Ġlike").
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return dict(sorted(mapping.items()))


def to_hf_tokenizer(tokenizer: BPETokenizer):
    """Our vocabulary and merges as a Hugging Face `tokenizers.Tokenizer` (the optional `tokenizers` package).

    The result is only a translation of the format: Hugging Face's own BPE code does the encoding, so equal ids
    check our `encode` against an implementation nobody here wrote. Any split pattern works, or none (the whole
    text is one chunk); special tokens are added with the same ids.
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"tokenizer must be a BPETokenizer, got {type(tokenizer).__name__}")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    b2u = gpt2_bytes_to_unicode()
    special_ids = set(tokenizer.special_tokens.values())
    spelled = ["".join(b2u[b] for b in tokenizer.vocab[i]) for i in range(tokenizer.vocab_size)]
    vocab = {spelled[i]: i for i in range(tokenizer.vocab_size) if i not in special_ids}
    if len(vocab) != tokenizer.vocab_size - len(special_ids):
        raise ValueError("two ids of this tokenizer have the same bytes; Hugging Face's BPE needs them distinct")
    merges = [(spelled[a], spelled[b]) for a, b in tokenizer.merges]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # bytes -> b2u characters
    if tokenizer.pattern is None:
        hf.pre_tokenizer = byte_level
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"), byte_level])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(list(tokenizer.special_tokens))  # ids follow the merges, as ours do
    return hf


# --------------------------------------------------------------------------------------------------------
# The course tokenizer


def build_course_tokenizer() -> BPETokenizer:
    """Train the course tokenizer from scratch (under a second): what `--rebuild` saves."""
    from .data import synthetic_corpus

    text = synthetic_corpus(**COURSE_CORPUS)
    tokenizer = BPETokenizer.train(text, COURSE_VOCAB_SIZE)
    tokenizer.meta = {"corpus": "transformer_course.data.synthetic_corpus", **COURSE_CORPUS,
                      "corpus_chars": len(text), "corpus_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                      "vocab_size": COURSE_VOCAB_SIZE, "trainer": "train_fast", "rebuild": REBUILD_COMMAND}
    return tokenizer


def load_course_tokenizer() -> BPETokenizer:
    """The tokenizer every chapter and checkpoint uses (V = 1024), from assets/tokenizer.json."""
    return BPETokenizer.load(COURSE_TOKENIZER_PATH)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m transformer_course.tokenization",
                                     description="Show the course tokenizer, or rebuild it.")
    parser.add_argument("--rebuild", action="store_true",
                        help=f"retrain on the synthetic corpus and overwrite {COURSE_TOKENIZER_PATH.name}")
    args = parser.parse_args(argv)
    if args.rebuild:
        start = time.perf_counter()
        tokenizer = build_course_tokenizer()
        tokenizer.save(COURSE_TOKENIZER_PATH)
        print(f"trained {tokenizer!r} in {time.perf_counter() - start:.1f} s -> {COURSE_TOKENIZER_PATH}")
    tokenizer = load_course_tokenizer()
    print(tokenizer, tokenizer.meta)
    example = "I like playing video games"
    ids = tokenizer.encode(example)
    print(f"{example!r} -> {len(ids)} tokens {ids}: {[tokenizer.token_str(i) for i in ids]}")


if __name__ == "__main__":
    main()
