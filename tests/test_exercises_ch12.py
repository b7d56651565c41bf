"""Chapter 12's checkers: the reference answers pass, typical mistakes get specific hints, nothing crashes."""
import math

import pytest
import torch

from transformer_course.exercises import ch12
from checker_robustness import assert_survives_exceptions_and_hangs, message


def mean_pool(hidden, padding_mask):
    # written independently of the checker: a loop over rows
    return torch.stack([h[m].mean(0) for h, m in zip(hidden, padding_mask)])


def unigram_tagger(train_ids, train_tags, test_ids):
    # a plain-Python counter, independent of the checker's index_put_ table
    counts, overall = {}, {}
    for i, t in zip(train_ids.flatten().tolist(), train_tags.flatten().tolist()):
        if t != -100:
            counts.setdefault(i, {}).setdefault(t, 0)
            counts[i][t] += 1
            overall[t] = overall.get(t, 0) + 1
    best = lambda c: min(c, key=lambda t: (-c[t], t))  # noqa: E731  most frequent, then smallest id
    fallback = best(overall)
    return torch.tensor([[best(counts[i]) if i in counts else fallback for i in row] for row in test_ids.tolist()])


def control_task(ids, tags, n_labels, seed):
    # Hewitt & Liang (2019) section 2: each type's label is a sample of the empirical tag distribution;
    # here by inverse-CDF sampling on uniform draws (the chapter's solution uses torch.multinomial)
    g = torch.Generator().manual_seed(seed)
    known = tags[tags != -100]
    cdf = torch.tensor([(known <= k).float().mean().item() for k in range(n_labels)])
    u = torch.rand(int(ids.max()) + 1, generator=g)
    label_of = torch.searchsorted(cdf, u, right=True).clamp(max=n_labels - 1)
    return label_of[ids].masked_fill(tags == -100, -100)


def uniform_control_task(ids, tags, n_labels, seed):
    g = torch.Generator().manual_seed(seed)
    label_of = torch.randint(0, n_labels, (int(ids.max()) + 1,), generator=g)
    return label_of[ids].masked_fill(tags == -100, -100)


def test_reference_answers_pass():
    assert ch12.check_mean_pool(mean_pool).passed
    assert ch12.check_unigram_tagger(unigram_tagger).passed
    assert ch12.check_control_task(control_task).passed


def test_unigram_reference_on_a_hand_example():
    # token 5: tags 1, 1, 2 -> 1; token 6: tags 3, 0 (tie) -> 0; token 7 unseen -> overall most frequent, 1
    train_ids = torch.tensor([[5, 5, 5, 6, 6, 9]])
    train_tags = torch.tensor([[1, 1, 2, 3, 0, -100]])
    test_ids = torch.tensor([[5, 6, 7, 9]])
    assert ch12.unigram_reference(train_ids, train_tags, test_ids).tolist() == [[1, 0, 1, 1]]
    assert unigram_tagger(train_ids, train_tags, test_ids).tolist() == [[1, 0, 1, 1]]


def test_mean_pool_hints():
    m = lambda fn: message(ch12.check_mean_pool, fn)  # noqa: E731
    assert "padding included" in m(lambda h, mask: h.mean(1))
    assert "not by T" in m(lambda h, mask: (h * mask[..., None]).sum(1) / h.shape[1])
    assert "divide by their number" in m(lambda h, mask: (h * mask[..., None]).sum(1))
    assert "last column" in m(lambda h, mask: h[:, -1])
    assert "shape" in m(lambda h, mask: h.mean(2))


def test_unigram_hints():
    m = lambda fn: message(ch12.check_unigram_tagger, fn)  # noqa: E731

    def majority(train_ids, train_tags, test_ids):
        tags = train_tags[train_tags != -100]
        return torch.full_like(test_ids, int(torch.bincount(tags).argmax()))

    def counts_ignored(train_ids, train_tags, test_ids):  # -100 counted as a tag (shifted to the last bin)
        shifted = train_tags.masked_fill(train_tags == -100, 99)
        out = unigram_tagger(train_ids, shifted, test_ids)
        return out.masked_fill(out == 99, -100)

    def no_fallback(train_ids, train_tags, test_ids):
        out = unigram_tagger(train_ids, train_tags, test_ids)
        seen = torch.isin(test_ids, train_ids[train_tags != -100])
        return out.masked_fill(~seen, 0) if (out[~seen] != 0).any() else out.masked_fill(~seen, 1)

    def shuffled(train_ids, train_tags, test_ids):
        return unigram_tagger(train_ids, train_tags.flip(1), test_ids)

    assert "majority baseline" in m(majority)
    assert "-100" in m(counts_ignored)
    assert "never seen there" in m(no_fallback)
    assert "differ" in m(shuffled)
    assert "long tensor" in m(lambda a, b, c: unigram_tagger(a, b, c).float())
    assert "shape" in m(lambda a, b, c: unigram_tagger(a, b, c).flatten())


def test_control_task_hints():
    m = lambda fn: message(ch12.check_control_task, fn)  # noqa: E731

    def per_position(ids, tags, n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, n, ids.shape, generator=g).masked_fill(tags == -100, -100)

    def unseeded(ids, tags, n, seed):
        return control_task(ids, tags, n, seed=0)

    def global_rng(ids, tags, n, seed):
        label_of = torch.randint(0, n, (int(ids.max()) + 1,))
        return label_of[ids].masked_fill(tags == -100, -100)

    def counts_ignored(ids, tags, n, seed):  # -100 counted as a tag and clamped to 0: tag 0 too frequent
        return control_task(ids, tags.clamp(min=0), n, seed).masked_fill(tags == -100, -100)

    assert "token type only" in m(per_position)
    assert "real tags" in m(lambda ids, tags, n, seed: tags.clone())
    assert "keep -100" in m(lambda ids, tags, n, seed: control_task(ids, tags.clamp(min=0), n, seed))
    assert "same labels" in m(unseeded)
    assert "same seed" in m(global_rng)
    assert "[0, n_labels)" in m(lambda ids, tags, n, seed: control_task(ids, tags, n, seed) + 10 * (tags != -100))
    assert "same label" in m(lambda ids, tags, n, seed: torch.zeros_like(tags).masked_fill(tags == -100, -100))
    assert "long tensor" in m(lambda *a: control_task(*a).float())
    assert "empirical distribution" in m(uniform_control_task)
    assert "tag frequencies" in m(counts_ignored)


@pytest.mark.parametrize("check", [ch12.check_mean_pool, ch12.check_unigram_tagger, ch12.check_control_task])
@pytest.mark.parametrize("bad", [None, 3, "x", math.nan, [1, 2]])
def test_non_functions_fail_without_raising(check, bad):
    result = check(bad)
    assert not result.passed and "function" in result.message


@pytest.mark.parametrize("check", [ch12.check_mean_pool, ch12.check_unigram_tagger, ch12.check_control_task])
@pytest.mark.parametrize("returns", [None, math.nan, "tensor", [0, 1], torch.tensor(float("nan"))])
def test_bad_returns_fail_without_raising(check, returns):
    result = check(lambda *args: returns)
    assert not result.passed


@pytest.mark.parametrize("check", [ch12.check_mean_pool, ch12.check_unigram_tagger, ch12.check_control_task])
def test_exceptions_and_hangs(check):
    assert_survives_exceptions_and_hangs(check)


def test_nan_outputs_fail():
    result = ch12.check_mean_pool(lambda h, mask: torch.full((h.shape[0], h.shape[2]), float("nan")))
    assert not result.passed and "NaN" in result.message
