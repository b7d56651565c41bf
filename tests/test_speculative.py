"""speculative_generate(): greedy == the target's greedy generate, the accept/reject rule exactly, the sampled
distribution == the target's (a total-variation test with a stated false-failure probability), the counts,
the KV-cache rollback (cached == uncached), argument checks."""
import math

import pytest
import torch

from transformer_course.checkpoints import load_checkpoint
from transformer_course.generation import generate, next_token_distribution
from transformer_course.model import GPT, GPTConfig
from transformer_course.speculative import (
    SpeculativeStats,
    accept_or_resample,
    acceptance_probability,
    residual_distribution,
    speculative_generate,
)

V, CTX = 100, 48
CONFIGS = {
    "gpt2": GPTConfig.gpt2_like(tie_weights=False),  # untied: a tied random model just repeats its last token
    "llama-gqa": GPTConfig.llama_like(n_kv_heads=2),
    "alibi": GPTConfig(positional="alibi", tie_weights=False),
    "window": GPTConfig.llama_like(n_layers=2, attention_window=4, layer_pattern=("local", "global")),
}
TEXTS = ["Once upon a time, there was", "I like playing video games. We", "Tom went to the park. He saw"]


def model_for(name, seed=0, vocab_size=V, context_length=CTX, scale=20.0, head_scale=1.0, **sizes):
    torch.manual_seed(seed)
    sizes = dict(d_model=32, n_layers=2) | sizes
    cfg = GPTConfig.from_dict(CONFIGS[name].to_dict() | dict(vocab_size=vocab_size, context_length=context_length,
                                                             **sizes))
    model = GPT(cfg)
    with torch.no_grad():  # sharper distributions than at init
        model.tok_emb.weight.mul_(scale)
        if not cfg.tie_weights:
            model.lm_head.weight.mul_(head_scale)
    return model.eval()


def noisy_copy(model, std=0.01, seed=1):
    """A draft that agrees with the target often but not always: the target's weights plus noise."""
    draft = GPT(model.config)
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return draft.eval()


def prompt(T=6, seed=0, vocab_size=V):
    return torch.randint(0, vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def shipped():
    target, tokenizer, _ = load_checkpoint("tiny")
    draft, draft_tokenizer, _ = load_checkpoint("small-tied")
    assert tokenizer.to_dict() == draft_tokenizer.to_dict()  # the same course tokenizer
    return target, draft, tokenizer


# ----------------------------------------------------------------------------- greedy == the target's greedy


def greedy_gap_and_noise(model, idx, n):
    """Along the target's greedy continuation: the smallest top-1 minus top-2 logit gap, and the largest
    difference between logits computed in one batched pass and one token at a time with the KV cache."""
    with torch.no_grad():
        ref = generate(model, idx, n, greedy=True)  # (1, T + n)
        T = idx.shape[1]
        batched = model(ref)[0][0, T - 1:-1]  # (n, V): the logits each new token was chosen from
        cache = model.new_cache(1)
        single = [model(idx, cache=cache)[0][0, -1]] + [model(ref[:, t:t + 1], cache=cache)[0][0, -1]
                                                        for t in range(T, T + n - 1)]
        noise = (batched - torch.stack(single)).abs().max().item()
        top2 = batched.topk(2, dim=-1).values  # (n, 2)
    return (top2[:, 0] - top2[:, 1]).min().item(), noise


def assert_greedy_matches(target, draft, idx, n, ks):
    gap, noise = greedy_gap_and_noise(target, idx, n)
    # The verification pass computes the logits in yet another grouping (k + 1 tokens at a time), which
    # differs from either by about `noise`; a gap ten times larger keeps every argmax where it is. A prompt
    # failing this has a near-tie: pick another prompt rather than loosen the check.
    assert gap > 10 * noise, f"near-tie: top-2 gap {gap:.2e} vs numerical difference {noise:.2e}"
    reference = generate(target, idx, n, greedy=True)
    for k in ks:
        tokens, stats = speculative_generate(target, draft, idx, n, k, greedy=True)
        assert torch.equal(tokens, reference), f"k={k}"
        assert stats.generated == n and stats.target_passes <= n
    return stats


@pytest.mark.parametrize("text", TEXTS)
def test_greedy_equals_targets_greedy_for_the_shipped_pair(shipped, text):
    target, draft, tokenizer = shipped
    idx = torch.tensor([tokenizer.encode(text)])
    stats = assert_greedy_matches(target, draft, idx, 40, ks=(1, 2, 4))
    assert 0 < stats.accepted < stats.drafted  # both paths of the rule were taken
    assert stats.target_passes < 40 / 2  # k = 4: fewer than half the passes of plain decoding


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_targets_greedy_for_random_models(name):
    target = model_for(name)
    close, unrelated = noisy_copy(target), model_for("gpt2" if name != "gpt2" else "alibi", seed=3, n_layers=1)
    for seed in range(2):
        stats = assert_greedy_matches(target, close, prompt(seed=seed), 24, ks=(1, 2, 4))
        assert 0 < stats.accepted < stats.drafted  # the noisy copy is often right
        assert_greedy_matches(target, unrelated, prompt(seed=seed), 24, ks=(1, 2, 4))  # this one hardly ever


# ----------------------------------------------------------------------------- the accept/reject rule, exactly


def test_the_rule_on_a_hand_worked_example():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    assert [acceptance_probability(p, q, x) for x in range(4)] == [1.0, 1.0, 1.0, 0.0]
    assert residual_distribution(p, q).tolist() == [1.0, 0.0, 0.0, 0.0]  # max(0, p - q) = (1/4, 0, 0, 0)
    q = torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    assert [acceptance_probability(p, q, x) for x in (1, 2)] == [0.5, 0.5]
    assert residual_distribution(p, q).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.equal(residual_distribution(p, p), p)  # p == q: rejection never happens; p is returned
    for seed in range(20):  # deterministic cases of accept_or_resample
        g = torch.Generator().manual_seed(seed)
        q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
        assert accept_or_resample(p, q, 0, g) == (True, 0)  # p(x) >= q(x): always kept
        assert accept_or_resample(p, q, 3, g) == (False, 0)  # p(x) = 0: always rejected, residual is token 0
        assert accept_or_resample(p, p, 1, g) == (True, 1)  # draft == target: always kept


def one_step_distribution(p, q, rule=acceptance_probability, residual=residual_distribution):
    """Closed form of the token one verification step emits, when the draft samples x ~ q:
    out(y) = q(y) a(y) + P(reject) r(y), with a the acceptance probability and P(reject) = sum_x q(x)(1 - a(x))."""
    accept = torch.tensor([rule(p, q, x) if q[x] > 0 else 0.0 for x in range(len(p))], dtype=p.dtype)  # (V,)
    reject_mass = (q * (1 - accept)).sum()
    return q * accept + reject_mass * residual(p, q)


def test_one_step_emits_exactly_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    wrong_rules = {  # two plausible mistakes, to show that the check can fail
        "resample from p after a rejection": dict(residual=lambda p, q: p),
        "accept with probability p(x)": dict(rule=lambda p, q, x: p[x].item()),
    }
    wrong_errors = {name: [] for name in wrong_rules}
    for trial in range(50):
        V_toy = 2 + trial % 7
        p = torch.distributions.Dirichlet(torch.full((V_toy,), 0.5, dtype=torch.float64)).sample()
        q = torch.rand(V_toy, generator=g, dtype=torch.float64) ** 3
        if trial % 3 == 0:  # zeros on either side: tokens the draft never proposes, or the target never emits
            p[trial % V_toy] = 0.0
            q[(trial + 1) % V_toy] = 0.0
        p, q = p / p.sum(), q / q.sum()
        out = one_step_distribution(p, q)
        assert (out - p).abs().max().item() < 1e-15, (p, q, out)  # float64: exact up to rounding
        for name, wrong in wrong_rules.items():
            wrong_errors[name].append((one_step_distribution(p, q, **wrong) - p).abs().max().item())
    for name, errors in wrong_errors.items():
        assert sum(e > 1e-3 for e in errors) > 40, name


# ----------------------------------------------------------------------------- sampling follows the target

SMALL_V = 8
SAMPLING = {  # (k, sampling options): new tokens k + 1, so that the first round drafts k
    "plain, k=2": (2, {}),
    "filtered, k=1": (1, dict(temperature=0.7, top_k=5, top_p=0.95)),
}


def tv_threshold(p: torch.Tensor, n: int, false_failure: float) -> float:
    """A bound that the empirical total-variation distance of n samples of p exceeds with probability at most
    false_failure: E[TV] <= 1/2 sum sqrt(p(1-p)/n) (Jensen), plus McDiarmid's deviation sqrt(ln(1/δ)/(2n))
    (one sample moves the empirical TV by at most 1/n)."""
    return 0.5 * (p * (1 - p) / n).sqrt().sum().item() + math.sqrt(math.log(1 / false_failure) / (2 * n))


@pytest.mark.parametrize("setting", list(SAMPLING))
def test_sampled_tokens_follow_the_targets_distribution(setting):
    (k, kw), n, false_failure = SAMPLING[setting], 2000, 1e-4  # two checks below: false failure <= 2e-4 per setting
    sizes = dict(vocab_size=SMALL_V, context_length=16, d_model=16, n_heads=2, n_layers=1)
    target = model_for("gpt2", seed=0, head_scale=10.0, **sizes)  # p and q far apart: TV(p1, q1) ~ 0.4-0.6
    draft = model_for("llama-gqa", seed=1, head_scale=10.0, n_kv_heads=1, **sizes)
    idx = torch.tensor([[1, 5, 2]])
    p1 = next_token_distribution(target, idx, **kw)[0].double()  # (8,): the first token's distribution
    p2 = next_token_distribution(target, torch.cat([idx.expand(SMALL_V, 3), torch.arange(SMALL_V)[:, None]], 1),
                                 **kw).double()  # (8, 8): the second token's, given the first
    joint = (p1[:, None] * p2).flatten()  # (64,)

    g = torch.Generator().manual_seed(0)
    counts1, counts2, accepted = torch.zeros(SMALL_V), torch.zeros(SMALL_V ** 2), 0
    for _ in range(n):  # the first two tokens come from accepted drafts, residuals and bonus tokens
        tokens, stats = speculative_generate(target, draft, idx, k + 1, k, generator=g, **kw)
        first, second = tokens[0, 3:5].tolist()
        counts1[first] += 1
        counts2[first * SMALL_V + second] += 1
        accepted += stats.accepted
    tv1 = 0.5 * (counts1 / n - p1).abs().sum().item()
    tv2 = 0.5 * (counts2 / n - joint).abs().sum().item()
    limit1, limit2 = tv_threshold(p1, n, false_failure), tv_threshold(joint, n, false_failure)
    assert tv1 < limit1, f"first token: TV {tv1:.3f} >= {limit1:.3f}"
    assert tv2 < limit2, f"first two tokens: TV {tv2:.3f} >= {limit2:.3f}"
    assert 0 < accepted < k * n  # both accepted drafts and rejections happened

    # The test can fail: the draft's own distribution, and the rule that resamples from p (not the residual)
    # after a rejection, are both more than twice the limit away from p.
    q1 = next_token_distribution(draft, idx, **kw)[0].double()
    wrong = one_step_distribution(p1, q1, residual=lambda p, q: p)
    assert 0.5 * (q1 - p1).abs().sum() > 2 * limit1 and 0.5 * (wrong - p1).abs().sum() > 2 * limit1


# ----------------------------------------------------------------------------- counts and the cache rollback


@pytest.mark.parametrize("greedy", [True, False])
def test_counts(shipped, greedy):
    target, draft, tokenizer = shipped
    idx = torch.tensor([tokenizer.encode(TEXTS[0])])
    n = 30
    for k in (1, 3):
        for d in (draft, target):  # with the target as its own draft, every drafted token is accepted
            tokens, s = speculative_generate(target, d, idx, n, k, greedy=greedy,
                                             generator=torch.Generator().manual_seed(0))
            assert tokens.shape == (1, idx.shape[1] + n) and torch.equal(tokens[:, :idx.shape[1]], idx)
            assert s.generated == n == s.accepted + s.target_passes  # each round: accepted + 1 tokens, one pass
            assert s.draft_passes == s.drafted <= k * s.target_passes and s.accepted <= s.drafted
            assert math.ceil(n / (k + 1)) <= s.target_passes <= n and s.target_passes_per_token <= 1
            # a round ends at a rejection or after all its drafts were kept: drafted = accepted + rejected
            # + the never-examined drafts after a rejection, so accepted/drafted <= accepted/examined
            assert s.rejected <= s.target_passes and s.accepted + s.rejected <= s.drafted
            if s.rejected:
                assert s.acceptance_rate <= s.examined_acceptance_rate < 1
            if d is target:
                # Sampling: p and q come from different passes and differ by float rounding (~1e-7), so a
                # rejection has probability ~1e-7 per token; the seeded run is fixed.
                assert s.accepted == s.drafted and s.acceptance_rate == 1.0
                assert s.rejected == 0 and s.examined_acceptance_rate == 1.0
                assert s.target_passes == math.ceil(n / (k + 1))
    assert math.isnan(SpeculativeStats().acceptance_rate)
    assert math.isnan(SpeculativeStats().examined_acceptance_rate)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cache_rollback_gives_the_same_tokens_as_no_cache(name):
    target = model_for(name)
    draft = noisy_copy(target)
    for greedy in (True, False):
        runs = [speculative_generate(target, draft, prompt(), 30, 3, greedy=greedy, temperature=1.3, top_k=20,
                                     use_cache=c, generator=torch.Generator().manual_seed(1)) for c in (True, False)]
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
        assert 0 < runs[0][1].accepted < runs[0][1].drafted


def test_modes_are_restored_and_the_ends():
    target, draft, idx = model_for("gpt2"), model_for("alibi", seed=1), prompt()
    target.train()
    speculative_generate(target, draft, idx, 5, greedy=True)
    assert target.training and not draft.training
    tokens, stats = speculative_generate(target, draft, idx, 0)
    assert torch.equal(tokens, idx) and tokens is not idx and stats == SpeculativeStats()
    # k larger than what is left: the round drafts only max_new_tokens - 1 tokens
    tokens, stats = speculative_generate(target, target, idx, 3, k=10, greedy=True)
    assert torch.equal(tokens, generate(target, idx, 3, greedy=True))
    assert (stats.drafted, stats.accepted, stats.target_passes) == (2, 2, 1)
    tokens, stats = speculative_generate(target, draft, idx, CTX - idx.shape[1], k=4, greedy=True)  # up to the end
    assert torch.equal(tokens, generate(target, idx, CTX - idx.shape[1], greedy=True))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused():
    target, draft, idx = model_for("gpt2"), model_for("alibi", seed=1), prompt()
    other_vocab = model_for("gpt2", vocab_size=V + 1)
    short = model_for("gpt2", context_length=10)
    cases = [
        (dict(target="tiny"), "target must be a course GPT"),
        (dict(draft=None), "draft must be a course GPT"),
        (dict(draft=other_vocab), "draft has vocab_size 101 but target has 100"),
        (dict(idx=prompt().expand(2, 6)), r"batch size 1.*\(2, 6\)"),
        (dict(idx=idx.float()), "idx"),
        (dict(k=0), "k"),
        (dict(k="2"), "k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=CTX), "context length 48"),
        (dict(draft=short), "draft's context length 10"),
        (dict(temperature="1.0"), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(greedy="yes"), "greedy"),
        (dict(generator=42), "generator"),
    ]
    for change, message in cases:
        args = dict(target=target, draft=draft, idx=idx, max_new_tokens=5, k=2) | change
        with pytest.raises(ValueError, match=message):
            speculative_generate(args.pop("target"), args.pop("draft"), args.pop("idx"), args.pop("max_new_tokens"),
                                 args.pop("k"), **args)


def test_bad_distributions_are_refused():
    p = torch.tensor([0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="q"):
        accept_or_resample(p, torch.tensor([0.5, 0.5]), 0)
    with pytest.raises(ValueError, match="p"):
        acceptance_probability(p[None], p[None], 0)
    with pytest.raises(ValueError, match="drafted"):
        accept_or_resample(p, p, 3)
    with pytest.raises(ValueError, match=r"q\[drafted\]=0"):
        accept_or_resample(p, p, 2)
    with pytest.raises(ValueError, match="generator"):
        accept_or_resample(p, p, 0, generator="seed")
