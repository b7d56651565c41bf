"""Checkers for Chapter 12, "Heads". Each takes the reader's answer and never raises."""
import torch

from ..labelled import IGNORE_INDEX
from .base import CheckResult, check_tensor, checker, run_with_timeout


def _padded(seed: int):
    """Hidden states (3, 5, 4) with right, left and no padding, and their padding mask (True at real tokens)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, 4, generator=g) * 2 + 1  # a mean far from 0, so wrong divisors show
    mask = torch.tensor([[True, True, False, False, False],
                         [False, False, True, True, True],
                         [True, True, True, True, True]])
    return hidden, mask


@checker
def check_mean_pool(fn) -> CheckResult:
    """`fn(hidden, padding_mask)` -> the mean of each row's real tokens `(B, d_model)`."""
    for seed in (0, 1):
        hidden, mask = _padded(seed)
        got, problem = run_with_timeout(fn, hidden.clone(), mask.clone())
        if problem is not None:
            return problem
        w = mask.float()[..., None]
        expected = (hidden * w).sum(1) / w.sum(1)
        wrong = {
            "all": (hidden.mean(1), "you averaged over every position, padding included: weight each token by "
                                    "the padding mask and divide by the number of real tokens"),
            "by T": ((hidden * w).sum(1) / hidden.shape[1], "the sum over real tokens is right, but divide by "
                                                            "each row's number of real tokens, not by T"),
            "sum": ((hidden * w).sum(1), "that is the sum over real tokens; divide by their number"),
            "last": (hidden[:, -1], "that is the last column; mean pooling averages the real tokens"),
        }
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            for value, hint in wrong.values():
                if torch.allclose(got.float(), value, atol=1e-5):
                    return CheckResult(False, hint)
        result = check_tensor(got, expected, name="your pooled vectors", atol=1e-5)
        if not result.passed:
            return result
    return CheckResult(True, "the mean of the real tokens, whichever side the padding is on")


def unigram_reference(train_ids, train_tags, test_ids):
    """Each test token's most frequent train tag (ties: the smallest tag id); unseen: the most frequent tag."""
    keep = train_tags != IGNORE_INDEX
    ids, tags = train_ids[keep], train_tags[keep]
    n_tags = int(tags.max()) + 1
    counts = torch.zeros(int(max(train_ids.max(), test_ids.max())) + 1, n_tags, dtype=torch.long)
    counts.index_put_((ids, tags), torch.ones_like(ids), accumulate=True)
    overall = int(torch.bincount(tags, minlength=n_tags).argmax())
    table = counts.argmax(1).masked_fill(counts.sum(1) == 0, overall)
    return table[test_ids]


def _tagging_data(seed: int):
    """Token ids and tags (B, T) where tokens have a favourite tag, some test tokens never occur in train,
    and -100 marks unlabelled positions (the most frequent entry of the train tags, to catch miscounting)."""
    g = torch.Generator().manual_seed(seed)
    favourite = torch.randint(0, 6, (40,), generator=g)
    train_ids = torch.randint(0, 30, (12, 9), generator=g)  # tokens 30-39 never in train
    noise = torch.rand(train_ids.shape, generator=g) < 0.25
    train_tags = torch.where(noise, torch.randint(0, 6, train_ids.shape, generator=g), favourite[train_ids])
    train_tags[:, ::2] = IGNORE_INDEX  # half the positions unlabelled
    test_ids = torch.randint(0, 40, (5, 7), generator=g)
    return train_ids, train_tags, test_ids


@checker
def check_unigram_tagger(fn) -> CheckResult:
    """`fn(train_ids, train_tags, test_ids)` -> predicted tags `(B_test, T_test)` long."""
    for seed in (0, 1, 2):
        train_ids, train_tags, test_ids = _tagging_data(seed)
        got, problem = run_with_timeout(fn, train_ids.clone(), train_tags.clone(), test_ids.clone())
        if problem is not None:
            return problem
        expected = unigram_reference(train_ids, train_tags, test_ids)
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return check_tensor(got, expected, name="your predicted tags")
        if got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
            return CheckResult(False, f"return tag ids as a long tensor, got {got.dtype}")
        got = got.long()
        if (got == IGNORE_INDEX).any():
            return CheckResult(False, "some predictions are -100: leave the unlabelled positions (-100) out when "
                                      "you count the tags of a token, and give tokens never seen in training a tag "
                                      "too")
        labelled = train_tags != IGNORE_INDEX
        overall = int(torch.bincount(train_tags[labelled]).argmax())
        seen = torch.isin(test_ids, train_ids[labelled])
        if torch.equal(got, torch.full_like(got, overall)):
            return CheckResult(False, "you predict the one most frequent tag everywhere: that is the majority "
                                      "baseline; count the tags of each token id separately")
        if torch.equal(got[seen], expected[seen]) and not torch.equal(got, expected):
            return CheckResult(False, "right for every token seen in training; a token never seen there should get "
                                      "the most frequent tag of the whole training set")
        if not torch.equal(got, expected):
            wrong = (got != expected).float().mean().item()
            return CheckResult(False, f"{wrong:.0%} of the predictions differ: for each token id take the tag it "
                                      "has most often among the labelled training positions (ties: the smallest "
                                      "tag id)")
    return CheckResult(True, "a lookup table from token id to its most frequent tag: a probe with no context at all")


def _skewed_tags(seed: int):
    """Token ids (B, T) of 300 token types and tags from a skewed distribution over 6 tags: tag 0 on about 70 %
    of the labelled positions, tag 5 never; -100 on every second position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(600, generator=g).remainder(300).view(20, 30)  # each type twice
    tags = torch.multinomial(torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05, 0.0]), ids.numel(), replacement=True,
                             generator=g).view(ids.shape)
    tags[:, ::2] = IGNORE_INDEX
    return ids, tags


@checker
def check_control_task(fn) -> CheckResult:
    """`fn(ids, tags, n_labels, seed)` -> control labels `(B, T)`: one label per token type, drawn from the
    empirical distribution of the labelled tags (Hewitt & Liang 2019, section 2)."""
    train_ids, train_tags, _ = _tagging_data(0)
    outs = []
    for seed in (0, 1):
        got, problem = run_with_timeout(fn, train_ids.clone(), train_tags.clone(), 6, seed)
        if problem is not None:
            return problem
        if not isinstance(got, torch.Tensor) or got.shape != train_tags.shape:
            return check_tensor(got, train_tags, name="your control labels")
        if got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
            return CheckResult(False, f"return label ids as a long tensor, got {got.dtype}")
        got = got.long()
        labelled = train_tags != IGNORE_INDEX
        if not torch.equal(got[~labelled], train_tags[~labelled]):
            return CheckResult(False, "keep -100 where the real tags are -100 (unlabelled positions stay out of the "
                                      "loss), and give every labelled position a control label")
        values = got[labelled]
        if values.min() < 0 or values.max() >= 6:
            return CheckResult(False, "control labels must be tag ids in [0, n_labels)")
        if torch.equal(values, train_tags[labelled]):
            return CheckResult(False, "those are the real tags; a control task gives each token type a random label")
        for token in train_ids[labelled].unique():
            if values[train_ids[labelled] == token].unique().numel() > 1:
                return CheckResult(False, f"token {int(token)} gets different control labels at different "
                                          "positions: the label must depend on the token type only, one random "
                                          "label per token id, whatever its context")
        if values.unique().numel() < 3:
            return CheckResult(False, "almost every token gets the same label; draw each token type's label at "
                                      "random, from the distribution of the labelled tags")
        outs.append(got)
    if torch.equal(outs[0], outs[1]):
        return CheckResult(False, "seeds 0 and 1 give the same labels: draw the random labels from a generator "
                                  "seeded by `seed`")
    again, problem = run_with_timeout(fn, train_ids.clone(), train_tags.clone(), 6, 0)
    if problem is not None:
        return problem
    if not isinstance(again, torch.Tensor) or not torch.equal(again.long(), outs[0]):
        return CheckResult(False, "the same seed must give the same labels: use torch.Generator().manual_seed(seed)")
    ids, tags = _skewed_tags(0)
    got, problem = run_with_timeout(fn, ids.clone(), tags.clone(), 6, 0)
    if problem is not None:
        return problem
    if not isinstance(got, torch.Tensor) or got.shape != tags.shape:
        return check_tensor(got, tags, name="your control labels")
    labelled = tags != IGNORE_INDEX
    per_type = torch.full((300,), IGNORE_INDEX, dtype=torch.long)
    per_type[ids[labelled]] = got.long()[labelled]
    drawn = per_type[per_type != IGNORE_INDEX]
    if drawn.numel() == 0 or drawn.min() < 0 or drawn.max() >= 6:
        return CheckResult(False, "control labels must be tag ids in [0, n_labels)")
    if (drawn == 5).any():
        return CheckResult(False, "a tag that never occurs in `tags` was drawn: sample each type's label from the "
                                  "empirical distribution of the labelled tags, not uniformly over n_labels")
    share = (drawn == 0).float().mean().item()  # about 0.7 when drawn from the tag distribution
    if not 0.6 < share < 0.8:  # 300 types: 0.7 +- 0.026
        return CheckResult(False, f"with tags where tag 0 has about 70 % of the labelled positions, your labels "
                                  f"give it {share:.0%} of the token types: draw each type's label from the tag "
                                  "frequencies of `tags` (count the labelled tags, ignore -100)")
    return CheckResult(True, "one label per token type, drawn from the tag distribution: only memorising token "
                             "identity can learn it")
