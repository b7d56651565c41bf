"""Labelled sentences from the corpus grammar: a topic per sentence and a part of speech per word (Chapter 12).

The corpus of `data.py` is made by a grammar, so the grammar knows what it emitted: which kind of clause a
sentence is, and the role of every word it put there. This module re-walks the sentence grammar of `data.py`
(its word lists and clause rules, imported read-only) and keeps those labels beside the words:

- topic, one per sentence: the kind of clause that `data._sentence` chose, one of `TOPICS`
  (like: "She likes playing chess.", action: "I ate an apple at the park.", go: "We went to the zoo.",
  feel: "Tom was very tired because it was late.", have: "My uncle has a big dog."). Unambiguous: the main
  verb decides it (like/love/enjoy/hate; one of the action verbs; go; be + adjective; have), and the test
  checks that no sentence text ever gets two topics. The grammar's sixth kind, weather ("It rained
  yesterday."), is left out of the task: it has only a few hundred distinct sentences, too few for three
  disjoint splits, and "It" gives it away.
- part of speech, one per word, from `POS_TAGS`: 14 of the 17 Universal Dependencies tags (UPOS; de Marneffe et
  al. 2021, universaldependencies.org/u/pos), without INTJ, SYM and X, which the grammar never emits.
  Each word list of the grammar is a phrase type (a noun phrase, a gerund phrase, a time expression, ...) and
  tags its entries by a small lexicon of closed-class words; the choices where grammars differ: possessive
  "my"/"our" is PRON and copula / auxiliary "be", "will" are AUX (as in UD), so are "don't", "didn't" (one word
  here; UD splits them into "do" AUX + "n't" PART); time words
  "yesterday", "today", "tomorrow", "tonight", "now", "later" are ADV; bare "home" after go and "alone"
  are ADV; nouns used as modifiers ("video games", "orange juice") are NOUN; "a little" before an
  adjective of feeling is DET ADV, "little" before a noun is ADJ (a causal model cannot tell them apart at
  "little": the next word decides).

The sentences are exactly the corpus grammar's, quirks included: after "and then" the grammar makes "we" and
"you" third person singular ("We go to the cinema and then we goes to the market."), and the labels keep
what was emitted ("goes": VERB).

Words: the units the grammar emits, separated by spaces, with "," and "." as words of their own
(PUNCT); "didn't" is one word (AUX) although BPE's pre-split cuts it as "didn" + "'t".

`word_labels_to_tokens` aligns word labels to the BPE tokens of the course tokenizer;
`labelled_splits` draws train / val / test sets with no sentence shared between them (the split of a
sentence is a hash of its text, so it is the same whatever the seed or the sizes) and, by default, no
sentence that occurs anywhere in the course corpus; `to_batch` pads them into tensors for training.

Everything is drawn from the module's own `random.Random(seed)`: `data.synthetic_corpus` and its output
are untouched (its sha256 is pinned by tests/test_data.py).

Leaves out: sentences of the documents' framing ("Once upon a time, ...", dialogue lines, facts),
dependency relations and morphological features, named-entity spans, and any tagger: nothing here is
predicted, every label is what the grammar emitted.
"""
import functools
import hashlib
import random
from dataclasses import dataclass

import torch

from . import data
from .data import (_ACTIVITIES, _ADJECTIVES, _ADVERBS, _BOYS, _COMPANIONS, _DESTINATIONS, _FAMILY, _FEELINGS,
                   _GIRLS, _GROUPS, _HAVE_THINGS, _LIKE, _LIKE_TENSE, _OBJECTS, _PETS, _PLACES, _REASONS, _TENSES,
                   _TIME_OF_TENSE, _TIMES, _VERBS, _WEATHER, _chance, _random_subject, _uniform)
from .utils import check_bool, check_choice, check_int, describe

TOPICS = ("like", "action", "go", "feel", "have")  # the sentence-classification labels, in label-id order
KINDS = TOPICS + ("weather",)  # every kind of sentence `data._sentence` makes
POS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ",
            "VERB")  # the part-of-speech labels, in label-id order (alphabetical, as UD lists them)
IGNORE_INDEX = -100  # the label PyTorch's cross_entropy (and Hugging Face) leave out of the loss
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}  # the share of the hash space each split owns
SUBTOKEN_RULES = ("first", "last", "all")
_PUNCT = (",", ".")


# --------------------------------------------------------------------------------------------------------
# Tags of the grammar's phrases

_DET = {"a", "an", "the", "some", "any", "every", "this"}
_PRON = {"i", "you", "we", "they", "he", "she", "it", "my", "our", "everyone"}
_ADP = {"of", "about", "for", "with", "at", "in", "on", "to", "near", "by", "after", "before"}
_ADV = {"yesterday", "today", "tomorrow", "tonight", "now", "later", "ago", "right", "then", "there", "very",
        "really", "so", "quite"}
_ADJ = set(_ADJECTIVES.items) | set(_FEELINGS.items) | {"hot", "long", "last", "next", "late", "closed", "sunny",
                                                          "cold", "windy", "warm", "cloudy"}
_AUX = {"am", "is", "are", "was", "were", "be", "will", "don't", "doesn't", "didn't"}
_CLOSED = [(_DET, "DET"), (_PRON, "PRON"), (_ADP, "ADP"), (_ADV, "ADV"), (_ADJ, "ADJ"), (_AUX, "AUX"),
           ({"and"}, "CCONJ"), ({"because"}, "SCONJ"), ({"not"}, "PART"), ({"two"}, "NUM")]


def _word_tag(word: str, default: str) -> str:
    """The tag of a closed-class word or adjective; a capitalised word is PROPN; anything else is `default`."""
    for words, tag in _CLOSED:
        if word.lower() in words:
            return tag
    if word[0].isupper() and word != "TV":
        return "PROPN"  # days of the week ("on Saturday") and names
    return default


def _phrase(text: str, default: str = "NOUN", first: str | None = None) -> tuple[tuple[str, str], ...]:
    """(word, tag) pairs of one list entry: `first` (if given) tags the first word, the lexicon the others."""
    words = text.split()
    tags = [_word_tag(w, default) for w in words]
    if first is not None:
        tags[0] = first
    return tuple(zip(words, tags))


# Entries whose tags the lexicon alone would get wrong; every other entry is tagged by `_phrase`.
_OVERRIDES = {
    ("destination", "home"): (("home", "ADV"),),  # "go home": an adverb; "at home" (a place) is ADP NOUN
    ("companion", "alone"): (("alone", "ADV"),),
    ("adverb", "a little"): (("a", "DET"), ("little", "ADV")),  # "a little tired"; "a little mouse" is DET ADJ
    ("reason", "I had a lot of homework"): tuple(zip("I had a lot of homework".split(),
                                                     ["PRON", "VERB", "DET", "NOUN", "ADP", "NOUN"])),
    ("reason", "it was raining"): (("it", "PRON"), ("was", "AUX"), ("raining", "VERB")),
}


def _table(kind: str, words, default: str = "NOUN", first: str | None = None) -> dict:
    return {e: _OVERRIDES.get((kind, e)) or _phrase(e, default, first) for e in words.items}


def _weather_tags(text: str):
    # "it is sunny" PRON AUX ADJ, "it is raining" PRON AUX VERB, "it rained" PRON VERB, "it will snow" PRON AUX VERB
    return tuple((w, "VERB" if w.endswith("ing") or w in ("rain", "rained", "snow", "snowed") else _word_tag(w, "?"))
                 for w in text.split())


_TAGS = {
    "activity": _table("activity", _ACTIVITIES, first="VERB"),  # gerund phrases: "playing video games"
    "object": {e: t for words in _OBJECTS.values() for e, t in _table("object", words).items()},
    "place": _table("place", _PLACES),
    "destination": _table("destination", _DESTINATIONS),
    "companion": _table("companion", _COMPANIONS),
    "time": {e: t for words in _TIMES.values() for e, t in _table("time", words).items()},
    "feeling": _table("feeling", _FEELINGS, default="ADJ"),
    "adverb": _table("adverb", _ADVERBS, default="ADV"),
    "reason": _table("reason", _REASONS),
    "pet": _table("pet", _PETS),
    "thing": _table("thing", _HAVE_THINGS),
    "adjective": _table("adjective", _ADJECTIVES, default="ADJ"),
    "subject": {**{n: ((n, "PROPN"),) for n in _GIRLS.items + _BOYS.items},
                **{t: _phrase(t) for t, _ in _FAMILY.items}, **{t: _phrase(t) for t in _GROUPS.items},
                **{p: ((p, "PRON"),) for p in ("I", "you", "we", "they", "he", "she")}},
    "weather": {c: _weather_tags(c) for triple in _WEATHER.items for c in triple},
}


def _tags_of(kind: str, entry: str):
    return _TAGS[kind][entry]


# --------------------------------------------------------------------------------------------------------
# The sentence grammar of data.py, walked draw for draw, keeping (word, tag) pairs


def _verb(form: str):
    words = form.split()  # "looks at": VERB ADP
    return [(words[0], "VERB")] + [(w, "ADP") for w in words[1:]]


def _verb_phrase(subject, forms, tense: str):
    """data._verb_phrase with tags: auxiliaries (be, will, don't, didn't) are AUX, the main verb VERB."""
    base, third, past, ing = forms
    s3 = subject.agreement == "3s"
    if tense == "present":
        return _verb(third if s3 else base)
    if tense == "past":
        return _verb(past)
    if tense == "future":
        return [("will", "AUX")] + _verb(base)
    if tense == "now":
        return [(data._be(subject, "present"), "AUX")] + _verb(ing)
    if tense == "was":
        return [(data._be(subject, "past"), "AUX")] + _verb(ing)
    if tense == "not_present":
        return [("doesn't" if s3 else "don't", "AUX")] + _verb(base)
    if tense == "not_past":
        return [("didn't", "AUX")] + _verb(base)
    raise ValueError(f"unknown tense {tense!r}")


def _subject(subject):
    return list(_tags_of("subject", subject.text))


def _with_time(rng, clause, tense: str, p: float = 0.5):
    if not _chance(rng, p):
        return clause
    time = list(_tags_of("time", _TIMES[_TIME_OF_TENSE[tense]].pick(rng)))
    if _chance(rng, 0.3):
        return time + [(",", "PUNCT")] + clause
    return clause + time


def _like_clause(rng, subject, tense):
    verb = _LIKE.pick(rng)
    tense = _LIKE_TENSE[tense]
    return (_subject(subject) + _verb_phrase(subject, (verb[0], verb[1], verb[2], ""), tense)
            + list(_tags_of("activity", _ACTIVITIES.pick(rng))))


def _action_clause(rng, subject, tense):
    forms, kind = _VERBS.pick(rng)
    thing = list(_tags_of("object", _OBJECTS[kind].pick(rng)))
    if tense.startswith("not_") and thing[0][0] == "some":
        thing[0] = ("any", "DET")
    clause = _subject(subject) + _verb_phrase(subject, forms, tense) + thing
    if _chance(rng, 0.4):
        clause += _tags_of("place", _PLACES.pick(rng))
    return clause


def _go_clause(rng, subject, tense):
    clause = (_subject(subject) + _verb_phrase(subject, ("go", "goes", "went", "going"), tense)
              + list(_tags_of("destination", _DESTINATIONS.pick(rng))))
    if _chance(rng, 0.4):
        clause += _tags_of("companion", _COMPANIONS.pick(rng))
    return clause


def _feel_clause(rng, subject, tense):
    tense = "past" if tense in ("past", "was", "not_past") else "present"
    return (_subject(subject) + [(data._be(subject, tense), "AUX")] + list(_tags_of("adverb", _ADVERBS.pick(rng)))
            + list(_tags_of("feeling", _FEELINGS.pick(rng))))


def _have_clause(rng, subject, tense):
    if tense in ("past", "was", "not_past"):
        verb = "had"
    else:
        verb = "has" if subject.agreement == "3s" else "have"
    thing = _PETS.pick(rng) if _chance(rng, 0.5) else _HAVE_THINGS.pick(rng)
    adjective = _ADJECTIVES.pick(rng)  # drawn after the thing, as data._have_clause does
    return _subject(subject) + [(verb, "VERB"), ("an" if adjective[0] in "aeiou" else "a", "DET"),
                                (adjective, "ADJ"), (thing, "NOUN")]


def _weather(rng):
    now, past, future = _WEATHER.pick(rng)
    tense = _uniform(rng, ["past", "past", "now", "future"])
    clause = {"past": past, "now": now, "future": future}[tense]
    return _with_time(rng, list(_tags_of("weather", clause)), tense, 0.7)


def _sentence(rng, subject, tense: str | None = None, kind: str | None = None):
    """(kind, [(word, tag), ...]) of one sentence: `data._sentence(rng, subject, tense)` with its labels.

    With `kind` None the kind is drawn as data._sentence draws it, and the words are exactly that function's
    sentence for the same generator state (a test checks it); a given `kind` skips that draw.
    """
    tense = tense or _TENSES.pick(rng)
    if kind is None:
        r = rng.random()
        kind = next(k for k, top in zip(KINDS, (0.22, 0.55, 0.72, 0.82, 0.92, 1.0)) if r < top)
    if kind == "like":
        return kind, _like_clause(rng, subject, tense) + [(".", "PUNCT")]
    if kind == "feel":
        clause = _feel_clause(rng, subject, tense)
        if _chance(rng, 0.4):
            clause += [("because", "SCONJ")] + list(_tags_of("reason", _REASONS.pick(rng)))
        return kind, clause + [(".", "PUNCT")]
    if kind == "have":
        return kind, _have_clause(rng, subject, tense) + [(".", "PUNCT")]
    if kind == "weather":
        return kind, _weather(rng) + [(".", "PUNCT")]
    if kind == "action":
        clause = _action_clause(rng, subject, tense)
    else:
        clause = _go_clause(rng, subject, tense if tense != "not_present" else "present")
    clause = _with_time(rng, clause, tense)
    if _chance(rng, 0.12):
        clause += [("and", "CCONJ"), ("then", "ADV")] + _go_clause(rng, subject.pronoun_subject(), "past" if tense in (
            "past", "was", "not_past") else "future" if tense == "future" else "present")
    return kind, clause + [(".", "PUNCT")]


# --------------------------------------------------------------------------------------------------------
# Labelled sentences


def join_words(words) -> str:
    """The sentence text: words separated by one space, punctuation attached to the word before it."""
    return "".join(w if i == 0 or w in _PUNCT else " " + w for i, w in enumerate(words))


@dataclass(frozen=True)
class LabelledSentence:
    """One sentence with its labels: `topic` (a `KINDS` entry), `words` and one `tags` entry (`POS_TAGS`) per
    word. `text` is `join_words(words)`: exactly the text `data._sentence` writes."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    topic: str

    @property
    def text(self) -> str:
        return join_words(self.words)


def labelled_sentence(rng: random.Random, topic: str | None = None) -> LabelledSentence:
    """One sentence of the corpus grammar about a random subject in a random tense, with its labels.

    topic None: drawn with the corpus's own frequencies (all six `KINDS`, weather included); a topic from
    `KINDS`: a sentence of that kind, with the grammar's distribution given that kind. Draws only from `rng`.
    """
    if not isinstance(rng, random.Random):
        raise ValueError(f"rng must be a random.Random, got {describe(rng)}")
    if topic is not None:
        check_choice("topic", topic, KINDS)
    kind, pairs = _sentence(rng, _random_subject(rng), None, topic)
    words = [w for w, _ in pairs]
    words[0] = data._cap(words[0])
    return LabelledSentence(tuple(words), tuple(t for _, t in pairs), kind)


# --------------------------------------------------------------------------------------------------------
# Word labels to BPE tokens


@functools.lru_cache(maxsize=1)
def _course_tokenizer():
    from .tokenization import load_course_tokenizer

    return load_course_tokenizer()


def word_labels_to_tokens(words, labels, tokenizer=None, subtokens: str = "first"):
    """Tokenize a sentence word by word and give each BPE token a label: (ids, token_labels, word_ids).

    words: the sentence's words (`LabelledSentence.words`), labels: one label per word (any values, usually
    int ids). Word i is encoded as " " + word (no space for the first word and for "," and "."), so the ids
    are exactly `tokenizer.encode(join_words(words))`: the course tokenizer's GPT-2 pre-split never joins two
    words into one chunk.
    A word that splits into several tokens gets its label on
    - "first" (default): the first sub-token only, `IGNORE_INDEX` (-100) on the others, which the loss skips.
      This is the rule of BERT's NER fine-tuning (Devlin et al. 2019, §5.3: "the representation of the
      first sub-token") and of Hugging Face's token-classification guide
      (huggingface.co/docs/transformers/tasks/token_classification, `tokenize_and_align_labels`: "Only label
      the first token of a given word.", the others get -100).
    - "last": the last sub-token only. In a causal model only the last sub-token has seen the whole word.
    - "all": every sub-token (Hugging Face's run_ner.py `label_all_tokens`).
    word_ids: for each token, the index of its word (as Hugging Face's `BatchEncoding.word_ids()`).
    tokenizer: a `BPETokenizer`, default the course tokenizer.
    """
    if isinstance(words, str) or not isinstance(words, (list, tuple)) or not words or not all(
            isinstance(w, str) and w and " " not in w for w in words):
        raise ValueError(f"words must be a non-empty list of non-empty str without spaces, got {describe(words)}")
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or len(labels) != len(words):
        raise ValueError(f"labels must be a list with one label per word ({len(words)}), got {describe(labels)}")
    check_choice("subtokens", subtokens, SUBTOKEN_RULES)
    tokenizer = _course_tokenizer() if tokenizer is None else tokenizer
    if not hasattr(tokenizer, "encode_ordinary"):
        raise ValueError(f"tokenizer must be a BPETokenizer, got {describe(tokenizer)}")
    ids, token_labels, word_ids = [], [], []
    for i, (word, label) in enumerate(zip(words, labels)):
        pieces = tokenizer.encode_ordinary(word if i == 0 or word in _PUNCT else " " + word)
        n = len(pieces)
        keep = {"first": [0], "last": [n - 1], "all": range(n)}[subtokens]
        ids += pieces
        token_labels += [label if j in keep else IGNORE_INDEX for j in range(n)]
        word_ids += [i] * n
    return ids, token_labels, word_ids


# --------------------------------------------------------------------------------------------------------
# Splits


def split_of(text: str) -> str:
    """"train", "val" or "test": where a sentence belongs, from the sha256 of its text (SPLIT_FRACTIONS)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {describe(text)}")
    u = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for name, fraction in SPLIT_FRACTIONS.items():
        edge += fraction
        if u < edge:
            return name
    return name


@dataclass(frozen=True)
class LabelledSplits:
    """Three disjoint sets of distinct `LabelledSentence`s, each with `n / len(TOPICS)` sentences per topic.

    drawn: sentences generated in all; dropped_seen: how many of them occur in the course corpus (dropped
    when `unseen`); dropped_repeat: repeats of a sentence already kept; the rest were dropped because their
    split already held enough of their topic.
    """

    train: tuple[LabelledSentence, ...]
    val: tuple[LabelledSentence, ...]
    test: tuple[LabelledSentence, ...]
    seed: int
    unseen: bool
    drawn: int
    dropped_seen: int
    dropped_repeat: int

    def counts(self) -> dict:
        """{split: {"topic": {topic: n}, "pos": {tag: n words}}}."""
        out = {}
        for name in SPLIT_FRACTIONS:
            rows = getattr(self, name)
            out[name] = {"topic": {t: sum(s.topic == t for s in rows) for t in TOPICS},
                         "pos": {t: sum(s.tags.count(t) for s in rows) for t in POS_TAGS}}
        return out


@functools.lru_cache(maxsize=1)
def _course_sentences() -> frozenset:
    return frozenset(s for doc in data._course_text().split(data.EOT) for s in data.sentences(doc))


def _check_split_size(name: str, n) -> int:
    check_int(name, n, len(TOPICS), 1_000_000)
    if n % len(TOPICS):
        raise ValueError(f"{name} must be a multiple of {len(TOPICS)} (one share per topic of {TOPICS}), got {n}")
    return n


def labelled_splits(n_train: int = 2000, n_val: int = 500, n_test: int = 500, seed: int = 0,
                    unseen: bool = True) -> LabelledSplits:
    """Balanced train / val / test sets of labelled sentences, no sentence in two of them or twice in one.

    Each sentence goes to the split `split_of(text)` names, so a sentence's split never depends on the seed or
    the sizes; a split takes sentences until it holds `n / len(TOPICS)` of each topic. unseen (default True):
    drop every sentence that occurs anywhere in the course corpus `data.synthetic_corpus(seed=0)`, even
    inside a longer sentence, as `data.held_out_split` does (about a third of the drawn sentences occur there,
    short ones most, so unseen sentences are a little longer). Every draw comes from `random.Random(seed)`.
    About 1 s for the defaults (plus 1 s, once, to list the corpus's sentences).
    """
    sizes = {"train": _check_split_size("n_train", n_train), "val": _check_split_size("n_val", n_val),
             "test": _check_split_size("n_test", n_test)}
    check_int("seed", seed, -(2**63))
    check_bool("unseen", unseen)
    if unseen:
        course, seen = data._course_text(), _course_sentences()
    rng = random.Random(seed)
    want = {(name, t): n // len(TOPICS) for name, n in sizes.items() for t in TOPICS}
    kept = {name: [] for name in sizes}
    texts, drawn, dropped_seen, dropped_repeat = set(), 0, 0, 0
    limit = 200 * sum(sizes.values()) + 10_000
    while any(want.values()):
        if drawn >= limit:
            short = {k: v for k, v in want.items() if v}
            raise RuntimeError(f"labelled_splits: the grammar gave too few distinct sentences; still missing {short}")
        topic = _uniform(rng, [t for t in TOPICS if any(want[name, t] for name in sizes)])
        sentence = labelled_sentence(rng, topic)
        drawn += 1
        text = sentence.text
        name = split_of(text)
        if not want[name, topic]:
            continue
        if text in texts:
            dropped_repeat += 1
            continue
        if unseen and (text in seen or text in course):
            dropped_seen += 1
            continue
        texts.add(text)
        kept[name].append(sentence)
        want[name, topic] -= 1
    return LabelledSplits(*(tuple(kept[name]) for name in sizes), seed, unseen, drawn, dropped_seen, dropped_repeat)


# --------------------------------------------------------------------------------------------------------
# Tensors


@dataclass(frozen=True)
class LabelledBatch:
    """Padded tensors of B sentences, T = the longest one's token count.

    ids `(B, T)` long (padding: `pad_id`); padding_mask `(B, T)` bool, True at real tokens; topics `(B,)`
    long, indices into `TOPICS`; tags `(B, T)` long, indices into `POS_TAGS`, `IGNORE_INDEX` (-100) at padding
    and at the sub-tokens the rule leaves unlabelled; word_ids `(B, T)` long, the word of each token, -1 at
    padding.
    """

    ids: torch.Tensor
    padding_mask: torch.Tensor
    topics: torch.Tensor
    tags: torch.Tensor
    word_ids: torch.Tensor


def to_batch(sentences, tokenizer=None, *, subtokens: str = "first", side: str = "right",
             pad_id: int | None = None) -> LabelledBatch:
    """Tokenize and pad labelled sentences into a `LabelledBatch`.

    side: "right" pads after the tokens, "left" before (then a causal model's last real token is the last
    column; pass the padding mask so positions count from the first real token). pad_id: default the
    tokenizer's "<|endoftext|>" id. subtokens: see `word_labels_to_tokens`. A sentence topic outside
    `TOPICS` (weather, from `labelled_sentence`) gets topic -100.
    """
    if isinstance(sentences, LabelledSentence) or not isinstance(sentences, (list, tuple)) or not sentences or \
            not all(isinstance(s, LabelledSentence) for s in sentences):
        raise ValueError(f"sentences must be a non-empty list of LabelledSentence, got {describe(sentences)}")
    check_choice("subtokens", subtokens, SUBTOKEN_RULES)
    check_choice("side", side, ("right", "left"))
    tokenizer = _course_tokenizer() if tokenizer is None else tokenizer
    if not hasattr(tokenizer, "encode_ordinary"):
        raise ValueError(f"tokenizer must be a BPETokenizer, got {describe(tokenizer)}")
    pad_id = tokenizer.eot_id if pad_id is None else check_int("pad_id", pad_id, 0, tokenizer.vocab_size - 1)
    tag_id = {t: i for i, t in enumerate(POS_TAGS)}
    rows = [word_labels_to_tokens(s.words, [tag_id[t] for t in s.tags], tokenizer, subtokens) for s in sentences]
    B, T = len(rows), max(len(ids) for ids, _, _ in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tags = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    word_ids = torch.full((B, T), -1, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (row_ids, row_tags, row_words) in enumerate(rows):
        cols = slice(0, len(row_ids)) if side == "right" else slice(T - len(row_ids), T)
        ids[b, cols], tags[b, cols] = torch.tensor(row_ids), torch.tensor(row_tags)
        word_ids[b, cols], mask[b, cols] = torch.tensor(row_words), True
    topics = torch.tensor([TOPICS.index(s.topic) if s.topic in TOPICS else IGNORE_INDEX for s in sentences])
    return LabelledBatch(ids, mask, topics, tags, word_ids)
