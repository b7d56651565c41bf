"""The logit lens and block ablation (`lens.py`): the last readout is the model's output, skipping the last block
is reading the stream before it, hooks are removed, and bad input is refused."""
import pytest
import torch

from transformer_course.lens import ablate_block, block_ablation, logit_lens, residual_stream
from transformer_course.model import GPT, GPTConfig


def model_and_batch(flavour="gpt2", seed=0):
    torch.manual_seed(seed)
    make = GPTConfig.gpt2_like if flavour == "gpt2" else GPTConfig.llama_like
    model = GPT(make(vocab_size=50, context_length=16, n_layers=3, n_heads=2, d_model=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(seed))
    return model, ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_last_stage_is_the_model(flavour):
    model, idx, targets = model_and_batch(flavour)
    states = residual_stream(model, idx)
    assert len(states) == 4 and all(s.shape == (2, 10, 16) for s in states)
    logits, loss = model(idx, targets)
    assert torch.equal(model.lm_head(model.norm_f(states[-1])), logits)
    lens = logit_lens(model, idx, targets)
    assert len(lens) == 4 and lens[-1]["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert lens[-1]["accuracy"] == (logits.argmax(-1) == targets).float().mean().item()


def test_stage_zero_is_the_embedding():
    model, idx, _ = model_and_batch()
    expected = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.shape[1]))[None]
    torch.testing.assert_close(residual_stream(model, idx)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_skipping_the_last_block_reads_the_stream_before_it(flavour):
    model, idx, targets = model_and_batch(flavour)
    states = residual_stream(model, idx)
    assert torch.equal(ablate_block(model, idx, 2), model.lm_head(model.norm_f(states[2])))
    assert block_ablation(model, idx, targets)[2] == logit_lens(model, idx, targets)[2]


def test_ablating_an_earlier_block_changes_the_output_and_hooks_are_removed():
    model, idx, targets = model_and_batch()
    before = model(idx)[0]
    assert not torch.allclose(ablate_block(model, idx, 0), before)
    assert torch.equal(model(idx)[0], before)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)
    residual_stream(model, idx)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)


def test_mode_is_restored_and_refusals():
    model, idx, targets = model_and_batch()
    model.train()
    logit_lens(model, idx, targets)
    block_ablation(model, idx, targets)
    assert model.training
    with pytest.raises(ValueError, match="model"):
        logit_lens(torch.nn.Linear(2, 2), idx, targets)
    with pytest.raises(ValueError, match="targets"):
        logit_lens(model, idx, targets[:, :-1])
    with pytest.raises(ValueError, match="targets"):
        logit_lens(model, idx, targets + 100)
    with pytest.raises(ValueError, match="layer"):
        ablate_block(model, idx, 3)
    with pytest.raises(ValueError, match="idx"):
        residual_stream(model, idx.float())
