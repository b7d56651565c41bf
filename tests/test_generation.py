"""generate(): KV-cached == uncached, batched == one-by-one, the sampling filters by hand, argument checks.
(Greedy tokens == Hugging Face generate: test_hf_reference.py.)"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_course.generation import (
    apply_temperature,
    filtered_probs,
    generate,
    left_pad,
    next_token_distribution,
    top_k_filter,
    top_p_filter,
)
from transformer_course.model import GPT, GPTConfig

V, CTX = 100, 48
PROMPTS = [[5, 17, 3, 99, 42, 8, 1], [11, 12, 13], [70, 2, 9, 4, 4]]
CONFIGS = {
    "gpt2": GPTConfig.gpt2_like(),
    "llama-gqa": GPTConfig.llama_like(n_kv_heads=2),
    "alibi": GPTConfig(positional="alibi"),
    "window": GPTConfig.llama_like(n_layers=2, attention_window=4, layer_pattern=("local", "global")),
}


def model_for(name, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig.from_dict(CONFIGS[name].to_dict() | dict(vocab_size=V, context_length=CTX, d_model=32, n_layers=2))
    model = GPT(cfg)
    with torch.no_grad():  # sharper distributions than at init, so that sampling differs from greedy
        model.tok_emb.weight.mul_(20)
    return model.eval()


def prompt(T=6, B=2, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_gives_the_same_tokens(name):
    model = model_for(name)
    idx = prompt()
    greedy = [generate(model, idx, 30, greedy=True, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy)
    sampled = [generate(model, idx, 30, top_k=20, top_p=0.95, temperature=1.3, use_cache=c,
                        generator=torch.Generator().manual_seed(1)) for c in (True, False)]
    assert torch.equal(*sampled)
    assert not torch.equal(sampled[0], greedy[0])
    assert sampled[0].shape == (2, 36) and torch.equal(sampled[0][:, :6], idx)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_gives_the_same_tokens_as_one_by_one(name, use_cache):
    model = model_for(name)
    idx, mask = left_pad(PROMPTS, pad_id=0)
    batched = generate(model, idx, 12, greedy=True, padding_mask=mask, use_cache=use_cache)
    for row, p in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([p]), 12, greedy=True, use_cache=use_cache)
        assert batched[row, -12:].tolist() == alone[0, -12:].tolist()


def test_seeded_sampling_is_reproducible():
    model = model_for("gpt2")
    runs = [generate(model, prompt(), 20, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_top_k_1_is_greedy():
    model = model_for("llama-gqa")
    idx = prompt()
    assert torch.equal(generate(model, idx, 20, top_k=1, generator=torch.Generator().manual_seed(0)),
                       generate(model, idx, 20, greedy=True))


def test_generate_restores_training_mode():
    model = model_for("gpt2").train()
    generate(model, prompt(), 3, greedy=True)
    assert model.training


# ----------------------------------------------------------------------------- the filters by hand


PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0)


@pytest.mark.parametrize(
    "p, kept", [(0.4, [1]), (0.6, [1, 3]), (0.9, [1, 2, 3]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    filtered = top_p_filter(PROBS.log(), p)
    assert torch.isfinite(filtered[0]).nonzero().flatten().tolist() == kept
    renormalised = torch.softmax(filtered, -1)[0, kept]
    torch.testing.assert_close(renormalised, PROBS[0, kept] / PROBS[0, kept].sum())


def test_top_p_at_the_boundary_keeps_a_set_whose_mass_equals_p():
    """Powers of two are exact in floating point: with p = 0.75 the set {0.5, 0.25} already reaches p."""
    logits = torch.tensor([[0.0, -1.0, -2.0, -2.0]]) * math.log(2)  # probabilities 1/2, 1/4, 1/8, 1/8
    assert torch.equal(torch.softmax(logits, -1), torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    assert torch.isfinite(top_p_filter(logits, 0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]


def test_top_k_hand_example():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    assert top_k_filter(logits, 2).tolist() == [[-math.inf, 4.0, -math.inf, 3.0]]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, 4.0, 6.0]]
    cold, hot = filtered_probs(logits, 0.5), filtered_probs(logits, 2.0)
    assert cold.max() > torch.softmax(logits, -1).max() > hot.max()


def test_next_token_distribution_applies_the_filters():
    model = model_for("gpt2")
    idx = prompt()
    plain = next_token_distribution(model, idx)
    torch.testing.assert_close(plain.sum(-1), torch.ones(2))
    torch.testing.assert_close(plain, torch.softmax(model(idx)[0][:, -1], -1))
    top5 = next_token_distribution(model, idx, top_k=5)
    assert ((top5 > 0).sum(-1) == 5).all()
    assert torch.equal(top5.argmax(-1), plain.argmax(-1))


@given(probs=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12), p=st.floats(0.05, 0.99))
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
def test_top_p_set_is_minimal(probs, p):
    probs = torch.tensor(probs, dtype=torch.float64)
    probs = probs / probs.sum()
    keep = torch.isfinite(top_p_filter(probs.log(), p))
    kept_mass = probs[keep].sum()
    assert kept_mass >= p - 1e-12
    # dropping the least probable kept token would fall short of p (unless only one token is kept)
    if keep.sum() > 1:
        assert kept_mass - probs[keep].min() < p + 1e-12
    # everything kept is at least as probable as everything dropped
    if (~keep).any():
        assert probs[keep].min() >= probs[~keep].max()


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=CTX - 5), "context length"),
        (dict(padding_mask=torch.tensor([[True] * 5 + [False], [True] * 6])), "LEFT"),
        (dict(padding_mask=torch.ones(2, 5, dtype=torch.bool)), "padding_mask"),
    ],
)
def test_generate_rejects_bad_arguments(kw, message):
    model = model_for("gpt2")
    kw = dict(max_new_tokens=3) | kw
    with pytest.raises(ValueError, match=message):
        generate(model, prompt(), kw.pop("max_new_tokens"), **kw)


def test_greedy_ignores_temperature_and_fills_the_context_exactly():
    model = model_for("gpt2")
    out = generate(model, prompt(), CTX - 6, greedy=True, temperature=0.0)
    assert out.shape == (2, CTX)


# ----------------------------------------------------------------------------- the stop token


def first_new_token_at(model, idx, step):
    """The token each row greedily emits at new position `step` (without a stop token)."""
    return generate(model, idx, step + 1, greedy=True)[:, idx.shape[1] + step].tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stop_token_cached_equals_uncached_and_finished_rows_hold_it(name):
    model = model_for(name)
    idx = prompt(B=3)
    plain = generate(model, idx, 20, greedy=True)
    stop = plain[0, idx.shape[1] + 4].item()  # row 0 emits it at new position 4 (or earlier)
    runs = [generate(model, idx, 20, greedy=True, stop_token=stop, use_cache=c) for c in (True, False)]
    assert torch.equal(*runs)
    out = runs[0]
    for row in range(3):
        new = plain[row, 6:].tolist()
        got = out[row, 6:].tolist()
        if stop in new:  # identical up to and including the first stop token, then only stop tokens
            first = new.index(stop)
            assert got[:first + 1] == new[:first + 1] and set(got[first:]) == {stop}
        else:
            assert got == new[:len(got)]
    sampled = [generate(model, idx, 20, stop_token=stop, temperature=1.5, use_cache=c,
                        generator=torch.Generator().manual_seed(3)) for c in (True, False)]
    assert torch.equal(*sampled)


def test_generation_stops_when_every_row_has_finished():
    model = model_for("gpt2")
    idx = prompt(B=1)
    plain = generate(model, idx, 20, greedy=True)[0, 6:].tolist()
    stop = plain[5]
    first = plain.index(stop)
    for use_cache in (True, False):
        out = generate(model, idx, 20, greedy=True, stop_token=stop, use_cache=use_cache)
        assert out.shape == (1, 6 + first + 1) and out[0, -1].item() == stop
    # a stop token that never comes changes nothing
    never = next(t for t in range(V) if t not in plain)
    assert torch.equal(generate(model, idx, 20, greedy=True, stop_token=never), generate(model, idx, 20, greedy=True))


@pytest.mark.parametrize("use_cache", [True, False])
def test_stop_token_with_a_left_padded_batch_equals_one_by_one(use_cache):
    model = model_for("llama-gqa")
    idx, mask = left_pad(PROMPTS, pad_id=0)
    stop = generate(model, torch.tensor([PROMPTS[1]]), 4, greedy=True)[0, -1].item()
    batched = generate(model, idx, 12, greedy=True, padding_mask=mask, use_cache=use_cache, stop_token=stop)
    longest = 0
    for row, p in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([p]), 12, greedy=True, use_cache=use_cache, stop_token=stop)
        new = alone[0, len(p):].tolist()
        longest = max(longest, len(new))
        got = batched[row, idx.shape[1]:].tolist()
        assert got[:len(new)] == new and set(got[len(new):]) <= {stop}
    assert batched.shape[1] == idx.shape[1] + longest


@pytest.mark.parametrize("stop_token", [-1, V, 2.5, True, "1"])
def test_bad_stop_token_is_refused(stop_token):
    with pytest.raises(ValueError, match="stop_token"):
        generate(model_for("gpt2"), prompt(), 3, stop_token=stop_token)


def test_stop_token_on_the_shipped_model():
    """tiny's corpus separates documents with <|endoftext|>: the greedy story ends with it."""
    from transformer_course.checkpoints import load_checkpoint
    model, tokenizer, _ = load_checkpoint("tiny")
    idx = torch.tensor([tokenizer.encode("Once upon a time, there was")])
    out = generate(model, idx, 100, greedy=True, stop_token=tokenizer.eot_id)
    assert out[0, -1].item() == tokenizer.eot_id and out.shape[1] < idx.shape[1] + 100
    assert tokenizer.eot_id not in out[0, :-1].tolist()


def test_a_cached_step_costs_weights_plus_linear_attention_and_an_uncached_step_t_times_it():
    """FLOPs counted by PyTorch's FlopCounterMode (matmuls only): one new token at position t costs
    2 FLOPs per weight of every Linear and the LM head, plus 4 * L * d_model * t for q k^T and the
    weighted sum of v over the cache; without the cache the step redoes all t positions: t times that."""
    from torch.utils.flop_counter import FlopCounterMode

    c = GPTConfig.gpt2_like(vocab_size=V, context_length=64, n_layers=2, n_heads=2, d_model=16)
    torch.manual_seed(0)
    model = GPT(c).eval()
    seq = torch.randint(0, V, (1, 64), generator=torch.Generator().manual_seed(0))
    linear = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    linear += model.lm_head.weight.numel()  # (V, d_model), tied to the token table

    def flops(fn):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    for t in (8, 32, 64):
        cache = model.new_cache(1, t)
        with torch.no_grad():
            model(seq[:, : t - 1], cache=cache)
        cached = flops(lambda: model(seq[:, t - 1: t], cache=cache))
        assert cached == 2 * linear + 4 * c.n_layers * c.d_model * t
        assert flops(lambda: model(seq[:, :t])) == t * cached
