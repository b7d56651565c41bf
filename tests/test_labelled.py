"""The labelled generator: the corpus grammar's own sentences with a topic and a part of speech per word,
aligned to BPE tokens, split without overlap, padded into tensors; `synthetic_corpus(seed=0)` untouched."""
import hashlib
import random
from collections import Counter, defaultdict

import pytest
import torch

from transformer_course import data
from transformer_course import labelled as L
from transformer_course.tokenization import load_course_tokenizer

COURSE_CORPUS_SHA256 = "cb3cf3e2377ea9ca9ad2ed99d1013ff8ddd5e9e6fc79d9f17805a235ab0d571c"  # as tests/test_data.py


@pytest.fixture(scope="module")
def tok():
    return load_course_tokenizer()


@pytest.fixture(scope="module")
def splits():
    return L.labelled_splits(400, 100, 100, seed=1)


@pytest.fixture(scope="module")
def sample():
    rng = random.Random(2)
    return [L.labelled_sentence(rng) for _ in range(6000)]


# ----------------------------------------------------------------------------- the grammar, with labels


def test_sentences_are_exactly_the_corpus_grammars():
    """Walking the grammar with labels draws what data._sentence draws and writes the same text."""
    kinds = Counter()
    for seed in range(3000):
        a, b = random.Random(seed), random.Random(seed)
        subject_a, subject_b = data._random_subject(a), data._random_subject(b)
        text = data._sentence(a, subject_a)
        kind, pairs = L._sentence(b, subject_b)
        words = [w for w, _ in pairs]
        words[0] = data._cap(words[0])
        assert L.join_words(words) == text, seed
        assert a.random() == b.random(), seed  # the same number of draws
        kinds[kind] += 1
    assert set(kinds) == set(L.KINDS)


def test_every_word_list_entry_is_tagged():
    for kind, table in L._TAGS.items():
        for entry, pairs in table.items():
            assert [w for w, _ in pairs] == entry.split(), (kind, entry)
            assert all(t in L.POS_TAGS for _, t in pairs), (kind, entry, pairs)


def test_label_sets(sample, splits):
    assert all(s.topic in L.KINDS and len(s.tags) == len(s.words) for s in sample)
    assert {s.topic for s in sample} == set(L.KINDS)
    for name in ("train", "val", "test"):
        assert {s.topic for s in getattr(splits, name)} == set(L.TOPICS)
    assert {t for s in sample for t in s.tags} == set(L.POS_TAGS)
    assert L.POS_TAGS == tuple(sorted(L.POS_TAGS)) and len(L.POS_TAGS) == 14


def test_tags_of_words_whose_role_is_fixed(sample):
    tags = defaultdict(set)
    for s in sample:
        for i, (w, t) in enumerate(zip(s.words, s.tags)):
            tags[w if w == "I" or i else w.lower()].add(t)
    expected = {"the": {"DET"}, "a": {"DET"}, "some": {"DET"}, "my": {"PRON"}, "I": {"PRON"}, "didn't": {"AUX"},
                "will": {"AUX"}, "was": {"AUX"}, "had": {"VERB"}, "went": {"VERB"}, "playing": {"VERB"},
                "because": {"SCONJ"}, "and": {"CCONJ"}, "not": {"PART"}, "yesterday": {"ADV"}, ".": {"PUNCT"},
                ",": {"PUNCT"}, "to": {"ADP"}, "Saturday": {"PROPN"}, "Tom": {"PROPN"}, "two": {"NUM"},
                "happy": {"ADJ"}, "apple": {"NOUN"}}
    for word, wanted in expected.items():
        assert tags[word] == wanted, word
    assert tags["home"] == {"ADV", "NOUN"}  # "went home" / "at home"
    assert tags["little"] == {"ADJ", "ADV"}  # "a little mouse" / "a little tired"


MAIN_VERBS = {"like": {"like", "likes", "liked", "love", "loves", "loved", "enjoy", "enjoys", "enjoyed", "hate",
                       "hates", "hated"},
              "go": {"go", "goes", "went", "going"}, "have": {"have", "has", "had"}}


def test_topic_is_decided_by_the_main_verb(sample):
    """The first VERB names the topic (feel and weather have none before "because"), and no text gets two."""
    topics = defaultdict(set)
    for s in sample:
        topics[s.text].add(s.topic)
        first = next((w for w, t in zip(s.words, s.tags) if t in ("VERB", "SCONJ")), "because")
        if s.topic in ("feel", "weather") and first == "because":
            continue
        decided = next((k for k, verbs in MAIN_VERBS.items() if first.lower() in verbs), "action")
        if s.topic == "weather":
            decided = "weather" if first in ("rained", "rain", "snowed", "snow", "raining", "snowing") else None
        assert decided == s.topic, (s.text, s.topic, first)
    assert all(len(t) == 1 for t in topics.values())


def test_topic_frequencies_are_the_corpus_grammars(sample):
    counts = Counter(s.topic for s in sample)
    for kind, p in zip(L.KINDS, (0.22, 0.33, 0.17, 0.10, 0.10, 0.08)):
        assert abs(counts[kind] / len(sample) - p) < 0.025, kind


def test_deterministic_and_independent_of_global_state():
    random.seed(1)
    a = L.labelled_splits(50, 10, 10, seed=4)
    random.seed(2)
    _ = [random.random() for _ in range(7)]
    assert L.labelled_splits(50, 10, 10, seed=4) == a
    assert L.labelled_splits(50, 10, 10, seed=5) != a
    assert [L.labelled_sentence(random.Random(9), "feel") for _ in range(2)][0] == \
        L.labelled_sentence(random.Random(9), "feel")


def test_course_corpus_is_unchanged():
    L.labelled_splits(50, 10, 10, seed=0)  # draws from its own Random: the corpus must not move
    text = data.synthetic_corpus(seed=data.COURSE_SEED)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == COURSE_CORPUS_SHA256


# ----------------------------------------------------------------------------- word labels to tokens


def test_alignment_of_a_word_split_into_several_tokens(tok):
    words = ["Yesterday", ",", "Hannah", "didn't", "eat", "any", "strawberries", "."]
    labels = list(range(10, 18))
    ids, first, word_ids = L.word_labels_to_tokens(words, labels, tok)
    assert ids == tok.encode("Yesterday, Hannah didn't eat any strawberries.")
    pieces = Counter(word_ids)
    assert pieces[3] >= 2  # "didn't" is "didn" + "'t" by GPT-2's pre-split
    assert max(pieces.values()) >= 2 and sorted(set(word_ids)) == list(range(len(words)))
    for i, word in enumerate(words):
        cols = [j for j, w in enumerate(word_ids) if w == i]
        assert tok.decode([ids[j] for j in cols]).strip() == word
        assert [first[j] for j in cols] == [labels[i]] + [-100] * (len(cols) - 1)
        _, last, _ = L.word_labels_to_tokens(words, labels, tok, subtokens="last")
        assert [last[j] for j in cols] == [-100] * (len(cols) - 1) + [labels[i]]
        _, every, _ = L.word_labels_to_tokens(words, labels, tok, subtokens="all")
        assert [every[j] for j in cols] == [labels[i]] * len(cols)


def test_word_by_word_ids_equal_the_sentence_ids(tok, splits):
    n_split = 0
    for s in splits.train + splits.test:
        ids, labels, word_ids = L.word_labels_to_tokens(s.words, list(s.tags), tok)
        assert ids == tok.encode(s.text)
        assert [labels[j] for j in range(len(ids)) if labels[j] != -100] == list(s.tags)  # one label per word
        n_split += len(ids) > len(s.words)
    assert n_split > 100  # many sentences have a word of several tokens


# ----------------------------------------------------------------------------- splits


def test_splits_are_disjoint_balanced_and_unseen(splits):
    texts = {name: [s.text for s in getattr(splits, name)] for name in ("train", "val", "test")}
    for name, rows in texts.items():
        assert len(set(rows)) == len(rows)
        assert all(L.split_of(t) == name for t in rows)
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"]) and not set(texts["val"]) & set(texts["test"])
    counts = splits.counts()
    assert counts["train"]["topic"] == dict.fromkeys(L.TOPICS, 80)
    assert counts["test"]["topic"] == dict.fromkeys(L.TOPICS, 20)
    course = data._course_text()
    assert not any(t in course for rows in texts.values() for t in rows)
    assert splits.dropped_seen > 0 and splits.drawn > 600


def test_split_of_a_sentence_does_not_depend_on_the_seed(splits):
    other = L.labelled_splits(400, 100, 100, seed=2)
    assert not {s.text for s in other.test} & {s.text for s in splits.train}
    assert {s.text for s in other.train} != {s.text for s in splits.train}


def test_seen_sentences_are_kept_when_asked():
    seen = L.labelled_splits(100, 25, 25, seed=3, unseen=False)
    course = data._course_text()
    assert seen.dropped_seen == 0 and any(s.text in course for s in seen.train)


# ----------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_tensors(tok, splits, side):
    rows = list(splits.test[:16])
    b = L.to_batch(rows, tok, side=side)
    B, T = b.ids.shape
    lengths = [len(tok.encode(s.text)) for s in rows]
    assert (B, T) == (16, max(lengths)) and b.ids.dtype == torch.long and b.padding_mask.dtype == torch.bool
    assert b.tags.shape == b.word_ids.shape == (B, T) and b.topics.shape == (B,)
    assert b.padding_mask.sum(1).tolist() == lengths
    assert (b.tags[~b.padding_mask] == -100).all() and (b.word_ids[~b.padding_mask] == -1).all()
    assert (b.ids[~b.padding_mask] == tok.eot_id).all()
    for i, s in enumerate(rows):
        assert b.ids[i][b.padding_mask[i]].tolist() == tok.encode(s.text)
        labelled = b.tags[i][b.tags[i] != -100].tolist()
        assert [L.POS_TAGS[t] for t in labelled] == list(s.tags)
        assert L.TOPICS[b.topics[i]] == s.topic
        real = b.padding_mask[i].nonzero().flatten()
        assert (real.max() == T - 1) if side == "left" else (real.min() == 0)


def test_left_and_right_batches_hold_the_same_tokens(tok, splits):
    rows = list(splits.val[:8])
    right, left = L.to_batch(rows, tok), L.to_batch(rows, tok, side="left", subtokens="last", pad_id=0)
    for i in range(len(rows)):
        assert right.ids[i][right.padding_mask[i]].tolist() == left.ids[i][left.padding_mask[i]].tolist()
    assert (left.ids[~left.padding_mask] == 0).all()
    assert (right.tags != -100).sum() == (left.tags != -100).sum()


def test_weather_sentences_have_no_topic_id(tok):
    weather = L.labelled_sentence(random.Random(0), "weather")
    assert "it" in [w.lower() for w in weather.words]
    assert L.to_batch([weather], tok).topics.tolist() == [-100]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("call, name", [
    (lambda: L.labelled_sentence(1), "rng"),
    (lambda: L.labelled_sentence(random.Random(0), "sport"), "topic"),
    (lambda: L.word_labels_to_tokens("I like chess .", [1, 2, 3, 4]), "words"),
    (lambda: L.word_labels_to_tokens([], []), "words"),
    (lambda: L.word_labels_to_tokens(["I", "like chess"], [1, 2]), "words"),
    (lambda: L.word_labels_to_tokens(["I", "run"], [1]), "labels"),
    (lambda: L.word_labels_to_tokens(["I", "run"], [1, 2], subtokens="middle"), "subtokens"),
    (lambda: L.word_labels_to_tokens(["I", "run"], [1, 2], tokenizer="gpt2"), "tokenizer"),
    (lambda: L.labelled_splits(n_train=7), "n_train"),
    (lambda: L.labelled_splits(n_val="5"), "n_val"),
    (lambda: L.labelled_splits(n_test=0), "n_test"),
    (lambda: L.labelled_splits(seed="0"), "seed"),
    (lambda: L.labelled_splits(unseen="yes"), "unseen"),
    (lambda: L.to_batch([]), "sentences"),
    (lambda: L.to_batch(["I like chess."]), "sentences"),
    (lambda: L.to_batch([L.labelled_sentence(random.Random(0))], side="up"), "side"),
    (lambda: L.to_batch([L.labelled_sentence(random.Random(0))], pad_id=5000), "pad_id"),
    (lambda: L.to_batch([L.labelled_sentence(random.Random(0))], subtokens=True), "subtokens"),
    (lambda: L.split_of(3), "text"),
])
def test_bad_input_is_refused_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
