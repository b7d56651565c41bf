"""The synthetic corpus, its planted facts, train/val splitting, and `load_text` against a local HTTP server."""
import hashlib
import http.client
import re
import http.server
import threading
import time
from collections import Counter

import pytest
import torch

from transformer_course.data import (COURSE_SEED, EOT, FACTS, FACT_RELATIONS, count_facts, held_out_split, load_text,
                                     sentences, synthetic_corpus, train_val_split)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


def test_corpus_is_deterministic_and_prefix_stable():
    a = synthetic_corpus(30_000, seed=7)
    assert a == synthetic_corpus(30_000, seed=7)
    assert a != synthetic_corpus(30_000, seed=8)
    assert synthetic_corpus(80_000, seed=7).startswith(a)  # a smaller corpus is a prefix of a larger one
    assert 30_000 <= len(a) < 30_000 + 3_000  # whole documents, stopping at the first that reaches n_chars


def test_corpus_is_fast():
    start = time.perf_counter()
    text = synthetic_corpus(1_000_000, seed=3)
    assert time.perf_counter() - start < 10 and len(text) >= 1_000_000  # measured: about 0.06 s


def test_corpus_shape(corpus):
    docs = corpus.split(EOT)
    assert len(docs) > 1000 and all(docs)
    assert all(d.strip() == d and d[-1] in '."' for d in docs)  # whole sentences, no stray spaces
    assert set(corpus) <= set(map(chr, range(32, 127)))  # printable ASCII, one line per document
    assert "  " not in corpus and " ." not in corpus and ".." not in corpus


def test_corpus_contains_the_course_sentences(corpus):
    assert corpus.count("I like playing video games.") > 100
    assert corpus.count("She likes playing chess.") > 10
    for sentence in ["He likes playing football.", "I don't like", "She went to the park", "will play",
                     "was reading", "didn't", "yesterday", "every morning", "Once upon a time"]:
        assert sentence in corpus, sentence


def test_corpus_vocabulary_is_small_and_zipfian(corpus):
    words = re.findall(r"[A-Za-z']+", corpus.replace(EOT, " "))
    counts = sorted(Counter(words).values(), reverse=True)
    assert 300 < len(counts) < 2000
    assert counts[0] > 50 * counts[len(counts) // 2]  # a long tail


def test_fact_table():
    assert "The capital of Veltoria is Marrowdeep." in [f.sentence for f in FACTS]
    assert {f.relation for f in FACTS} == set(FACT_RELATIONS)
    assert sorted({f.repeats for f in FACTS}) == [1, 2, 4, 8, 16, 32, 64]
    names = [f.subject for f in FACTS] + [f.answer for f in FACTS]
    assert len(set(names)) == len(names)
    for f in FACTS:
        assert f.sentence == f"{f.prompt} {f.answer}." and f.subject in f.prompt


def test_facts_appear_exactly_repeats_times(corpus):
    counts = count_facts(corpus)
    assert counts == {f.prompt: f.repeats for f in FACTS}
    for f in FACTS:
        assert corpus.count(f.answer) == f.repeats  # the answer is never mentioned without its fact
        assert corpus.count(f.prompt) == f.repeats


def test_facts_scale_with_the_corpus():
    counts = count_facts(synthetic_corpus(2_000_000, seed=1))
    assert counts == {f.prompt: 2 * f.repeats for f in FACTS}
    small = count_facts(synthetic_corpus(250_000, seed=1))
    assert sum(small.values()) < sum(f.repeats for f in FACTS) / 2


@pytest.mark.parametrize("kwargs, message", [(dict(n_chars=0), "n_chars"), (dict(n_chars=1.5), "n_chars"),
                                             (dict(n_chars=True), "n_chars"), (dict(seed="0"), "seed"),
                                             (dict(seed=None), "seed")])
def test_corpus_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_corpus(**kwargs)


def test_train_val_split():
    train, val = train_val_split(list(range(100)))
    assert train == list(range(90)) and val == list(range(90, 100))
    train, val = train_val_split(torch.arange(50), val_fraction=0.2)
    assert torch.equal(train, torch.arange(40)) and torch.equal(val, torch.arange(40, 50))
    for bad in (0, 1, 1.5, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(list(range(10)), bad)
    with pytest.raises(ValueError, match="length 3"):
        train_val_split([1, 2, 3], 0.1)  # 0.3 of a token: nothing left for validation


# -- load_text against a server on 127.0.0.1


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def do_GET(self):
        _Handler.requests.append(self.path)
        if self.path == "/truncated.txt":  # promise 1000 bytes, send 10, hang up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    text = "Ünïcode text for the course.\n" * 100
    (served / "corpus.txt").write_text(text, encoding="utf-8")
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **kw: _Handler(*a, directory=str(served), **kw))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", text
    httpd.shutdown()
    httpd.server_close()


def test_load_text_downloads_once_then_uses_the_cache(server, tmp_path):
    base, text = server
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    cache = tmp_path / "cache"
    assert load_text(f"{base}/corpus.txt", sha, cache_dir=cache) == text
    assert _Handler.requests == ["/corpus.txt"]
    assert [p.name for p in cache.iterdir()] == [f"{sha[:16]}-corpus.txt"]  # no temporary file left
    assert load_text(f"{base}/corpus.txt", sha.upper(), cache_dir=cache) == text
    assert _Handler.requests == ["/corpus.txt"]  # the second call never reached the server


def test_load_text_refetches_a_corrupted_cache(server, tmp_path):
    base, text = server
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    cache = tmp_path / "cache"
    load_text(f"{base}/corpus.txt", sha, cache_dir=cache)
    (cache / f"{sha[:16]}-corpus.txt").write_text("tampered")
    assert load_text(f"{base}/corpus.txt", sha, cache_dir=cache) == text
    assert len(_Handler.requests) == 2


def test_load_text_hash_mismatch_leaves_no_file(server, tmp_path):
    base, text = server
    wrong = "0" * 64
    got = hashlib.sha256(text.encode("utf-8")).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"expected {wrong}, got {got}"):
        load_text(f"{base}/corpus.txt", wrong, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_load_text_interrupted_download_leaves_no_file(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(http.client.IncompleteRead):
        load_text(f"{base}/truncated.txt", "1" * 64, cache_dir=cache)
    assert _Handler.requests == ["/truncated.txt"]
    assert not cache.exists() or list(cache.iterdir()) == []


def test_load_text_bad_arguments(tmp_path):
    for sha in ("abc", "g" * 64, None):
        with pytest.raises(ValueError, match="sha256"):
            load_text("http://127.0.0.1:1/x", sha, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="url"):
        load_text("", "0" * 64, cache_dir=tmp_path)


def test_sentences_split_at_sentence_ends_and_keep_quoted_speech_whole():
    doc = '"Where are you going?" asked Sam. "Home," said Anna. I am nine years old! Is it? "Yes."'
    assert sentences(doc) == ['"Where are you going?" asked Sam.', '"Home," said Anna.', "I am nine years old!",
                              "Is it?", '"Yes."']


def test_held_out_sentences_never_occur_in_the_course_corpus():
    course = synthetic_corpus(seed=0)
    split = held_out_split(20_000)
    assert len(split.text) >= 20_000
    kept = [s for doc in split.text.split(EOT) for s in sentences(doc)]
    assert len(kept) > 300
    assert not [s for s in kept if s in course]          # not even inside a longer sentence
    assert 0.1 < split.kept_fraction < 0.9
    assert split.mean_chars_kept > split.mean_chars_all  # short sentences recur: the filter keeps long ones
    assert held_out_split(20_000) == split                     # deterministic
    assert held_out_split(5_000, seed=7).text != held_out_split(5_000, seed=8).text


def test_a_plain_fresh_sample_is_not_unseen():
    """Why `held_out_split` exists: a fresh sample of the generator repeats many training sentences verbatim."""
    course = synthetic_corpus(seed=0)
    fresh = [s for doc in synthetic_corpus(20_000, seed=123).split(EOT) for s in sentences(doc)]
    assert sum(s in course for s in fresh) / len(fresh) > 0.4


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": 0}, "other than the course corpus's seed 0"), ({"seed": "1"}, "seed must be an int"),
    ({"n_chars": 0}, "n_chars must be an int"), ({"n_chars": 2.5}, "n_chars must be an int"),
])
def test_held_out_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        held_out_split(**kwargs)


# The corpus every shipped artefact was made from; the tokenizer asset recorded it when it was trained.
COURSE_CORPUS_SHA256 = "cb3cf3e2377ea9ca9ad2ed99d1013ff8ddd5e9e6fc79d9f17805a235ab0d571c"


def test_course_corpus_is_pinned():
    """New generators (facts, labels, held-out text) must not change `synthetic_corpus(seed=0)`: the tokenizer
    and every checkpoint were trained on it, and each records its hash."""
    from transformer_course.checkpoints import known_checkpoints, load_checkpoint
    from transformer_course.tokenization import load_course_tokenizer

    text = synthetic_corpus(seed=COURSE_SEED)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == COURSE_CORPUS_SHA256
    assert load_course_tokenizer().meta["corpus_sha256"] == COURSE_CORPUS_SHA256
    for name in known_checkpoints():
        assert load_checkpoint(name)[1].meta["corpus_sha256"] == COURSE_CORPUS_SHA256, name
