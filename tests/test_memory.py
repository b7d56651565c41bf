"""The FFN-as-memory tools of Chapter 10: the fact generator and its data, exposures, recall, the FFN
ablation and the key-value reading."""
import collections

import pytest
import torch
import torch.nn.functional as F

from transformer_course import memory
from transformer_course.data import FACTS
from transformer_course.memory import (
    FACTS_PER_GROUP, OCCURRENCES, MemoryFact, epochs, ffn_output_mean, key_activations, memory_facts, memory_text,
    recall, top_value_tokens, with_mean_ffn, without_ffn,
)
from transformer_course.model import GPT, GPTConfig
from transformer_course.tokenization import load_course_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_course_tokenizer()


@pytest.fixture(scope="module")
def texts():
    return memory_text()


def small_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=1024, context_length=32, n_layers=2, n_heads=2, d_model=64)
    return GPT(GPTConfig.gpt2_like(**{**config, **overrides})).eval()


def test_memory_facts_are_new_unique_and_grouped():
    facts = memory_facts()
    assert len(facts) == len(OCCURRENCES) * FACTS_PER_GROUP == 160
    assert collections.Counter(f.occurrences for f in facts) == {n: FACTS_PER_GROUP for n in OCCURRENCES}
    names = [f.subject for f in facts] + [f.answer for f in facts]
    assert len(set(names)) == len(names)
    course_words = {w for f in FACTS for w in (f.subject + " " + f.answer).split()}
    invented = {f.subject.split()[-1] for f in facts} | {f.answer for f in facts}  # titles are shared
    assert not course_words & invented
    assert memory_facts() == facts and memory_facts(seed=1) != facts  # seeded, deterministic
    assert facts[0].sentence == f"{facts[0].prompt} {facts[0].answer}."


def test_memory_text_states_each_fact_exactly_as_often_as_planned_and_never_in_validation(texts):
    train, val = texts
    for fact in memory_facts():
        assert train.count(fact.sentence) == fact.occurrences, fact
        assert fact.subject not in val and fact.answer not in val
    for fact in FACTS:  # the course's own facts are removed from both splits
        assert fact.sentence not in train and fact.sentence not in val
    assert len(train) > 8 * len(val)


def test_epochs_count_the_tokens_read():
    # 10 steps of 2 windows of 50 tokens read 1,000 tokens: 2 epochs of a 500-token split
    assert epochs(train_tokens=500, steps=10, batch_size=2, block_size=50) == 2.0
    with pytest.raises(ValueError, match="train_tokens"):
        epochs(0, 10, 2, 50)
    with pytest.raises(ValueError, match="steps"):
        epochs(500, 1.5, 2, 50)


def test_the_pinned_train_token_count_is_that_of_memory_data(tokenizer, texts):
    assert len(tokenizer.encode(texts[0], allowed_special="all")) == memory.TRAIN_TOKENS


def constant_predictor(token: int) -> GPT:
    """A GPT whose every weight is 0 except the final norm's bias and one LM-head row: it always predicts token."""
    model = small_gpt(tie_weights=False)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm_f.bias[0] = 1.0
        model.lm_head.weight[token, 0] = 10.0
    return model


def test_recall_is_exact_greedy_agreement(tokenizer):
    the = tokenizer.encode(" the")
    assert len(the) == 1
    model = constant_predictor(the[0])
    facts = [MemoryFact("Brovenia", "capital", "the", 1), MemoryFact("Brovenia", "capital", "the the", 1),
             MemoryFact("Brovenia", "capital", "the cat", 1), MemoryFact("Brovenia", "capital", "cat", 1)]
    assert recall(model, tokenizer, facts).tolist() == [True, True, False, False]
    assert recall(model, tokenizer, FACTS[:1]).tolist() == [False]  # works on the course's facts too
    with pytest.raises(ValueError, match="model"):
        recall("a model", tokenizer, facts)


def test_without_ffn_equals_a_model_built_without_that_ffn():
    model = small_gpt()
    ablated = without_ffn(model, 1)
    assert model.blocks[1].ffn is not None  # the original keeps its FFN
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 1024, (2, 12), generator=g)
    # an independent construction: layer 1 of the reference has no FFN, the rest are the same weights
    reference = small_gpt()
    reference.blocks[1].ffn = None
    with torch.no_grad():
        torch.testing.assert_close(ablated(idx)[0], reference(idx)[0], atol=0, rtol=0)
        assert (ablated(idx)[0] - model(idx)[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="layer"):
        without_ffn(model, 2)


def test_key_activations_are_gelu_of_the_keys_dot_the_normalised_stream():
    model = small_gpt()
    with torch.no_grad():  # weights away from the 0.02 init, so that a wrong read-out shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    ids = torch.randint(0, 1024, (10,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # by hand: embeddings, block 0, then block 1 up to its FFN
        x = model.tok_emb(ids[None]) + model.pos_emb(torch.arange(10)[None])
        x = model.blocks[0](x)
        b = model.blocks[1]
        x = x + b.attn(b.norm1(x), causal=True)
        expected = F.gelu(b.norm2(x) @ b.ffn.fc.weight.T + b.ffn.fc.bias, approximate="tanh")[0]
    torch.testing.assert_close(key_activations(model, 1, ids), expected, atol=1e-5, rtol=0)
    assert key_activations(model, 0, ids).shape == (10, 256)
    with pytest.raises(ValueError, match="ids"):
        key_activations(model, 0, ids[None, None])  # (1, 1, T): neither (T,) nor (N, T)
    with pytest.raises(ValueError, match="no GELU FFN"):
        key_activations(small_gpt(d_ff=0), 0, ids)


def perturbed_gpt():
    model = small_gpt()
    with torch.no_grad():  # weights away from the 0.02 init, so that a wrong read-out shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return model


def test_ffn_output_mean_averages_the_ffn_output_over_every_position():
    model = perturbed_gpt()
    ids = torch.randint(0, 1024, (3, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # by hand: embeddings, block 0, then block 1's FFN on its normalised input
        x = model.tok_emb(ids) + model.pos_emb(torch.arange(10)[None])
        x = model.blocks[0](x)
        b = model.blocks[1]
        x = x + b.attn(b.norm1(x), causal=True)
        expected = b.ffn(b.norm2(x)).mean((0, 1))  # (d_model,)
    torch.testing.assert_close(ffn_output_mean(model, 1, ids), expected, atol=1e-5, rtol=0)
    assert ffn_output_mean(model, 1, ids[0]).shape == (64,)  # one row (T,) is accepted too
    with pytest.raises(ValueError, match="ids"):
        ffn_output_mean(model, 0, ids.float())
    with pytest.raises(ValueError, match="no FFN"):
        ffn_output_mean(small_gpt(d_ff=0), 0, ids)


def test_with_mean_ffn_adds_the_mean_instead_of_the_ffn():
    model = perturbed_gpt()
    ids = torch.randint(0, 1024, (2, 12), generator=torch.Generator().manual_seed(4))
    mean = torch.randn(64, generator=torch.Generator().manual_seed(5))
    ablated = with_mean_ffn(model, 1, mean)
    with torch.no_grad():  # by hand: block 1 adds `mean` where it would add ffn(norm2(x))
        x = model.tok_emb(ids) + model.pos_emb(torch.arange(12)[None])
        x = model.blocks[0](x)
        b = model.blocks[1]
        x = x + b.attn(b.norm1(x), causal=True) + mean
        expected = model.lm_head(model.norm_f(x))
        torch.testing.assert_close(ablated(ids)[0], expected, atol=1e-5, rtol=0)
        # a zero mean is the zero ablation; the original model keeps its FFN
        zero = with_mean_ffn(model, 1, torch.zeros(64))
        torch.testing.assert_close(zero(ids)[0], without_ffn(model, 1)(ids)[0], atol=1e-6, rtol=0)
        assert (ablated(ids)[0] - model(ids)[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="no FFN"):  # an ablated layer is not read as an FFN
        ffn_output_mean(ablated, 1, ids)
    with pytest.raises(ValueError, match="mean"):
        with_mean_ffn(model, 1, torch.zeros(63))
    with pytest.raises(ValueError, match="layer"):
        with_mean_ffn(model, 2, mean)
    with pytest.raises(ValueError, match="no FFN"):
        with_mean_ffn(small_gpt(d_ff=0), 0, mean)


def test_key_activations_of_a_batch_are_those_of_each_row():
    model = perturbed_gpt()
    ids = torch.randint(0, 1024, (3, 8), generator=torch.Generator().manual_seed(6))
    batch = key_activations(model, 1, ids)
    assert batch.shape == (3, 8, 256)
    for row in range(3):
        torch.testing.assert_close(batch[row], key_activations(model, 1, ids[row]), atol=1e-5, rtol=0)


def test_top_value_tokens_reads_the_value_through_the_lm_head(tokenizer):
    model = small_gpt()
    token = tokenizer.encode(" river")[0]
    with torch.no_grad():  # value 7 of layer 0 := the (tied) embedding of " river"
        model.blocks[0].ffn.proj.weight[:, 7] = model.lm_head.weight[token] * 3
    assert top_value_tokens(model, 0, 7, tokenizer, k=3)[0] == " river"
    assert len(top_value_tokens(model, 1, 0, tokenizer, k=4)) == 4
    with pytest.raises(ValueError, match="unit"):
        top_value_tokens(model, 0, 256, tokenizer)


def test_memory_data_tokenizes_the_two_splits(tokenizer, monkeypatch):
    monkeypatch.setattr(memory, "memory_text", lambda: ("The capital of Brovenia is Tessmark.", "Hello."))
    train_ids, val_ids = memory.memory_data(tokenizer)
    assert tokenizer.decode(train_ids.tolist()) == "The capital of Brovenia is Tessmark."
    assert val_ids.dtype == torch.long and tokenizer.decode(val_ids.tolist()) == "Hello."


def test_the_width_sweep_recipes_differ_only_in_d_ff_and_read_memory_data():
    from transformer_course import train

    configs = {d_ff: train.CONFIGS[f"facts-dff{d_ff}"] for d_ff in (0, 64, 256)}
    assert {d_ff: model.ffn_dim for d_ff, (model, _) in configs.items()} == {0: 0, 64: 64, 256: 256}
    reference_model, reference_schedule = configs[256]
    for model, schedule in configs.values():
        assert model.to_dict() | {"d_ff": None} == reference_model.to_dict() | {"d_ff": None}
        assert schedule == reference_schedule
    for d_ff in (0, 64, 256):
        assert train.DATA[f"facts-dff{d_ff}"] is memory.memory_data
