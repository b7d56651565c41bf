"""`TokenClassificationHead` on the course GPT == Hugging Face `GPT2ForTokenClassification` with the same weights
(built offline from a tiny `GPT2Config`, no download): logits at real tokens, the loss with -100 labels and every
parameter's gradient, with right padding and with left padding, on random tokens and on labelled sentences."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2ForTokenClassification

from transformer_course.heads import TokenClassificationHead
from transformer_course.hf import _gpt2_to_course, to_hf_state_dict
from transformer_course.labelled import POS_TAGS, labelled_splits, to_batch
from transformer_course.model import GPT, GPTConfig

CTX, D, N_LABELS = 32, 64, len(POS_TAGS)
# Tolerances: logits and loss absolute, gradients relative to each parameter's largest |grad|. Weights of std 0.5
# make float32 rounding large: the worst differences seen were 5e-5 (logits of size ~10) and 1.05e-4 of max |grad|
# (the token embedding of V = 1024, whose rows sum many positions), so float32 keeps a 10x margin; in float64 they
# were 4e-14 and 7e-14, which shows the two computations are the same up to rounding.
TOL = {torch.float32: (5e-4, 1e-3), torch.float64: (1e-10, 1e-10)}


def perturb(module, seed, std=0.5):
    """Add randn * std to every parameter: norm gains, biases and the classifier's zero bias move too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def pair(vocab_size=100, seed=0, std=0.5, dtype=torch.float32):
    """(course GPT, its TokenClassificationHead, the equal GPT2ForTokenClassification), all in eval mode."""
    torch.manual_seed(seed)
    config = GPTConfig.gpt2_like(vocab_size=vocab_size, context_length=CTX, n_layers=2, n_heads=4, d_model=D)
    ours = perturb(GPT(config), seed, std).eval()
    head = perturb(TokenClassificationHead(D, N_LABELS), seed + 1, std).eval()
    hf_config = GPT2Config(vocab_size=vocab_size, n_positions=CTX, n_embd=D, n_layer=2, n_head=4,
                           num_labels=N_LABELS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           classifier_dropout=0.0, layer_norm_epsilon=config.norm_eps, activation_function="gelu_new",
                           attn_implementation="eager", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = GPT2ForTokenClassification(hf_config).eval()
    sd = to_hf_state_dict(ours)
    del sd["lm_head.weight"]  # a token classifier has no LM head
    hf.transformer.load_state_dict({k.removeprefix("transformer."): v for k, v in sd.items()}, strict=True)
    hf.classifier.load_state_dict(head.classifier.state_dict())
    return ours.to(dtype), head.to(dtype), hf.to(dtype)


def hf_positions(mask):
    """Positions counting real tokens from 0 (what GPT2Model needs for left padding; it does not derive them)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def random_batch(side, vocab_size=100, seed=0):
    """(idx, mask, labels): 4 rows of lengths 12, 7, 3, 1 padded on `side`; labels -100 at padding and at a
    few real tokens (the sub-tokens a word-level rule leaves out)."""
    g = torch.Generator().manual_seed(seed)
    lengths, T = [12, 7, 3, 1], 12
    idx = torch.randint(0, vocab_size, (4, T), generator=g)
    mask = torch.zeros(4, T, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    if side == "left":
        mask = mask.flip(-1)
    labels = torch.randint(0, N_LABELS, (4, T), generator=g)
    labels[torch.rand(4, T, generator=g) < 0.2] = -100
    labels[~mask] = -100
    labels[0, 0] = 3  # a label at the first position, and on the one-token row
    labels[3][mask[3]] = 5
    return idx, mask, labels


def labelled_batch(side):
    sentences = list(labelled_splits(20, 5, 5, seed=0).test)
    b = to_batch(sentences, side=side)
    return b.ids, b.padding_mask, b.tags


def compare(ours, head, hf, idx, mask, labels, hf_position_ids):
    logits = head(ours.features(idx, padding_mask=mask))  # (B, T, n_labels)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    out = hf(idx, attention_mask=mask.long(), position_ids=hf_position_ids, labels=labels)
    # Only real tokens: at padding, a query's output is whatever each implementation does with a masked row.
    atol, grad_rtol = TOL[logits.dtype]
    torch.testing.assert_close(logits[mask], out.logits[mask], atol=atol, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=atol, rtol=0)
    assert logits[mask].abs().max() > 1  # perturbed weights: logits far from the near-zero of a fresh init

    loss.backward()
    out.loss.backward()
    theirs = {n: p.grad for n, p in hf.transformer.named_parameters()}
    theirs = _gpt2_to_course({f"transformer.{n}": g for n, g in theirs.items()}, ours.config.n_layers)[0]
    theirs |= {f"head.classifier.{n}": p.grad for n, p in hf.classifier.named_parameters()}
    mine = {n: p.grad for n, p in ours.named_parameters()} | {f"head.{n}": p.grad for n, p in head.named_parameters()}
    assert set(mine) <= set(theirs) and len(mine) == 4 + 12 * ours.config.n_layers + 2
    for n, grad in mine.items():
        scale = theirs[n].abs().max().item()
        assert scale > 0, n
        diff = (grad - theirs[n]).abs().max().item()
        assert diff <= grad_rtol * scale, f"{n}: max |diff| {diff:.3g} = {diff / scale:.3g} of max |grad| {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left"])
def test_token_head_matches_hugging_face_on_padded_random_tokens(side, dtype):
    ours, head, hf = pair(dtype=dtype)
    idx, mask, labels = random_batch(side)
    compare(ours, head, hf, idx, mask, labels, hf_positions(mask))


def test_right_padding_needs_no_position_ids_in_hugging_face():
    ours, head, hf = pair(seed=1)
    idx, mask, labels = random_batch("right", seed=1)
    compare(ours, head, hf, idx, mask, labels, None)  # GPT2Model's default arange is right for right padding


def test_left_padding_without_position_ids_differs():
    """The check can fail: Hugging Face's default positions shift every left-padded row."""
    ours, head, hf = pair(seed=2)
    idx, mask, labels = random_batch("left", seed=2)
    logits = head(ours.features(idx, padding_mask=mask))
    wrong = hf(idx, attention_mask=mask.long()).logits
    assert (logits[1:][mask[1:]] - wrong[1:][mask[1:]]).abs().max() > 1e-2  # rows 1-3 are padded
    torch.testing.assert_close(logits[0], wrong[0], atol=TOL[torch.float32][0], rtol=0)  # row 0 is full


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("side", ["right", "left"])
def test_token_head_matches_hugging_face_on_labelled_sentences(side, dtype):
    """The labelled generator's batches (course tokenizer, V = 1024; tags -100 at padding and at later sub-tokens)."""
    idx, mask, tags = labelled_batch(side)
    assert idx.shape[1] <= CTX and (tags == -100).sum() > (~mask).sum()  # some words have several tokens
    ours, head, hf = pair(vocab_size=1024, seed=3, dtype=dtype)
    compare(ours, head, hf, idx, mask, tags, hf_positions(mask))

